//! The Rust half of engine dispatch under a datagram sequence: each input is split
//! into datagrams (2-byte length prefixes); each datagram drives the `CookieTable` the
//! way the engine does (lookup; a zero CKY-R remembers a first message and inserts a
//! half-open entry; otherwise promote, remove or forget, chosen by a byte of the
//! datagram). Oracle: a plain model map of the pairs and of the remembered first
//! messages; every lookup, count and find must agree with it.
#![no_main]

use std::collections::HashMap;

use _core::cookies::{Cookie, CookieTable};
use libfuzzer_sys::fuzz_target;

const ZERO: Cookie = [0u8; 8];

fn cookies(d: &[u8]) -> (Cookie, Cookie) {
    let mut i = ZERO;
    let mut r = ZERO;
    i.copy_from_slice(&d[..8]);
    r.copy_from_slice(&d[8..16]);
    (i, r)
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut table) = CookieTable::new() else { return };
    let mut pairs: HashMap<(Cookie, Cookie), u64> = HashMap::new();
    let mut firsts: HashMap<(Vec<u8>, Vec<u8>), u64> = HashMap::new();
    let mut rest = data;
    let mut handle = 0u64;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let datagram = &rest[2..2 + len];
        rest = &rest[2 + len..];
        handle += 1;
        let source = vec![127, 0, 0, (handle % 3) as u8, 1, 244];
        let found = table.lookup(datagram);
        if datagram.len() < 16 {
            assert!(found.is_err(), "short datagram accepted");
            continue;
        }
        let (i, r) = cookies(datagram);
        let expected = pairs.get(&(i, r)).or_else(|| pairs.get(&(i, ZERO))).copied();
        assert_eq!(found.expect("16 bytes are enough"), expected, "lookup disagrees with the model");
        let op = datagram.get(16).copied().unwrap_or(0) % 4;
        if r == ZERO {
            let known = table.find_first(&source, datagram);
            assert_eq!(known, firsts.get(&(source.clone(), datagram.to_vec())).copied());
            if op == 3 {
                assert_eq!(table.forget_first(&source, datagram), known.is_some());
                firsts.remove(&(source.clone(), datagram.to_vec()));
            } else if known.is_none() {
                table.remember_first(&source, datagram, handle);
                firsts.insert((source, datagram.to_vec()), handle);
                table.insert(&i, &ZERO, handle);
                pairs.insert((i, ZERO), handle);
            }
        } else if op == 0 {
            table.promote(&i, &r, handle);
            pairs.remove(&(i, ZERO));
            pairs.insert((i, r), handle);
        } else if op == 1 {
            assert_eq!(table.remove(&i, &r), pairs.remove(&(i, r)).is_some());
        } else {
            assert_eq!(table.get(&i, &r), pairs.get(&(i, r)).copied());
        }
        assert_eq!(table.len(), pairs.len());
        assert_eq!(table.half_open(), pairs.keys().filter(|(_, r)| *r == ZERO).count());
        assert_eq!(table.first_count(), firsts.len());
    }
});
