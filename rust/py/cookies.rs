//! Python wrappers for `crate::cookies`: the `CookieTable` class.
//!
//! The table sits behind a mutex (the module declares `gil_used = false`); every
//! method holds the lock only for one map operation, so the GIL is never released
//! around it.

use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::cookies::{cookie, CookieTable};

/// (CKY-I, CKY-R) -> SA handle table with half-open entries (CKY-R all zero),
/// first-message retransmit detection and keyed responder cookies.
#[pyclass(name = "CookieTable", module = "ikecore._core", frozen)]
pub struct PyCookieTable {
    inner: Mutex<CookieTable>,
}

impl PyCookieTable {
    /// The table, even if a panicking thread poisoned the lock (the maps stay valid:
    /// no method leaves them half-updated).
    pub(crate) fn table(&self) -> MutexGuard<'_, CookieTable> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl PyCookieTable {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(PyCookieTable { inner: Mutex::new(CookieTable::new()?) })
    }

    /// Maps (cky_i, cky_r) to handle; an all-zero cky_r makes a half-open entry.
    fn insert(&self, cky_i: &[u8], cky_r: &[u8], handle: u64) -> PyResult<()> {
        let (i, r) = (cookie(cky_i, "cky_i")?, cookie(cky_r, "cky_r")?);
        self.table().insert(&i, &r, handle);
        Ok(())
    }

    /// The handle of exactly this cookie pair, or None.
    fn get(&self, cky_i: &[u8], cky_r: &[u8]) -> PyResult<Option<u64>> {
        let (i, r) = (cookie(cky_i, "cky_i")?, cookie(cky_r, "cky_r")?);
        Ok(self.table().get(&i, &r))
    }

    /// The handle for an ISAKMP datagram: its cookie pair, else the half-open
    /// (CKY-I, 0) entry, else None. Raises PayloadMalformed below 16 bytes.
    fn lookup(&self, datagram: &[u8]) -> PyResult<Option<u64>> {
        Ok(self.table().lookup(datagram)?)
    }

    /// Replaces the half-open (cky_i, 0) entry by (cky_i, cky_r) -> handle.
    fn promote(&self, cky_i: &[u8], cky_r: &[u8], handle: u64) -> PyResult<()> {
        let (i, r) = (cookie(cky_i, "cky_i")?, cookie(cky_r, "cky_r")?);
        self.table().promote(&i, &r, handle);
        Ok(())
    }

    /// Removes an entry; True when it existed.
    fn remove(&self, cky_i: &[u8], cky_r: &[u8]) -> PyResult<bool> {
        let (i, r) = (cookie(cky_i, "cky_i")?, cookie(cky_r, "cky_r")?);
        Ok(self.table().remove(&i, &r))
    }

    fn __len__(&self) -> usize {
        self.table().len()
    }

    /// Number of half-open entries.
    #[getter]
    fn half_open(&self) -> usize {
        self.table().half_open()
    }

    /// Number of remembered first messages.
    #[getter]
    fn first_count(&self) -> usize {
        self.table().first_count()
    }

    /// Estimated heap bytes of the table's maps.
    #[getter]
    fn memory_bytes(&self) -> usize {
        self.table().memory_bytes()
    }

    /// Remembers that first message `datagram` from `source` (address and port
    /// bytes) created SA `handle`; stores only a keyed hash.
    fn remember_first(&self, source: &[u8], datagram: &[u8], handle: u64) {
        self.table().remember_first(source, datagram, handle);
    }

    /// The SA created by an identical first message from the same source, or None.
    fn find_first(&self, source: &[u8], datagram: &[u8]) -> Option<u64> {
        self.table().find_first(source, datagram)
    }

    /// Forgets a remembered first message; True when it was known.
    fn forget_first(&self, source: &[u8], datagram: &[u8]) -> bool {
        self.table().forget_first(source, datagram)
    }

    /// A fresh, unique, never all-zero 8-byte responder cookie for peer and local
    /// address|port bytes (RFC 2408 section 2.5.3).
    fn make_cookie<'py>(&self, py: Python<'py>, peer: &[u8], local: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let c = self.table().make_cookie(peer, local)?;
        Ok(PyBytes::new(py, &c))
    }

    /// Replaces the cookie secret with fresh random bytes.
    fn rotate_secret(&self) -> PyResult<()> {
        Ok(self.table().rotate_secret()?)
    }

    fn __repr__(&self) -> String {
        let t = self.table();
        format!("CookieTable(len={}, half_open={})", t.len(), t.half_open())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCookieTable>()?;
    Ok(())
}
