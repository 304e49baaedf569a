//! Error enums of the pure Rust core, one per area, with static context and no
//! Python inside. `py/errors.rs` maps each of them to `ikecore.errors` exactly once.

use core::fmt;


// --- wire -------------------------------------------------------------------

/// Errors of the ISAKMP codec (`crate::wire`).
///
/// Every variant names the payload (or structure) and the field at fault with
/// static strings, so that a peer's bad bytes produce a one-line reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Layout error in received bytes: answered with PAYLOAD-MALFORMED (16).
    Malformed {
        /// payload or structure, e.g. "SA", "proposal", "header"
        payload: &'static str,
        /// field, e.g. "payload length"
        field: &'static str,
        /// what is wrong, e.g. "runs past the message end"
        problem: &'static str,
    },
    /// The header Length differs from the datagram size: UNEQUAL-PAYLOAD-LENGTHS (30).
    UnequalLengths {
        /// Length field of the ISAKMP header
        declared: u32,
        /// bytes actually received
        actual: usize,
    },
    /// Major version other than 1: INVALID-MAJOR-VERSION (5).
    InvalidMajorVersion {
        /// the whole version octet (major << 4 | minor)
        version: u8,
    },
    /// A value handed to an encoder cannot be represented (caller error, ValueError).
    Invalid {
        /// item being encoded, e.g. "Attribute"
        item: &'static str,
        /// field, e.g. "value"
        field: &'static str,
        /// what is wrong
        problem: &'static str,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Malformed { payload, field, problem } => match *payload {
                "header" => write!(f, "ISAKMP header: {field} {problem}"),
                "message" | "proposal" | "transform" | "attribute" => write!(f, "{payload}: {field} {problem}"),
                _ => write!(f, "{payload} payload: {field} {problem}"),
            },
            WireError::UnequalLengths { declared, actual } => write!(
                f,
                "ISAKMP header Length is {declared} but the datagram has {actual} bytes"
            ),
            WireError::InvalidMajorVersion { version } => write!(
                f,
                "ISAKMP major version {} is not supported (version octet {version:#04x})",
                version >> 4
            ),
            WireError::Invalid { item, field, problem } => write!(f, "{item}: {field} {problem}"),
        }
    }
}

impl std::error::Error for WireError {}

// --- crypto: Diffie-Hellman (rust/crypto/dh.rs) --------------------------------

/// Why a Diffie-Hellman operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhError {
    /// The group number is not in `crypto::groups::GROUPS`.
    UnknownGroup(u16),
    /// The peer's public value is unacceptable (wrong length, out of range,
    /// not on the curve, not in the subgroup): INVALID-KEY-INFORMATION.
    InvalidPeerValue(&'static str),
    /// A caller-supplied private value (known-answer tests) is out of range.
    InvalidPrivateValue(&'static str),
    /// The key pair was already used for an exchange (single use).
    Consumed,
    /// The OS random source or OpenSSL failed.
    Backend(&'static str),
}

impl core::fmt::Display for DhError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DhError::UnknownGroup(id) => write!(f, "unsupported Diffie-Hellman group {id}"),
            DhError::InvalidPeerValue(why) => write!(f, "invalid peer public value: {why}"),
            DhError::InvalidPrivateValue(why) => write!(f, "invalid private value: {why}"),
            DhError::Consumed => write!(f, "key pair already used: a DH key pair is single-use"),
            DhError::Backend(why) => write!(f, "crypto backend failure: {why}"),
        }
    }
}

impl std::error::Error for DhError {}

/// Errors of the payload ciphers (`crypto::cipher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherError {
    /// The cipher name is not one of `des-cbc`, `3des-cbc`, `aes128-cbc`, ...
    UnknownCipher(&'static str),
    /// The key length does not match the cipher (context: what was expected).
    KeySize(&'static str),
    /// The IV is not exactly one block long.
    IvSize(&'static str),
    /// Plaintext handed to `encrypt` is not whole blocks (a local error: pad first).
    PlaintextLength(&'static str),
    /// Ciphertext handed to `decrypt` is not whole blocks (the peer's bytes are malformed).
    CiphertextLength(&'static str),
}

impl core::fmt::Display for CipherError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownCipher(c) => write!(f, "unknown cipher: {c}"),
            Self::KeySize(c) => write!(f, "wrong key size: {c}"),
            Self::IvSize(c) => write!(f, "wrong IV size: {c}"),
            Self::PlaintextLength(c) => write!(f, "plaintext is not whole blocks: {c}"),
            Self::CiphertextLength(c) => write!(f, "ciphertext is not whole blocks: {c}"),
        }
    }
}

impl std::error::Error for CipherError {}

/// Errors of the cookie table (`cookies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    /// A cookie argument is not exactly 8 bytes (context: which one).
    CookieLength(&'static str),
    /// A datagram is too short to hold the two cookies of an ISAKMP header.
    ShortDatagram(&'static str),
    /// The operating system's random generator failed.
    Random(&'static str),
}

impl core::fmt::Display for CookieError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::CookieLength(c) => write!(f, "cookie must be 8 bytes: {c}"),
            Self::ShortDatagram(c) => write!(f, "datagram too short for an ISAKMP header: {c}"),
            Self::Random(c) => write!(f, "OS random generator failed: {c}"),
        }
    }
}

impl std::error::Error for CookieError {}

/// Errors of the IKEv1 prf (`crypto::prf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrfError {
    /// The hash name is not md5, sha1, sha256, sha384 or sha512.
    UnknownHash(&'static str),
    /// More output asked of an expansion than any IKEv1 key needs.
    Length(&'static str),
}

impl core::fmt::Display for PrfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownHash(c) => write!(f, "unknown hash: {c}"),
            Self::Length(c) => write!(f, "prf expansion: {c}"),
        }
    }
}

impl std::error::Error for PrfError {}
