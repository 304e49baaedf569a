//! The key schedule and hashes of a pre-shared-key Main Mode and its Quick Modes
//! (RFC 2409 sections 5, 5.4, 5.5 and appendix B), for the express lanes.
//!
//! The same formulas as `python/ikecore/keymat.py`, over the same Rust primitives
//! (`crypto::prf`, `crypto::cipher`); the tests check one against the other's known answers.

use zeroize::Zeroizing;

use crate::crypto::cipher::{Cipher, CipherKind};
use crate::crypto::prf::{prf_expand, prf_parts, skeyid_family, HashKind};

/// What a lane negotiates in phase 1: the hash (prf and digest), the payload cipher and
/// the Diffie-Hellman group. Authentication is always a pre-shared key.
#[derive(Debug, Clone, Copy)]
pub struct Suite {
    pub hash: HashKind,
    pub cipher: CipherKind,
    pub group: u16,
}

/// A plain hash of the concatenated parts (NAT-D, the phase 1 and phase 2 IVs).
pub fn digest(kind: HashKind, parts: &[&[u8]]) -> Vec<u8> {
    use sha2::Digest;
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match kind {
        HashKind::Md5 => run::<md5::Md5>(parts),
        HashKind::Sha1 => run::<sha1::Sha1>(parts),
        HashKind::Sha256 => run::<sha2::Sha256>(parts),
        HashKind::Sha384 => run::<sha2::Sha384>(parts),
        HashKind::Sha512 => run::<sha2::Sha512>(parts),
    }
}

/// NAT-D: `HASH(CKY-I | CKY-R | IP | Port)` (RFC 3947 section 3.2).
pub fn nat_d(kind: HashKind, cky_i: &[u8], cky_r: &[u8], ip: &[u8], port: u16) -> Vec<u8> {
    digest(kind, &[cky_i, cky_r, ip, &port.to_be_bytes()])
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The keys of one ISAKMP SA once g^xy is known, and its phase 1 IV chain.
pub struct Phase1 {
    pub hash: HashKind,
    skeyid: Zeroizing<Vec<u8>>,
    pub skeyid_d: Zeroizing<Vec<u8>>,
    pub skeyid_a: Zeroizing<Vec<u8>>,
    pub skeyid_e: Zeroizing<Vec<u8>>,
    pub key: Zeroizing<Vec<u8>>,
    cipher: Cipher,
    pub block: usize,
    /// The phase 1 (Message ID 0) chain: the IV the next phase 1 message uses.
    pub iv: Vec<u8>,
}

impl core::fmt::Debug for Phase1 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Phase1").finish_non_exhaustive()
    }
}

/// Why a message did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotWholeBlocks;

impl Phase1 {
    /// SKEYID = prf(pre-shared key, Ni_b | Nr_b), its family, the cipher key and the
    /// phase 1 IV = hash(g^xi | g^xr) (RFC 2409 sections 5 and B).
    #[allow(clippy::too_many_arguments)]
    pub fn derive(suite: &Suite, psk: &[u8], ni: &[u8], nr: &[u8], g_xy: &[u8], cky_i: &[u8], cky_r: &[u8],
                  g_xi: &[u8], g_xr: &[u8]) -> Phase1 {
        let hash = suite.hash;
        let skeyid = Zeroizing::new(prf_parts(hash, psk, &[ni, nr]));
        let [d, a, e] = skeyid_family(hash, &skeyid, g_xy, cky_i, cky_r);
        let size = suite.cipher.key_size();
        let key = if e.len() >= size {
            Zeroizing::new(e[..size].to_vec())
        } else {
            let mut out = Zeroizing::new(Vec::with_capacity(size + 64));
            let mut block = Zeroizing::new(prf_parts(hash, &e, &[&[0u8]]));
            out.extend_from_slice(&block);
            while out.len() < size {
                block = Zeroizing::new(prf_parts(hash, &e, &[block.as_slice()]));
                out.extend_from_slice(&block);
            }
            out.truncate(size);
            out
        };
        let block = suite.cipher.block_size();
        let cipher = Cipher::with_kind(suite.cipher, &key).expect("the key has the cipher's size");
        let iv = digest(hash, &[g_xi, g_xr])[..block].to_vec();
        Phase1 { hash, skeyid, skeyid_d: d, skeyid_a: a, skeyid_e: e, key, cipher, block, iv }
    }

    /// HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b).
    pub fn hash_i(&self, g_xi: &[u8], g_xr: &[u8], cky_i: &[u8], cky_r: &[u8], sa_b: &[u8], id_b: &[u8]) -> Vec<u8> {
        prf_parts(self.hash, &self.skeyid, &[g_xi, g_xr, cky_i, cky_r, sa_b, id_b])
    }

    /// HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b).
    pub fn hash_r(&self, g_xi: &[u8], g_xr: &[u8], cky_i: &[u8], cky_r: &[u8], sa_b: &[u8], id_b: &[u8]) -> Vec<u8> {
        prf_parts(self.hash, &self.skeyid, &[g_xr, g_xi, cky_r, cky_i, sa_b, id_b])
    }

    /// SKEYID (empty once forgotten).
    pub fn skeyid(&self) -> &[u8] {
        &self.skeyid
    }

    /// SKEYID itself is needed only for HASH_I and HASH_R: dropped (zeroized) after them.
    pub fn forget_skeyid(&mut self) {
        self.skeyid = Zeroizing::new(Vec::new());
    }

    /// The first IV of exchange `message_id`: hash(last phase 1 block | M-ID), truncated.
    pub fn phase2_iv(&self, message_id: u32) -> Vec<u8> {
        digest(self.hash, &[&self.iv, &message_id.to_be_bytes()])[..self.block].to_vec()
    }

    /// Zero-pad and encrypt `plain` with `iv`, which moves on to the last ciphertext block.
    pub fn seal(&self, iv: &mut Vec<u8>, plain: &[u8]) -> Vec<u8> {
        let mut padded = plain.to_vec();
        padded.resize(plain.len() + (self.block - plain.len() % self.block) % self.block, 0);
        let out = self.cipher.encrypt(iv, &padded).expect("whole blocks and a block-sized IV");
        iv.copy_from_slice(&out[out.len() - self.block..]);
        out
    }

    /// Decrypt `ciphertext` with `iv`: (plaintext, the IV that follows it). The chain
    /// moves only when the caller commits the second value.
    pub fn open(&self, iv: &[u8], ciphertext: &[u8]) -> Result<(Vec<u8>, Vec<u8>), NotWholeBlocks> {
        if ciphertext.is_empty() || ciphertext.len() % self.block != 0 {
            return Err(NotWholeBlocks);
        }
        let plain = self.cipher.decrypt(iv, ciphertext).map_err(|_| NotWholeBlocks)?;
        Ok((plain, ciphertext[ciphertext.len() - self.block..].to_vec()))
    }

    /// Quick Mode HASH(1) / Informational HASH(1) = prf(SKEYID_a, M-ID | payloads after HASH).
    pub fn hash1(&self, message_id: u32, after: &[u8]) -> Vec<u8> {
        prf_parts(self.hash, &self.skeyid_a, &[&message_id.to_be_bytes(), after])
    }

    /// Quick Mode HASH(2) = prf(SKEYID_a, M-ID | Ni_b | payloads after HASH).
    pub fn hash2(&self, message_id: u32, ni: &[u8], after: &[u8]) -> Vec<u8> {
        prf_parts(self.hash, &self.skeyid_a, &[&message_id.to_be_bytes(), ni, after])
    }

    /// Quick Mode HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b).
    pub fn hash3(&self, message_id: u32, ni: &[u8], nr: &[u8]) -> Vec<u8> {
        prf_parts(self.hash, &self.skeyid_a, &[&[0u8], &message_id.to_be_bytes(), ni, nr])
    }

    /// KEYMAT of one direction without PFS: prf+(SKEYID_d, protocol | SPI | Ni_b | Nr_b).
    pub fn keymat(&self, protocol: u8, spi: &[u8], ni: &[u8], nr: &[u8], length: usize) -> Zeroizing<Vec<u8>> {
        let mut seed = Vec::with_capacity(1 + spi.len() + ni.len() + nr.len());
        seed.push(protocol);
        seed.extend_from_slice(spi);
        seed.extend_from_slice(ni);
        seed.extend_from_slice(nr);
        prf_expand(self.hash, &self.skeyid_d, &seed, length).unwrap_or_else(|_| Zeroizing::new(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_chains() {
        let suite = Suite { hash: HashKind::Sha256, cipher: CipherKind::from_name("aes128-cbc").unwrap(), group: 19 };
        let p = Phase1::derive(&suite, b"secret", &[1; 32], &[2; 32], &[3; 32], &[4; 8], &[5; 8], &[6; 64], &[7; 64]);
        let mut iv = p.iv.clone();
        let start = iv.clone();
        let sealed = p.seal(&mut iv, b"hello");
        assert_eq!(sealed.len(), 16);
        assert_eq!(&iv[..], &sealed[..]);
        let (plain, next) = p.open(&start, &sealed).unwrap();
        assert_eq!(&plain[..5], b"hello");
        assert_eq!(next, iv);
        assert!(p.open(&start, &sealed[..15]).is_err());
    }

    #[test]
    fn constant_time_equality() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
