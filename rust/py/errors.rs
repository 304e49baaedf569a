//! The single mapping from the Rust core's error enums to `ikecore.errors`.

// --- keymat helper: payload ciphers and the cookie table ---------------------------

mod cipher_cookie_exceptions {
    pyo3::import_exception!(ikecore.errors, CryptoError);
    pyo3::import_exception!(ikecore.errors, PayloadMalformed);
    pyo3::import_exception!(ikecore.errors, InvalidCookie);
}

impl From<crate::error::CipherError> for pyo3::PyErr {
    /// Local misuse (unknown cipher, key or IV size, unpadded plaintext) is a
    /// CryptoError; ciphertext that is not whole blocks came from the peer and is
    /// PAYLOAD-MALFORMED.
    fn from(err: crate::error::CipherError) -> Self {
        use crate::error::CipherError as E;
        use cipher_cookie_exceptions as X;
        let message = err.to_string();
        match err {
            E::CiphertextLength(_) => X::PayloadMalformed::new_err(message),
            E::UnknownCipher(_) | E::KeySize(_) | E::IvSize(_) | E::PlaintextLength(_) => {
                X::CryptoError::new_err(message)
            }
        }
    }
}

impl From<crate::error::CookieError> for pyo3::PyErr {
    /// Cookies of the wrong size are INVALID-COOKIE, a datagram too short for the
    /// ISAKMP header is PAYLOAD-MALFORMED, a failing OS generator is a CryptoError.
    fn from(err: crate::error::CookieError) -> Self {
        use crate::error::CookieError as E;
        use cipher_cookie_exceptions as X;
        let message = err.to_string();
        match err {
            E::CookieLength(_) => X::InvalidCookie::new_err(message),
            E::ShortDatagram(_) => X::PayloadMalformed::new_err(message),
            E::Random(_) => X::CryptoError::new_err(message),
        }
    }
}

impl From<crate::error::PrfError> for pyo3::PyErr {
    /// An unknown hash name is local misuse: CryptoError.
    fn from(err: crate::error::PrfError) -> Self {
        cipher_cookie_exceptions::CryptoError::new_err(err.to_string())
    }
}

use pyo3::exceptions::PyValueError;
use pyo3::import_exception;
use pyo3::PyErr;

use crate::error::WireError;

// --- wire ---------------------------------------------------------------------

import_exception!(ikecore.errors, PayloadMalformed);
import_exception!(ikecore.errors, UnequalPayloadLengths);
import_exception!(ikecore.errors, InvalidMajorVersion);

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
