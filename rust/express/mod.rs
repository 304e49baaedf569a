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

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

/// A time in whole microseconds (the lanes' timer heaps order integers).
fn micros(t: f64) -> u64 {
    if t <= 0.0 { 0 } else { (t * 1e6) as u64 }
}

/// What a lane keeps of the last message received, to know a repeat (the bytes are compared too).
fn digest64(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// Random bytes from the OS CSPRNG (it does not fail on Linux once booted).
fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let _ = getrandom::fill(&mut out);
    out
}

/// An address as NAT-D and ID payloads carry it.
fn ip_bytes(addr: &SocketAddr) -> Vec<u8> {
    match addr.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
