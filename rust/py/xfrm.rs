//! Python wrapper for `crate::xfrm` (the `XfrmSocket` class): the Linux kernel's IPsec
//! over `NETLINK_XFRM`, which `ikecore.gateway.xfrm.XfrmDriver` drives.
//!
//! A refusal of the kernel raises `OSError(errno, text)` whose text names the request,
//! the errno and the kernel's own words ("XFRM_MSG_NEWSA: EPROTONOSUPPORT (Requested type
//! not found)"). Keys are read through the buffer protocol (bytes or bytearray) into
//! zeroizing memory; system calls run with the GIL released.

use std::net::IpAddr;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use zeroize::Zeroizing;

use crate::xfrm::msg::{self, Encap, Key, Lifetime, Notification, PolicyInfo, SaInfo, Selector, Template};
use crate::xfrm::socket::XfrmSocket;
use crate::xfrm::{algs, XfrmError};

fn os_error(err: XfrmError) -> PyErr {
    let message = err.to_string();
    if err.errno == 0 {
        PyOSError::new_err(message)
    } else {
        PyOSError::new_err((err.errno, message))
    }
}

fn ip_of(text: &str, what: &str) -> PyResult<IpAddr> {
    text.parse().map_err(|_| PyValueError::new_err(format!("{what}: '{text}' is not an IP address")))
}

fn mode_of(mode: &str) -> PyResult<u8> {
    match mode {
        "tunnel" => Ok(msg::XFRM_MODE_TUNNEL),
        "transport" => Ok(msg::XFRM_MODE_TRANSPORT),
        _ => Err(PyValueError::new_err(format!("mode: '{mode}' is not tunnel or transport"))),
    }
}

fn dir_of(dir: &str) -> PyResult<u8> {
    match dir {
        "in" => Ok(msg::XFRM_POLICY_IN),
        "out" => Ok(msg::XFRM_POLICY_OUT),
        "fwd" => Ok(msg::XFRM_POLICY_FWD),
        _ => Err(PyValueError::new_err(format!("dir: '{dir}' is not in, out or fwd"))),
    }
}

fn dir_name(dir: u8) -> &'static str {
    match dir {
        msg::XFRM_POLICY_IN => "in",
        msg::XFRM_POLICY_OUT => "out",
        msg::XFRM_POLICY_FWD => "fwd",
        _ => "?",
    }
}

fn selector_of(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> PyResult<Selector> {
    Selector::from_cidrs(src, dst, proto, sport, dport).map_err(|e| PyValueError::new_err(e.to_string()))
}

fn limit(value: Option<u64>) -> u64 {
    value.filter(|v| *v > 0).unwrap_or(msg::XFRM_INF)
}

fn put_selector(d: &Bound<'_, PyDict>, prefix: &str, selector: &Option<Selector>) -> PyResult<()> {
    if let Some(s) = selector {
        d.set_item(format!("{prefix}src"), s.src_text())?;
        d.set_item(format!("{prefix}dst"), s.dst_text())?;
        d.set_item(format!("{prefix}proto"), s.proto)?;
        d.set_item(format!("{prefix}sport"), s.sport)?;
        d.set_item(format!("{prefix}dport"), s.dport)?;
    }
    Ok(())
}

/// A `NETLINK_XFRM` socket (see `rust/xfrm/`): requests, or with `notifications=True`
/// the kernel's ACQUIRE and EXPIRE messages (non-blocking; watch `fileno()`).
#[pyclass(name = "XfrmSocket", module = "ikecore._core")]
pub struct PyXfrmSocket {
    socket: XfrmSocket,
}

#[pymethods]
impl PyXfrmSocket {
    #[new]
    #[pyo3(signature = (notifications = false))]
    fn new(notifications: bool) -> PyResult<Self> {
        let groups = if notifications { msg::KEY_MANAGER_GROUPS } else { 0 };
        Ok(PyXfrmSocket { socket: XfrmSocket::open(groups).map_err(os_error)? })
    }

    fn fileno(&self) -> i32 {
        self.socket.fileno()
    }

    /// Notifications the kernel dropped because the socket's queue was full.
    #[getter]
    fn overruns(&self) -> u64 {
        self.socket.overruns
    }

    /// XFRM_MSG_ALLOCSPI (Get SPI): a larval SA from `source` to `destination` (us);
    /// returns its SPI, in [spi_min, spi_max].
    #[pyo3(signature = (source, destination, *, reqid = 0, mode = "tunnel", spi_min = 0xc000_0000, spi_max = 0xcfff_ffff))]
    #[allow(clippy::too_many_arguments)]
    fn alloc_spi(&mut self, py: Python<'_>, source: &str, destination: &str, reqid: u32, mode: &str, spi_min: u32,
                 spi_max: u32) -> PyResult<u32> {
        if spi_min < 256 || spi_min > spi_max {
            return Err(PyValueError::new_err("spi_min..spi_max must be a range above 255 (RFC 4303: 1-255 are reserved)"));
        }
        let info = SaInfo {
            selector: None,
            daddr: ip_of(destination, "destination")?,
            spi: 0,
            proto: msg::IPPROTO_ESP,
            saddr: ip_of(source, "source")?,
            lifetime: Lifetime { soft_bytes: 0, hard_bytes: 0, soft_packets: 0, hard_packets: 0, ..Lifetime::INFINITE },
            reqid,
            mode: mode_of(mode)?,
            replay_window: 0,
            flags: 0,
        };
        let socket = &mut self.socket;
        py.detach(|| socket.alloc_spi(&info, spi_min, spi_max)).map_err(os_error)
    }

    /// XFRM_MSG_NEWSA (Key Addition) or, with `update`, XFRM_MSG_UPDSA (Key Update). The
    /// algorithms are ikecore's ESP names (`aes128`, `sha256`); byte limits of None or 0
    /// are none, seconds of 0 are none; `encap`: (source port, destination port) of UDP
    /// encapsulation; `selector`: (source CIDR, destination CIDR) of the inner traffic.
    #[pyo3(signature = (source, destination, spi, encryption, encryption_key, integrity, integrity_key, *,
                        update = false, mode = "tunnel", reqid = 0, selector = None, soft_bytes = None,
                        hard_bytes = None, soft_seconds = 0, hard_seconds = 0, encap = None, replay_window = 32))]
    #[allow(clippy::too_many_arguments)]
    fn add_sa(&mut self, py: Python<'_>, source: &str, destination: &str, spi: u32, encryption: &str,
              encryption_key: PyBuffer<u8>, integrity: &str, integrity_key: PyBuffer<u8>, update: bool, mode: &str,
              reqid: u32, selector: Option<(String, String)>, soft_bytes: Option<u64>, hard_bytes: Option<u64>,
              soft_seconds: u64, hard_seconds: u64, encap: Option<(u16, u16)>, replay_window: u8) -> PyResult<()> {
        let enc = algs::encryption(encryption)
            .ok_or_else(|| PyValueError::new_err(format!("encryption: '{encryption}' has no kernel algorithm")))?;
        let int = algs::integrity(integrity)
            .ok_or_else(|| PyValueError::new_err(format!("integrity: '{integrity}' has no kernel algorithm")))?;
        let enc_key = Zeroizing::new(encryption_key.to_vec(py)?);
        let int_key = Zeroizing::new(integrity_key.to_vec(py)?);
        if enc_key.len() != enc.key_bytes || int_key.len() != int.key_bytes {
            return Err(PyValueError::new_err(format!(
                "keys of {} and {} bytes do not fit {encryption} ({}) and {integrity} ({})",
                enc_key.len(), int_key.len(), enc.key_bytes, int.key_bytes)));
        }
        let selector = selector.map(|(s, d)| selector_of(&s, &d, 0, 0, 0)).transpose()?;
        let info = SaInfo {
            selector,
            daddr: ip_of(destination, "destination")?,
            spi,
            proto: msg::IPPROTO_ESP,
            saddr: ip_of(source, "source")?,
            lifetime: Lifetime {
                soft_bytes: limit(soft_bytes),
                hard_bytes: limit(hard_bytes),
                soft_add_seconds: soft_seconds,
                hard_add_seconds: hard_seconds,
                ..Lifetime::INFINITE
            },
            reqid,
            mode: mode_of(mode)?,
            replay_window,
            flags: 0,
        };
        let request = msg::new_sa(
            update,
            &info,
            Some(Key { kernel_name: enc.kernel_name, key: &enc_key }),
            Some((Key { kernel_name: int.kernel_name, key: &int_key }, int.truncation_bits)),
            encap.map(|(sport, dport)| Encap { sport, dport }),
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let socket = &mut self.socket;
        py.detach(|| socket.request(&request)).map(|_| ()).map_err(os_error)
    }

    /// XFRM_MSG_DELSA: the SA (`destination`, `spi`) of ESP.
    #[pyo3(signature = (destination, spi, source = None))]
    fn delete_sa(&mut self, py: Python<'_>, destination: &str, spi: u32, source: Option<&str>) -> PyResult<()> {
        let daddr = ip_of(destination, "destination")?;
        let saddr = source.map(|s| ip_of(s, "source")).transpose()?;
        let request = msg::del_sa(&daddr, spi, msg::IPPROTO_ESP, saddr.as_ref());
        let socket = &mut self.socket;
        py.detach(|| socket.request(&request)).map(|_| ()).map_err(os_error)
    }

    /// XFRM_MSG_UPDPOLICY (add or replace; XFRM_MSG_NEWPOLICY with `update=False`): traffic
    /// `src` -> `dst` (CIDR) in direction `dir` ("in", "out", "fwd") at `priority` (lower is
    /// preferred). `template`: (tunnel source, tunnel destination, reqid) of the ESP SA
    /// it requires; None with `block=False`: clear text allowed. `hard_seconds`: the
    /// kernel removes the policy after that long (0: never).
    #[pyo3(signature = (src, dst, dir, priority, template = None, *, mode = "tunnel", block = false, update = true,
                        proto = 0, sport = 0, dport = 0, hard_seconds = 0))]
    #[allow(clippy::too_many_arguments)]
    fn add_policy(&mut self, py: Python<'_>, src: &str, dst: &str, dir: &str, priority: u32,
                  template: Option<(String, String, u32)>, mode: &str, block: bool, update: bool, proto: u8, sport: u16,
                  dport: u16, hard_seconds: u64) -> PyResult<()> {
        let info = PolicyInfo {
            selector: selector_of(src, dst, proto, sport, dport)?,
            lifetime: Lifetime { hard_add_seconds: hard_seconds, ..Lifetime::INFINITE },
            priority,
            dir: dir_of(dir)?,
            action: if block { msg::XFRM_POLICY_BLOCK } else { msg::XFRM_POLICY_ALLOW },
        };
        let template = match template {
            Some((saddr, daddr, reqid)) => Some(Template {
                daddr: ip_of(&daddr, "template destination")?,
                saddr: ip_of(&saddr, "template source")?,
                proto: msg::IPPROTO_ESP,
                mode: mode_of(mode)?,
                reqid,
            }),
            None => None,
        };
        let request = msg::new_policy(update, &info, template.as_ref());
        let socket = &mut self.socket;
        py.detach(|| socket.request(&request)).map(|_| ()).map_err(os_error)
    }

    /// XFRM_MSG_DELPOLICY by selector and direction.
    #[pyo3(signature = (src, dst, dir, *, proto = 0, sport = 0, dport = 0))]
    #[allow(clippy::too_many_arguments)]
    fn delete_policy(&mut self, py: Python<'_>, src: &str, dst: &str, dir: &str, proto: u8, sport: u16,
                     dport: u16) -> PyResult<()> {
        let request = msg::del_policy(&selector_of(src, dst, proto, sport, dport)?, dir_of(dir)?);
        let socket = &mut self.socket;
        py.detach(|| socket.request(&request)).map(|_| ()).map_err(os_error)
    }

    /// The notifications waiting (never blocks): dicts with "type" = "acquire",
    /// "expire" or "policy_expire".
    #[pyo3(signature = (max_datagrams = 64))]
    fn notifications<'py>(&mut self, py: Python<'py>, max_datagrams: usize) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let socket = &mut self.socket;
        let list = py.detach(|| socket.notifications(max_datagrams)).map_err(os_error)?;
        let mut out = Vec::with_capacity(list.len());
        for n in list {
            let d = PyDict::new(py);
            match n {
                Notification::Acquire { daddr, saddr, proto, selector, policy_selector, policy_index, priority, dir, reqid, seq } => {
                    d.set_item("type", "acquire")?;
                    d.set_item("remote", daddr.to_string())?;
                    d.set_item("local", saddr.to_string())?;
                    d.set_item("proto", proto)?;
                    put_selector(&d, "flow_", &selector)?;
                    put_selector(&d, "policy_", &policy_selector)?;
                    d.set_item("policy_index", policy_index)?;
                    d.set_item("priority", priority)?;
                    d.set_item("dir", dir_name(dir))?;
                    d.set_item("reqid", reqid)?;
                    d.set_item("seq", seq)?;
                }
                Notification::Expire { state, hard } => {
                    d.set_item("type", "expire")?;
                    d.set_item("hard", hard)?;
                    d.set_item("spi", PyBytes::new(py, &state.spi.to_be_bytes()))?;
                    d.set_item("destination", state.daddr.to_string())?;
                    d.set_item("source", state.saddr.to_string())?;
                    d.set_item("proto", state.proto)?;
                    d.set_item("reqid", state.reqid)?;
                    d.set_item("bytes", state.bytes)?;
                    d.set_item("packets", state.packets)?;
                }
                Notification::PolicyExpire { selector, dir, index, hard } => {
                    d.set_item("type", "policy_expire")?;
                    put_selector(&d, "", &selector)?;
                    d.set_item("dir", dir_name(dir))?;
                    d.set_item("index", index)?;
                    d.set_item("hard", hard)?;
                }
            }
            out.push(d);
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        format!("XfrmSocket(fd={})", self.socket.fileno())
    }
}

/// The kernel's crypto API names for ikecore's ESP algorithm names:
/// (encryption name, key bytes, integrity name, key bytes, ICV bits), None when unknown.
fn xfrm_algorithms(encryption: &str, integrity: &str) -> Option<(&'static str, usize, &'static str, usize, u32)> {
    let e = algs::encryption(encryption)?;
    let i = algs::integrity(integrity)?;
    Some((e.kernel_name, e.key_bytes, i.kernel_name, i.key_bytes, i.truncation_bits))
}

#[pyfunction(name = "xfrm_algorithms")]
fn py_xfrm_algorithms(encryption: &str, integrity: &str) -> Option<(&'static str, usize, &'static str, usize, u32)> {
    xfrm_algorithms(encryption, integrity)
}

/// Let every packet of UDP socket `fd` bypass the XFRM policies, in and out (`ipv6`: an
/// AF_INET6 socket); the gateway's IKE sockets, as strongSwan does.
#[pyfunction(name = "xfrm_socket_bypass")]
fn py_xfrm_socket_bypass(fd: i32, ipv6: bool) -> PyResult<()> {
    crate::xfrm::socket::bypass_policies(fd, ipv6).map_err(os_error)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyXfrmSocket>()?;
    m.add_function(wrap_pyfunction!(py_xfrm_algorithms, m)?)?;
    m.add_function(wrap_pyfunction!(py_xfrm_socket_bypass, m)?)?;
    Ok(())
}
