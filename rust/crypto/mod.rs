//! Diffie-Hellman groups and payload ciphers.
