//! Userland ESP (RFC 4303, tunnel mode; RFC 3948 UDP encapsulation): the data plane
//! of `ikecore.gateway.userland.UserlandDriver`.
//!
//! `crypto` wraps the OpenSSL ciphers and HMACs, `replay` is the anti-replay window,
//! `sa` one SA direction (encapsulation, decapsulation, counters, lifetimes),
//! `dataplane` the TUN device, the raw sockets, the SA tables and their threads,
//! `offload` the TUN device's segmentation and coalescing, `route` the rtnetlink routes.

pub mod crypto;
pub mod dataplane;
pub mod offload;
pub mod replay;
pub mod route;
pub mod sa;
