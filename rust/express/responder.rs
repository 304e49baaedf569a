//! The responder lane: the gateway's pre-shared-key Main Mode from message 3 and its first
//! Quick Mode, for offers the engine has answered before, without Python.
//!
//! Design note
//! -----------
//! ```text
//!     MM1 ──stateless MM2 (frontdoor)──>  MM3 ──MM4──> ExpectMm5 ──MM6──> ExpectQm1 ──QM2──> ExpectQm3 ──> Done
//!                                          └─ declined: to the engine (it rebuilds the SA from the cookie)
//!     any state ── anything but the next message or a repeat ──> exported to the engine, which goes on
//! ```
//! Message 1 is answered statelessly by `frontdoor` (the template Python built, a keyed
//! cookie), so nothing is kept before message 3. Python registers, per offer digest, what
//! it decided about that offer (`OfferProfile`: suite, pre-shared key, SAi_b, NAT-T,
//! identity) and, per Quick Mode offer shape (the SA payload with its SPIs zeroed), its
//! answer (`EspProfile`), with SPIs it allocated in advance. A message 3 whose cookie
//! verifies for a registered offer, carrying no NAT and within the half-open capacity
//! Python grants, starts a negotiation here; otherwise it goes to the engine unchanged.
//!
//! From then on only the expected next message is handled here, with the same formulas
//! as the engine (`keys`); a repeat of the last message received is answered with the
//! same reply. Anything else (a HASH that does not verify, an Informational, an offer
//! shape not registered, a client ID that is not the two hosts, a move to another
//! address, a timeout) exports the negotiation: an `Export` with everything the engine
//! keeps of an SA in that state, after which the engine processes the message as if it
//! had handled every one before. A negotiation that ends is exported too (`Done`, with
//! its KEYMAT): Python adopts every export, in order, before the datagrams of the batch.
//!
//! Message 4 needs only our public value: with a thread (`Responder::new(_, true)`, where a
//! core is spare), g^xy and the key schedule of message 3 are computed on a thread of the
//! lane's own after message 4 is sent (the peer value checked first, `dh::check_peer`), and
//! key pairs are made ahead while it is idle; message 5 or an export waits for the keys.
//! Nothing here panics on any input, does I/O or reads a clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use zeroize::Zeroizing;

use super::build::{self, Chain};
use super::{digest64, ip_bytes, micros, random};
use super::keys::{nat_d, same, Phase1, Suite};
use crate::crypto::dh::{self, KeyPair};
use crate::frontdoor::stateless_cookie;
use crate::udpbatch::endpoint_bytes;
use crate::wire::message::parse_message;

const NONCE_SIZE: usize = 32;
/// RFC 2407 section 4.6.3.1.
const RESPONDER_LIFETIME: u16 = 24576;
/// Quick Mode offer shapes the lane answers at most (others go to the engine).
const MAX_ESP_SHAPES: usize = 256;

/// What Python decided about one Main Mode offer (message 1's payload chain).
pub struct OfferProfile {
    pub tag: u32,
    pub suite: Suite,
    pub psk: Zeroizing<Vec<u8>>,
    /// SAi_b: the initiator's SA payload body, which HASH_I and HASH_R cover.
    pub sa_b: Vec<u8>,
    /// The NAT-D payload type of the NAT-T variant agreed, None without NAT-T.
    pub nat_d: Option<u8>,
    /// Our ID payload body when one is configured; None: our address (ID_IPV4_ADDR).
    pub my_id: Option<Vec<u8>>,
}

/// What Python answered to one Quick Mode offer shape.
pub struct EspProfile {
    pub tag: u32,
    /// Our SA payload body, with a zero SPI at `spi_at`.
    pub reply: Vec<u8>,
    pub spi_at: usize,
    pub keymat_len: usize,
    /// The data of the RESPONDER-LIFETIME notify the engine added (its limits are shorter
    /// than offered), after the initiator's SPI; None when it added none.
    pub lifetime: Option<Vec<u8>>,
}

/// Where a negotiation stands (what the engine calls R_EXPECT_MM5, ESTABLISHED with
/// R_EXPECT_QM1 next, R_EXPECT_QM3, and both established).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    ExpectMm5 = 1,
    ExpectQm1 = 2,
    ExpectQm3 = 3,
    Done = 4,
}

/// The Quick Mode part of an export.
#[derive(Default)]
pub struct QmExport {
    pub esp_tag: u32,
    pub message_id: u32,
    pub started: f64,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    pub spi_in: [u8; 4],
    pub spi_out: Vec<u8>,
    pub id_ci: Vec<u8>,
    pub id_cr: Vec<u8>,
    pub iv: Vec<u8>,
    pub last_received: Vec<u8>,
    pub last_sent: Vec<u8>,
    pub keymat_len: usize,
    pub keymat_in: Zeroizing<Vec<u8>>,
    pub keymat_out: Zeroizing<Vec<u8>>,
}

/// One negotiation handed to the engine: everything it keeps of the SA at `stage`.
pub struct Export {
    pub tag: u32,
    pub stage: Stage,
    pub cky_i: [u8; 8],
    pub cky_r: [u8; 8],
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub marker: bool,
    pub started: f64,
    pub established: f64,
    pub g_xi: Vec<u8>,
    pub g_xr: Vec<u8>,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    /// None only if the lane's thread failed to compute g^xy (it checked the value first).
    pub keys: Option<Phase1>,
    pub peer_id: Vec<u8>,
    pub my_id: Vec<u8>,
    pub initial_contact: bool,
    pub last_received: Vec<u8>,
    pub last_sent: Vec<u8>,
    pub qm: Option<QmExport>,
}

struct Negotiation {
    export: Export,
    offer: [u8; 32],
    last_digest: u64,
    deadline: f64,
    /// The keys, while the lane's thread computes them (message 4 is already sent).
    pending: Option<Arc<Pending>>,
}

impl Negotiation {
    /// The keys, once the thread has them (waits for it: a few tens of microseconds at most).
    fn settle(&mut self) -> Option<&mut Phase1> {
        if let Some(pending) = self.pending.take() {
            self.export.keys = pending.wait();
        }
        self.export.keys.as_mut()
    }
}

/// The keys of one negotiation, computed on the lane's thread.
#[derive(Default)]
struct Pending {
    slot: Mutex<Option<Option<Phase1>>>,
    ready: Condvar,
}

impl Pending {
    fn put(&self, keys: Option<Phase1>) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(keys);
        }
        self.ready.notify_all();
    }

    fn wait(&self) -> Option<Phase1> {
        let Ok(mut slot) = self.slot.lock() else { return None };
        loop {
            if let Some(keys) = slot.take() {
                return keys;
            }
            slot = match self.ready.wait(slot) {
                Ok(s) => s,
                Err(_) => return None,
            };
        }
    }
}

/// What the thread computes: g^xy from our key pair and the peer's value, then the keys.
struct Job {
    pending: Arc<Pending>,
    pair: KeyPair,
    suite: Suite,
    psk: Zeroizing<Vec<u8>>,
    cky_i: [u8; 8],
    cky_r: [u8; 8],
    g_xi: Vec<u8>,
    g_xr: Vec<u8>,
    ni: Vec<u8>,
    nr: Vec<u8>,
}

/// Key pairs ready per group, this many at most.
const READY_PAIRS: usize = 64;

/// The lane's thread: g^xy and the key schedule of message 3, off the gateway's thread
/// (message 4 needs only our public value), and key pairs made ahead while it is idle.
struct Worker {
    jobs: Option<mpsc::Sender<Job>>,
    pairs: Arc<Mutex<HashMap<u16, Vec<KeyPair>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start() -> Option<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        let pairs: Arc<Mutex<HashMap<u16, Vec<KeyPair>>>> = Arc::default();
        let shared = Arc::clone(&pairs);
        let thread = std::thread::Builder::new().name("ikecore-express".into()).spawn(move || loop {
            let job = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => None,
            };
            if let Some(job) = job {
                run(job);
                continue;
            }
            let short = shared.lock().ok().and_then(|p| p.iter().find(|(_, v)| v.len() < READY_PAIRS).map(|(g, _)| *g));
            if let Some(group) = short {
                if let (Ok(pair), Ok(mut p)) = (dh::start(group), shared.lock()) {
                    p.entry(group).or_default().push(pair);
                }
                continue;
            }
            match rx.recv() {
                Ok(job) => run(job),
                Err(_) => return,
            }
        }).ok()?;
        Some(Worker { jobs: Some(tx), pairs, thread: Some(thread) })
    }

    /// A key pair made ahead, if one is ready (and the group is now one to keep ready).
    fn pair(&self, group: u16) -> Option<KeyPair> {
        let mut pairs = self.pairs.lock().ok()?;
        pairs.entry(group).or_default().pop()
    }

    fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs = None; // the thread ends at its next receive
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(job: Job) {
    let keys = job.pair.complete(&job.g_xi).ok().map(|g_xy| {
        Phase1::derive(&job.suite, &job.psk, &job.ni, &job.nr, &g_xy, &job.cky_i, &job.cky_r, &job.g_xi, &job.g_xr)
    });
    job.pending.put(keys);
}

/// Message counters by (sent, exchange type, message number), and drops.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub messages: HashMap<(bool, u8, u8), u64>,
    pub taken: u64,
    pub declined: u64,
    pub exported: u64,
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handled here (a reply may be queued).
    Handled,
    /// The engine's; any export for it is queued before it.
    Python,
}

/// The lane: registered profiles, negotiations by cookie pair, their deadlines.
#[derive(Default)]
pub struct Responder {
    offers: HashMap<[u8; 32], OfferProfile>,
    by_tag: HashMap<[u8; 2], Vec<[u8; 32]>>,
    esp: HashMap<Vec<u8>, EspProfile>,
    negotiations: HashMap<([u8; 8], [u8; 8]), Negotiation>,
    timers: BinaryHeap<Reverse<(u64, [u8; 8], [u8; 8])>>,
    spis: Vec<[u8; 4]>,
    per_source: HashMap<IpAddr, u32>,
    /// Half-open negotiations this lane may still start (Python's grant, per batch).
    pub capacity: usize,
    /// The most half-open negotiations one source may have here.
    pub per_source_limit: u32,
    pub negotiation_timeout: f64,
    /// Exports in order, for Python to adopt before the datagrams of the batch.
    pub exports: Vec<Export>,
    pub counters: Counters,
    worker: Option<Worker>,
}


fn host_id(addr: &SocketAddr) -> Vec<u8> {
    match addr.ip() {
        IpAddr::V4(v4) => build::id_body(build::ID_IPV4_ADDR, &v4.octets()),
        IpAddr::V6(v6) => build::id_body(5, &v6.octets()), // ID_IPV6_ADDR
    }
}

/// An SA payload body with every proposal's SPI zeroed: the shape Quick Mode offers of one
/// kind share. None when it does not parse.
pub fn offer_shape(sa_body: &[u8]) -> Option<Vec<u8>> {
    offer_shape_counted(sa_body).map(|(shape, _)| shape)
}

/// `offer_shape` and the number of proposal payloads.
pub fn offer_shape_counted(sa_body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = sa_body.to_vec();
    let mut pos = 8;
    let mut count = 0;
    loop {
        count += 1;
        let head = out.get(pos..pos + 8)?;
        let (next, len, spi_size) = (head[0], u16::from_be_bytes([head[2], head[3]]) as usize, head[6] as usize);
        if len < 8 + spi_size || pos + len > out.len() {
            return None;
        }
        out[pos + 8..pos + 8 + spi_size].fill(0);
        pos += len;
        if next == 0 {
            return (pos == out.len()).then_some((out, count));
        }
    }
}

/// The initiator's SPI of an offer's first proposal (named in a refusal's notify).
fn first_spi(sa_body: &[u8]) -> Vec<u8> {
    let Some(head) = sa_body.get(8..16) else { return Vec::new() };
    sa_body.get(16..16 + head[6] as usize).map(|s| s.to_vec()).unwrap_or_default()
}

impl Responder {
    /// A lane; `thread`: compute g^xy and make key pairs on a thread of its own.
    pub fn new(negotiation_timeout: f64, thread: bool) -> Responder {
        let worker = if thread { Worker::start() } else { None };
        Responder { negotiation_timeout, per_source_limit: u32::MAX, worker, ..Responder::default() }
    }

    /// Register (or replace) the profile of the offer with this digest.
    pub fn add_offer(&mut self, digest: [u8; 32], profile: OfferProfile) {
        let tag = [digest[0], digest[1]];
        if self.offers.insert(digest, profile).is_none() {
            self.by_tag.entry(tag).or_default().push(digest);
        }
    }

    /// Forget an offer (Python forgot it: it could not rebuild its SA from a cookie).
    pub fn forget_offer(&mut self, digest: &[u8; 32]) -> bool {
        let known = self.offers.remove(digest).is_some();
        if let Some(list) = self.by_tag.get_mut(&[digest[0], digest[1]]) {
            list.retain(|d| d != digest);
        }
        known
    }

    /// Register the answer to Quick Mode offers of `shape`; false when one is registered
    /// or `MAX_ESP_SHAPES` are (authenticated peers choose their offers: the table is bounded).
    pub fn add_esp(&mut self, shape: Vec<u8>, profile: EspProfile) -> bool {
        if self.esp.contains_key(&shape) || self.esp.len() >= MAX_ESP_SHAPES {
            return false;
        }
        self.esp.insert(shape, profile);
        true
    }

    pub fn add_spis(&mut self, spis: impl IntoIterator<Item = [u8; 4]>) {
        self.spis.extend(spis);
    }

    pub fn spare_spis(&self) -> usize {
        self.spis.len()
    }

    /// Negotiations held here (every one of them half-open for the engine's limits until
    /// its Main Mode ends).
    pub fn held(&self) -> usize {
        self.negotiations.len()
    }

    /// Half-open ones (Main Mode not finished) per source address, and in all.
    pub fn half_open(&self) -> usize {
        self.per_source.values().map(|&n| n as usize).sum()
    }

    fn count(&mut self, sent: bool, exchange: u8, number: u8) {
        *self.counters.messages.entry((sent, exchange, number)).or_insert(0) += 1;
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<f64> {
        self.timers.peek().map(|Reverse((t, _, _))| *t as f64 / 1e6)
    }

    /// Export every negotiation whose deadline has passed (the engine times it out).
    pub fn tick(&mut self, now: f64) {
        let due = micros(now);
        while let Some(Reverse((t, i, r))) = self.timers.peek().copied() {
            if t > due {
                break;
            }
            self.timers.pop();
            if self.negotiations.get(&(i, r)).is_some_and(|n| now >= n.deadline) {
                self.export((i, r));
            }
        }
    }

    /// One half-open negotiation of `ip` fewer (its Main Mode ended or it was handed over).
    fn leave_half_open(&mut self, ip: IpAddr) {
        if let Some(c) = self.per_source.get_mut(&ip) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_source.remove(&ip);
            }
        }
    }

    fn export(&mut self, key: ([u8; 8], [u8; 8])) {
        if let Some(mut n) = self.negotiations.remove(&key) {
            if n.export.stage == Stage::ExpectMm5 {
                self.leave_half_open(n.export.remote.ip());
            }
            if n.settle().is_none() {
                return; // g^xy failed on the thread after the value passed its checks: nothing to hand over
            }
            self.counters.exported += 1;
            self.exports.push(n.export);
        }
    }

    /// One datagram (`message` without a non-ESP marker; `marker`: it had one) from
    /// `source` to our `local`. `secret`: the current stateless cookie secret. `known`:
    /// the engine's cookie table holds this cookie pair. Replies go to `replies`.
    #[allow(clippy::too_many_arguments)]
    pub fn receive(&mut self, message: &[u8], marker: bool, source: SocketAddr, local: SocketAddr,
                   secret: Option<&[u8; 32]>, known: bool, now: f64, replies: &mut Vec<Vec<u8>>) -> Verdict {
        if message.len() < 28 || message[8..16] == [0; 8] {
            return Verdict::Python;
        }
        let mut key = ([0u8; 8], [0u8; 8]);
        key.0.copy_from_slice(&message[..8]);
        key.1.copy_from_slice(&message[8..16]);
        if self.negotiations.contains_key(&key) {
            return self.next(key, message, source, now, replies);
        }
        if known || message[18] != build::MAIN_MODE || message[19] & build::FLAG_E != 0 || message[20..24] != [0; 4] {
            return Verdict::Python;
        }
        match secret {
            Some(secret) => self.message3(key, message, marker, source, local, secret, now, replies),
            None => Verdict::Python,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn message3(&mut self, key: ([u8; 8], [u8; 8]), message: &[u8], marker: bool, source: SocketAddr, local: SocketAddr,
                secret: &[u8; 32], now: f64, replies: &mut Vec<Vec<u8>>) -> Verdict {
        let (source_bytes, local_bytes) = (endpoint_bytes(&source), endpoint_bytes(&local));
        let Some(digest) = self.by_tag.get(&[key.1[0], key.1[1]]).and_then(|list| {
            list.iter().find(|d| stateless_cookie(secret, &key.0, &source_bytes, &local_bytes, d) == key.1).copied()
        }) else {
            return Verdict::Python;
        };
        let held = self.per_source.get(&source.ip()).copied().unwrap_or(0);
        if self.capacity == 0 || held >= self.per_source_limit || self.spis.is_empty() {
            self.counters.declined += 1;
            return Verdict::Python;
        }
        let Ok(parsed) = parse_message(message) else { return Verdict::Python };
        if !build::generic_headers_ok(&parsed.payloads) {
            return Verdict::Python;
        }
        let Some(profile) = self.offers.get(&digest) else { return Verdict::Python };
        let (Some(ke), Some(ni)) = (build::find(&parsed.payloads, build::KE), build::find(&parsed.payloads, build::NONCE)) else {
            return Verdict::Python;
        };
        if !(8..=256).contains(&ni.len()) {
            return Verdict::Python;
        }
        let hash = profile.suite.hash;
        let mut nat_hashes = None;
        if let Some(kind) = profile.nat_d {
            let received: Vec<&[u8]> = parsed.payloads.iter().filter(|p| p.payload_type == kind).map(|p| p.body()).collect();
            let peer = nat_d(hash, &key.0, &key.1, &ip_bytes(&source), source.port());
            let mine = nat_d(hash, &key.0, &key.1, &ip_bytes(&local), local.port());
            // a NAT on either side (or too few NAT-D): the engine floats and keeps state for it
            if received.len() < 2 || received[0] != mine.as_slice() || !received[1..].contains(&peer.as_slice()) {
                self.counters.declined += 1;
                return Verdict::Python;
            }
            nat_hashes = Some((peer, mine));
        }
        if dh::check_peer(profile.suite.group, ke).is_err() {
            return Verdict::Python; // the engine refuses it with its notify
        }
        let made = self.worker.as_ref().and_then(|w| w.pair(profile.suite.group));
        let Some(pair) = made.or_else(|| dh::start(profile.suite.group).ok()) else { return Verdict::Python };
        let g_xr = pair.public().to_vec();
        let nr: [u8; NONCE_SIZE] = random();
        let mut chain = Chain::new();
        chain.push(build::KE, &[&g_xr]).push(build::NONCE, &[&nr]);
        if let (Some(kind), Some((peer, mine))) = (profile.nat_d, nat_hashes.as_ref()) {
            chain.push(kind, &[peer]).push(kind, &[mine]);
        }
        let marker = marker || (local.port() != 500 && source.port() != 500);
        let mm4 = framed(marker, build::plain(&key.0, &key.1, build::MAIN_MODE, &chain));
        // g^xy and the keys: on the thread when there is one (message 5 is a round trip away)
        let job = Job { pending: Arc::default(), pair, suite: profile.suite, psk: profile.psk.clone(), cky_i: key.0,
                        cky_r: key.1, g_xi: ke.to_vec(), g_xr: g_xr.clone(), ni: ni.to_vec(), nr: nr.to_vec() };
        let pending = Arc::clone(&job.pending);
        let inline = match self.worker.as_ref() {
            Some(worker) => worker.submit(job).err(),
            None => Some(job),
        };
        let (keys, pending) = match inline {
            None => (None, Some(pending)),
            Some(job) => {
                run(job);
                match pending.wait() {
                    Some(keys) => (Some(keys), None),
                    None => return Verdict::Python,
                }
            }
        };
        let export = Export {
            tag: profile.tag, stage: Stage::ExpectMm5, cky_i: key.0, cky_r: key.1, local, remote: source, marker,
            started: now, established: 0.0, g_xi: ke.to_vec(), g_xr, ni: ni.to_vec(), nr: nr.to_vec(), keys,
            peer_id: Vec::new(), my_id: Vec::new(), initial_contact: false, last_received: message.to_vec(),
            last_sent: mm4.clone(), qm: None,
        };
        let deadline = now + self.negotiation_timeout;
        self.negotiations.insert(key, Negotiation { export, offer: digest, last_digest: digest64(message), deadline, pending });
        self.timers.push(Reverse((micros(deadline), key.0, key.1)));
        *self.per_source.entry(source.ip()).or_insert(0) += 1;
        self.capacity -= 1;
        self.counters.taken += 1;
        self.count(false, build::MAIN_MODE, 3);
        self.count(true, build::MAIN_MODE, 4);
        replies.push(mm4);
        Verdict::Handled
    }

    /// A message for a negotiation held here: the next one, a repeat, or an export.
    fn next(&mut self, key: ([u8; 8], [u8; 8]), message: &[u8], source: SocketAddr, now: f64,
            replies: &mut Vec<Vec<u8>>) -> Verdict {
        let digest = digest64(message);
        let Some(n) = self.negotiations.get(&key) else { return Verdict::Python };
        if source.ip() != n.export.remote.ip() {
            self.export(key);
            return Verdict::Python;
        }
        if digest == n.last_digest && message == n.export.last_received.as_slice() {
            let reply = match n.export.stage {
                Stage::ExpectQm3 => n.export.qm.as_ref().map(|q| q.last_sent.clone()).unwrap_or_default(),
                _ => n.export.last_sent.clone(),
            };
            if !reply.is_empty() {
                replies.push(reply);
            }
            return Verdict::Handled;
        }
        let stage = n.export.stage;
        let handled = match (stage, message[18]) {
            (Stage::ExpectMm5, build::MAIN_MODE) => self.message5(key, message, digest, now, replies),
            (Stage::ExpectQm1, build::QUICK_MODE) => self.quick1(key, message, digest, now, replies),
            (Stage::ExpectQm3, build::QUICK_MODE) => self.quick3(key, message, now),
            _ => false,
        };
        if handled {
            return Verdict::Handled;
        }
        self.export(key);
        Verdict::Python
    }

    fn message5(&mut self, key: ([u8; 8], [u8; 8]), message: &[u8], digest: u64, now: f64, replies: &mut Vec<Vec<u8>>) -> bool {
        let Ok(parsed) = parse_message(message) else { return false };
        if !parsed.header.encrypted() || parsed.header.message_id != 0 {
            return false;
        }
        let Some(n) = self.negotiations.get_mut(&key) else { return false };
        if n.settle().is_none() {
            return false;
        }
        let e = &mut n.export;
        let Some(keys) = e.keys.as_mut() else { return false };
        let Some(profile) = self.offers.get(&n.offer) else { return false };
        let Ok((plain, next_iv)) = keys.open(&keys.iv.clone(), parsed.body) else { return false };
        let Some(payloads) = build::opened(parsed.header.next_payload, &plain) else { return false };
        if !build::generic_headers_ok(&payloads) {
            return false;
        }
        let (Some(id), Some(hash_i)) = (build::find(&payloads, build::ID), build::find(&payloads, build::HASH)) else { return false };
        if !same(hash_i, &keys.hash_i(&e.g_xi, &e.g_xr, &e.cky_i, &e.cky_r, &profile.sa_b, id)) {
            return false;
        }
        let my_id = profile.my_id.clone().unwrap_or_else(|| host_id(&e.local));
        let hash_r = keys.hash_r(&e.g_xi, &e.g_xr, &e.cky_i, &e.cky_r, &profile.sa_b, &my_id);
        e.initial_contact = payloads.iter().any(|p| {
            let b = p.body();
            p.payload_type == build::N && b.len() >= 8 && u16::from_be_bytes([b[6], b[7]]) == build::INITIAL_CONTACT
        });
        keys.iv = next_iv;
        let mut chain = Chain::new();
        chain.push(build::ID, &[&my_id]).push(build::HASH, &[&hash_r]);
        let mut iv = keys.iv.clone();
        let body = keys.seal(&mut iv, &chain.bytes);
        keys.iv = iv;
        let mut mm6 = build::header(&e.cky_i, &e.cky_r, build::ID, build::MAIN_MODE, build::FLAG_E, 0, body.len());
        mm6.extend_from_slice(&body);
        let mm6 = framed(e.marker, mm6);
        e.peer_id = id.to_vec();
        e.my_id = my_id;
        e.established = now;
        keys.forget_skeyid();
        e.g_xi = Vec::new();
        e.g_xr = Vec::new();
        e.ni = Vec::new();
        e.nr = Vec::new();
        e.last_received = message.to_vec();
        e.last_sent = mm6.clone();
        n.last_digest = digest;
        // Main Mode is over: no longer half-open (the engine's admission too)
        let remote = e.remote.ip();
        e.stage = Stage::ExpectQm1;
        self.leave_half_open(remote);
        self.count(false, build::MAIN_MODE, 5);
        self.count(true, build::MAIN_MODE, 6);
        replies.push(mm6);
        true
    }

    fn quick1(&mut self, key: ([u8; 8], [u8; 8]), message: &[u8], digest: u64, now: f64, replies: &mut Vec<Vec<u8>>) -> bool {
        let Ok(parsed) = parse_message(message) else { return false };
        let mid = parsed.header.message_id;
        if !parsed.header.encrypted() || mid == 0 {
            return false;
        }
        let Some(n) = self.negotiations.get_mut(&key) else { return false };
        let e = &mut n.export;
        let Some(keys) = e.keys.as_mut() else { return false };
        let iv = keys.phase2_iv(mid);
        let Ok((plain, next_iv)) = keys.open(&iv, parsed.body) else { return false };
        let Some(payloads) = build::hashed(parsed.header.next_payload, &plain) else { return false };
        if !same(payloads[0].body(), &keys.hash1(mid, build::after(&plain, &payloads, 0))) {
            return false;
        }
        if payloads.iter().any(|p| p.payload_type == build::KE || p.payload_type == build::N) {
            return false; // PFS or a notify: the engine's
        }
        let (Some(sa), Some(ni)) = (build::find(&payloads, build::SA), build::find(&payloads, build::NONCE)) else { return false };
        if !(8..=256).contains(&ni.len()) {
            return false;
        }
        let ids: Vec<&[u8]> = payloads.iter().filter(|p| p.payload_type == build::ID).map(|p| p.body()).collect();
        let hosts = (host_id(&e.remote), host_id(&e.local));
        if !(ids.is_empty() || (ids.len() == 2 && ids[0] == hosts.0.as_slice() && ids[1] == hosts.1.as_slice())) {
            return false;
        }
        let Some(shape) = offer_shape(sa) else { return false };
        let Some(esp) = self.esp.get(&shape) else {
            return false; // the engine answers it and registers its answer
        };
        let Some(spi_in) = self.spis.pop() else { return false };
        let mut reply_sa = esp.reply.clone();
        if let Some(slot) = reply_sa.get_mut(esp.spi_at..esp.spi_at + 4) {
            slot.copy_from_slice(&spi_in);
        }
        let nr: [u8; NONCE_SIZE] = random();
        let mut rest = Chain::new();
        rest.push(build::SA, &[&reply_sa]).push(build::NONCE, &[&nr]);
        if ids.len() == 2 {
            rest.push(build::ID, &[ids[0]]).push(build::ID, &[ids[1]]);
        }
        let spi_out = first_spi(sa);
        if let Some(data) = esp.lifetime.as_ref() {
            rest.push(build::N, &[&build::notify_body(build::PROTO_ESP, RESPONDER_LIFETIME, &spi_out), data]);
        }
        let hash2 = keys.hash2(mid, ni, &rest.bytes);
        let mut chain = Chain::new();
        chain.push(build::HASH, &[&hash2]);
        chain.extend(rest.first, &rest.bytes);
        let mut qm_iv = next_iv;
        let body = keys.seal(&mut qm_iv, &chain.bytes);
        let mut qm2 = build::header(&e.cky_i, &e.cky_r, build::HASH, build::QUICK_MODE, build::FLAG_E, mid, body.len());
        qm2.extend_from_slice(&body);
        let qm2 = framed(e.marker, qm2);
        e.qm = Some(QmExport {
            esp_tag: esp.tag, message_id: mid, started: now, ni: ni.to_vec(), nr: nr.to_vec(), spi_in,
            spi_out, id_ci: ids.first().map(|b| b.to_vec()).unwrap_or_default(),
            id_cr: ids.get(1).map(|b| b.to_vec()).unwrap_or_default(), iv: qm_iv, last_received: message.to_vec(),
            last_sent: qm2.clone(), keymat_len: esp.keymat_len, ..QmExport::default()
        });
        e.stage = Stage::ExpectQm3;
        n.last_digest = digest;
        n.deadline = now + self.negotiation_timeout;
        self.timers.push(Reverse((micros(n.deadline), key.0, key.1)));
        self.count(false, build::QUICK_MODE, 1);
        self.count(true, build::QUICK_MODE, 2);
        replies.push(qm2);
        true
    }

    fn quick3(&mut self, key: ([u8; 8], [u8; 8]), message: &[u8], now: f64) -> bool {
        let Ok(parsed) = parse_message(message) else { return false };
        let Some(n) = self.negotiations.get_mut(&key) else { return false };
        let e = &mut n.export;
        let Some(keys) = e.keys.as_ref() else { return false };
        let Some(qm) = e.qm.as_mut() else { return false };
        if !parsed.header.encrypted() || parsed.header.message_id != qm.message_id {
            return false;
        }
        let Ok((plain, next_iv)) = keys.open(&qm.iv, parsed.body) else { return false };
        let Some(payloads) = build::hashed(parsed.header.next_payload, &plain) else { return false };
        if !same(payloads[0].body(), &keys.hash3(qm.message_id, &qm.ni, &qm.nr)) {
            return false;
        }
        qm.keymat_in = keys.keymat(build::PROTO_ESP, &qm.spi_in, &qm.ni, &qm.nr, qm.keymat_len);
        qm.keymat_out = keys.keymat(build::PROTO_ESP, &qm.spi_out, &qm.ni, &qm.nr, qm.keymat_len);
        qm.iv = next_iv;
        qm.last_received = message.to_vec();
        e.established = if e.established > 0.0 { e.established } else { now };
        e.stage = Stage::Done;
        self.count(false, build::QUICK_MODE, 3);
        if let Some(n) = self.negotiations.remove(&key) {
            self.exports.push(n.export);
        }
        true
    }
}

fn framed(marker: bool, message: Vec<u8>) -> Vec<u8> {
    if !marker {
        return message;
    }
    let mut out = Vec::with_capacity(4 + message.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_shape_zeroes_every_spi() {
        // DOI, situation, two proposals with 4-byte SPIs and no transforms
        let mut body = vec![0, 0, 0, 1, 0, 0, 0, 1];
        body.extend_from_slice(&[2, 0, 0, 12, 1, 3, 4, 0, 9, 9, 9, 9]);
        body.extend_from_slice(&[0, 0, 0, 12, 2, 3, 4, 0, 8, 8, 8, 8]);
        let shape = offer_shape(&body).unwrap();
        assert_eq!(&shape[16..20], &[0; 4]);
        assert_eq!(&shape[28..32], &[0; 4]);
        assert_eq!(first_spi(&body), vec![9, 9, 9, 9]);
        assert!(offer_shape(&body[..20]).is_none());
    }
}
