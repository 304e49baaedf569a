//! The IKEv1 pseudo-random function: HMAC (RFC 2104) with the negotiated hash
//! (RFC 2409 section 5: "prf" is the HMAC version of the hash unless a PRF
//! attribute is negotiated). MD5, SHA-1 and SHA2-256/384/512 (RFC 4868 numbering
//! in IKEv1 phase 1). RustCrypto's hashes use the SHA extensions when the CPU has them.
//!
//! One handshake runs about seventeen of these on short inputs, so the cost of a
//! call matters more than throughput; `prf_parts` hashes several slices without
//! concatenating them first, and `skeyid_family` and `prf_expand` (KEYMAT) run a
//! chain of them in one call.
#![forbid(unsafe_code)]

use hmac::{Hmac, Mac};
use zeroize::Zeroizing;

use crate::error::PrfError;

/// Hash functions of the IKEv1 prf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// MD5 (IKE hash algorithm 1), 16-byte output.
    Md5,
    /// SHA-1 (2), 20 bytes.
    Sha1,
    /// SHA2-256 (4), 32 bytes.
    Sha256,
    /// SHA2-384 (5), 48 bytes.
    Sha384,
    /// SHA2-512 (6), 64 bytes.
    Sha512,
}

impl HashKind {
    /// Looks a hash up by its ikecore name (`md5`, `sha1`, `sha256`, `sha384`, `sha512`).
    pub fn from_name(name: &str) -> Result<Self, PrfError> {
        match name {
            "md5" => Ok(HashKind::Md5),
            "sha1" => Ok(HashKind::Sha1),
            "sha256" => Ok(HashKind::Sha256),
            "sha384" => Ok(HashKind::Sha384),
            "sha512" => Ok(HashKind::Sha512),
            _ => Err(PrfError::UnknownHash("expected md5, sha1, sha256, sha384 or sha512")),
        }
    }

    /// Output size in bytes.
    pub fn size(self) -> usize {
        match self {
            HashKind::Md5 => 16,
            HashKind::Sha1 => 20,
            HashKind::Sha256 => 32,
            HashKind::Sha384 => 48,
            HashKind::Sha512 => 64,
        }
    }
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length (longer ones are hashed first), so this
    // cannot fail; the fallback keeps the function total without a panic path.
    let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
        return Vec::new();
    };
    for part in parts {
        m.update(part);
    }
    m.finalize().into_bytes().to_vec()
}

/// HMAC of the concatenation of `parts` under `key`.
pub fn prf_parts(kind: HashKind, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    match kind {
        HashKind::Md5 => mac::<Hmac<md5::Md5>>(key, parts),
        HashKind::Sha1 => mac::<Hmac<sha1::Sha1>>(key, parts),
        HashKind::Sha256 => mac::<Hmac<sha2::Sha256>>(key, parts),
        HashKind::Sha384 => mac::<Hmac<sha2::Sha384>>(key, parts),
        HashKind::Sha512 => mac::<Hmac<sha2::Sha512>>(key, parts),
    }
}

/// HMAC of `data` under `key`.
pub fn prf(kind: HashKind, key: &[u8], data: &[u8]) -> Vec<u8> {
    prf_parts(kind, key, &[data])
}

/// The most output `prf_expand` gives: far above any IKEv1 key (an ESP suite needs at most
/// 32 + 64 bytes of KEYMAT per direction).
pub const MAX_EXPANSION: usize = 4096;

/// KEYMAT of RFC 2409 section 5.5: `K1 | K2 | ...` cut to `length` bytes, with
/// `K1 = prf(key, data)` and `Kn = prf(key, Kn-1 | data)`. Every block is zeroized when
/// dropped; the output is written in place (never reallocated, so never copied).
pub fn prf_expand(kind: HashKind, key: &[u8], data: &[u8], length: usize) -> Result<Zeroizing<Vec<u8>>, PrfError> {
    if length > MAX_EXPANSION {
        return Err(PrfError::Length("more than 4096 bytes asked"));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(length));
    if length == 0 {
        return Ok(out);
    }
    let mut block = Zeroizing::new(prf_parts(kind, key, &[data]));
    loop {
        let take = (length - out.len()).min(block.len());
        out.extend_from_slice(&block[..take]);
        if out.len() >= length {
            return Ok(out);
        }
        block = Zeroizing::new(prf_parts(kind, key, &[block.as_slice(), data]));
    }
}

/// SKEYID_d, SKEYID_a and SKEYID_e from SKEYID (RFC 2409 section 5):
/// `SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0)`,
/// `SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1)`,
/// `SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2)`.
pub fn skeyid_family(
    kind: HashKind,
    skeyid: &[u8],
    g_xy: &[u8],
    cky_i: &[u8],
    cky_r: &[u8],
) -> [Zeroizing<Vec<u8>>; 3] {
    let d = Zeroizing::new(prf_parts(kind, skeyid, &[g_xy, cky_i, cky_r, &[0]]));
    let a = Zeroizing::new(prf_parts(kind, skeyid, &[d.as_slice(), g_xy, cky_i, cky_r, &[1]]));
    let e = Zeroizing::new(prf_parts(kind, skeyid, &[a.as_slice(), g_xy, cky_i, cky_r, &[2]]));
    [d, a, e]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn rfc2202_and_rfc4231_case_1_and_2() {
        // RFC 2202 / RFC 4231 test case 1: key 0x0b.., "Hi There".
        let cases = [
            (HashKind::Md5, 16, "9294727a3638bb1c13f48ef8158bfc9d"),
            (HashKind::Sha1, 20, "b617318655057264e28bc0b6fb378c8ef146be00"),
            (HashKind::Sha256, 20, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (HashKind::Sha384, 20, "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6"),
            (HashKind::Sha512, 20, "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
        ];
        for (kind, key_len, expected) in cases {
            let out = prf(kind, &vec![0x0b; key_len], b"Hi There");
            assert_eq!(out, hex(expected), "{kind:?}");
            assert_eq!(out.len(), kind.size());
        }
        // RFC 2202 test case 2 (short key "Jefe"), split into parts.
        let out = prf_parts(HashKind::Sha1, b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(out, hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"));
        // RFC 4231 test case 6: a 131-byte key (longer than the block) is hashed first.
        let out = prf(HashKind::Sha256, &[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(out, hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"));
        assert_eq!(prf(HashKind::Sha1, b"", b"").len(), 20);
    }

    #[test]
    fn expansion_chains_blocks_and_family_chains_keys() {
        let (key, data) = (b"skeyid_d-key".as_slice(), b"protocol|spi|ni|nr".as_slice());
        // K1 = prf(key, data), K2 = prf(key, K1 | data): 48 bytes of SHA-256 take two blocks.
        let k1 = prf(HashKind::Sha256, key, data);
        let k2 = prf_parts(HashKind::Sha256, key, &[&k1, data]);
        let out = prf_expand(HashKind::Sha256, key, data, 48).unwrap();
        assert_eq!(out.as_slice(), [k1.as_slice(), &k2[..16]].concat().as_slice());
        assert_eq!(prf_expand(HashKind::Sha1, key, data, 20).unwrap().as_slice(), prf(HashKind::Sha1, key, data));
        assert!(prf_expand(HashKind::Md5, key, data, 0).unwrap().is_empty());
        assert!(prf_expand(HashKind::Md5, key, data, MAX_EXPANSION + 1).is_err());
        let (g_xy, ci, cr) = (b"shared".as_slice(), b"cookie-i".as_slice(), b"cookie-r".as_slice());
        let [d, a, e] = skeyid_family(HashKind::Sha1, b"skeyid", g_xy, ci, cr);
        assert_eq!(d.as_slice(), prf(HashKind::Sha1, b"skeyid", &[g_xy, ci, cr, &[0]].concat()));
        assert_eq!(a.as_slice(), prf(HashKind::Sha1, b"skeyid", &[d.as_slice(), g_xy, ci, cr, &[1]].concat()));
        assert_eq!(e.as_slice(), prf(HashKind::Sha1, b"skeyid", &[a.as_slice(), g_xy, ci, cr, &[2]].concat()));
    }

    #[test]
    fn names() {
        for (name, size) in [("md5", 16), ("sha1", 20), ("sha256", 32), ("sha384", 48), ("sha512", 64)] {
            assert_eq!(HashKind::from_name(name).unwrap().size(), size);
        }
        assert!(HashKind::from_name("sha3-256").is_err());
    }
}
