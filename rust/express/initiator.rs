//! The initiator lane: many Main Mode + Quick Mode negotiations with pre-shared keys, each
//! from start to its single IPsec SA without Python, for the load generator.
//!
//! Design note
//! -----------
//! ```text
//!
//!     start ──MM1──> ExpectMm2 ──MM3──> ExpectMm4 ──MM5──> ExpectMm6 ──QM1──> ExpectQm2 ──QM3──> Done
//!        (every request retransmitted until answered; any state ──notify/timeout/bad──> Failed)
//! ```
//! Python decides everything once, in the `Profile`: the suite, the pre-shared key, the
//! exact MM1 payload chain (SA offer and vendor IDs, as the engine builds them), the ESP
//! offer of QM1 (plain and UDP-encapsulated per NAT-T variant) and the timing. The lane
//! then runs each negotiation as `python/ikecore/protocol/main_mode.py` and
//! `quick_mode.py` do, byte for byte the same formulas (`keys`), and reports one
//! `Outcome` per phase. What it does not take on (signatures, Aggressive Mode, PFS, several
//! suites, several Quick Modes) the caller gives to the engine instead.
//!
//! Received: a message for an unknown cookie, that does not parse or that fails RFC 2408
//! section 5.2 is dropped, leaving the negotiation as it was (the load generator's report counts
//! what the gateway said, not the noise around it). A
//! repeat of the last message received is ignored, except a repeated QM2, answered with
//! the same QM3. An unprotected error Notify before phase 1 ends it; a protected one (or a
//! Delete of the ISAKMP SA) ends the negotiation it belongs to. A HASH that does not
//! verify or a choice we did not offer fails the negotiation. Nothing here panics on any
//! input, does I/O or reads a clock; randomness comes from `getrandom`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;

use zeroize::Zeroizing;

use super::build::{self, Chain};
use super::{digest64, ip_bytes, micros, random};
use super::keys::{nat_d, same, Phase1, Suite};
use crate::crypto::dh::{self, KeyPair};
use crate::wire::message::parse_message;

const NONCE_SIZE: usize = 32;

/// One NAT-T variant the MM1 offer announces: its vendor ID, its NAT-D payload type and
/// the QM1 SA payload body to send once floated (UDP-encapsulated modes).
#[derive(Debug, Clone)]
pub struct NatVariant {
    pub vendor_id: Vec<u8>,
    pub nat_d: u8,
    pub esp_offer_udp: Vec<u8>,
}

/// What Python decided for every negotiation of the lane.
pub struct Profile {
    pub suite: Suite,
    /// The pre-shared keys a negotiation may use (a load generator gives some peers a
    /// wrong one on purpose); `start` names one by index.
    pub psks: Vec<Zeroizing<Vec<u8>>>,
    /// MM1 after the header: first payload type and the chain (SA first, then vendor IDs).
    pub mm1_first: u8,
    pub mm1_chain: Vec<u8>,
    /// The QM1 SA payload body with a zero SPI at `esp_spi_at` (4 bytes).
    pub esp_offer: Vec<u8>,
    pub esp_spi_at: usize,
    /// KEYMAT bytes per direction (encryption key then integrity key).
    pub keymat_len: usize,
    /// In order of preference; empty: NAT-T off.
    pub nat_variants: Vec<NatVariant>,
    pub natt_port: u16,
    pub retransmit_timeout: f64,
    pub retransmit_backoff: f64,
    pub retransmit_tries: u32,
    pub negotiation_timeout: f64,
}

/// How one phase of one negotiation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Main Mode done (the Quick Mode starts at once).
    Phase1,
    /// Quick Mode done: the negotiation is over.
    Phase2,
    /// Failed in phase 1 (`true`) or 2 (`false`), with the reason.
    Failed(bool, Reason),
    /// A request was sent again (its attempt number).
    Retransmitted(u32),
}

/// Why a negotiation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RetransmitLimit,
    TimedOut,
    /// The peer sent this error Notify.
    Notify(u16),
    /// The peer deleted the ISAKMP SA.
    Deleted,
    /// HASH_R (1) or HASH(2) (2) did not verify.
    Hash(u8),
    /// The responder chose what we did not offer, in phase 1 or 2.
    NotOffered(u8),
    /// The peer's DH value was refused.
    BadKeyExchange,
    /// A message that parsed but lacks what it must carry (its number).
    Malformed(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ExpectMm2,
    ExpectMm4,
    ExpectMm6,
    ExpectQm2,
    Done,
    Failed,
}

struct Negotiation {
    state: State,
    local: SocketAddr,
    remote: SocketAddr,
    cky_i: [u8; 8],
    cky_r: [u8; 8],
    psk: usize,
    last_sent: Vec<u8>,
    last_received: u64,
    retransmits: u32,
    next_retransmit: f64,
    deadline: f64,
    nat: Option<usize>,
    marker: bool,
    dh: Option<KeyPair>,
    g_xi: Vec<u8>,
    g_xr: Vec<u8>,
    ni: Vec<u8>,
    keys: Option<Phase1>,
    message_id: u32,
    qm_iv: Vec<u8>,
    qm_ni: Vec<u8>,
    spi_in: [u8; 4],
}

/// The lane: negotiations by handle, their timers, what to send and what happened.
pub struct Initiator {
    profile: Profile,
    /// The IKE transform we offered (its body after the transform number) and the ESP ones.
    ike_suite: (u8, Vec<(u16, u64)>),
    esp_suites: Vec<(u8, Vec<(u16, u64)>)>,
    sa_b: Vec<u8>,
    negotiations: HashMap<u32, Negotiation>,
    by_cookie: HashMap<[u8; 8], u32>,
    timers: BinaryHeap<Reverse<(u64, u32)>>,
    next_handle: u32,
    pub outgoing: Vec<(Vec<u8>, SocketAddr, SocketAddr)>,
    pub outcomes: Vec<(u32, Outcome, f64)>,
}

/// The error of a profile Python got wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError(pub &'static str);


/// The transforms of an SA payload body with one proposal: each transform payload's body
/// after its transform number (what a responder's choice is compared with).
fn transforms_of(sa_body: &[u8]) -> Option<(u8, Vec<u8>, Vec<Vec<u8>>)> {
    // DOI (4), situation (4), then one proposal payload
    let proposal = sa_body.get(8..)?;
    if proposal.len() < 8 || proposal[0] != 0 {
        return None;
    }
    let len = u16::from_be_bytes([proposal[2], proposal[3]]) as usize;
    let body = proposal.get(4..len)?;
    let (protocol, spi_size, count) = (body[1], body[2] as usize, body[3] as usize);
    let spi = body.get(4..4 + spi_size)?.to_vec();
    let mut pos = 4 + spi_size;
    let mut out = Vec::new();
    for _ in 0..count {
        let t = body.get(pos..pos + 4)?;
        let tlen = u16::from_be_bytes([t[2], t[3]]) as usize;
        let transform = body.get(pos + 4..pos + tlen)?;
        out.push(transform.get(1..)?.to_vec());
        pos += tlen;
    }
    Some((protocol, spi, out))
}

/// What makes two transforms the same suite (the engine's `IkeProposal.matches` and
/// `EspProposal.matches`): the transform ID and the attributes of `kinds`, whatever their
/// order, encoding or the lifetimes beside them. `transform`: a body after its number.
fn suite_of(transform: &[u8], kinds: &[u16]) -> Option<(u8, Vec<(u16, u64)>)> {
    let id = *transform.first()?;
    let mut attrs = transform.get(3..)?;
    let mut out = Vec::new();
    while !attrs.is_empty() {
        let head = attrs.get(..4)?;
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let (value, used) = if kind & 0x8000 != 0 {
            (u16::from_be_bytes([head[2], head[3]]) as u64, 4)
        } else {
            let len = u16::from_be_bytes([head[2], head[3]]) as usize;
            let bytes = attrs.get(4..4 + len)?;
            (bytes.iter().take(8).fold(0u64, |acc, b| (acc << 8) | *b as u64), 4 + len)
        };
        if kinds.contains(&(kind & 0x7fff)) {
            out.push((kind & 0x7fff, value));
        }
        attrs = &attrs[used..];
    }
    out.sort_unstable();
    Some((id, out))
}

/// IKE: encryption, hash, authentication method, group, key length (RFC 2409 appendix A).
const IKE_KINDS: [u16; 5] = [1, 2, 3, 4, 14];
/// ESP: group (PFS), authentication algorithm, key length (RFC 2407 section 4.5).
const ESP_KINDS: [u16; 3] = [3, 5, 6];

impl Initiator {
    pub fn new(profile: Profile) -> Result<Initiator, ProfileError> {
        let payloads = build::opened(profile.mm1_first, &profile.mm1_chain).ok_or(ProfileError("MM1 chain does not parse"))?;
        let sa = payloads.first().filter(|p| p.payload_type == build::SA).ok_or(ProfileError("MM1 must start with SA"))?;
        let sa_b = sa.body().to_vec();
        let (_, _, ike) = transforms_of(&sa_b).ok_or(ProfileError("MM1 SA payload has not one proposal"))?;
        if ike.len() != 1 {
            return Err(ProfileError("the lane offers exactly one IKE transform"));
        }
        let (protocol, _, esp) = transforms_of(&profile.esp_offer).ok_or(ProfileError("ESP offer has not one proposal"))?;
        if protocol != build::PROTO_ESP || profile.esp_offer.get(profile.esp_spi_at..profile.esp_spi_at + 4).is_none() {
            return Err(ProfileError("ESP offer must be ESP with a 4-byte SPI"));
        }
        let esp_suites = esp.iter().filter_map(|t| suite_of(t, &ESP_KINDS)).collect();
        let ike_suite = suite_of(&ike[0], &IKE_KINDS).ok_or(ProfileError("IKE transform does not parse"))?;
        Ok(Initiator {
            ike_suite,
            esp_suites,
            sa_b,
            profile,
            negotiations: HashMap::new(),
            by_cookie: HashMap::new(),
            timers: BinaryHeap::new(),
            next_handle: 1,
            outgoing: Vec::new(),
            outcomes: Vec::new(),
        })
    }

    /// Start one negotiation from `local` to `remote` with pre-shared key number `psk`:
    /// sends MM1, returns its handle.
    pub fn start(&mut self, local: SocketAddr, remote: SocketAddr, psk: usize, now: f64) -> u32 {
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        let mut cky_i: [u8; 8] = random();
        while cky_i == [0; 8] || self.by_cookie.contains_key(&cky_i) {
            cky_i = random();
        }
        let mut chain = Chain::new();
        chain.extend(self.profile.mm1_first, &self.profile.mm1_chain);
        let mm1 = build::plain(&cky_i, &[0; 8], build::MAIN_MODE, &chain);
        let n = Negotiation {
            state: State::ExpectMm2, local, remote, cky_i, cky_r: [0; 8], psk: psk.min(self.profile.psks.len().saturating_sub(1)),
            last_sent: Vec::new(),
            last_received: 0, retransmits: 0, next_retransmit: 0.0, deadline: now + self.profile.negotiation_timeout,
            nat: None, marker: local.port() != 500 && remote.port() != 500, dh: None, g_xi: Vec::new(), g_xr: Vec::new(), ni: Vec::new(), keys: None,
            message_id: 0, qm_iv: Vec::new(), qm_ni: Vec::new(), spi_in: [0; 4],
        };
        self.negotiations.insert(handle, n);
        self.by_cookie.insert(cky_i, handle);
        self.timers.push(Reverse((micros(now + self.profile.negotiation_timeout), handle)));
        self.request(handle, mm1, now);
        handle
    }

    /// The earliest time `tick` has work, if any.
    pub fn next_deadline(&self) -> Option<f64> {
        self.timers.peek().map(|Reverse((t, _))| *t as f64 / 1e6)
    }

    /// Retransmit what is due, fail what timed out.
    pub fn tick(&mut self, now: f64) {
        let due = micros(now);
        while let Some(Reverse((t, handle))) = self.timers.peek().copied() {
            if t > due {
                break;
            }
            self.timers.pop();
            let profile = &self.profile;
            let Some(n) = self.negotiations.get_mut(&handle) else { continue };
            if matches!(n.state, State::Done | State::Failed) {
                continue;
            }
            if now >= n.deadline {
                let phase1 = n.state != State::ExpectQm2;
                self.fail(handle, phase1, Reason::TimedOut, now);
            } else if n.next_retransmit > 0.0 && now >= n.next_retransmit {
                if n.retransmits >= profile.retransmit_tries {
                    let phase1 = n.state != State::ExpectQm2;
                    self.fail(handle, phase1, Reason::RetransmitLimit, now);
                    continue;
                }
                n.retransmits += 1;
                n.next_retransmit = now + profile.retransmit_timeout * profile.retransmit_backoff.powi(n.retransmits as i32);
                self.timers.push(Reverse((micros(n.next_retransmit), handle)));
                let datagram = n.last_sent.clone();
                let (remote, local) = (n.remote, n.local);
                self.outcomes.push((handle, Outcome::Retransmitted(n.retransmits), now));
                self.outgoing.push((datagram, remote, local));
            }
        }
    }

    fn send(&mut self, handle: u32, message: Vec<u8>) {
        let Some(n) = self.negotiations.get_mut(&handle) else { return };
        let datagram = if n.marker {
            let mut d = Vec::with_capacity(4 + message.len());
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(&message);
            d
        } else {
            message
        };
        n.last_sent = datagram.clone();
        self.outgoing.push((datagram, n.remote, n.local));
    }

    fn request(&mut self, handle: u32, message: Vec<u8>, now: f64) {
        self.send(handle, message);
        if let Some(n) = self.negotiations.get_mut(&handle) {
            n.retransmits = 0;
            n.next_retransmit = now + self.profile.retransmit_timeout;
            self.timers.push(Reverse((micros(n.next_retransmit), handle)));
        }
    }

    fn fail(&mut self, handle: u32, phase1: bool, reason: Reason, now: f64) {
        if let Some(n) = self.negotiations.get_mut(&handle) {
            n.state = State::Failed;
            n.dh = None;
            n.keys = None;
            n.last_sent = Vec::new();
        }
        self.outcomes.push((handle, Outcome::Failed(phase1, reason), now));
    }

    /// One datagram from `remote` to our `local`.
    pub fn receive(&mut self, data: &[u8], remote: SocketAddr, local: SocketAddr, now: f64) {
        if data == [0xff] {
            return;
        }
        let mut data = data;
        if data.len() >= 4 && data[..4] == [0; 4] && local.port() != 500 && remote.port() != 500 {
            data = &data[4..];
        }
        let Ok(message) = parse_message(data) else {
            return;
        };
        if !build::generic_headers_ok(&message.payloads) {
            return;
        }
        let header = message.header;
        let Some(&handle) = self.by_cookie.get(&header.initiator_cookie) else {
            return;
        };
        let digest = digest64(data);
        let Some(n) = self.negotiations.get_mut(&handle) else { return };
        if n.state != State::ExpectMm2 && header.responder_cookie != n.cky_r {
            return;
        }
        if digest == n.last_received {
            if n.state == State::Done && header.exchange_type == build::QUICK_MODE && !n.last_sent.is_empty() {
                let d = n.last_sent.clone();
                self.outgoing.push((d, n.remote, n.local));
            }
            return;
        }
        match (n.state, header.exchange_type) {
            (State::Done | State::Failed, _) => {}
            (_, build::INFORMATIONAL) => self.informational(handle, data, now),
            (State::ExpectMm2, build::MAIN_MODE) if !header.encrypted() => self.on_mm2(handle, data, digest, now),
            (State::ExpectMm4, build::MAIN_MODE) if !header.encrypted() => self.on_mm4(handle, data, digest, now),
            (State::ExpectMm6, build::MAIN_MODE) if header.encrypted() => self.on_mm6(handle, data, digest, now),
            (State::ExpectQm2, build::QUICK_MODE) if header.encrypted() => self.on_qm2(handle, data, digest, now),
            _ => {} // not the message this state waits for: dropped, as the engine drops it
        }
    }

    fn informational(&mut self, handle: u32, data: &[u8], now: f64) {
        let Some(n) = self.negotiations.get(&handle) else { return };
        let Ok(message) = parse_message(data) else { return };
        let phase1 = !matches!(n.state, State::ExpectQm2);
        if !message.header.encrypted() {
            if !phase1 {
                return; // an unprotected notify cannot end an authenticated SA
            }
            if let (Some(t), _) = build::notifies(&message.payloads) {
                self.fail(handle, true, Reason::Notify(t), now);
            }
            return;
        }
        let Some(keys) = n.keys.as_ref() else {
            return;
        };
        let mid = message.header.message_id;
        let iv = keys.phase2_iv(mid);
        let Ok((plain, _)) = keys.open(&iv, message.body) else {
            return;
        };
        let Some(payloads) = build::hashed(message.header.next_payload, &plain) else {
            return;
        };
        let first = payloads[0];
        if !same(first.body(), &keys.hash1(mid, build::after(&plain, &payloads, 0))) {
            return;
        }
        match build::notifies(&payloads) {
            (_, true) => self.fail(handle, phase1, Reason::Deleted, now),
            (Some(t), _) => self.fail(handle, phase1, Reason::Notify(t), now),
            _ => {}
        }
    }

    fn on_mm2(&mut self, handle: u32, data: &[u8], digest: u64, now: f64) {
        let Ok(message) = parse_message(data) else { return };
        let Some(sa) = build::find(&message.payloads, build::SA) else {
            return;
        };
        let chosen = transforms_of(sa).map(|(_, _, t)| t);
        if !matches!(&chosen, Some(t) if t.len() == 1 && suite_of(&t[0], &IKE_KINDS).as_ref() == Some(&self.ike_suite)) {
            self.fail(handle, true, Reason::NotOffered(1), now);
            return;
        }
        let vids: Vec<&[u8]> = message.payloads.iter().filter(|p| p.payload_type == build::VID).map(|p| p.body()).collect();
        let nat = self.profile.nat_variants.iter().position(|v| vids.contains(&v.vendor_id.as_slice()));
        let Ok(pair) = dh::start(self.profile.suite.group) else {
            self.fail(handle, true, Reason::BadKeyExchange, now);
            return;
        };
        let hash = self.profile.suite.hash;
        let ni: [u8; NONCE_SIZE] = random();
        let Some(n) = self.negotiations.get_mut(&handle) else { return };
        n.cky_r = message.header.responder_cookie;
        n.last_received = digest;
        n.nat = nat;
        n.g_xi = pair.public().to_vec();
        n.ni = ni.to_vec();
        let mut chain = Chain::new();
        chain.push(build::KE, &[&n.g_xi]).push(build::NONCE, &[&n.ni]);
        if let Some(v) = nat {
            let kind = self.profile.nat_variants[v].nat_d;
            let peer = nat_d(hash, &n.cky_i, &n.cky_r, &ip_bytes(&n.remote), n.remote.port());
            let mine = nat_d(hash, &n.cky_i, &n.cky_r, &ip_bytes(&n.local), n.local.port());
            chain.push(kind, &[&peer]).push(kind, &[&mine]);
        }
        n.dh = Some(pair);
        n.state = State::ExpectMm4;
        let mm3 = build::plain(&n.cky_i, &n.cky_r, build::MAIN_MODE, &chain);
        self.request(handle, mm3, now);
    }

    fn on_mm4(&mut self, handle: u32, data: &[u8], digest: u64, now: f64) {
        let Ok(message) = parse_message(data) else { return };
        let (Some(ke), Some(nr)) = (build::find(&message.payloads, build::KE), build::find(&message.payloads, build::NONCE)) else {
            return;
        };
        if !(8..=256).contains(&nr.len()) {
            return;
        }
        let profile = &self.profile;
        let hash = profile.suite.hash;
        let Some(n) = self.negotiations.get_mut(&handle) else { return };
        let mut float = false;
        if let Some(v) = n.nat {
            let kind = profile.nat_variants[v].nat_d;
            let received: Vec<&[u8]> = message.payloads.iter().filter(|p| p.payload_type == kind).map(|p| p.body()).collect();
            if received.len() < 2 {
                return;
            }
            let peer = nat_d(hash, &n.cky_i, &n.cky_r, &ip_bytes(&n.remote), n.remote.port());
            let mine = nat_d(hash, &n.cky_i, &n.cky_r, &ip_bytes(&n.local), n.local.port());
            float = received[0] != mine.as_slice() || !received[1..].contains(&peer.as_slice());
        }
        let Some(pair) = n.dh.take() else { return };
        let Ok(g_xy) = pair.complete(ke) else {
            self.fail(handle, true, Reason::BadKeyExchange, now);
            return;
        };
        n.g_xr = ke.to_vec();
        n.last_received = digest;
        let psk = profile.psks.get(n.psk).map(|k| k.as_slice()).unwrap_or_default();
        let keys = Phase1::derive(&profile.suite, psk, &n.ni, nr, &g_xy, &n.cky_i, &n.cky_r, &n.g_xi, &n.g_xr);
        if float {
            if n.local.port() == 500 {
                n.local.set_port(4500);
            }
            n.remote.set_port(profile.natt_port);
            n.marker = true;
        }
        let id = build::id_body(build::ID_IPV4_ADDR, &ip_bytes(&n.local));
        let hash_i = keys.hash_i(&n.g_xi, &n.g_xr, &n.cky_i, &n.cky_r, &self.sa_b, &id);
        let mut spi = [0u8; 16];
        spi[..8].copy_from_slice(&n.cky_i);
        spi[8..].copy_from_slice(&n.cky_r);
        let contact = build::notify_body(build::PROTO_ISAKMP, build::INITIAL_CONTACT, &spi);
        let mut chain = Chain::new();
        chain.push(build::ID, &[&id]).push(build::HASH, &[&hash_i]).push(build::N, &[&contact]);
        let mut iv = keys.iv.clone();
        let body = keys.seal(&mut iv, &chain.bytes);
        let mut keys = keys;
        keys.iv = iv;
        let mut mm5 = build::header(&n.cky_i, &n.cky_r, chain.first, build::MAIN_MODE, build::FLAG_E, 0, body.len());
        mm5.extend_from_slice(&body);
        n.keys = Some(keys);
        n.ni = Vec::new(); // HASH_R needs SKEYID only
        n.state = State::ExpectMm6;
        self.request(handle, mm5, now);
    }

    fn on_mm6(&mut self, handle: u32, data: &[u8], digest: u64, now: f64) {
        let Ok(message) = parse_message(data) else { return };
        let Some(n) = self.negotiations.get_mut(&handle) else { return };
        let Some(keys) = n.keys.as_mut() else { return };
        let Ok((plain, next_iv)) = keys.open(&keys.iv, message.body) else {
            return;
        };
        let payloads = build::opened(message.header.next_payload, &plain);
        let (Some(id), Some(hash_r)) = (
            payloads.as_ref().and_then(|p| build::find(p, build::ID)),
            payloads.as_ref().and_then(|p| build::find(p, build::HASH)),
        ) else {
            // garbage after decryption: the keys differ (a wrong pre-shared key)
            self.fail(handle, true, Reason::Hash(1), now);
            return;
        };
        if !same(hash_r, &keys.hash_r(&n.g_xi, &n.g_xr, &n.cky_i, &n.cky_r, &self.sa_b, id)) {
            self.fail(handle, true, Reason::Hash(1), now);
            return;
        }
        keys.iv = next_iv;
        keys.forget_skeyid();
        n.last_received = digest;
        n.g_xi = Vec::new();
        n.g_xr = Vec::new();
        self.outcomes.push((handle, Outcome::Phase1, now));
        self.start_quick_mode(handle, now);
    }

    fn start_quick_mode(&mut self, handle: u32, now: f64) {
        let profile = &self.profile;
        let Some(n) = self.negotiations.get_mut(&handle) else { return };
        let Some(keys) = n.keys.as_ref() else { return };
        let mut message_id = u32::from_be_bytes(random());
        while message_id == 0 {
            message_id = u32::from_be_bytes(random());
        }
        n.message_id = message_id;
        n.qm_ni = random::<NONCE_SIZE>().to_vec();
        n.spi_in = random();
        while n.spi_in[0] == 0 && n.spi_in[1] == 0 && n.spi_in[2] == 0 && n.spi_in[3] < 4 {
            n.spi_in = random(); // SPIs 0-255 are reserved (RFC 4303 2.1)
        }
        let mut offer = match n.nat.filter(|_| n.marker) {
            Some(v) => profile.nat_variants[v].esp_offer_udp.clone(),
            None => profile.esp_offer.clone(),
        };
        if let Some(spi) = offer.get_mut(profile.esp_spi_at..profile.esp_spi_at + 4) {
            spi.copy_from_slice(&n.spi_in);
        }
        let id_ci = build::id_body(build::ID_IPV4_ADDR, &ip_bytes(&n.local));
        let id_cr = build::id_body(build::ID_IPV4_ADDR, &ip_bytes(&n.remote));
        let mut rest = Chain::new();
        rest.push(build::SA, &[&offer]).push(build::NONCE, &[&n.qm_ni]).push(build::ID, &[&id_ci]).push(build::ID, &[&id_cr]);
        let hash1 = keys.hash1(message_id, &rest.bytes);
        let mut chain = Chain::new();
        chain.push(build::HASH, &[&hash1]);
        chain.extend(rest.first, &rest.bytes);
        let mut iv = keys.phase2_iv(message_id);
        let body = keys.seal(&mut iv, &chain.bytes);
        n.qm_iv = iv;
        let mut qm1 = build::header(&n.cky_i, &n.cky_r, build::HASH, build::QUICK_MODE, build::FLAG_E, message_id, body.len());
        qm1.extend_from_slice(&body);
        n.state = State::ExpectQm2;
        n.deadline = now + profile.negotiation_timeout;
        self.timers.push(Reverse((micros(n.deadline), handle)));
        self.request(handle, qm1, now);
    }

    fn on_qm2(&mut self, handle: u32, data: &[u8], digest: u64, now: f64) {
        let Ok(message) = parse_message(data) else { return };
        let keymat_len = self.profile.keymat_len;
        let Some(n) = self.negotiations.get_mut(&handle) else { return };
        if message.header.message_id != n.message_id {
            return;
        }
        let Some(keys) = n.keys.as_ref() else { return };
        let Ok((plain, next_iv)) = keys.open(&n.qm_iv, message.body) else {
            return;
        };
        let Some(payloads) = build::hashed(message.header.next_payload, &plain) else {
            return;
        };
        let first = payloads[0];
        let mid = n.message_id;
        if !same(first.body(), &keys.hash2(mid, &n.qm_ni, build::after(&plain, &payloads, 0))) {
            self.fail(handle, false, Reason::Hash(2), now);
            return;
        }
        let (Some(sa), Some(nr)) = (build::find(&payloads, build::SA), build::find(&payloads, build::NONCE)) else {
            self.fail(handle, false, Reason::Malformed(2), now);
            return;
        };
        let Some((protocol, spi_out, chosen)) = transforms_of(sa) else {
            self.fail(handle, false, Reason::NotOffered(2), now);
            return;
        };
        if protocol != build::PROTO_ESP || spi_out.len() != 4 || chosen.len() != 1
            || !suite_of(&chosen[0], &ESP_KINDS).is_some_and(|c| self.esp_suites.contains(&c)) {
            self.fail(handle, false, Reason::NotOffered(2), now);
            return;
        }
        if !(8..=256).contains(&nr.len()) {
            self.fail(handle, false, Reason::Malformed(2), now);
            return;
        }
        let ids: Vec<&[u8]> = payloads.iter().filter(|p| p.payload_type == build::ID).map(|p| p.body()).collect();
        if !ids.is_empty() {
            let id_ci = build::id_body(build::ID_IPV4_ADDR, &ip_bytes(&n.local));
            let id_cr = build::id_body(build::ID_IPV4_ADDR, &ip_bytes(&n.remote));
            if ids.len() != 2 || ids[0] != id_ci.as_slice() || ids[1] != id_cr.as_slice() {
                self.fail(handle, false, Reason::Malformed(2), now);
                return;
            }
        }
        // both directions' keys: made as the engine makes them, then wiped (a load
        // generator installs no SA)
        let inbound = keys.keymat(build::PROTO_ESP, &n.spi_in, &n.qm_ni, nr, keymat_len);
        let outbound = keys.keymat(build::PROTO_ESP, &spi_out, &n.qm_ni, nr, keymat_len);
        drop((inbound, outbound));
        let hash3 = keys.hash3(mid, &n.qm_ni, nr);
        let mut chain = Chain::new();
        chain.push(build::HASH, &[&hash3]);
        let mut iv = next_iv;
        let body = keys.seal(&mut iv, &chain.bytes);
        let mut qm3 = build::header(&n.cky_i, &n.cky_r, build::HASH, build::QUICK_MODE, build::FLAG_E, mid, body.len());
        qm3.extend_from_slice(&body);
        n.last_received = digest;
        n.state = State::Done;
        n.keys = None;
        n.next_retransmit = 0.0;
        self.send(handle, qm3);
        self.outcomes.push((handle, Outcome::Phase2, now));
    }
}
