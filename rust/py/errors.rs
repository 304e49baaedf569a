//! The single mapping from the Rust core's error enums to `ikecore.errors`.
