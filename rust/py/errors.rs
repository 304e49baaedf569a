//! The single mapping from the Rust core's error enums to `ikecore.errors`.

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
