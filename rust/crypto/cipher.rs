//! Payload ciphers of IKEv1 phase 1 and 2 messages: DES-CBC, 3DES-CBC (EDE3) and
//! AES-CBC with 128, 192 and 256-bit keys.
//!
//! RFC 2409 section 5.3 and appendix B: every message after the key exchange is
//! encrypted in CBC mode with the negotiated cipher; the IV of the first message is
//! derived from the DH public values and each later message chains from the last
//! ciphertext block of the one before (the chain itself lives in
//! `ikecore.keymat.CryptoState`). RFC 3602 defines AES-CBC for IKE and ESP.
//!
//! The block ciphers are RustCrypto's `des` and `aes`; CBC is a few lines here
//! over the raw block functions. There is no padding logic: callers hand in whole
//! blocks (IKEv1 padding conventions differ between implementations and belong to
//! the Python layer). Key schedules are zeroized when a [`Cipher`] is dropped
//! (the crates' `zeroize` feature).
#![forbid(unsafe_code)]

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};

use crate::error::CipherError;

/// The ciphers ikecore can use for ISAKMP payload encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherKind {
    /// DES-CBC (IKE encryption algorithm 1; RFC 2405), 8-byte key with parity bits.
    Des,
    /// 3DES-CBC, EDE with three independent keys (IKE encryption algorithm 5; RFC 2451).
    TripleDes,
    /// AES-128-CBC (IKE encryption algorithm 7, key length 128; RFC 3602).
    Aes128,
    /// AES-192-CBC.
    Aes192,
    /// AES-256-CBC.
    Aes256,
}

impl CipherKind {
    /// Every supported cipher, in the order of [`CipherKind::name`].
    pub const ALL: [CipherKind; 5] = [
        CipherKind::Des,
        CipherKind::TripleDes,
        CipherKind::Aes128,
        CipherKind::Aes192,
        CipherKind::Aes256,
    ];

    /// Looks a cipher up by its ikecore name (`des-cbc`, `3des-cbc`, `aes128-cbc`,
    /// `aes192-cbc`, `aes256-cbc`).
    pub fn from_name(name: &str) -> Result<Self, CipherError> {
        CipherKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or(CipherError::UnknownCipher(
                "expected des-cbc, 3des-cbc, aes128-cbc, aes192-cbc or aes256-cbc",
            ))
    }

    /// The ikecore name of the cipher.
    pub fn name(self) -> &'static str {
        match self {
            CipherKind::Des => "des-cbc",
            CipherKind::TripleDes => "3des-cbc",
            CipherKind::Aes128 => "aes128-cbc",
            CipherKind::Aes192 => "aes192-cbc",
            CipherKind::Aes256 => "aes256-cbc",
        }
    }

    /// Key size in bytes (DES keys include their parity bits).
    pub fn key_size(self) -> usize {
        match self {
            CipherKind::Des => 8,
            CipherKind::TripleDes => 24,
            CipherKind::Aes128 => 16,
            CipherKind::Aes192 => 24,
            CipherKind::Aes256 => 32,
        }
    }

    /// Block size in bytes, which is also the IV size.
    pub fn block_size(self) -> usize {
        match self {
            CipherKind::Des | CipherKind::TripleDes => 8,
            CipherKind::Aes128 | CipherKind::Aes192 | CipherKind::Aes256 => 16,
        }
    }
}

/// The expanded key schedule of one cipher (zeroized on drop by the crates).
///
/// Boxed: the enum would otherwise be as large as its largest variant (AES-256 with
/// the software fallback, about 1 KiB) for every ISAKMP SA a gateway holds.
enum Schedule {
    Des(Box<des::Des>),
    TripleDes(Box<des::TdesEde3>),
    Aes128(Box<aes::Aes128>),
    Aes192(Box<aes::Aes192>),
    Aes256(Box<aes::Aes256>),
}

/// A keyed CBC cipher. Immutable after construction, so one instance can be
/// shared between threads; each call takes its own IV.
pub struct Cipher {
    kind: CipherKind,
    schedule: Schedule,
}

impl core::fmt::Debug for Cipher {
    /// Never prints key material.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cipher").field("kind", &self.kind).finish_non_exhaustive()
    }
}

fn schedule<C: KeyInit>(key: &[u8]) -> Result<C, CipherError> {
    C::new_from_slice(key).map_err(|_| CipherError::KeySize("key length does not match the cipher"))
}

/// CBC encryption in place over whole blocks: C_i = E(P_i xor C_{i-1}), C_0 = IV.
fn cbc_encrypt<C: BlockEncrypt>(cipher: &C, iv: &[u8], data: &mut [u8]) {
    let size = <C as BlockSizeUser>::block_size();
    let mut previous = GenericArray::<u8, C::BlockSize>::clone_from_slice(iv);
    for chunk in data.chunks_exact_mut(size) {
        for (byte, chain) in chunk.iter_mut().zip(previous.iter()) {
            *byte ^= chain;
        }
        let block = GenericArray::from_mut_slice(chunk);
        cipher.encrypt_block(block);
        previous.copy_from_slice(block);
    }
}

/// CBC decryption in place over whole blocks: P_i = D(C_i) xor C_{i-1}, C_0 = IV.
fn cbc_decrypt<C: BlockDecrypt>(cipher: &C, iv: &[u8], data: &mut [u8]) {
    let size = <C as BlockSizeUser>::block_size();
    let mut previous = GenericArray::<u8, C::BlockSize>::clone_from_slice(iv);
    let mut saved = previous.clone();
    for chunk in data.chunks_exact_mut(size) {
        saved.copy_from_slice(chunk);
        let block = GenericArray::from_mut_slice(chunk);
        cipher.decrypt_block(block);
        for (byte, chain) in block.iter_mut().zip(previous.iter()) {
            *byte ^= chain;
        }
        core::mem::swap(&mut previous, &mut saved);
    }
}

impl Cipher {
    /// Makes a cipher from its name (see [`CipherKind::from_name`]) and key.
    ///
    /// Errors: [`CipherError::UnknownCipher`], [`CipherError::KeySize`].
    pub fn new(name: &str, key: &[u8]) -> Result<Self, CipherError> {
        Self::with_kind(CipherKind::from_name(name)?, key)
    }

    /// Makes a cipher of a known kind; the key must be exactly `kind.key_size()` bytes.
    pub fn with_kind(kind: CipherKind, key: &[u8]) -> Result<Self, CipherError> {
        if key.len() != kind.key_size() {
            return Err(CipherError::KeySize("key length does not match the cipher"));
        }
        let schedule = match kind {
            CipherKind::Des => Schedule::Des(Box::new(schedule(key)?)),
            CipherKind::TripleDes => Schedule::TripleDes(Box::new(schedule(key)?)),
            CipherKind::Aes128 => Schedule::Aes128(Box::new(schedule(key)?)),
            CipherKind::Aes192 => Schedule::Aes192(Box::new(schedule(key)?)),
            CipherKind::Aes256 => Schedule::Aes256(Box::new(schedule(key)?)),
        };
        Ok(Cipher { kind, schedule })
    }

    /// The cipher's kind.
    pub fn kind(&self) -> CipherKind {
        self.kind
    }

    fn check_iv(&self, iv: &[u8]) -> Result<(), CipherError> {
        if iv.len() == self.kind.block_size() {
            Ok(())
        } else {
            Err(CipherError::IvSize("the IV must be exactly one block"))
        }
    }

    /// CBC-encrypts whole blocks of `data` with `iv`; the output has the input's length.
    ///
    /// Errors: [`CipherError::IvSize`], [`CipherError::PlaintextLength`].
    pub fn encrypt(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>, CipherError> {
        self.check_iv(iv)?;
        if data.len() % self.kind.block_size() != 0 {
            return Err(CipherError::PlaintextLength("pad the plaintext to the block size"));
        }
        let mut out = data.to_vec();
        match &self.schedule {
            Schedule::Des(c) => cbc_encrypt(&**c, iv, &mut out),
            Schedule::TripleDes(c) => cbc_encrypt(&**c, iv, &mut out),
            Schedule::Aes128(c) => cbc_encrypt(&**c, iv, &mut out),
            Schedule::Aes192(c) => cbc_encrypt(&**c, iv, &mut out),
            Schedule::Aes256(c) => cbc_encrypt(&**c, iv, &mut out),
        }
        Ok(out)
    }

    /// CBC-decrypts whole blocks of `data` with `iv`; the output has the input's length.
    ///
    /// A wrong key is not detected here (CBC has no integrity): the caller finds
    /// garbage when it parses the plaintext or checks the HASH payload.
    ///
    /// Errors: [`CipherError::IvSize`], [`CipherError::CiphertextLength`].
    pub fn decrypt(&self, iv: &[u8], data: &[u8]) -> Result<Vec<u8>, CipherError> {
        self.check_iv(iv)?;
        if data.len() % self.kind.block_size() != 0 {
            return Err(CipherError::CiphertextLength("encrypted payloads must be whole blocks"));
        }
        let mut out = data.to_vec();
        match &self.schedule {
            Schedule::Des(c) => cbc_decrypt(&**c, iv, &mut out),
            Schedule::TripleDes(c) => cbc_decrypt(&**c, iv, &mut out),
            Schedule::Aes128(c) => cbc_decrypt(&**c, iv, &mut out),
            Schedule::Aes192(c) => cbc_decrypt(&**c, iv, &mut out),
            Schedule::Aes256(c) => cbc_decrypt(&**c, iv, &mut out),
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn aes128_cbc_nist_sp800_38a_f21() {
        // NIST SP 800-38A appendix F.2.1, CBC-AES128.Encrypt, all four blocks.
        let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let iv = hex("000102030405060708090a0b0c0d0e0f");
        let pt = hex(concat!(
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52ef",
            "f69f2445df4f9b17ad2b417be66c3710"
        ));
        let ct = hex(concat!(
            "7649abac8119b246cee98e9b12e9197d",
            "5086cb9b507219ee95db113a917678b2",
            "73bed6b8e3c1743b7116e69e22229516",
            "3ff1caa1681fac09120eca307586e1a7"
        ));
        let c = Cipher::new("aes128-cbc", &key).unwrap();
        assert_eq!(c.encrypt(&iv, &pt).unwrap(), ct);
        assert_eq!(c.decrypt(&iv, &ct).unwrap(), pt);
    }

    #[test]
    fn aes256_cbc_nist_sp800_38a_f25() {
        // NIST SP 800-38A appendix F.2.5, CBC-AES256.Encrypt, first two blocks.
        let key = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let iv = hex("000102030405060708090a0b0c0d0e0f");
        let pt = hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        let ct = hex("f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d");
        let c = Cipher::new("aes256-cbc", &key).unwrap();
        assert_eq!(c.encrypt(&iv, &pt).unwrap(), ct);
        assert_eq!(c.decrypt(&iv, &ct).unwrap(), pt);
    }

    #[test]
    fn des_fips81_cbc_example() {
        // FIPS 81 appendix C, table C1: CBC with key 0123456789abcdef,
        // IV 1234567890abcdef, "Now is the time for all ".
        let key = hex("0123456789abcdef");
        let iv = hex("1234567890abcdef");
        let pt = b"Now is the time for all ";
        let ct = hex("e5c7cdde872bf27c43e934008c389c0f683788499a7c05f6");
        let c = Cipher::new("des-cbc", &key).unwrap();
        assert_eq!(c.encrypt(&iv, pt).unwrap(), ct);
        assert_eq!(c.decrypt(&iv, &ct).unwrap(), pt.to_vec());
    }

    #[test]
    fn triple_des_with_equal_keys_is_single_des() {
        // EDE with K1 = K2 = K3 collapses to single DES: an independent cross-check.
        let k = hex("0123456789abcdef");
        let key3: Vec<u8> = [k.clone(), k.clone(), k.clone()].concat();
        let iv = hex("1234567890abcdef");
        let pt = b"Now is the time for all ";
        let single = Cipher::new("des-cbc", &k).unwrap().encrypt(&iv, pt).unwrap();
        let triple = Cipher::new("3des-cbc", &key3).unwrap().encrypt(&iv, pt).unwrap();
        assert_eq!(single, triple);
    }

    #[test]
    fn key_schedules_zeroize_on_drop() {
        // Compile-time proof that the crates' `zeroize` feature is on: every key
        // schedule held by `Schedule` wipes itself when dropped.
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        wiped::<des::Des>();
        wiped::<des::TdesEde3>();
        wiped::<aes::Aes128>();
        wiped::<aes::Aes192>();
        wiped::<aes::Aes256>();
    }

    #[test]
    fn sizes_and_errors() {
        for kind in CipherKind::ALL {
            assert_eq!(CipherKind::from_name(kind.name()).unwrap(), kind);
            let key = vec![0x5a; kind.key_size()];
            let c = Cipher::with_kind(kind, &key).unwrap();
            let bs = kind.block_size();
            let iv = vec![1u8; bs];
            assert!(matches!(c.encrypt(&iv, &[0u8; 3]), Err(CipherError::PlaintextLength(_))));
            assert!(matches!(c.decrypt(&iv, &vec![0u8; bs + 1]), Err(CipherError::CiphertextLength(_))));
            assert!(matches!(c.encrypt(&iv[1..], &[]), Err(CipherError::IvSize(_))));
            assert_eq!(c.encrypt(&iv, &[]).unwrap(), Vec::<u8>::new());
            assert!(matches!(Cipher::with_kind(kind, &key[1..]), Err(CipherError::KeySize(_))));
            let data: Vec<u8> = (0..(4 * bs) as u8).collect();
            let ct = c.encrypt(&iv, &data).unwrap();
            assert_ne!(ct, data);
            assert_eq!(c.decrypt(&iv, &ct).unwrap(), data);
            // CBC property: the last ciphertext block is the next message's IV.
            let tail = c.encrypt(&ct[ct.len() - bs..], &data).unwrap();
            let whole = c.encrypt(&iv, &[data.clone(), data.clone()].concat()).unwrap();
            assert_eq!(&whole[data.len()..], &tail[..]);
        }
        assert!(matches!(Cipher::new("rc5", &[0; 16]), Err(CipherError::UnknownCipher(_))));
        let dbg = format!("{:?}", Cipher::new("aes128-cbc", &[0x77; 16]).unwrap());
        assert!(!dbg.contains("77"), "Debug must not print key material: {dbg}");
    }
}
