//! Python wrapper for `crate::express::initiator`: `ExpressInitiator`, the load
//! generator's lane (``ikecore.loadtest.express`` builds its profile from the engine's
//! own policy and messages).

use std::net::{IpAddr, SocketAddr};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use zeroize::Zeroizing;

use crate::crypto::cipher::CipherKind;
use crate::crypto::prf::HashKind;
use crate::express::initiator::{Initiator, NatVariant, Outcome, Profile, Reason};
use crate::express::keys::Suite;

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
}

#[pymethods]
impl PyExpressInitiator {
    #[new]
    #[pyo3(signature = (*, hash, cipher, group, psk, mm1_first, mm1_chain, esp_offer, esp_spi_at, keymat_len,
                        nat_variants, natt_port, retransmit_timeout, retransmit_backoff, retransmit_tries,
                        negotiation_timeout))]
    #[allow(clippy::too_many_arguments)]
    fn new(hash: &str, cipher: &str, group: u16, psk: &[u8], mm1_first: u8, mm1_chain: &[u8], esp_offer: &[u8],
           esp_spi_at: usize, keymat_len: usize, nat_variants: Vec<(Vec<u8>, u8, Vec<u8>)>, natt_port: u16,
           retransmit_timeout: f64, retransmit_backoff: f64, retransmit_tries: u32, negotiation_timeout: f64)
           -> PyResult<Self> {
        let hash = HashKind::from_name(hash).map_err(|e| PyValueError::new_err(format!("{e:?}")))?;
        let cipher = CipherKind::from_name(cipher).map_err(|e| PyValueError::new_err(format!("{e:?}")))?;
        let profile = Profile {
            suite: Suite { hash, cipher, group },
            psk: Zeroizing::new(psk.to_vec()),
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
        Ok(PyExpressInitiator { lane })
    }

    /// Start one negotiation (sends MM1); returns its handle.
    fn start(&mut self, local: (String, u16), remote: (String, u16), now: f64) -> PyResult<u32> {
        Ok(self.lane.start(socket_addr(&local)?, socket_addr(&remote)?, now))
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

    fn forget(&mut self, handle: u32) {
        self.lane.forget(handle);
    }

    #[getter]
    fn in_flight(&self) -> usize {
        self.lane.in_flight()
    }

    /// ``(invalid, unknown cookie, repeats)`` received and dropped so far.
    #[getter]
    fn dropped(&self) -> (u64, u64, u64) {
        let c = self.lane.counters;
        (c.invalid, c.unknown_cookie, c.repeats)
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyExpressInitiator>()
}
