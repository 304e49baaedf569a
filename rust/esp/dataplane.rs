//! The userland ESP data plane: a TUN device, raw ESP sockets and the SA tables,
//! driven by threads of its own (no Python, no GIL per packet).
//!
//! * TUN thread: read an inner packet, pick the outbound SA whose traffic selectors
//!   hold its source and destination (longest remote prefix, then the newest: a rekeyed
//!   SA takes over at once), encapsulate, send as IP protocol 50 on the raw socket, or
//!   as UDP from the IKE NAT-T socket (RFC 3948) when the SA is UDP-encapsulated.
//! * raw ESP thread (IPv4, and IPv6 where a socket opens): strip the outer header, find
//!   the inbound SA by SPI, decapsulate, write the inner packet to the TUN device.
//! * ESP that reaches the gateway's NAT-T socket is handed in by the gateway
//!   (`receive`), the same path as the raw thread's.
//!
//! The TUN device speaks virtio-net headers (`offload`): the kernel may hand it TCP
//! super-segments (cut here before encryption) and takes coalesced TCP super-packets
//! back (GRO, after decryption), so the TCP stacks at both ends work per 64 KiB, not per
//! packet. Sends go out in `sendmmsg` batches, receives come in `recvmmsg` batches.
//!
//! Byte lifetimes crossed on either thread are queued for the engine (`take_expiries`).
//! Without a TUN device (`Dataplane::detached`) no thread runs and `encapsulate` /
//! `receive` return the packets instead: the known-answer tests use that.

use std::collections::HashMap;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crate::udpbatch::{send_batch, Outgoing};

use super::offload::{segment, Coalescer, VnetHdr, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use super::sa::{inner_addresses, Counters, Drop_, Expiry, InboundSa, Net, OutboundSa};

const IPPROTO_ESP: i32 = 50;
const TUNSETIFF: libc::c_ulong = 0x400454ca;
const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x400454d0;
const POLL_MS: i32 = 200;
const BUF: usize = 65536;

/// Counters of the data plane as a whole.
#[derive(Default)]
pub struct Stats {
    pub unknown_spi: AtomicU64,
    pub no_sa: AtomicU64,
    pub malformed: AtomicU64,
    pub send_errors: AtomicU64,
    pub tun_errors: AtomicU64,
    pub sequence_exhausted: AtomicU64,
}

pub struct OutEntry {
    pub spi: u32,
    pub destination: IpAddr,
    pub local_ts: Net,
    pub remote_ts: Net,
    /// 0: raw ESP; else the peer's UDP port (RFC 3948), learnt again from its ESP.
    pub port: AtomicU16,
    /// The socket UDP-encapsulated packets leave from (the IKE SA's, owned here), or -1.
    pub udp_fd: RawFd,
    pub sa: Mutex<OutboundSa>,
    serial: u64,
}

impl Drop for OutEntry {
    fn drop(&mut self) {
        if self.udp_fd >= 0 {
            unsafe { libc::close(self.udp_fd) };
        }
    }
}

pub struct InEntry {
    pub spi: u32,
    pub sa: Mutex<InboundSa>,
    /// The UDP port its ESP came from last (0: none yet): the outbound SAs follow a change.
    last_port: AtomicU16,
}

/// The SA tables. Outbound SAs are found by (SPI, destination), by SPI (counters), and
/// for routing by their remote selector: a hash per prefix length present, longest first.
struct Tables {
    inbound: HashMap<u32, Arc<InEntry>>,
    outbound: HashMap<(u32, IpAddr), Arc<OutEntry>>,
    by_spi: HashMap<u32, Arc<OutEntry>>,
    by_remote: HashMap<Net, Vec<Arc<OutEntry>>>,
    /// SAs per remote prefix length: [IPv4 0..=32, IPv6 0..=128].
    prefixes: [[u32; 129]; 2],
    serial: u64,
}

impl Default for Tables {
    fn default() -> Tables {
        Tables {
            inbound: HashMap::new(),
            outbound: HashMap::new(),
            by_spi: HashMap::new(),
            by_remote: HashMap::new(),
            prefixes: [[0; 129]; 2],
            serial: 0,
        }
    }
}

impl Tables {
    fn unlink(&mut self, entry: &Arc<OutEntry>) {
        let key = entry.remote_ts.masked();
        if let Some(list) = self.by_remote.get_mut(&key) {
            list.retain(|e| !Arc::ptr_eq(e, entry));
            if list.is_empty() {
                self.by_remote.remove(&key);
            }
        }
        let family = entry.remote_ts.addr.is_ipv6() as usize;
        let count = &mut self.prefixes[family][entry.remote_ts.prefix as usize];
        *count = count.saturating_sub(1);
        if self.by_spi.get(&entry.spi).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            self.by_spi.remove(&entry.spi);
        }
    }

    /// The newest outbound SA whose selectors hold (source, destination), longest remote
    /// prefix first.
    fn route(&self, source: IpAddr, destination: IpAddr) -> Option<Arc<OutEntry>> {
        let family = destination.is_ipv6() as usize;
        let top = if destination.is_ipv6() { 128 } else { 32 };
        for prefix in (0..=top).rev() {
            if self.prefixes[family][prefix] == 0 {
                continue;
            }
            if let Some(list) = self.by_remote.get(&Net::of(destination, prefix as u8)) {
                if let Some(e) = list.iter().filter(|e| e.local_ts.contains(&source)).max_by_key(|e| e.serial) {
                    return Some(e.clone());
                }
            }
        }
        None
    }
}

/// The TUN thread's memory of the last route it looked up (valid while the tables'
/// generation stays the same): one TCP stream needs one lookup.
#[derive(Default)]
pub struct RouteCache {
    key: Option<(IpAddr, IpAddr, u64)>,
    entry: Option<Arc<OutEntry>>,
}

/// An expiry for the engine: (SPI, outbound?, hard?).
pub type ExpiryNote = (u32, bool, bool);

pub struct Shared {
    tables: RwLock<Tables>,
    /// Bumped whenever the outbound table changes (invalidates the route caches).
    generation: AtomicU64,
    pub stats: Stats,
    expiries: Mutex<Vec<ExpiryNote>>,
    stop: AtomicBool,
    tun: RawFd,
    raw4: RawFd,
    raw6: RawFd,
}

impl Shared {
    fn new(tun: RawFd, raw4: RawFd, raw6: RawFd) -> Shared {
        Shared {
            tables: RwLock::new(Tables::default()),
            generation: AtomicU64::new(0),
            stats: Stats::default(),
            expiries: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            tun,
            raw4,
            raw6,
        }
    }

    /// `udp_fd`: a socket this entry now owns (closed with it), or -1 for raw ESP.
    #[allow(clippy::too_many_arguments)]
    pub fn add_outbound(&self, spi: u32, destination: IpAddr, local_ts: Net, remote_ts: Net, port: u16, udp_fd: RawFd, sa: OutboundSa) {
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        t.serial += 1;
        let serial = t.serial;
        let entry = Arc::new(OutEntry { spi, destination, local_ts, remote_ts, port: AtomicU16::new(port), udp_fd, sa: Mutex::new(sa), serial });
        if let Some(old) = t.outbound.insert((spi, destination), entry.clone()) {
            t.unlink(&old);
        }
        t.by_spi.insert(spi, entry.clone());
        t.by_remote.entry(remote_ts.masked()).or_default().push(entry);
        t.prefixes[remote_ts.addr.is_ipv6() as usize][remote_ts.prefix as usize] += 1;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn add_inbound(&self, spi: u32, sa: InboundSa) {
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        t.inbound.insert(spi, Arc::new(InEntry { spi, sa: Mutex::new(sa), last_port: AtomicU16::new(0) }));
    }

    /// Remove inbound SA `spi`; true when it was there.
    pub fn delete_inbound(&self, spi: u32) -> bool {
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        t.inbound.remove(&spi).is_some()
    }

    /// Remove outbound SA `spi` toward `destination`; true when it was there.
    pub fn delete_outbound(&self, spi: u32, destination: IpAddr) -> bool {
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let Some(old) = t.outbound.remove(&(spi, destination)) else { return false };
        t.unlink(&old);
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub fn counters(&self, spi: u32, outbound: bool) -> Option<Counters> {
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        if outbound {
            let e = t.by_spi.get(&spi)?;
            let c = e.sa.lock().unwrap_or_else(|e| e.into_inner()).counters;
            Some(c)
        } else {
            let e = t.inbound.get(&spi)?;
            let c = e.sa.lock().unwrap_or_else(|e| e.into_inner()).counters;
            Some(c)
        }
    }

    pub fn take_expiries(&self) -> Vec<ExpiryNote> {
        std::mem::take(&mut *self.expiries.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn note(&self, spi: u32, outbound: bool, expiry: Option<Expiry>) {
        if let Some(x) = expiry {
            self.expiries.lock().unwrap_or_else(|e| e.into_inner()).push((spi, outbound, x == Expiry::Hard));
        }
    }

    fn route(&self, inner: &[u8], cache: &mut RouteCache) -> Option<Arc<OutEntry>> {
        let (source, destination) = inner_addresses(inner)?;
        let generation = self.generation.load(Ordering::Acquire);
        if cache.key == Some((source, destination, generation)) {
            return cache.entry.clone();
        }
        let entry = self.tables.read().unwrap_or_else(|e| e.into_inner()).route(source, destination);
        cache.key = Some((source, destination, generation));
        cache.entry = entry.clone();
        entry
    }

    /// Encapsulate one inner packet: (where to, UDP port or 0, UDP socket or -1).
    pub fn encapsulate(&self, inner: &[u8], iv: Option<&[u8]>, out: &mut Vec<u8>, cache: &mut RouteCache) -> Option<(IpAddr, u16, RawFd)> {
        let Some(entry) = self.route(inner, cache) else {
            self.stats.no_sa.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let (ok, expiry) = entry.sa.lock().unwrap_or_else(|e| e.into_inner()).encapsulate(inner, iv, out);
        self.note(entry.spi, true, expiry);
        if !ok {
            self.stats.sequence_exhausted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some((entry.destination, entry.port.load(Ordering::Relaxed), entry.udp_fd))
    }

    /// Decapsulate ESP (SPI onwards) from `source` (`udp_port` Some for RFC 3948);
    /// on success the inner packet is `esp[range]`.
    pub fn receive(&self, esp: &mut [u8], source: IpAddr, udp_port: Option<u16>) -> Option<(usize, usize)> {
        if esp.len() < 8 {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let spi = u32::from_be_bytes([esp[0], esp[1], esp[2], esp[3]]);
        let entry = {
            let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
            t.inbound.get(&spi).cloned()
        };
        let Some(entry) = entry else {
            self.stats.unknown_spi.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let result = entry.sa.lock().unwrap_or_else(|e| e.into_inner()).decapsulate(esp);
        match result {
            Ok((range, expiry)) => {
                self.note(spi, false, expiry);
                if let Some(port) = udp_port {
                    if entry.last_port.swap(port, Ordering::Relaxed) != port {
                        self.follow_port(source, port);
                    }
                }
                Some(range)
            }
            Err(Drop_::Malformed) | Err(_) => None,
        }
    }

    /// An authenticated UDP-encapsulated packet came from `port`: the peer's NAT may
    /// have moved it; its outbound SAs follow (RFC 3948 section 5).
    fn follow_port(&self, source: IpAddr, port: u16) {
        let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
        for e in t.outbound.values().filter(|e| e.destination == source) {
            let old = e.port.load(Ordering::Relaxed);
            if old != 0 && old != port {
                e.port.store(port, Ordering::Relaxed);
            }
        }
    }

    /// Write one inner packet behind its virtio-net header (empty: a complete packet,
    /// nothing for the kernel to do).
    fn write_tun_with(&self, hdr: VnetHdr, inner: &[u8]) {
        let hdr = hdr.to_bytes();
        let iov = [
            libc::iovec { iov_base: hdr.as_ptr() as *mut _, iov_len: hdr.len() },
            libc::iovec { iov_base: inner.as_ptr() as *mut _, iov_len: inner.len() },
        ];
        let n = unsafe { libc::writev(self.tun, iov.as_ptr(), 2) };
        if n < 0 {
            self.stats.tun_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for fd in [self.tun, self.raw4, self.raw6] {
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
        }
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Open (or create) TUN device `name` without packet information; returns (fd, name).
pub fn open_tun(name: &str) -> io::Result<(RawFd, String)> {
    if name.len() >= 16 || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "TUN name longer than 15 bytes"));
    }
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = IfReq { name: [0; 16], flags: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    if unsafe { libc::ioctl(fd, TUNSETIFF as _, &mut req) } < 0 {
        let err = io::Error::last_os_error();
        unsafe { libc::close(fd) };
        return Err(err);
    }
    // TCP super-segments and unfinished checksums come to us (cut in `offload::segment`);
    // a kernel that refuses them sends plain packets behind an empty header
    unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) as libc::c_ulong) };
    // non-blocking: the TUN thread reads until EAGAIN, then polls
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
    let end = req.name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok((fd, String::from_utf8_lossy(&req.name[..end]).into_owned()))
}

fn raw_socket(family: i32) -> io::Result<RawFd> {
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, IPPROTO_ESP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let size: libc::c_int = 8 << 20;
    unsafe {
        // SO_RCVBUFFORCE (we are privileged: we opened a raw socket)
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size as *const _ as *const _, 4) < 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size as *const _ as *const _, 4);
        }
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &size as *const _ as *const _, 4);
    }
    Ok(fd)
}

fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    unsafe { libc::poll(&mut p, 1, POLL_MS) > 0 && p.revents & libc::POLLIN != 0 }
}

/// A running data plane: the shared state and its threads.
pub struct Dataplane {
    pub shared: Arc<Shared>,
    pub tun_name: Option<String>,
    threads: Vec<JoinHandle<()>>,
    /// Coalescing of what `receive_udp` decapsulates, written out by `flush_udp`.
    udp_gro: Mutex<Coalescer>,
}

impl Dataplane {
    /// No device, no sockets, no threads: packets in and out through the methods.
    pub fn detached() -> Dataplane {
        Dataplane { shared: Arc::new(Shared::new(-1, -1, -1)), tun_name: None, threads: Vec::new(), udp_gro: Mutex::default() }
    }

    /// Open TUN device `name` and the raw ESP sockets, start the threads.
    pub fn start(name: &str) -> io::Result<Dataplane> {
        let raw4 = raw_socket(libc::AF_INET)?;
        let raw6 = raw_socket(libc::AF_INET6).unwrap_or(-1);
        let (tun, tun_name) = match open_tun(name) {
            Ok(t) => t,
            Err(e) => {
                unsafe { libc::close(raw4) };
                if raw6 >= 0 {
                    unsafe { libc::close(raw6) };
                }
                return Err(e);
            }
        };
        let shared = Arc::new(Shared::new(tun, raw4, raw6));
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(std::thread::Builder::new().name("esp-tun".into()).spawn(move || tun_loop(&s))?);
        let s = shared.clone();
        threads.push(std::thread::Builder::new().name("esp-in4".into()).spawn(move || raw_loop(&s, false))?);
        if raw6 >= 0 {
            let s = shared.clone();
            threads.push(std::thread::Builder::new().name("esp-in6".into()).spawn(move || raw_loop(&s, true))?);
        }
        Ok(Dataplane { shared, tun_name: Some(tun_name), threads, udp_gro: Mutex::default() })
    }

    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Hand an ESP packet from the NAT-T socket to the inbound path: its inner packet
    /// goes to the TUN device now or, coalesced with the next ones, at `flush_udp`.
    pub fn receive_udp(&self, esp: &mut [u8], source: IpAddr, port: u16) -> Option<(usize, usize)> {
        let range = self.shared.receive(esp, source, Some(port))?;
        if self.shared.tun >= 0 {
            let s = &self.shared;
            let mut write = |hdr: VnetHdr, packet: &[u8]| s.write_tun_with(hdr, packet);
            self.udp_gro.lock().unwrap_or_else(|e| e.into_inner()).push(&esp[range.0..range.1], &mut write);
        }
        Some(range)
    }

    /// Write what `receive_udp` holds (the gateway calls it after each batch).
    pub fn flush_udp(&self) {
        let s = &self.shared;
        let mut write = |hdr: VnetHdr, packet: &[u8]| s.write_tun_with(hdr, packet);
        self.udp_gro.lock().unwrap_or_else(|e| e.into_inner()).flush(&mut write);
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Encapsulated packets sent with one `sendmmsg` per socket at most.
const SEND_BATCH: usize = 64;

fn tun_loop(s: &Shared) {
    let mut buf = vec![0u8; BUF + VNET_HDR_LEN];
    let mut scratch = Vec::with_capacity(BUF);
    let mut slots: Vec<Vec<u8>> = (0..SEND_BATCH).map(|_| Vec::with_capacity(BUF + 128)).collect();
    let mut meta: Vec<(IpAddr, u16, RawFd)> = Vec::with_capacity(SEND_BATCH);
    let mut cache = RouteCache::default();
    while !s.stop.load(Ordering::Acquire) {
        if !readable(s.tun) {
            continue;
        }
        // a bounded burst per wake-up (until EAGAIN), then look at the stop flag again
        for _ in 0..4096 {
            let n = unsafe { libc::read(s.tun, buf.as_mut_ptr() as *mut _, buf.len()) };
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let Some(hdr) = VnetHdr::parse(&buf[..n]) else { continue };
            let ok = segment(hdr, &mut buf[VNET_HDR_LEN..n], &mut scratch, |packet| {
                if let Some(m) = s.encapsulate(packet, None, &mut slots[meta.len()], &mut cache) {
                    meta.push(m);
                    if meta.len() == SEND_BATCH {
                        s.flush(&slots, &mut meta);
                    }
                }
            });
            if !ok {
                s.stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
        s.flush(&slots, &mut meta);
    }
}

impl Shared {
    /// Send the encapsulated packets of `slots[..meta.len()]`: one `sendmmsg` per run of
    /// packets that leave by the same socket.
    fn flush(&self, slots: &[Vec<u8>], meta: &mut Vec<(IpAddr, u16, RawFd)>) {
        let mut start = 0;
        while start < meta.len() {
            let (dst0, port0, udp0) = meta[start];
            let fd = self.socket_for(dst0, port0, udp0);
            let mut end = start + 1;
            while end < meta.len() && self.socket_for(meta[end].0, meta[end].1, meta[end].2) == fd {
                end += 1;
            }
            let msgs: Vec<Outgoing<'_>> = (start..end)
                .map(|i| Outgoing { data: &slots[i], dest: SocketAddr::new(meta[i].0, meta[i].1), source: None })
                .collect();
            let failed = if fd < 0 { msgs.len() } else { send_batch(fd, &msgs).1 };
            if failed > 0 {
                self.stats.send_errors.fetch_add(failed as u64, Ordering::Relaxed);
            }
            start = end;
        }
        meta.clear();
    }

    fn socket_for(&self, destination: IpAddr, port: u16, udp_fd: RawFd) -> RawFd {
        match (destination, port) {
            (IpAddr::V4(_), 0) => self.raw4,
            (IpAddr::V6(_), 0) => self.raw6,
            _ => udp_fd,
        }
    }
}

/// Datagrams one `recvmmsg` takes at most, and the bytes kept per datagram.
const RECV_BATCH: usize = 32;
const RECV_SLOT: usize = 65536;

fn raw_loop(s: &Shared, v6: bool) {
    let fd = if v6 { s.raw6 } else { s.raw4 };
    let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; RECV_SLOT]).collect();
    let mut names: Vec<libc::sockaddr_storage> = (0..RECV_BATCH).map(|_| unsafe { zeroed() }).collect();
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(RECV_BATCH);
    let mut hdrs: Vec<libc::mmsghdr> = (0..RECV_BATCH).map(|_| unsafe { zeroed() }).collect();
    let mut gro = Coalescer::default();
    let mut write = |hdr: VnetHdr, packet: &[u8]| s.write_tun_with(hdr, packet);
    while !s.stop.load(Ordering::Acquire) {
        gro.flush(&mut write);
        if !readable(fd) {
            continue;
        }
        for _ in 0..64 {
            iovs.clear();
            iovs.extend(bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut _, iov_len: b.len() }));
            for (i, h) in hdrs.iter_mut().enumerate() {
                *h = unsafe { zeroed() };
                h.msg_hdr.msg_name = &mut names[i] as *mut _ as *mut _;
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: every header points into `names`, `iovs` and `bufs`, alive and unmoved
            // until the call returns; MSG_DONTWAIT never blocks.
            let got = unsafe { libc::recvmmsg(fd, hdrs.as_mut_ptr(), RECV_BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
            if got <= 0 {
                break;
            }
            for i in 0..got as usize {
                let n = (hdrs[i].msg_len as usize).min(RECV_SLOT);
                let buf = &mut bufs[i];
                let (start, source) = if v6 {
                    let sin6 = unsafe { &*(&names[i] as *const _ as *const libc::sockaddr_in6) };
                    (0, IpAddr::from(sin6.sin6_addr.s6_addr))
                } else {
                    // IPv4 raw sockets deliver the IP header too
                    let ihl = ((buf[0] & 0x0f) as usize) * 4;
                    if n < 20 || ihl < 20 || ihl > n {
                        s.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    (ihl, IpAddr::from([buf[12], buf[13], buf[14], buf[15]]))
                };
                let esp = &mut buf[start..n];
                if let Some((a, b)) = s.receive(esp, source, None) {
                    gro.push(&esp[a..b], &mut write);
                }
            }
            if (got as usize) < RECV_BATCH {
                break;
            }
        }
    }
}
