//! The single mapping from the Rust core's error enums to `ikecore.errors`.
//!
//! Every Python exception raised by the extension is one of the classes defined in
//! `python/ikecore/errors.py` (imported here, never defined in Rust), so each carries
//! the Notify type a responder answers with.

use pyo3::exceptions::PyValueError;
use pyo3::import_exception;
use pyo3::PyErr;

use crate::error::{CipherError, CookieError, DhError, PrfError, WireError};

import_exception!(ikecore.errors, PayloadMalformed);
import_exception!(ikecore.errors, UnequalPayloadLengths);
import_exception!(ikecore.errors, InvalidMajorVersion);
import_exception!(ikecore.errors, InvalidKeyInformation);
import_exception!(ikecore.errors, InvalidCookie);
import_exception!(ikecore.errors, CryptoError);

// --- wire ---------------------------------------------------------------------

impl From<WireError> for PyErr {
    fn from(err: WireError) -> PyErr {
        let message = err.to_string();
        match err {
            WireError::Malformed { .. } => PayloadMalformed::new_err(message),
            WireError::UnequalLengths { .. } => UnequalPayloadLengths::new_err(message),
            WireError::InvalidMajorVersion { .. } => InvalidMajorVersion::new_err(message),
            WireError::Invalid { .. } => PyValueError::new_err(message),
        }
    }
}

// --- crypto: Diffie-Hellman ---------------------------------------------------

impl From<DhError> for PyErr {
    fn from(err: DhError) -> PyErr {
        let message = err.to_string();
        match err {
            DhError::InvalidPeerValue(_) => InvalidKeyInformation::new_err(message),
            DhError::UnknownGroup(_) | DhError::InvalidPrivateValue(_) => PyValueError::new_err(message),
            DhError::Consumed | DhError::Backend(_) => CryptoError::new_err(message),
        }
    }
}

// --- crypto: payload ciphers and prf ------------------------------------------

impl From<CipherError> for PyErr {
    /// Local misuse (unknown cipher, key or IV size, unpadded plaintext) is a
    /// CryptoError; ciphertext that is not whole blocks came from the peer and is
    /// PAYLOAD-MALFORMED.
    fn from(err: CipherError) -> PyErr {
        let message = err.to_string();
        match err {
            CipherError::CiphertextLength(_) => PayloadMalformed::new_err(message),
            CipherError::UnknownCipher(_)
            | CipherError::KeySize(_)
            | CipherError::IvSize(_)
            | CipherError::PlaintextLength(_) => CryptoError::new_err(message),
        }
    }
}

impl From<PrfError> for PyErr {
    /// An unknown hash name is local misuse: CryptoError.
    fn from(err: PrfError) -> PyErr {
        CryptoError::new_err(err.to_string())
    }
}

// --- cookie table -------------------------------------------------------------

impl From<CookieError> for PyErr {
    /// Cookies of the wrong size are INVALID-COOKIE, a datagram too short for the
    /// ISAKMP header is PAYLOAD-MALFORMED, a failing OS generator is a CryptoError.
    fn from(err: CookieError) -> PyErr {
        let message = err.to_string();
        match err {
            CookieError::CookieLength(_) => InvalidCookie::new_err(message),
            CookieError::ShortDatagram(_) => PayloadMalformed::new_err(message),
            CookieError::Random(_) => CryptoError::new_err(message),
        }
    }
}
