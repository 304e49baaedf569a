//! Error enums of the pure Rust core, one per area, with static context and no
//! Python inside. `py/errors.rs` maps each of them to `ikecore.errors` exactly once.
