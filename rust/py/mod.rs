//! The only pyo3 code: registers the `ikecore._core` extension module.

use pyo3::prelude::*;

mod cipher;
mod cookies;
mod crypto;
mod errors;
mod esp;
mod express;
mod rows;
mod frontdoor;
mod wire;
mod xfrm;

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    wire::register(m)?;
    crypto::register(m)?;
    cookies::register(m)?;
    cipher::register(m)?;
    rows::register(m)?;
    frontdoor::register(m)?;
    esp::register(m)?;
    express::register(m)?;
    xfrm::register(m)?;
    Ok(())
}
