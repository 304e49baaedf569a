//! ikecore's Rust core: the ISAKMP codec (`wire`), Diffie-Hellman and payload
//! ciphers (`crypto`), the cookie table (`cookies`) and the JSON encoding of the
//! monitor's listings (`json_rows`).
//!
//! Everything outside `py/` is plain Rust and builds and tests with `cargo test`
//! and no Python; `py/` (behind the `python` feature) is the only pyo3 code.

pub mod cookies;
pub mod crypto;
pub mod error;
pub mod esp;
pub mod express;
pub mod json_rows;
pub mod frontdoor;
pub mod udpbatch;
pub mod wire;
pub mod xfrm;

#[cfg(feature = "python")]
mod py;
