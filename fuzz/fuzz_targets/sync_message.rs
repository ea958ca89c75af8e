//! The sync wire codec: any frame a peer sends decodes or is refused
//! without panicking, and whatever decodes encodes back to a frame that
//! decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::sync::proto::Msg;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Msg::decode(data) {
        let encoded = msg.encode();
        assert_eq!(Msg::decode(&encoded), Ok(msg), "round trip");
    }
});
