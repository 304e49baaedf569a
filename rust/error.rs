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
