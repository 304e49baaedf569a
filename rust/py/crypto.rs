//! Python wrappers for `crate::crypto`: Diffie-Hellman key pairs.
//!
//! Every modexp and point multiplication runs with the GIL released
//! (`py.detach`), so a thread pool of Python threads scales over cores.

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt};

use crate::crypto::dh::{self, KeyPair};
use crate::crypto::groups::{self, Kind};
use crate::error::DhError;

/// Python int to a supported group number; any other int (negative, huge,
/// unassigned) is a ValueError naming it.
fn group_id(group: &Bound<'_, PyInt>) -> PyResult<u16> {
    group
        .extract::<u16>()
        .ok()
        .filter(|g| groups::spec(*g).is_ok())
        .ok_or_else(|| PyValueError::new_err(format!("unsupported Diffie-Hellman group {group}")))
}

/// A single-use Diffie-Hellman key pair (see `ikecore.dh`).
#[pyclass(frozen, name = "DhKeyPair", module = "ikecore._core")]
pub struct PyDhKeyPair {
    group: u16,
    public: Vec<u8>,
    inner: Mutex<Option<KeyPair>>,
}

#[pymethods]
impl PyDhKeyPair {
    /// IKE group number.
    #[getter]
    fn group(&self) -> u16 {
        self.group
    }

    /// Public value: the KE payload data, left-padded to the group size.
    #[getter]
    fn public<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.public)
    }

    /// Validate `peer_public` and return g^xy, left-padded. Single use: a second
    /// call raises CryptoError.
    fn exchange<'py>(&self, py: Python<'py>, peer_public: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let kp = self
            .inner
            .lock()
            .map_err(|_| DhError::Backend("key pair lock poisoned"))?
            .take()
            .ok_or(DhError::Consumed)?;
        let secret = py.detach(move || kp.complete(peer_public))?;
        Ok(PyBytes::new(py, &secret))
    }

    /// True once `exchange` has been called.
    #[getter]
    fn used(&self) -> PyResult<bool> {
        Ok(self
            .inner
            .lock()
            .map_err(|_| DhError::Backend("key pair lock poisoned"))?
            .is_none())
    }

    fn __repr__(&self) -> String {
        let name = groups::spec(self.group).map(|g| g.name).unwrap_or("?");
        format!("<DhKeyPair group={} ({name})>", self.group)
    }
}

/// New key pair for `group`; `private` (big-endian) only for known-answer tests.
#[pyfunction]
#[pyo3(signature = (group, private=None))]
fn dh_keypair(py: Python<'_>, group: &Bound<'_, PyInt>, private: Option<&[u8]>) -> PyResult<PyDhKeyPair> {
    let id = group_id(group)?;
    let kp = py.detach(move || match private {
        Some(x) => dh::start_with_private(id, x),
        None => dh::start(id),
    })?;
    Ok(PyDhKeyPair {
        group: id,
        public: kp.public().to_vec(),
        inner: Mutex::new(Some(kp)),
    })
}

/// One side of a handshake in one GIL-free call: (our public value, g^xy).
#[pyfunction]
fn dh_one_side<'py>(
    py: Python<'py>,
    group: &Bound<'_, PyInt>,
    peer_public: &[u8],
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let id = group_id(group)?;
    let (public, secret) = py.detach(move || dh::one_side(id, peer_public))?;
    Ok((PyBytes::new(py, &public), PyBytes::new(py, &secret)))
}

/// Group numbers of every supported group, ascending.
#[pyfunction]
fn dh_supported_groups() -> Vec<u16> {
    dh::supported_groups().collect()
}

/// Length of the public value (KE payload data) in bytes.
#[pyfunction]
fn dh_public_size(group: &Bound<'_, PyInt>) -> PyResult<usize> {
    Ok(groups::spec(group_id(group)?)?.public_size())
}

/// Length of the shared secret in bytes.
#[pyfunction]
fn dh_secret_size(group: &Bound<'_, PyInt>) -> PyResult<usize> {
    Ok(groups::spec(group_id(group)?)?.secret_size())
}

/// strongSwan name of a group (`modp2048`, `ecp256`, ...).
#[pyfunction]
fn dh_group_name(group: &Bound<'_, PyInt>) -> PyResult<&'static str> {
    Ok(groups::spec(group_id(group)?)?.name)
}

/// Group number for a strongSwan name, or None.
#[pyfunction]
fn dh_group_from_name(name: &str) -> Option<u16> {
    groups::from_name(name)
}

/// (prime, generator, subgroup order or None), big-endian bytes.
type ModpParams = (Py<PyBytes>, Py<PyBytes>, Option<Py<PyBytes>>);

/// (prime, generator, subgroup order or None) of a MODP group, big-endian.
#[pyfunction]
fn dh_modp_params(py: Python<'_>, group: &Bound<'_, PyInt>) -> PyResult<ModpParams> {
    let spec = groups::spec(group_id(group)?)?;
    let Kind::Modp {
        prime_hex,
        generator_hex,
        order_hex,
        ..
    } = spec.kind
    else {
        return Err(PyValueError::new_err(format!(
            "group {} is not a MODP group",
            spec.id
        )));
    };
    let bytes = |h: &str| -> PyResult<Py<PyBytes>> {
        let b = groups::hex_to_bytes(h).ok_or(DhError::Backend("bad group table constant"))?;
        Ok(PyBytes::new(py, &b).unbind())
    };
    let q = match order_hex {
        Some(h) => Some(bytes(h)?),
        None => None,
    };
    Ok((bytes(prime_hex)?, bytes(generator_hex)?, q))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDhKeyPair>()?;
    m.add_function(wrap_pyfunction!(dh_keypair, m)?)?;
    m.add_function(wrap_pyfunction!(dh_one_side, m)?)?;
    m.add_function(wrap_pyfunction!(dh_supported_groups, m)?)?;
    m.add_function(wrap_pyfunction!(dh_public_size, m)?)?;
    m.add_function(wrap_pyfunction!(dh_secret_size, m)?)?;
    m.add_function(wrap_pyfunction!(dh_group_name, m)?)?;
    m.add_function(wrap_pyfunction!(dh_group_from_name, m)?)?;
    m.add_function(wrap_pyfunction!(dh_modp_params, m)?)?;
    Ok(())
}
