//! Diffie-Hellman groups and payload ciphers.

pub mod cipher;
pub mod prf;

pub mod dh;
pub mod groups;
mod mont;
mod ossl;
