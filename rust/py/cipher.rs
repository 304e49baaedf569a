//! Python wrappers for `crate::crypto::cipher` (the `Cipher` class) and
//! `crate::crypto::prf` (the `prf` function, HMAC for the IKEv1 key schedule, and
//! `skeyid_family` and `prf_expand`, its chains for SKEYID_d/a/e and KEYMAT).
//!
//! Messages are a few hundred bytes, so the GIL is kept: releasing and
//! re-acquiring it would cost more than the encryption itself.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::crypto::cipher::Cipher;
use crate::crypto::prf::{prf as hmac_prf, prf_expand as hmac_prf_expand, skeyid_family as hmac_skeyid_family, HashKind};

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

/// KEYMAT expansion (RFC 2409 section 5.5): `K1 | K2 | ...` cut to `length` bytes with
/// `K1 = prf(key, data)`, `Kn = prf(key, Kn-1 | data)`. Raises CryptoError for another hash
/// name or more than 4096 bytes.
#[pyfunction]
fn prf_expand<'py>(
    py: Python<'py>,
    hash_name: &str,
    key: &[u8],
    data: &[u8],
    length: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let out = hmac_prf_expand(HashKind::from_name(hash_name)?, key, data, length)?;
    Ok(PyBytes::new(py, &out))
}

/// (SKEYID_d, SKEYID_a, SKEYID_e) from SKEYID, g^xy and the cookies (RFC 2409 section 5),
/// three chained prf calls in one. Raises CryptoError for another hash name.
#[pyfunction]
fn skeyid_family<'py>(
    py: Python<'py>,
    hash_name: &str,
    skeyid: &[u8],
    g_xy: &[u8],
    cky_i: &[u8],
    cky_r: &[u8],
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let [d, a, e] = hmac_skeyid_family(HashKind::from_name(hash_name)?, skeyid, g_xy, cky_i, cky_r);
    Ok((PyBytes::new(py, &d), PyBytes::new(py, &a), PyBytes::new(py, &e)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCipher>()?;
    m.add_function(wrap_pyfunction!(prf, m)?)?;
    m.add_function(wrap_pyfunction!(prf_expand, m)?)?;
    m.add_function(wrap_pyfunction!(skeyid_family, m)?)?;
    Ok(())
}
