//! Diffie-Hellman groups and payload ciphers.

pub mod cipher;
pub mod prf;
