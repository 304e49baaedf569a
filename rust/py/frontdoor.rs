//! Python wrappers for `crate::frontdoor` and `crate::udpbatch`: the gateway's batched
//! receive fast path (`FrontDoor`), a batch receiver for generators (`UdpReceiver`),
//! `udp_send_from`, and the stateless cookie formula (`stateless_cookie`,
//! `offer_digest`) that `ikecore.flood` uses.
//!
//! System calls run with the GIL released (`py.detach`); the pyclasses are not
//! frozen, so a second thread using the same object gets a borrow error, never a
//! deadlock.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::express::responder as express;
use crate::frontdoor::{offer_digest as digest_of, stateless_cookie as cookie_of, FrontDoor, Verdict, NON_ESP_MARKER};
use crate::udpbatch::{endpoint_bytes, send_batch, Outgoing, RecvBatch, Received};

use super::cookies::PyCookieTable;
use super::express::PyExpressResponder;

fn socket_addr(address: &str, port: u16) -> PyResult<SocketAddr> {
    let ip: IpAddr = address.parse().map_err(|_| PyValueError::new_err(format!("'{address}' is not an IP address")))?;
    Ok(SocketAddr::new(ip, port))
}

fn address_tuple<'py>(py: Python<'py>, addr: &SocketAddr) -> PyResult<Bound<'py, PyTuple>> {
    (addr.ip().to_string(), addr.port()).into_pyobject(py)
}

fn digest32(value: &[u8]) -> PyResult<[u8; 32]> {
    <[u8; 32]>::try_from(value).map_err(|_| PyValueError::new_err("digest must be 32 bytes"))
}

/// The gateway's receive fast path for one engine (see `rust/frontdoor.rs`).
#[pyclass(name = "FrontDoor", module = "ikecore._core")]
pub struct PyFrontDoor {
    door: FrontDoor,
    batch: RecvBatch,
    received: Vec<Received>,
    cookies: Option<Py<PyCookieTable>>,
}

#[pymethods]
impl PyFrontDoor {
    /// `cookies`: the engine's CookieTable (a message 1 it already knows goes to Python).
    #[new]
    #[pyo3(signature = (max_offer_size, max_templates, cookies = None, batch = 64))]
    fn new(max_offer_size: usize, max_templates: usize, cookies: Option<Py<PyCookieTable>>, batch: usize) -> Self {
        PyFrontDoor { door: FrontDoor::new(max_offer_size, max_templates), batch: RecvBatch::new(batch), received: Vec::new(), cookies }
    }

    /// Mirror the admission control: stateless on/off, the current 32-byte cookie
    /// secret (None: no stateless replies) and the engine time it is current until.
    #[pyo3(signature = (stateless, secret, valid_until))]
    fn set_state(&mut self, stateless: bool, secret: Option<&[u8]>, valid_until: f64) -> PyResult<()> {
        let secret = secret.map(digest32).transpose()?;
        self.door.set_state(stateless, secret, valid_until);
        Ok(())
    }

    /// Register Python's message 2 for the offer with this digest; False if refused.
    fn add_template(&mut self, digest: &[u8], message2: &[u8]) -> PyResult<bool> {
        Ok(self.door.add_template(digest32(digest)?, message2))
    }

    /// Forget an offer's template; True when it was known.
    fn forget_template(&mut self, digest: &[u8]) -> PyResult<bool> {
        Ok(self.door.forget_template(&digest32(digest)?))
    }

    fn clear_templates(&mut self) {
        self.door.clear_templates();
    }

    #[getter]
    fn template_count(&self) -> usize {
        self.door.template_count()
    }

    /// The counters since the last call, as a dict (then zero again).
    fn take_counters<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.door.take_counters();
        let d = PyDict::new(py);
        d.set_item("received", c.received)?;
        d.set_item("stateless_replies", c.stateless_replies)?;
        d.set_item("to_python", c.to_python)?;
        d.set_item("express", c.express)?;
        d.set_item("truncated", c.truncated)?;
        d.set_item("send_failures", c.send_failures)?;
        d.set_item("receive_errors", c.receive_errors)?;
        Ok(d)
    }

    /// Read up to `max_datagrams` from non-blocking socket `fd` bound to `local`
    /// (batches of `recvmmsg`), answer what the fast path can (one `sendmmsg` per
    /// batch) and return the rest as ``[(data, (address, port), local), ...]`` for the
    /// engine, ``local`` being the address the datagram was sent to when the socket
    /// reports it (IP_PKTINFO / IPV6_RECVPKTINFO), else None. On a wildcard socket
    /// only datagrams with that address can be answered here. `fast`: False passes
    /// everything on. Socket errors are counted, never raised.
    /// `lane`: the gateway's express responder lane (``rust/express/responder.rs``), which
    /// takes message 3 onwards of the negotiations it can run; its exports are queued in it.
    #[pyo3(signature = (fd, local, now, max_datagrams = 1024, fast = true, lane = None))]
    #[allow(clippy::too_many_arguments)]
    fn drain<'py>(&mut self, py: Python<'py>, fd: i32, local: (String, u16), now: f64, max_datagrams: usize,
                  fast: bool, mut lane: Option<PyRefMut<'py, PyExpressResponder>>) -> PyResult<Bound<'py, PyList>> {
        let bound = socket_addr(&local.0, local.1)?;
        let wildcard = bound.ip().is_unspecified();
        let bound_bytes = endpoint_bytes(&bound);
        let list = PyList::empty(py);
        let mut total = 0usize;
        while total < max_datagrams {
            let PyFrontDoor { door, batch, received, cookies } = self;
            let n = match py.detach(|| batch.recv(fd, received)) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => {
                    door.counters.receive_errors += 1;
                    break;
                }
            };
            total += n;
            door.counters.received += n as u64;
            let mut replies: Vec<(Vec<u8>, SocketAddr, Option<Ipv4Addr>)> = Vec::new();
            let mut lane_replies: Vec<Vec<u8>> = Vec::new();
            {
                let table = cookies.as_ref().map(|c| c.get().table());
                for (i, r) in received.iter().enumerate() {
                    if r.truncated {
                        door.counters.truncated += 1;
                        continue;
                    }
                    let Some(source) = r.source else {
                        door.counters.receive_errors += 1;
                        continue;
                    };
                    let data = batch.data(i, r.len);
                    let mut verdict = Verdict::Python;
                    let local_addr = match (wildcard, r.dest) {
                        (false, _) => Some(bound),
                        (true, Some(ip)) if !ip.is_unspecified() => Some(SocketAddr::new(ip, bound.port())),
                        (true, _) => None,
                    };
                    // on a wildcard socket the reply must leave from the address the peer
                    // used: IPv4 only (send_batch sets IPv4 sources); IPv6 goes to Python
                    let answerable = !wildcard || local_addr.is_some_and(|a| a.is_ipv4());
                    if let (true, true, Some(local_addr)) = (fast, answerable, local_addr) {
                        let ports = local_addr.port() != 500 && source.port() != 500;
                        if let Some(first) = door.candidate(data, ports, now) {
                            let source_bytes = endpoint_bytes(&source);
                            let known = table.as_ref().is_some_and(|t| {
                                matches!(t.lookup(first.message), Ok(Some(_))) || t.find_first(&source_bytes, first.message).is_some()
                            });
                            if !known {
                                let own;
                                let local_bytes: &[u8] = if wildcard {
                                    own = endpoint_bytes(&local_addr);
                                    &own
                                } else {
                                    &bound_bytes
                                };
                                verdict = door.answer(first, &source_bytes, local_bytes, ports, now);
                            }
                        }
                    }
                    if verdict == Verdict::Python && fast {
                        if let (Some(lane), Some(local_addr)) = (lane.as_mut(), local_addr.filter(|_| answerable)) {
                            let ports = local_addr.port() != 500 && source.port() != 500;
                            let (message, marker) = match data.strip_prefix(&NON_ESP_MARKER) {
                                Some(rest) if ports => (rest, true),
                                _ => (data, false),
                            };
                            let known = table.as_ref().is_some_and(|t| matches!(t.lookup(message), Ok(Some(_))));
                            let before = lane_replies.len();
                            if lane.lane.receive(message, marker, source, local_addr, door.secret(now), known, now,
                                                 &mut lane_replies) == express::Verdict::Handled {
                                let from = match local_addr {
                                    SocketAddr::V4(a) if wildcard => Some(*a.ip()),
                                    _ => None,
                                };
                                for reply in lane_replies.drain(before..) {
                                    replies.push((reply, source, from));
                                }
                                door.counters.express += 1;
                                continue;
                            }
                        }
                    }
                    match verdict {
                        Verdict::Reply(reply) => {
                            door.counters.stateless_replies += 1;
                            let from = match local_addr {
                                Some(SocketAddr::V4(a)) if wildcard => Some(*a.ip()),
                                _ => None,
                            };
                            replies.push((reply, source, from));
                        }
                        Verdict::Python => {
                            door.counters.to_python += 1;
                            let dest = if wildcard { local_addr.map(|a| a.ip().to_string()) } else { None };
                            list.append((PyBytes::new(py, data), address_tuple(py, &source)?, dest))?;
                        }
                    }
                }
            }
            if !replies.is_empty() {
                let out: Vec<Outgoing<'_>> = replies.iter().map(|(d, a, from)| Outgoing { data: d, dest: *a, source: *from }).collect();
                let (_sent, failed) = py.detach(|| send_batch(fd, &out));
                door.counters.send_failures += failed as u64;
            }
            if n < batch.slots() {
                break;
            }
        }
        Ok(list)
    }

    fn __repr__(&self) -> String {
        format!("FrontDoor(templates={})", self.door.template_count())
    }
}

/// Batch receiver for one socket (load and flood generators).
#[pyclass(name = "UdpReceiver", module = "ikecore._core")]
pub struct PyUdpReceiver {
    batch: RecvBatch,
    received: Vec<Received>,
}

#[pymethods]
impl PyUdpReceiver {
    #[new]
    #[pyo3(signature = (batch = 64))]
    fn new(batch: usize) -> Self {
        PyUdpReceiver { batch: RecvBatch::new(batch), received: Vec::new() }
    }

    /// Read and drop up to `max_datagrams` waiting datagrams; returns (count, bytes).
    /// Raises OSError for a socket error other than EAGAIN.
    #[pyo3(signature = (fd, max_datagrams = 65536))]
    fn discard(&mut self, py: Python<'_>, fd: i32, max_datagrams: usize) -> PyResult<(usize, usize)> {
        let (mut count, mut bytes) = (0usize, 0usize);
        while count < max_datagrams {
            let PyUdpReceiver { batch, received } = self;
            let n = py.detach(|| batch.recv(fd, received)).map_err(|e| PyOSError::new_err(e.to_string()))?;
            count += n;
            bytes += received.iter().map(|r| r.len).sum::<usize>();
            if n < batch.slots() {
                break;
            }
        }
        Ok((count, bytes))
    }

    /// Read up to `max_datagrams` waiting datagrams: ``[(data, (address, port)), ...]``.
    #[pyo3(signature = (fd, max_datagrams = 1024))]
    fn recv<'py>(&mut self, py: Python<'py>, fd: i32, max_datagrams: usize) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        while list.len() < max_datagrams {
            let PyUdpReceiver { batch, received } = self;
            let n = py.detach(|| batch.recv(fd, received)).map_err(|e| PyOSError::new_err(e.to_string()))?;
            for (i, r) in received.iter().enumerate() {
                if let (Some(source), false) = (r.source, r.truncated) {
                    list.append((PyBytes::new(py, batch.data(i, r.len)), address_tuple(py, &source)?))?;
                }
            }
            if n < batch.slots() {
                break;
            }
        }
        Ok(list)
    }
}

/// `sendmmsg` the datagrams to `dest`, datagram i from IPv4 address `sources[i]`
/// (IP_PKTINFO; the socket must be bound to 0.0.0.0). Returns (sent, failed).
#[pyfunction]
fn udp_send_from(py: Python<'_>, fd: i32, datagrams: Vec<PyBackedBytes>, sources: Vec<String>, dest: (String, u16)) -> PyResult<(usize, usize)> {
    if datagrams.len() != sources.len() {
        return Err(PyValueError::new_err("udp_send_from: one source per datagram"));
    }
    let dest = socket_addr(&dest.0, dest.1)?;
    let mut ips: Vec<Ipv4Addr> = Vec::with_capacity(sources.len());
    for s in &sources {
        ips.push(s.parse().map_err(|_| PyValueError::new_err(format!("'{s}' is not an IPv4 address")))?);
    }
    let out: Vec<Outgoing<'_>> = datagrams.iter().zip(&ips).map(|(d, ip)| Outgoing { data: d, dest, source: Some(*ip) }).collect();
    Ok(py.detach(|| send_batch(fd, &out)))
}

/// The stateless responder cookie of ikecore.flood (the one definition of the formula):
/// ``digest[:2] || HMAC-SHA256(secret, cky_i | source | local | digest)[:6]``.
#[pyfunction]
fn stateless_cookie<'py>(py: Python<'py>, secret: &[u8], cky_i: &[u8], source: &[u8], local: &[u8], digest: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    Ok(PyBytes::new(py, &cookie_of(secret, cky_i, source, local, &digest32(digest)?)))
}

/// SHA-256 of an offer (message 1's first payload type and payload chain).
#[pyfunction]
fn offer_digest<'py>(py: Python<'py>, offer: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &digest_of(offer))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFrontDoor>()?;
    m.add_class::<PyUdpReceiver>()?;
    m.add_function(wrap_pyfunction!(udp_send_from, m)?)?;
    m.add_function(wrap_pyfunction!(stateless_cookie, m)?)?;
    m.add_function(wrap_pyfunction!(offer_digest, m)?)?;
    Ok(())
}
