//! Python wrapper for `crate::esp` (the `EspDataplane` class): the userland ESP data
//! plane that `ikecore.gateway.userland.UserlandDriver` drives. Packets never pass
//! through Python on the TUN and raw socket paths (the data plane's own threads);
//! Python adds and deletes SAs, hands in ESP from the NAT-T socket and reads counters.
//! Keys are taken through the buffer protocol (bytes or bytearray) into memory that
//! is zeroized.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use zeroize::Zeroizing;

use crate::esp::crypto::{Encryption, Integrity};
use crate::esp::dataplane::{Dataplane, Shared};
use crate::esp::sa::{Counters, InboundSa, Lifetime, Net, OutboundSa, Transform};

fn spi_of(spi: &[u8]) -> PyResult<u32> {
    let b: [u8; 4] = spi.try_into().map_err(|_| PyValueError::new_err("an ESP SPI is 4 bytes"))?;
    Ok(u32::from_be_bytes(b))
}

fn ip_of(text: &str, what: &str) -> PyResult<IpAddr> {
    text.parse().map_err(|_| PyValueError::new_err(format!("{what}: '{text}' is not an IP address")))
}

fn net_of(text: &str, what: &str) -> PyResult<Net> {
    Net::parse(text).ok_or_else(|| PyValueError::new_err(format!("{what}: '{text}' is not an address prefix")))
}

fn secret(py: Python<'_>, key: &PyBuffer<u8>) -> PyResult<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(key.to_vec(py)?))
}

fn transform(py: Python<'_>, encryption: &str, encryption_key: &PyBuffer<u8>, integrity: &str, integrity_key: &PyBuffer<u8>) -> PyResult<Transform> {
    let enc = Encryption::from_name(encryption).ok_or_else(|| PyValueError::new_err(format!("ESP encryption '{encryption}' is not supported")))?;
    let int = Integrity::from_name(integrity).ok_or_else(|| PyValueError::new_err(format!("ESP integrity '{integrity}' is not supported")))?;
    let ek = secret(py, encryption_key)?;
    let ik = secret(py, integrity_key)?;
    Ok(Transform { encryption: enc, integrity: int, enc_key: ek.to_vec(), auth_key: ik.to_vec() })
}

fn counters_dict<'py>(py: Python<'py>, c: &Counters) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("packets", c.packets)?;
    d.set_item("bytes", c.bytes)?;
    d.set_item("replay_drops", c.replay_drops)?;
    d.set_item("icv_failures", c.icv_failures)?;
    d.set_item("padding_errors", c.padding_errors)?;
    d.set_item("malformed", c.malformed)?;
    d.set_item("policy_drops", c.policy_drops)?;
    Ok(d)
}

/// ESP in tunnel mode behind a TUN device (see `rust/esp/dataplane.rs`).
#[pyclass(name = "EspDataplane", module = "ikecore._core", frozen)]
pub struct PyEspDataplane {
    shared: Arc<Shared>,
    tun_name: Option<String>,
    running: Mutex<Option<Dataplane>>,
}

#[pymethods]
impl PyEspDataplane {
    /// Open (or create) TUN device `tun_name`, the raw ESP sockets, and start the
    /// threads. Raises OSError (e.g. EPERM without CAP_NET_ADMIN / CAP_NET_RAW).
    #[staticmethod]
    fn start(py: Python<'_>, tun_name: &str) -> PyResult<Self> {
        let name = tun_name.to_owned();
        let dp = py.detach(move || Dataplane::start(&name)).map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string())))?;
        Ok(PyEspDataplane { shared: dp.shared.clone(), tun_name: dp.tun_name.clone(), running: Mutex::new(Some(dp)) })
    }

    /// No device and no threads: `encapsulate` and `receive` return the packets.
    #[staticmethod]
    fn detached() -> Self {
        let dp = Dataplane::detached();
        PyEspDataplane { shared: dp.shared.clone(), tun_name: None, running: Mutex::new(Some(dp)) }
    }

    /// The TUN device's name (None when detached).
    #[getter]
    fn tun_name(&self) -> Option<String> {
        self.tun_name.clone()
    }

    /// Add an outbound SA for inner packets from `local_ts` to `remote_ts`, sent to
    /// `destination` as raw ESP (`port` 0) or UDP-encapsulated to `port` from (a
    /// duplicate of) the UDP socket `udp_fd` (the IKE SA's NAT-T socket).
    #[pyo3(signature = (spi, destination, encryption, encryption_key, integrity, integrity_key, local_ts, remote_ts, port = 0, soft_bytes = 0, hard_bytes = 0, udp_fd = None))]
    #[allow(clippy::too_many_arguments)]
    fn add_outbound(&self, py: Python<'_>, spi: &[u8], destination: &str, encryption: &str, encryption_key: PyBuffer<u8>, integrity: &str,
                    integrity_key: PyBuffer<u8>, local_ts: &str, remote_ts: &str, port: u16, soft_bytes: u64, hard_bytes: u64, udp_fd: Option<i32>) -> PyResult<()> {
        let spi = spi_of(spi)?;
        let dst = ip_of(destination, "destination")?;
        let lts = net_of(local_ts, "local_ts")?;
        let rts = net_of(remote_ts, "remote_ts")?;
        let t = transform(py, encryption, &encryption_key, integrity, &integrity_key)?;
        let life = Lifetime { soft_bytes, hard_bytes, ..Default::default() };
        let sa = OutboundSa::new(spi, &t, life).map_err(PyValueError::new_err)?;
        let fd = if let (true, Some(udp_fd)) = (port != 0, udp_fd) {
            let dup = unsafe { libc::fcntl(udp_fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Err(PyOSError::new_err(std::io::Error::last_os_error().to_string()));
            }
            dup
        } else {
            -1
        };
        self.shared.add_outbound(spi, dst, lts, rts, port, fd, sa);
        Ok(())
    }

    /// Add an inbound SA; inner packets must come from `remote_ts` (None: anywhere).
    #[pyo3(signature = (spi, encryption, encryption_key, integrity, integrity_key, remote_ts = None, soft_bytes = 0, hard_bytes = 0))]
    #[allow(clippy::too_many_arguments)]
    fn add_inbound(&self, py: Python<'_>, spi: &[u8], encryption: &str, encryption_key: PyBuffer<u8>, integrity: &str,
                   integrity_key: PyBuffer<u8>, remote_ts: Option<&str>, soft_bytes: u64, hard_bytes: u64) -> PyResult<()> {
        let spi = spi_of(spi)?;
        let rts = remote_ts.map(|t| net_of(t, "remote_ts")).transpose()?;
        let t = transform(py, encryption, &encryption_key, integrity, &integrity_key)?;
        let life = Lifetime { soft_bytes, hard_bytes, ..Default::default() };
        let sa = InboundSa::new(spi, &t, life, rts).map_err(PyValueError::new_err)?;
        self.shared.add_inbound(spi, sa);
        Ok(())
    }

    /// Remove inbound SA `spi` (its keys zeroized); True when it was there.
    fn delete_inbound(&self, spi: &[u8]) -> PyResult<bool> {
        Ok(self.shared.delete_inbound(spi_of(spi)?))
    }

    /// Remove outbound SA `spi` toward `destination`; True when it was there.
    fn delete_outbound(&self, spi: &[u8], destination: &str) -> PyResult<bool> {
        Ok(self.shared.delete_outbound(spi_of(spi)?, ip_of(destination, "destination")?))
    }

    /// ESP that arrived on the NAT-T socket from `source`:`port`: decapsulate and
    /// write the inner packet to the TUN device (TCP segments may wait for `flush_udp`,
    /// to be coalesced). False: dropped (and counted).
    fn receive_udp(&self, data: &[u8], source: &str, port: u16) -> PyResult<bool> {
        let ip = ip_of(source, "source")?;
        let mut buf = data.to_vec();
        let guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match guard.as_ref() {
            Some(dp) => dp.receive_udp(&mut buf, ip, port).is_some(),
            None => false,
        })
    }

    /// Write the inner packets `receive_udp` holds back for coalescing.
    fn flush_udp(&self) {
        if let Some(dp) = self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            dp.flush_udp();
        }
    }

    /// Decapsulate ESP (SPI onwards) and return the inner packet (None: dropped and
    /// counted); `port`: it came UDP-encapsulated from that port. For tests and tools.
    #[pyo3(signature = (data, source, port = None))]
    fn receive<'py>(&self, py: Python<'py>, data: &[u8], source: &str, port: Option<u16>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let ip = ip_of(source, "source")?;
        let mut buf = data.to_vec();
        Ok(self.shared.receive(&mut buf, ip, port).map(|(a, b)| PyBytes::new(py, &buf[a..b])))
    }

    /// Encapsulate an inner packet as the TUN thread would: (ESP packet, destination,
    /// UDP port or 0), or None (no SA for it, counted). `iv`: fixed IV (tests).
    #[pyo3(signature = (inner, iv = None))]
    fn encapsulate<'py>(&self, py: Python<'py>, inner: &[u8], iv: Option<&[u8]>) -> Option<(Bound<'py, PyBytes>, String, u16)> {
        let mut out = Vec::new();
        let mut cache = crate::esp::dataplane::RouteCache::default();
        let (dst, port, _fd) = self.shared.encapsulate(inner, iv, &mut out, &mut cache)?;
        Some((PyBytes::new(py, &out), dst.to_string(), port))
    }

    /// Counters of SA `spi` (outbound or inbound direction) or None when unknown.
    fn counters<'py>(&self, py: Python<'py>, spi: &[u8], outbound: bool) -> PyResult<Option<Bound<'py, PyDict>>> {
        match self.shared.counters(spi_of(spi)?, outbound) {
            Some(c) => Ok(Some(counters_dict(py, &c)?)),
            None => Ok(None),
        }
    }

    /// Counters of the data plane: unknown_spi, no_sa, malformed, send_errors,
    /// tun_errors, sequence_exhausted.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.shared.stats;
        let d = PyDict::new(py);
        d.set_item("unknown_spi", s.unknown_spi.load(Relaxed))?;
        d.set_item("no_sa", s.no_sa.load(Relaxed))?;
        d.set_item("malformed", s.malformed.load(Relaxed))?;
        d.set_item("send_errors", s.send_errors.load(Relaxed))?;
        d.set_item("tun_errors", s.tun_errors.load(Relaxed))?;
        d.set_item("sequence_exhausted", s.sequence_exhausted.load(Relaxed))?;
        Ok(d)
    }

    /// Lifetimes crossed since the last call: (SPI, outbound, hard) each.
    fn take_expiries<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, bool, bool)> {
        self.shared.take_expiries().into_iter().map(|(spi, out, hard)| (PyBytes::new(py, &spi.to_be_bytes()), out, hard)).collect()
    }

    /// Stop the threads (the device and sockets close with the last reference).
    fn close(&self, py: Python<'_>) {
        let dp = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut dp) = dp {
            py.detach(move || dp.stop());
        }
    }
}

/// `ip route replace DESTINATION dev IFNAME [src SOURCE]` (`add`) or `ip route del
/// DESTINATION dev IFNAME` over rtnetlink; OSError with the kernel's reason.
#[pyfunction]
#[pyo3(signature = (add, destination, ifname, source = None))]
fn esp_route(py: Python<'_>, add: bool, destination: &str, ifname: &str, source: Option<&str>) -> PyResult<()> {
    let dst = net_of(destination, "destination")?;
    let src = source.map(|s| ip_of(s, "source")).transpose()?;
    let name = ifname.to_owned();
    py.detach(move || crate::esp::route::route(add, dst, &name, src))
        .map_err(|e| PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string().split(" (os error").next().unwrap_or("").to_owned())))
}

/// Every address configured on this host (network namespace), as text.
#[pyfunction]
fn host_addresses() -> Vec<String> {
    crate::esp::route::host_addresses().iter().map(|a| a.to_string()).collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEspDataplane>()?;
    m.add_function(wrap_pyfunction!(esp_route, m)?)?;
    m.add_function(wrap_pyfunction!(host_addresses, m)?)?;
    Ok(())
}
