//! Python wrappers for `crate::express`: `ExpressInitiator`, the load generator's lane
//! (``ikecore.loadtest.express`` builds its profile from the engine's own policy and
//! messages), and `ExpressResponder`, the gateway's (``ikecore.engine.express`` registers
//! what the engine answered; `FrontDoor.drain` feeds it).

use std::net::{IpAddr, SocketAddr};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use zeroize::Zeroizing;

use crate::crypto::cipher::CipherKind;
use crate::crypto::prf::HashKind;
use crate::express::initiator::{Initiator, NatVariant, Outcome, Profile, Reason};
use crate::express::keys::{Phase1, Suite};
use crate::udpbatch::{send_batch, Outgoing, RecvBatch, Received};
use crate::express::responder::{offer_shape, offer_shape_counted, EspProfile, Export, OfferProfile, Responder};

fn socket_addr(address: &(String, u16)) -> PyResult<SocketAddr> {
    let ip: IpAddr = address.0.parse().map_err(|_| PyValueError::new_err(format!("'{}' is not an IP address", address.0)))?;
    Ok(SocketAddr::new(ip, address.1))
}

fn address_tuple<'py>(py: Python<'py>, addr: &SocketAddr) -> PyResult<Bound<'py, PyTuple>> {
    (addr.ip().to_string(), addr.port()).into_pyobject(py)
}

/// Many pre-shared-key Main Mode + Quick Mode negotiations as initiator (see
/// `rust/express/initiator.rs`). Outcomes: ``(handle, kind, detail, time)`` with kind
/// ``"phase1"``, ``"phase2"``, ``"retransmit"`` (detail: attempt), ``"failed1"`` /
/// ``"failed2"`` (detail: ``(reason, notify type or None)``).
#[pyclass(name = "ExpressInitiator", module = "ikecore._core")]
pub struct PyExpressInitiator {
    lane: Initiator,
    batch: RecvBatch,
    received: Vec<Received>,
    sent: u64,
}

impl PyExpressInitiator {
    fn flush_to(&mut self, py: Python<'_>, fd: i32) -> usize {
        if self.lane.outgoing.is_empty() {
            return 0;
        }
        let out: Vec<Outgoing<'_>> = self.lane.outgoing.iter().map(|(data, remote, local)| Outgoing {
            data,
            dest: *remote,
            source: match local.ip() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            },
        }).collect();
        let (sent, failed) = py.detach(|| send_batch(fd, &out));
        drop(out);
        self.lane.outgoing.clear();
        self.sent += sent as u64;
        failed
    }
}

#[pymethods]
impl PyExpressInitiator {
    #[new]
    #[pyo3(signature = (*, hash, cipher, group, psks, mm1_first, mm1_chain, esp_offer, esp_spi_at, keymat_len,
                        nat_variants, natt_port, retransmit_timeout, retransmit_backoff, retransmit_tries,
                        negotiation_timeout))]
    #[allow(clippy::too_many_arguments)]
    fn new(hash: &str, cipher: &str, group: u16, psks: Vec<Vec<u8>>, mm1_first: u8, mm1_chain: &[u8], esp_offer: &[u8],
           esp_spi_at: usize, keymat_len: usize, nat_variants: Vec<(Vec<u8>, u8, Vec<u8>)>, natt_port: u16,
           retransmit_timeout: f64, retransmit_backoff: f64, retransmit_tries: u32, negotiation_timeout: f64)
           -> PyResult<Self> {
        let hash = HashKind::from_name(hash).map_err(|e| PyValueError::new_err(format!("{e:?}")))?;
        let cipher = CipherKind::from_name(cipher).map_err(|e| PyValueError::new_err(format!("{e:?}")))?;
        let profile = Profile {
            suite: Suite { hash, cipher, group },
            psks: psks.into_iter().map(Zeroizing::new).collect(),
            mm1_first,
            mm1_chain: mm1_chain.to_vec(),
            esp_offer: esp_offer.to_vec(),
            esp_spi_at,
            keymat_len,
            nat_variants: nat_variants.into_iter().map(|(vendor_id, nat_d, esp_offer_udp)| NatVariant { vendor_id, nat_d, esp_offer_udp }).collect(),
            natt_port,
            retransmit_timeout,
            retransmit_backoff,
            retransmit_tries,
            negotiation_timeout,
        };
        let lane = Initiator::new(profile).map_err(|e| PyValueError::new_err(e.0))?;
        Ok(PyExpressInitiator { lane, batch: RecvBatch::new(64), received: Vec::new(), sent: 0 })
    }

    /// Start one negotiation (sends MM1) with pre-shared key number ``psk``; returns its handle.
    #[pyo3(signature = (local, remote, now, psk = 0))]
    fn start(&mut self, local: (String, u16), remote: (String, u16), now: f64, psk: usize) -> PyResult<u32> {
        Ok(self.lane.start(socket_addr(&local)?, socket_addr(&remote)?, psk, now))
    }

    /// Read what waits on non-blocking socket ``fd`` (bound to the wildcard address on
    /// ``port``, IP_PKTINFO on: each datagram's destination is a peer's address), up to
    /// ``max_datagrams``, hand each to the lane and send what it answers
    /// (``sendmmsg``, each from its peer's address). Returns (received, send failures).
    #[pyo3(signature = (fd, port, now, max_datagrams = 1024))]
    fn pump(&mut self, py: Python<'_>, fd: i32, port: u16, now: f64, max_datagrams: usize) -> (usize, usize) {
        let mut total = 0usize;
        while total < max_datagrams {
            let n = match py.detach(|| self.batch.recv(fd, &mut self.received)) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            total += n;
            for (i, r) in self.received.iter().enumerate() {
                if r.truncated {
                    continue;
                }
                if let (Some(source), Some(dest)) = (r.source, r.dest) {
                    let data = self.batch.data(i, r.len);
                    self.lane.receive(data, source, SocketAddr::new(dest, port), now);
                }
            }
            if n < self.batch.slots() {
                break;
            }
        }
        (total, self.flush_to(py, fd))
    }

    /// Send what the lane has queued from socket ``fd``; returns the send failures.
    fn flush(&mut self, py: Python<'_>, fd: i32) -> usize {
        self.flush_to(py, fd)
    }

    /// One datagram from ``remote`` to our ``local``; never raises for its content.
    fn receive(&mut self, data: &[u8], remote: (String, u16), local: (String, u16), now: f64) -> PyResult<()> {
        self.lane.receive(data, socket_addr(&remote)?, socket_addr(&local)?, now);
        Ok(())
    }

    fn tick(&mut self, now: f64) {
        self.lane.tick(now);
    }

    fn next_deadline(&self) -> Option<f64> {
        self.lane.next_deadline()
    }

    /// Datagrams ``pump`` and ``flush`` have sent so far.
    #[getter]
    fn datagrams_sent(&self) -> u64 {
        self.sent
    }

    /// What to send: ``[(data, remote, local), ...]`` (then empty).
    fn take_datagrams<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for (data, remote, local) in self.lane.outgoing.drain(..) {
            list.append((PyBytes::new(py, &data), address_tuple(py, &remote)?, address_tuple(py, &local)?))?;
        }
        Ok(list)
    }

    /// What happened: ``[(handle, kind, detail, time), ...]`` (then empty).
    fn take_outcomes<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for (handle, outcome, time) in self.lane.outcomes.drain(..) {
            let item = match outcome {
                Outcome::Phase1 => (handle, "phase1", py.None(), time).into_pyobject(py)?,
                Outcome::Phase2 => (handle, "phase2", py.None(), time).into_pyobject(py)?,
                Outcome::Retransmitted(n) => (handle, "retransmit", n, time).into_pyobject(py)?,
                Outcome::Failed(phase1, reason) => {
                    let (text, notify): (&str, Option<u16>) = match reason {
                        Reason::RetransmitLimit => ("retransmission limit reached; peer does not answer", None),
                        Reason::TimedOut => ("negotiation timed out", None),
                        Reason::Notify(t) => ("notify", Some(t)),
                        Reason::Deleted => ("deleted by peer", None),
                        Reason::Hash(1) => ("HASH_R does not verify (pre-shared keys differ?)", None),
                        Reason::Hash(_) => ("Quick Mode HASH(2) does not verify", None),
                        Reason::NotOffered(1) => ("responder chose a suite we did not offer", None),
                        Reason::NotOffered(_) => ("responder chose an ESP suite we did not offer", None),
                        Reason::BadKeyExchange => ("invalid key exchange value", None),
                        Reason::Malformed(_) => ("responder's message lacks a payload it must carry", None),
                    };
                    let kind = if phase1 { "failed1" } else { "failed2" };
                    (handle, kind, (text, notify), time).into_pyobject(py)?
                }
            };
            list.append(item)?;
        }
        Ok(list)
    }
}

fn suite(hash: &str, cipher: &str, group: u16) -> PyResult<Suite> {
    let hash = HashKind::from_name(hash).map_err(|e| PyValueError::new_err(format!("{e:?}")))?;
    let cipher = CipherKind::from_name(cipher).map_err(|e| PyValueError::new_err(format!("{e:?}")))?;
    Ok(Suite { hash, cipher, group })
}

/// The gateway's responder lane (see `rust/express/responder.rs`); `FrontDoor.drain`
/// feeds it. Exports are tuples (``ikecore.engine.express.Export`` names the fields).
#[pyclass(name = "ExpressResponder", module = "ikecore._core")]
pub struct PyExpressResponder {
    pub lane: Responder,
}

/// The key fields of an export (empty when it has none).
#[derive(Default)]
struct Phase1Keys<'a> {
    skeyid: &'a [u8],
    skeyid_d: &'a [u8],
    skeyid_a: &'a [u8],
    skeyid_e: &'a [u8],
    key: &'a [u8],
    iv: &'a [u8],
}

impl<'a> Phase1Keys<'a> {
    fn of(k: &'a Phase1) -> Phase1Keys<'a> {
        Phase1Keys { skeyid: k.skeyid(), skeyid_d: &k.skeyid_d, skeyid_a: &k.skeyid_a, skeyid_e: &k.skeyid_e,
                     key: &k.key, iv: &k.iv }
    }
}

fn export_tuple<'py>(py: Python<'py>, e: &Export) -> PyResult<Bound<'py, PyTuple>> {
    let b = |v: &[u8]| PyBytes::new(py, v);
    let none = Phase1Keys::default();
    let k = e.keys.as_ref().map(Phase1Keys::of).unwrap_or(none);
    let qm = match &e.qm {
        None => py.None().into_bound(py),
        Some(q) => {
            let first = (q.esp_tag, q.message_id, q.started, b(&q.ni), b(&q.nr), b(&q.spi_in), b(&q.spi_out));
            let second = (b(&q.id_ci), b(&q.id_cr), b(&q.iv), b(&q.last_received), b(&q.last_sent), b(&q.keymat_in),
                          b(&q.keymat_out));
            (first, second).into_pyobject(py)?.into_any()
        }
    };
    let head = (e.tag, e.stage as u8, b(&e.cky_i), b(&e.cky_r), address_tuple(py, &e.local)?, address_tuple(py, &e.remote)?,
                e.marker, e.started, e.established).into_pyobject(py)?;
    let dh = (b(&e.g_xi), b(&e.g_xr), b(&e.ni), b(&e.nr)).into_pyobject(py)?;
    let keys = (b(k.skeyid), b(k.skeyid_d), b(k.skeyid_a), b(k.skeyid_e), b(k.key), b(k.iv)).into_pyobject(py)?;
    let rest = (b(&e.peer_id), b(&e.my_id), e.initial_contact, b(&e.last_received), b(&e.last_sent), qm)
        .into_pyobject(py)?;
    (head, dh, keys, rest).into_pyobject(py)
}

#[pymethods]
impl PyExpressResponder {
    /// ``thread``: compute g^xy and make key pairs on a thread of the lane's own.
    #[new]
    #[pyo3(signature = (negotiation_timeout, thread = true))]
    fn new(negotiation_timeout: f64, thread: bool) -> Self {
        PyExpressResponder { lane: Responder::new(negotiation_timeout, thread) }
    }

    /// Register what the engine decided about the offer with this digest.
    #[pyo3(signature = (digest, *, tag, hash, cipher, group, psk, sa_b, nat_d, my_id))]
    #[allow(clippy::too_many_arguments)]
    fn add_offer(&mut self, digest: &[u8], tag: u32, hash: &str, cipher: &str, group: u16, psk: &[u8], sa_b: &[u8],
                 nat_d: Option<u8>, my_id: Option<Vec<u8>>) -> PyResult<()> {
        let digest = <[u8; 32]>::try_from(digest).map_err(|_| PyValueError::new_err("digest must be 32 bytes"))?;
        let profile = OfferProfile { tag, suite: suite(hash, cipher, group)?, psk: Zeroizing::new(psk.to_vec()),
                                     sa_b: sa_b.to_vec(), nat_d, my_id };
        self.lane.add_offer(digest, profile);
        Ok(())
    }

    fn forget_offer(&mut self, digest: &[u8]) -> bool {
        <[u8; 32]>::try_from(digest).is_ok_and(|d| self.lane.forget_offer(&d))
    }

    /// Register the engine's answer (``reply``: our SA payload body, one proposal with a
    /// 4-byte SPI) to Quick Mode offers shaped like ``offer`` (an SA payload body).
    /// False when either does not parse or that shape has its answer already.
    /// ``lifetime``: the data of the RESPONDER-LIFETIME notify the engine added, if any.
    /// Only offers of one proposal are taken (the engine's choice names its SPI).
    #[pyo3(signature = (offer, tag, reply, keymat_len, lifetime = None))]
    fn add_esp(&mut self, offer: &[u8], tag: u32, reply: &[u8], keymat_len: usize, lifetime: Option<Vec<u8>>) -> bool {
        let (Some((shape, 1)), Some(reply_shape)) = (offer_shape_counted(offer), offer_shape(reply)) else { return false };
        if reply.get(14) != Some(&4) || reply.len() < 20 {
            return false;
        }
        self.lane.add_esp(shape, EspProfile { tag, reply: reply_shape, spi_at: 16, keymat_len, lifetime })
    }

    fn add_spis(&mut self, spis: Vec<Vec<u8>>) {
        self.lane.add_spis(spis.into_iter().filter_map(|s| <[u8; 4]>::try_from(s.as_slice()).ok()));
    }

    #[getter]
    fn spare_spis(&self) -> usize {
        self.lane.spare_spis()
    }

    #[getter]
    fn held(&self) -> usize {
        self.lane.held()
    }

    #[getter]
    fn half_open(&self) -> usize {
        self.lane.half_open()
    }

    /// Python's grant before a batch: how many more negotiations may start here, and the
    /// most half-open ones one source may have.
    fn grant(&mut self, capacity: usize, per_source: u32) {
        self.lane.capacity = capacity;
        self.lane.per_source_limit = per_source;
    }

    fn tick(&mut self, now: f64) {
        self.lane.tick(now);
    }

    fn next_deadline(&self) -> Option<f64> {
        self.lane.next_deadline()
    }

    /// The exports since the last call, in order.
    fn take_exports<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for e in self.lane.exports.drain(..) {
            list.append(export_tuple(py, &e)?)?;
        }
        Ok(list)
    }

    /// ``({(sent, exchange type, message number): count}, taken, declined, exported)``
    /// since the last call.
    fn take_counters<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let c = std::mem::take(&mut self.lane.counters);
        let d = pyo3::types::PyDict::new(py);
        for ((sent, exchange, number), count) in c.messages {
            d.set_item((sent, exchange, number), count)?;
        }
        (d, c.taken, c.declined, c.exported).into_pyobject(py)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyExpressInitiator>()?;
    m.add_class::<PyExpressResponder>()
}
