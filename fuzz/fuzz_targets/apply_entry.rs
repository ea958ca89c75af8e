//! Remote log entries and snapshot documents built from the input, merged
//! by a real database (`Database::apply`, `Database::apply_snapshot`),
//! interleaved with local writes. Refused entries are fine (quarantine);
//! a panic anywhere (also on the writer thread) or a failed call is not.
//! The input format and the world it runs in: `outpost_fuzz::apply`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_fuzz::apply::Env;

fuzz_target!(|data: &[u8]| {
    Env::get().run(data);
});

/// As in the `outpost` binary: allocations capped while decoding peers'
/// updates (`outpost::alloc`).
#[global_allocator]
static ALLOCATOR: outpost::alloc::Capped = outpost::alloc::Capped;
