//! Express lanes: whole pre-shared-key Main Mode + Quick Mode negotiations in Rust, for
//! the offers Python has already decided about.
//!
//! The engine (`python/ikecore/engine`) negotiates anything; a lane negotiates one kind
//! of SA, many times, without an interpreter round trip per message. Python builds the
//! lane's `Profile` once from its own policy and message builders (the offer bytes, the
//! suite, the key, the timing) and reads one outcome per phase back. `keys` holds the
//! RFC 2409 formulas, `build` the few payloads a lane writes, `initiator` the load
//! generator's lane, `responder` the gateway's.

pub mod build;
pub mod initiator;
pub mod keys;
pub mod responder;
