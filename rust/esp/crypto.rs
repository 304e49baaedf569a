//! ESP transforms over OpenSSL (AES-NI, SHA extensions): CBC ciphers with explicit
//! per-packet IVs (RFC 3602, RFC 2451) and truncated HMACs (RFC 2403, 2404, 4868).
//!
//! Each context belongs to one SA direction and one thread at a time (the SA's mutex);
//! the key schedule is set once and only the IV changes per packet. OpenSSL cleanses
//! the key schedules when the contexts are freed; our copies of the keys are zeroized.

use std::os::raw::{c_int, c_uint};
use std::ptr;

use openssl_sys as ffi;
use zeroize::Zeroizing;

/// An encryption transform as the Quick Mode names it (`aes128`, `3des`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    AesCbc(usize),
    TripleDesCbc,
    DesCbc,
}

impl Encryption {
    pub fn from_name(name: &str) -> Option<Encryption> {
        match name {
            "aes128" => Some(Encryption::AesCbc(16)),
            "aes192" => Some(Encryption::AesCbc(24)),
            "aes256" => Some(Encryption::AesCbc(32)),
            "3des" => Some(Encryption::TripleDesCbc),
            "des" => Some(Encryption::DesCbc),
            _ => None,
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Encryption::AesCbc(n) => n,
            Encryption::TripleDesCbc => 24,
            Encryption::DesCbc => 8,
        }
    }

    /// Cipher block size = IV size = padding alignment.
    pub fn block(self) -> usize {
        match self {
            Encryption::AesCbc(_) => 16,
            _ => 8,
        }
    }

    /// Wireshark's ESP SA table name.
    pub fn wireshark_name(self) -> &'static str {
        match self {
            Encryption::AesCbc(_) => "AES-CBC [RFC3602]",
            Encryption::TripleDesCbc => "TripleDES-CBC [RFC2451]",
            Encryption::DesCbc => "DES-CBC [RFC2405]",
        }
    }

    fn evp(self) -> *const ffi::EVP_CIPHER {
        unsafe {
            match self {
                Encryption::AesCbc(16) => ffi::EVP_aes_128_cbc(),
                Encryption::AesCbc(24) => ffi::EVP_aes_192_cbc(),
                Encryption::AesCbc(_) => ffi::EVP_aes_256_cbc(),
                Encryption::TripleDesCbc => ffi::EVP_des_ede3_cbc(),
                Encryption::DesCbc => ffi::EVP_des_cbc(),
            }
        }
    }
}

/// An integrity transform (`sha1`, `sha256`, ...) with its truncated ICV length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Integrity {
    pub fn from_name(name: &str) -> Option<Integrity> {
        match name {
            "md5" => Some(Integrity::Md5),
            "sha1" => Some(Integrity::Sha1),
            "sha256" => Some(Integrity::Sha256),
            "sha384" => Some(Integrity::Sha384),
            "sha512" => Some(Integrity::Sha512),
            _ => None,
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Integrity::Md5 => 16,
            Integrity::Sha1 => 20,
            Integrity::Sha256 => 32,
            Integrity::Sha384 => 48,
            Integrity::Sha512 => 64,
        }
    }

    /// ICV bytes on the wire: 96 bits for MD5/SHA-1 (RFC 2403/2404), half the
    /// output for SHA-2 (RFC 4868).
    pub fn icv_len(self) -> usize {
        match self {
            Integrity::Md5 | Integrity::Sha1 => 12,
            Integrity::Sha256 => 16,
            Integrity::Sha384 => 24,
            Integrity::Sha512 => 32,
        }
    }

    pub fn wireshark_name(self) -> &'static str {
        match self {
            Integrity::Md5 => "HMAC-MD5-96 [RFC2403]",
            Integrity::Sha1 => "HMAC-SHA-1-96 [RFC2404]",
            Integrity::Sha256 => "HMAC-SHA-256-128 [RFC4868]",
            Integrity::Sha384 => "HMAC-SHA-384-192 [RFC4868]",
            Integrity::Sha512 => "HMAC-SHA-512-256 [RFC4868]",
        }
    }

    fn evp(self) -> *const ffi::EVP_MD {
        unsafe {
            match self {
                Integrity::Md5 => ffi::EVP_md5(),
                Integrity::Sha1 => ffi::EVP_sha1(),
                Integrity::Sha256 => ffi::EVP_sha256(),
                Integrity::Sha384 => ffi::EVP_sha384(),
                Integrity::Sha512 => ffi::EVP_sha512(),
            }
        }
    }
}

/// A CBC cipher context with its key set, for one direction.
///
/// The context is initialised once; a packet's own IV is applied by folding it into the
/// first block (CBC: block 0 is E(P0 ^ chain), so feeding P0 ^ IV ^ chain gives E(P0 ^ IV)
/// while the context still chains from the last block it saw), which spares OpenSSL 3's
/// per-call parameter handling of a re-initialisation per packet.
pub struct CbcCipher {
    ctx: *mut ffi::EVP_CIPHER_CTX,
    pub algorithm: Encryption,
    encrypt: bool,
    /// The context's chaining value: the last ciphertext block it processed.
    chain: [u8; 16],
}

// The raw context is only used through &mut self (one thread at a time).
unsafe impl Send for CbcCipher {}

impl CbcCipher {
    pub fn new(algorithm: Encryption, key: &[u8], encrypt: bool) -> Result<CbcCipher, String> {
        if key.len() != algorithm.key_len() {
            return Err(format!("encryption key is {} bytes, {:?} needs {}", key.len(), algorithm, algorithm.key_len()));
        }
        let key = Zeroizing::new(key.to_vec());
        unsafe {
            let ctx = ffi::EVP_CIPHER_CTX_new();
            if ctx.is_null() {
                return Err("out of memory".into());
            }
            let cipher = CbcCipher { ctx, algorithm, encrypt, chain: [0; 16] };
            let evp = algorithm.evp();
            let zero_iv = [0u8; 16];
            if evp.is_null()
                || ffi::EVP_CipherInit_ex(ctx, evp, ptr::null_mut(), key.as_ptr(), zero_iv.as_ptr(), encrypt as c_int) != 1
            {
                ffi::ERR_clear_error();
                return Err(format!("OpenSSL has no {algorithm:?} here"));
            }
            ffi::EVP_CIPHER_CTX_set_padding(ctx, 0);
            Ok(cipher)
        }
    }

    /// En- or decrypt `data` in place (a whole number of blocks) with `iv`.
    pub fn apply(&mut self, iv: &[u8], data: &mut [u8]) -> bool {
        let block = self.algorithm.block();
        if iv.len() != block || data.len() % block != 0 {
            return false;
        }
        if data.is_empty() {
            return true;
        }
        let mut last = [0u8; 16];
        let tail = data.len() - block;
        if self.encrypt {
            for i in 0..block {
                data[i] ^= iv[i] ^ self.chain[i];
            }
        } else {
            last[..block].copy_from_slice(&data[tail..]);
        }
        let mut out_len: c_int = 0;
        unsafe {
            let ok = ffi::EVP_CipherUpdate(self.ctx, data.as_mut_ptr(), &mut out_len, data.as_ptr(), data.len() as c_int);
            if ok != 1 || out_len as usize != data.len() {
                ffi::ERR_clear_error();
                // the context's chaining state is unknown now: start it again
                let zero_iv = [0u8; 16];
                ffi::EVP_CipherInit_ex(self.ctx, ptr::null(), ptr::null_mut(), ptr::null(), zero_iv.as_ptr(), -1);
                self.chain = [0; 16];
                return false;
            }
        }
        if self.encrypt {
            self.chain[..block].copy_from_slice(&data[tail..]);
        } else {
            for i in 0..block {
                data[i] ^= iv[i] ^ self.chain[i];
            }
            self.chain[..block].copy_from_slice(&last[..block]);
        }
        true
    }
}

impl Drop for CbcCipher {
    fn drop(&mut self) {
        unsafe { ffi::EVP_CIPHER_CTX_free(self.ctx) }
    }
}

/// HMAC (RFC 2104) over OpenSSL's SHA block functions: the states after the key's inner
/// and outer pads are computed once; a packet copies them (plain structs) and hashes.
/// MD5 goes through OpenSSL's HMAC context.
enum Pads {
    Sha1(Box<(ffi::SHA_CTX, ffi::SHA_CTX)>),
    Sha256(Box<(ffi::SHA256_CTX, ffi::SHA256_CTX)>),
    Sha512(Box<(ffi::SHA512_CTX, ffi::SHA512_CTX)>, bool),
    Evp(*mut ffi::HMAC_CTX),
}

/// A keyed HMAC for one direction; the key is set once.
pub struct Hmac {
    pads: Pads,
    pub algorithm: Integrity,
}

unsafe impl Send for Hmac {}

fn padded(key: &[u8], block: usize, byte: u8) -> Zeroizing<Vec<u8>> {
    let mut pad = Zeroizing::new(vec![byte; block]);
    for (p, k) in pad.iter_mut().zip(key) {
        *p ^= k;
    }
    pad
}

impl Hmac {
    pub fn new(algorithm: Integrity, key: &[u8]) -> Result<Hmac, String> {
        if key.len() != algorithm.key_len() {
            return Err(format!("integrity key is {} bytes, {:?} needs {}", key.len(), algorithm, algorithm.key_len()));
        }
        // ESP keys are never longer than the hash block, so they are used as they are
        unsafe {
            let pads = match algorithm {
                Integrity::Sha1 => {
                    let mut p: Box<(ffi::SHA_CTX, ffi::SHA_CTX)> = Box::new(std::mem::zeroed());
                    for (ctx, byte) in [(&mut p.0, 0x36u8), (&mut p.1, 0x5c)] {
                        ffi::SHA1_Init(ctx);
                        let pad = padded(key, 64, byte);
                        ffi::SHA1_Update(ctx, pad.as_ptr() as *const _, 64);
                    }
                    Pads::Sha1(p)
                }
                Integrity::Sha256 => {
                    let mut p: Box<(ffi::SHA256_CTX, ffi::SHA256_CTX)> = Box::new(std::mem::zeroed());
                    for (ctx, byte) in [(&mut p.0, 0x36u8), (&mut p.1, 0x5c)] {
                        ffi::SHA256_Init(ctx);
                        let pad = padded(key, 64, byte);
                        ffi::SHA256_Update(ctx, pad.as_ptr() as *const _, 64);
                    }
                    Pads::Sha256(p)
                }
                Integrity::Sha384 | Integrity::Sha512 => {
                    let is384 = algorithm == Integrity::Sha384;
                    let mut p: Box<(ffi::SHA512_CTX, ffi::SHA512_CTX)> = Box::new(std::mem::zeroed());
                    for (ctx, byte) in [(&mut p.0, 0x36u8), (&mut p.1, 0x5c)] {
                        if is384 { ffi::SHA384_Init(ctx) } else { ffi::SHA512_Init(ctx) };
                        let pad = padded(key, 128, byte);
                        ffi::SHA512_Update(ctx, pad.as_ptr() as *const _, 128);
                    }
                    Pads::Sha512(p, is384)
                }
                Integrity::Md5 => {
                    let ctx = ffi::HMAC_CTX_new();
                    if ctx.is_null() {
                        return Err("out of memory".into());
                    }
                    if ffi::HMAC_Init_ex(ctx, key.as_ptr() as *const _, key.len() as c_int, algorithm.evp(), ptr::null_mut()) != 1 {
                        ffi::ERR_clear_error();
                        ffi::HMAC_CTX_free(ctx);
                        return Err(format!("OpenSSL has no HMAC {algorithm:?} here"));
                    }
                    Pads::Evp(ctx)
                }
            };
            Ok(Hmac { pads, algorithm })
        }
    }

    /// The truncated ICV of `data` into `icv` (at least `icv_len` bytes).
    pub fn icv(&mut self, data: &[u8], icv: &mut [u8]) -> bool {
        let mut full = [0u8; 64];
        let n = self.algorithm.icv_len();
        if icv.len() < n {
            return false;
        }
        unsafe {
            match &self.pads {
                Pads::Sha1(p) => {
                    let mut c = p.0.clone();
                    ffi::SHA1_Update(&mut c, data.as_ptr() as *const _, data.len());
                    ffi::SHA1_Final(full.as_mut_ptr(), &mut c);
                    let mut c = p.1.clone();
                    ffi::SHA1_Update(&mut c, full.as_ptr() as *const _, 20);
                    ffi::SHA1_Final(full.as_mut_ptr(), &mut c);
                }
                Pads::Sha256(p) => {
                    let mut c = p.0.clone();
                    ffi::SHA256_Update(&mut c, data.as_ptr() as *const _, data.len());
                    ffi::SHA256_Final(full.as_mut_ptr(), &mut c);
                    let mut c = p.1.clone();
                    ffi::SHA256_Update(&mut c, full.as_ptr() as *const _, 32);
                    ffi::SHA256_Final(full.as_mut_ptr(), &mut c);
                }
                Pads::Sha512(p, is384) => {
                    let len = if *is384 { 48 } else { 64 };
                    let mut c = p.0.clone();
                    ffi::SHA512_Update(&mut c, data.as_ptr() as *const _, data.len());
                    if *is384 { ffi::SHA384_Final(full.as_mut_ptr(), &mut c) } else { ffi::SHA512_Final(full.as_mut_ptr(), &mut c) };
                    let mut c = p.1.clone();
                    ffi::SHA512_Update(&mut c, full.as_ptr() as *const _, len);
                    if *is384 { ffi::SHA384_Final(full.as_mut_ptr(), &mut c) } else { ffi::SHA512_Final(full.as_mut_ptr(), &mut c) };
                }
                Pads::Evp(ctx) => {
                    let mut len: c_uint = 0;
                    // NULL key, NULL md: same key, fresh message
                    if ffi::HMAC_Init_ex(*ctx, ptr::null(), 0, ptr::null(), ptr::null_mut()) != 1
                        || ffi::HMAC_Update(*ctx, data.as_ptr(), data.len()) != 1
                        || ffi::HMAC_Final(*ctx, full.as_mut_ptr(), &mut len) != 1
                        || (len as usize) < n
                    {
                        ffi::ERR_clear_error();
                        return false;
                    }
                }
            }
        }
        icv[..n].copy_from_slice(&full[..n]);
        true
    }
}

impl Drop for Hmac {
    fn drop(&mut self) {
        unsafe {
            match &mut self.pads {
                Pads::Sha1(p) => wipe(&mut **p),
                Pads::Sha256(p) => wipe(&mut **p),
                Pads::Sha512(p, _) => wipe(&mut **p),
                Pads::Evp(ctx) => ffi::HMAC_CTX_free(*ctx),
            }
        }
    }
}

/// Overwrite a plain struct holding key-derived state with zeros.
unsafe fn wipe<T>(value: &mut T) {
    ptr::write_bytes(value as *mut T as *mut u8, 0, std::mem::size_of::<T>());
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Compare in time independent of where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    unsafe { ptr::read_volatile(&diff) == 0 }
}

/// Fill `out` from OpenSSL's CSPRNG (per-packet IVs).
pub fn random(out: &mut [u8]) -> bool {
    unsafe { ffi::RAND_bytes(out.as_mut_ptr(), out.len() as c_int) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_rfc4231_case1_truncated() {
        // RFC 4231 test case 1: key 0x0b * 20, data "Hi There" (a 20-byte key: an
        // HMAC-SHA1 key length; for the SHA-2 lengths the key is padded with zeros below
        // as HMAC itself would pad it, so the known answers still hold)
        let cases = [
            (Integrity::Sha256, "b0344c61d8db38535ca8afceaf0bf12b"),
            (Integrity::Sha384, "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec6"),
            (Integrity::Sha512, "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"),
        ];
        for (alg, want) in cases {
            let mut key = vec![0x0b; 20];
            key.resize(alg.key_len(), 0);
            let mut mac = Hmac::new(alg, &key).unwrap();
            let mut icv = [0u8; 32];
            for _ in 0..2 {
                assert!(mac.icv(b"Hi There", &mut icv), "the state is reusable");
                assert_eq!(icv[..alg.icv_len()].to_vec(), hex(want), "{alg:?}");
            }
        }
        // RFC 2202 test case 1 for HMAC-SHA-1: b617318655057264e28bc0b6fb378c8ef146be00
        let mut mac = Hmac::new(Integrity::Sha1, &[0x0b; 20]).unwrap();
        let mut icv = [0u8; 12];
        assert!(mac.icv(b"Hi There", &mut icv));
        assert_eq!(icv.to_vec(), hex("b617318655057264e28bc0b6"));
        // RFC 2202 test case 2 for HMAC-MD5 needs a 4-byte key; case 1: 16 x 0x0b, "Hi There"
        let mut mac = Hmac::new(Integrity::Md5, &[0x0b; 16]).unwrap();
        assert!(mac.icv(b"Hi There", &mut icv));
        assert_eq!(icv.to_vec(), hex("9294727a3638bb1c13f48ef8"));
    }

    #[test]
    fn cbc_context_reused_across_packets_with_their_own_ivs() {
        let key = [0x42u8; 16];
        let mut enc = CbcCipher::new(Encryption::AesCbc(16), &key, true).unwrap();
        let mut dec = CbcCipher::new(Encryption::AesCbc(16), &key, false).unwrap();
        for n in 1..6u8 {
            let iv = [n; 16];
            let plain: Vec<u8> = (0..(16 * n as usize)).map(|i| i as u8 ^ n).collect();
            let mut once = plain.clone();
            assert!(CbcCipher::new(Encryption::AesCbc(16), &key, true).unwrap().apply(&iv, &mut once));
            let mut reused = plain.clone();
            assert!(enc.apply(&iv, &mut reused));
            assert_eq!(reused, once, "packet {n}");
            assert!(dec.apply(&iv, &mut reused));
            assert_eq!(reused, plain, "packet {n}");
        }
        let mut des = CbcCipher::new(Encryption::TripleDesCbc, &[7u8; 24], true).unwrap();
        let mut d = CbcCipher::new(Encryption::TripleDesCbc, &[7u8; 24], false).unwrap();
        for n in 1..4u8 {
            let mut data = vec![n; 24];
            assert!(des.apply(&[n; 8], &mut data));
            assert!(d.apply(&[n; 8], &mut data));
            assert_eq!(data, vec![n; 24]);
        }
    }

    #[test]
    fn aes128_cbc_rfc3602_case1() {
        // RFC 3602 section 4, case #1
        let key = hex("06a9214036b8a15b512e03d534120006");
        let iv = hex("3dafba429d9eb430b422da802c9fac41");
        let mut data = b"Single block msg".to_vec();
        let mut enc = CbcCipher::new(Encryption::AesCbc(16), &key, true).unwrap();
        assert!(enc.apply(&iv, &mut data));
        assert_eq!(data, hex("e353779c1079aeb82708942dbe77181a"));
        let mut dec = CbcCipher::new(Encryption::AesCbc(16), &key, false).unwrap();
        assert!(dec.apply(&iv, &mut data));
        assert_eq!(&data, b"Single block msg");
        assert!(!dec.apply(&iv, &mut data[..5]), "not a whole block");
    }

    #[test]
    fn wrong_key_length_refused() {
        assert!(CbcCipher::new(Encryption::AesCbc(16), &[0; 15], true).is_err());
        assert!(Hmac::new(Integrity::Sha1, &[0; 32]).is_err());
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
}
