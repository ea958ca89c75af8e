//! Backup segments: whatever a bucket holds, `outpost restore` decodes it
//! or refuses it with an error, never panics or allocates without bound.
//! The input is sealed with a valid checksum first, so the fuzzer reaches
//! the header, the zstd body and the sync codec behind the SHA-256 gate.
//! What decodes encodes back to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::backup::segment;

/// The decompressed body a restore accepts, at most, in this target.
const MAX_RAW_BYTES: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let sealed = segment::seal(data.to_vec());
    if let Ok(decoded) = segment::decode(&sealed, MAX_RAW_BYTES) {
        let again = segment::decode(&segment::encode(&decoded, 1), usize::MAX)
            .expect("an encoded segment decodes");
        assert_eq!(again.entries, decoded.entries, "round trip");
        assert_eq!(again.certs, decoded.certs, "round trip");
    }
});
