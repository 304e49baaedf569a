//! The single mapping from the Rust core's error enums to `ikecore.errors`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

// --- crypto: Diffie-Hellman -----------------------------------------------------

pyo3::import_exception!(ikecore.errors, InvalidKeyInformation);
pyo3::import_exception!(ikecore.errors, CryptoError);

impl From<crate::error::DhError> for PyErr {
    fn from(e: crate::error::DhError) -> PyErr {
        use crate::error::DhError;
        let msg = e.to_string();
        match e {
            DhError::InvalidPeerValue(_) => InvalidKeyInformation::new_err(msg),
            DhError::UnknownGroup(_) | DhError::InvalidPrivateValue(_) => PyValueError::new_err(msg),
            DhError::Consumed | DhError::Backend(_) => CryptoError::new_err(msg),
        }
    }
}
