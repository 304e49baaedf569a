//! Python wrappers for `crate::crypto::cipher` (the `Cipher` class) and
//! `crate::crypto::prf` (the `prf` function, HMAC for the IKEv1 key schedule).
//!
//! Messages are a few hundred bytes, so the GIL is kept: releasing and
//! re-acquiring it would cost more than the encryption itself.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::crypto::cipher::Cipher;
use crate::crypto::prf::{prf as hmac_prf, HashKind};

/// A keyed CBC payload cipher: `Cipher(name, key)` with name one of `des-cbc`,
/// `3des-cbc`, `aes128-cbc`, `aes192-cbc`, `aes256-cbc`. No padding is applied:
/// data must be whole blocks. The key schedule is zeroized when the object dies
/// and never appears in its repr.
#[pyclass(name = "Cipher", module = "ikecore._core", frozen)]
pub struct PyCipher {
    inner: Cipher,
}

#[pymethods]
impl PyCipher {
    #[new]
    fn new(name: &str, key: &[u8]) -> PyResult<Self> {
        Ok(PyCipher { inner: Cipher::new(name, key)? })
    }

    /// The cipher's name.
    #[getter]
    fn name(&self) -> &'static str {
        self.inner.kind().name()
    }

    /// Block (and IV) size in bytes.
    #[getter]
    fn block_size(&self) -> usize {
        self.inner.kind().block_size()
    }

    /// Key size in bytes.
    #[getter]
    fn key_size(&self) -> usize {
        self.inner.kind().key_size()
    }

    /// CBC-encrypts whole blocks; raises CryptoError for a wrong IV size or a
    /// length that is not a multiple of the block size.
    fn encrypt<'py>(&self, py: Python<'py>, iv: &[u8], data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let out = self.inner.encrypt(iv, data)?;
        Ok(PyBytes::new(py, &out))
    }

    /// CBC-decrypts whole blocks; raises PayloadMalformed when the ciphertext is
    /// not whole blocks and CryptoError for a wrong IV size.
    fn decrypt<'py>(&self, py: Python<'py>, iv: &[u8], data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let out = self.inner.decrypt(iv, data)?;
        Ok(PyBytes::new(py, &out))
    }

    fn __repr__(&self) -> String {
        format!("Cipher({:?})", self.inner.kind().name())
    }
}

/// HMAC of `data` under `key` with `hash_name` (md5, sha1, sha256, sha384,
/// sha512): the IKEv1 prf. Raises CryptoError for another hash name.
#[pyfunction]
fn prf<'py>(py: Python<'py>, hash_name: &str, key: &[u8], data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let out = hmac_prf(HashKind::from_name(hash_name)?, key, data);
    Ok(PyBytes::new(py, &out))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCipher>()?;
    m.add_function(wrap_pyfunction!(prf, m)?)?;
    Ok(())
}
