//! ikecore's ESP algorithm names (`ikecore.policy`: `aes128`, `sha256`, ...) as the
//! kernel's crypto API names them (`cbc(aes)`, `hmac(sha256)`), with the ICV truncation
//! of each HMAC: RFC 2403 (MD5-96), RFC 2404 (SHA1-96), RFC 4868 (SHA-256-128,
//! SHA-384-192, SHA-512-256).

/// An encryption algorithm: kernel name and key length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encryption {
    pub kernel_name: &'static str,
    pub key_bytes: usize,
}

/// An integrity algorithm: kernel name, key length in bytes and ICV length in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Integrity {
    pub kernel_name: &'static str,
    pub key_bytes: usize,
    pub truncation_bits: u32,
}

/// The kernel's name for ESP encryption `name` (`aes128` -> `cbc(aes)`, 16-byte key).
pub fn encryption(name: &str) -> Option<Encryption> {
    let (kernel_name, key_bytes) = match name {
        "aes128" | "aes" => ("cbc(aes)", 16),
        "aes192" => ("cbc(aes)", 24),
        "aes256" => ("cbc(aes)", 32),
        "3des" => ("cbc(des3_ede)", 24),
        "des" => ("cbc(des)", 8),
        "null" => ("ecb(cipher_null)", 0),
        _ => return None,
    };
    Some(Encryption { kernel_name, key_bytes })
}

/// The kernel's name for ESP integrity `name` (`sha256` -> `hmac(sha256)`, ICV 128 bits).
pub fn integrity(name: &str) -> Option<Integrity> {
    let (kernel_name, key_bytes, truncation_bits) = match name {
        "md5" => ("hmac(md5)", 16, 96),
        "sha1" | "sha" => ("hmac(sha1)", 20, 96),
        "sha256" => ("hmac(sha256)", 32, 128),
        "sha384" => ("hmac(sha384)", 48, 192),
        "sha512" => ("hmac(sha512)", 64, 256),
        _ => return None,
    };
    Some(Integrity { kernel_name, key_bytes, truncation_bits })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_truncations_follow_the_rfcs() {
        assert_eq!(encryption("aes128"), Some(Encryption { kernel_name: "cbc(aes)", key_bytes: 16 }));
        assert_eq!(encryption("aes256").unwrap().key_bytes, 32);
        assert_eq!(encryption("3des").unwrap().kernel_name, "cbc(des3_ede)");
        assert_eq!(integrity("sha1").unwrap().truncation_bits, 96); // RFC 2404
        assert_eq!(integrity("sha256").unwrap().truncation_bits, 128); // RFC 4868
        assert_eq!(integrity("sha384").unwrap().truncation_bits, 192);
        assert_eq!(integrity("sha512").unwrap().truncation_bits, 256);
        assert_eq!(integrity("sha512").unwrap().kernel_name, "hmac(sha512)");
        assert!(encryption("rc4").is_none());
        assert!(integrity("crc32").is_none());
    }
}
