//! Error enums of the pure Rust core, one per area, with static context and no
//! Python inside. `py/errors.rs` maps each of them to `ikecore.errors` exactly once.

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
