//! Diffie-Hellman groups and payload ciphers.

pub mod dh;
pub mod groups;
mod mont;
mod ossl;
