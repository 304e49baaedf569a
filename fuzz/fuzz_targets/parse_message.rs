//! parse -> encode -> compare bytes, for whole datagrams (the oracle lives in
//! `rust/wire/roundtrip.rs` and is also run by a bounded `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = _core::wire::roundtrip::check_round_trip(data) {
        panic!("{why}");
    }
});
