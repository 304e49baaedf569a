//! Cookie table: (CKY-I, CKY-R) -> SA handle, responder cookies, and detection of
//! retransmitted first messages.
//!
//! RFC 2408 section 3.1: the first 16 bytes of every ISAKMP message are the two
//! cookies that name the ISAKMP SA:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                          Initiator                            !
//! !                            Cookie                             !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                          Responder                            !
//! !                            Cookie                             !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! An all-zero responder cookie marks a *half-open* entry: the initiator before
//! message 2 arrives, or a responder that has not chosen yet. A datagram whose full
//! cookie pair is unknown falls back to the half-open (CKY-I, 0) entry, so the
//! initiator finds its SA when the responder's first reply carries the new CKY-R;
//! [`CookieTable::promote`] then replaces the half-open entry by the full pair.
//!
//! Responder cookies follow RFC 2408 section 2.5.3 and RFC 2522 section 3.3
//! (Photuris): a keyed hash (SHA-256) of the peer and local address and port, a
//! local secret that [`CookieTable::rotate_secret`] replaces, and a counter, so
//! every cookie is unique per call and unpredictable without the secret.
//!
//! First messages (Main Mode message 1) carry CKY-R = 0 and may be retransmitted
//! by an initiator that did not get our reply; [`CookieTable::remember_first`]
//! stores a keyed hash of the source address and the whole datagram so a
//! retransmission is recognised (as strongSwan's `ike_sa_manager.c` does) and the
//! last reply resent instead of a second SA being created.
//!
//! The maps are std `HashMap`s with the std keyed SipHash (`RandomState`, a random
//! key per table), so peers cannot choose cookies that collide.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::CookieError;

/// An ISAKMP cookie (RFC 2408 section 3.1): 8 opaque bytes.
pub type Cookie = [u8; 8];

/// The all-zero responder cookie of a half-open entry.
pub const ZERO_COOKIE: Cookie = [0; 8];

/// Number of bytes of a first-message digest kept in the table.
const FIRST_DIGEST: usize = 16;

/// Bounds the (practically never repeated) retry when a cookie hashes to all zeros.
const ZERO_COOKIE_RETRIES: usize = 8;

/// Reads an 8-byte cookie from a slice.
pub fn cookie(bytes: &[u8], what: &'static str) -> Result<Cookie, CookieError> {
    bytes.try_into().map_err(|_| CookieError::CookieLength(what))
}

fn pair(cky_i: &Cookie, cky_r: &Cookie) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(cky_i);
    key[8..].copy_from_slice(cky_r);
    key
}

fn random_secret() -> Result<Zeroizing<[u8; 32]>, CookieError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut_slice()).map_err(|_| CookieError::Random("getrandom"))?;
    Ok(secret)
}

/// Estimated heap bytes of a hashbrown-backed `HashMap` with `capacity` usable
/// slots of `entry` bytes: buckets of entries plus one control byte each and one
/// trailing group of control bytes.
fn map_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 { capacity + 1 } else { capacity / 7 * 8 };
    buckets * (entry + 1) + 16
}

/// The table of ISAKMP SAs by cookie pair, plus first-message digests and the
/// responder cookie secret. Not locked: the Python wrapper holds it in a mutex.
pub struct CookieTable {
    by_pair: HashMap<[u8; 16], u64>,
    half_open: usize,
    first: HashMap<[u8; FIRST_DIGEST], u64>,
    first_key: Zeroizing<[u8; 32]>,
    secret: Zeroizing<[u8; 32]>,
    counter: u64,
}

impl core::fmt::Debug for CookieTable {
    /// Counts only; never the secrets.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieTable")
            .field("len", &self.by_pair.len())
            .field("half_open", &self.half_open)
            .field("first", &self.first.len())
            .finish_non_exhaustive()
    }
}

impl CookieTable {
    /// An empty table with fresh random secrets.
    ///
    /// Errors: [`CookieError::Random`] when the OS generator fails.
    pub fn new() -> Result<Self, CookieError> {
        Ok(CookieTable {
            by_pair: HashMap::new(),
            half_open: 0,
            first: HashMap::new(),
            first_key: random_secret()?,
            secret: random_secret()?,
            counter: 0,
        })
    }

    /// Number of SA entries (full and half-open).
    pub fn len(&self) -> usize {
        self.by_pair.len()
    }

    /// True when the table holds no SA entry.
    pub fn is_empty(&self) -> bool {
        self.by_pair.is_empty()
    }

    /// Number of half-open entries (CKY-R all zero).
    pub fn half_open(&self) -> usize {
        self.half_open
    }

    /// Number of remembered first messages.
    pub fn first_count(&self) -> usize {
        self.first.len()
    }

    /// Estimated heap bytes held by the table's maps.
    pub fn memory_bytes(&self) -> usize {
        map_bytes(self.by_pair.capacity(), 16 + 8) + map_bytes(self.first.capacity(), FIRST_DIGEST + 8)
    }

    /// Maps (cky_i, cky_r) to `handle`, replacing any earlier handle of that pair.
    /// A zero `cky_r` makes a half-open entry.
    pub fn insert(&mut self, cky_i: &Cookie, cky_r: &Cookie, handle: u64) {
        let previous = self.by_pair.insert(pair(cky_i, cky_r), handle);
        if previous.is_none() && *cky_r == ZERO_COOKIE {
            self.half_open += 1;
        }
    }

    /// The handle of exactly this pair (no half-open fallback).
    pub fn get(&self, cky_i: &Cookie, cky_r: &Cookie) -> Option<u64> {
        self.by_pair.get(&pair(cky_i, cky_r)).copied()
    }

    /// The handle of an ISAKMP message: its cookie pair, else the half-open
    /// (CKY-I, 0) entry.
    ///
    /// Errors: [`CookieError::ShortDatagram`] when `datagram` has fewer than 16 bytes.
    pub fn lookup(&self, datagram: &[u8]) -> Result<Option<u64>, CookieError> {
        let head: &[u8; 16] = datagram
            .get(..16)
            .and_then(|h| h.try_into().ok())
            .ok_or(CookieError::ShortDatagram("need 16 bytes of cookies"))?;
        if let Some(handle) = self.by_pair.get(head) {
            return Ok(Some(*handle));
        }
        let mut half = *head;
        half[8..].fill(0);
        Ok(self.by_pair.get(&half).copied())
    }

    /// Turns the half-open entry of `cky_i` into the full pair (cky_i, cky_r) -> handle.
    /// The half-open entry is removed whether or not it existed.
    pub fn promote(&mut self, cky_i: &Cookie, cky_r: &Cookie, handle: u64) {
        self.remove(cky_i, &ZERO_COOKIE);
        self.insert(cky_i, cky_r, handle);
    }

    /// Removes an entry; true when it existed.
    pub fn remove(&mut self, cky_i: &Cookie, cky_r: &Cookie) -> bool {
        let existed = self.by_pair.remove(&pair(cky_i, cky_r)).is_some();
        if existed && *cky_r == ZERO_COOKIE {
            self.half_open -= 1;
        }
        existed
    }

    /// Keyed digest of a first message: SHA-256(key | len(source) | source | datagram),
    /// truncated to 16 bytes. The length prefix keeps (source, datagram) unambiguous.
    fn first_digest(&self, source: &[u8], datagram: &[u8]) -> [u8; FIRST_DIGEST] {
        let mut hash = Sha256::new();
        hash.update(self.first_key.as_slice());
        hash.update((source.len() as u64).to_be_bytes());
        hash.update(source);
        hash.update(datagram);
        let full = hash.finalize();
        let mut digest = [0u8; FIRST_DIGEST];
        digest.copy_from_slice(&full[..FIRST_DIGEST]);
        digest
    }

    /// Remembers that the first message `datagram` from `source` (address and port
    /// bytes) created SA `handle`.
    pub fn remember_first(&mut self, source: &[u8], datagram: &[u8], handle: u64) {
        let digest = self.first_digest(source, datagram);
        self.first.insert(digest, handle);
    }

    /// The SA created by an identical first message from the same source, if any.
    pub fn find_first(&self, source: &[u8], datagram: &[u8]) -> Option<u64> {
        self.first.get(&self.first_digest(source, datagram)).copied()
    }

    /// Forgets a remembered first message; true when it was known.
    pub fn forget_first(&mut self, source: &[u8], datagram: &[u8]) -> bool {
        let digest = self.first_digest(source, datagram);
        self.first.remove(&digest).is_some()
    }

    /// A fresh responder cookie for `peer` and `local` (address and port bytes):
    /// the first 8 bytes of SHA-256(secret | counter | len(peer) | peer | local).
    /// Never all zero.
    ///
    /// Errors: [`CookieError::Random`] only if 8 hashes in a row came out all zero.
    pub fn make_cookie(&mut self, peer: &[u8], local: &[u8]) -> Result<Cookie, CookieError> {
        for _ in 0..ZERO_COOKIE_RETRIES {
            self.counter = self.counter.wrapping_add(1);
            let mut hash = Sha256::new();
            hash.update(self.secret.as_slice());
            hash.update(self.counter.to_be_bytes());
            hash.update((peer.len() as u64).to_be_bytes());
            hash.update(peer);
            hash.update(local);
            let full = hash.finalize();
            let mut out = ZERO_COOKIE;
            out.copy_from_slice(&full[..8]);
            if out != ZERO_COOKIE {
                return Ok(out);
            }
        }
        Err(CookieError::Random("cookie hash kept coming out zero"))
    }

    /// Replaces the cookie secret with fresh random bytes (the old one is zeroized).
    ///
    /// Errors: [`CookieError::Random`] when the OS generator fails.
    pub fn rotate_secret(&mut self) -> Result<(), CookieError> {
        self.secret = random_secret()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Cookie = *b"AAAAAAAA";
    const B: Cookie = *b"BBBBBBBB";
    const C: Cookie = *b"CCCCCCCC";

    fn datagram(cky_i: &Cookie, cky_r: &Cookie) -> Vec<u8> {
        let mut d = pair(cky_i, cky_r).to_vec();
        d.extend_from_slice(&[1, 0x10, 2, 0, 0, 0, 0, 0, 0, 0, 0, 28]);
        d
    }

    #[test]
    fn insert_get_remove_and_counts() {
        let mut t = CookieTable::new().unwrap();
        assert!(t.is_empty());
        t.insert(&A, &ZERO_COOKIE, 1);
        t.insert(&A, &ZERO_COOKIE, 2); // replace: still one half-open entry
        t.insert(&B, &C, 3);
        assert_eq!((t.len(), t.half_open()), (2, 1));
        assert_eq!(t.get(&A, &ZERO_COOKIE), Some(2));
        assert_eq!(t.get(&B, &C), Some(3));
        assert_eq!(t.get(&B, &ZERO_COOKIE), None);
        assert!(t.remove(&A, &ZERO_COOKIE));
        assert!(!t.remove(&A, &ZERO_COOKIE));
        assert_eq!((t.len(), t.half_open()), (1, 0));
        assert!(t.memory_bytes() > 0);
    }

    #[test]
    fn lookup_falls_back_to_half_open_then_promote() {
        let mut t = CookieTable::new().unwrap();
        t.insert(&A, &ZERO_COOKIE, 7);
        assert_eq!(t.lookup(&datagram(&A, &B)).unwrap(), Some(7));
        assert_eq!(t.lookup(&datagram(&B, &A)).unwrap(), None);
        t.promote(&A, &B, 8);
        assert_eq!((t.len(), t.half_open()), (1, 0));
        assert_eq!(t.lookup(&datagram(&A, &B)).unwrap(), Some(8));
        assert_eq!(t.lookup(&datagram(&A, &C)).unwrap(), None);
        assert_eq!(t.lookup(&[0u8; 15]), Err(CookieError::ShortDatagram("need 16 bytes of cookies")));
        assert_eq!(t.lookup(&pair(&A, &B)).unwrap(), Some(8)); // exactly 16 bytes is enough
    }

    #[test]
    fn first_message_detection_depends_on_source_and_bytes() {
        let mut t = CookieTable::new().unwrap();
        let d = datagram(&A, &ZERO_COOKIE);
        t.remember_first(b"\x7f\x00\x00\x01\x01\xf4", &d, 5);
        assert_eq!(t.find_first(b"\x7f\x00\x00\x01\x01\xf4", &d), Some(5));
        assert_eq!(t.find_first(b"\x7f\x00\x00\x02\x01\xf4", &d), None);
        let mut other = d.clone();
        other[20] ^= 1;
        assert_eq!(t.find_first(b"\x7f\x00\x00\x01\x01\xf4", &other), None);
        // Moving a byte between source and datagram is a different message.
        assert_eq!(t.find_first(b"\x7f\x00\x00\x01\x01", &[&[0xf4][..], &d].concat()), None);
        assert!(t.forget_first(b"\x7f\x00\x00\x01\x01\xf4", &d));
        assert!(!t.forget_first(b"\x7f\x00\x00\x01\x01\xf4", &d));
        assert_eq!(t.first_count(), 0);
    }

    #[test]
    fn cookies_are_unique_nonzero_and_keyed() {
        let mut t = CookieTable::new().unwrap();
        let mut u = CookieTable::new().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let c = t.make_cookie(b"peer", b"local").unwrap();
            assert_ne!(c, ZERO_COOKIE);
            assert!(seen.insert(c));
        }
        // Same counter and inputs, different secret: different cookie.
        assert_ne!(t.make_cookie(b"p", b"l").unwrap(), u.make_cookie(b"p", b"l").unwrap());
        // Recompute one cookie independently from the documented formula.
        let before = t.counter;
        let c = t.make_cookie(b"peer1", b"local1").unwrap();
        let mut h = Sha256::new();
        h.update(t.secret.as_slice());
        h.update((before + 1).to_be_bytes());
        h.update(5u64.to_be_bytes());
        h.update(b"peer1local1");
        assert_eq!(&c[..], &h.finalize()[..8]);
        let old = *t.secret;
        t.rotate_secret().unwrap();
        assert_ne!(old, *t.secret);
        assert_eq!(cookie(&[1, 2, 3], "x"), Err(CookieError::CookieLength("x")));
        assert!(!format!("{t:?}").contains("secret"));
    }
}
