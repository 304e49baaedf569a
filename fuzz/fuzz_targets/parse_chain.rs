//! A decrypted payload chain (first byte = type of the first payload): parsing
//! never panics, and a parsed chain re-encodes to the bytes it was read from.
#![no_main]

use libfuzzer_sys::fuzz_target;

use _core::wire::message::{encode_chain, parse_chain};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    if let Ok(chain) = parse_chain(first, rest, false) {
        let mut out = Vec::new();
        encode_chain(&mut out, chain.iter().map(|p| (p.payload_type, p.reserved(), p.body()))).unwrap();
        let used: usize = chain.iter().map(|p| p.raw.len()).sum();
        assert_eq!(out, &rest[..used]);
    }
});
