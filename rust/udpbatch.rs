//! Batched UDP system calls: `recvmmsg` into fixed slots and `sendmmsg`, optionally
//! choosing each datagram's IPv4 source address with `IP_PKTINFO` (one unbound
//! socket speaks for many loopback addresses: the load and flood generators).
//!
//! Plain Rust over `libc`; no Python. Every length the kernel reports is checked
//! against the slot it refers to before a slice is taken; nothing here panics on
//! what arrives from the network.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Bytes per receive slot: the largest UDP payload (a longer datagram cannot exist).
pub const SLOT: usize = 65536;
/// Most messages one `recvmmsg`/`sendmmsg` call takes (the kernel's UIO_MAXIOV).
pub const MAX_BATCH: usize = 1024;

/// One datagram of the last [`RecvBatch::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes stored in the slot (at most [`SLOT`]).
    pub len: usize,
    /// The datagram was longer than the slot and was cut.
    pub truncated: bool,
    /// Where it came from (None: an address family we do not speak).
    pub source: Option<SocketAddr>,
    /// The local address it was sent to, when the socket asked for it (IP_PKTINFO,
    /// IPV6_RECVPKTINFO): on a wildcard socket, the address the peer used.
    pub dest: Option<IpAddr>,
}

/// Control buffer per slot: room for one IPv4 or IPv6 packet-info message, aligned.
type RecvControl = [u64; 8];

/// Receive buffers for up to `slots` datagrams per call.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<RecvControl>,
    slots: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("slots", &self.slots).finish()
    }
}

impl RecvBatch {
    /// Buffers for `slots` datagrams (1..=[`MAX_BATCH`]); the memory is zeroed lazily
    /// by the kernel, so untouched slot pages cost no resident memory.
    pub fn new(slots: usize) -> RecvBatch {
        let slots = slots.clamp(1, MAX_BATCH);
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
        let addrs = (0..slots).map(|_| unsafe { zeroed::<libc::sockaddr_storage>() }).collect();
        RecvBatch { bufs: vec![0u8; slots * SLOT], addrs, controls: vec![[0u64; 8]; slots], slots }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// One non-blocking `recvmmsg` on `fd`; fills `out` (cleared first) and returns
    /// how many datagrams arrived (0 when none was waiting).
    pub fn recv(&mut self, fd: RawFd, out: &mut Vec<Received>) -> io::Result<usize> {
        out.clear();
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .chunks_mut(SLOT)
            .map(|chunk| libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: chunk.len() })
            .collect();
        // SAFETY: mmsghdr is plain old data; every pointer set below points into
        // `iovs`/`self.addrs`, which outlive the call.
        let mut hdrs: Vec<libc::mmsghdr> = (0..self.slots).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect();
        for (i, hdr) in hdrs.iter_mut().enumerate() {
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = &mut iovs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = size_of::<RecvControl>() as _;
        }
        // SAFETY: hdrs has self.slots valid entries; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recvmmsg(fd, hdrs.as_mut_ptr(), self.slots as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = (n as usize).min(self.slots);
        for (i, hdr) in hdrs.iter().take(n).enumerate() {
            let len = hdr.msg_len as usize;
            out.push(Received {
                len: len.min(SLOT),
                truncated: len > SLOT || hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                source: from_sockaddr(&self.addrs[i], hdr.msg_hdr.msg_namelen),
                dest: packet_info(&hdr.msg_hdr),
            });
        }
        Ok(n)
    }

    /// The bytes of datagram `index` of the last call (empty when out of range).
    pub fn data(&self, index: usize, len: usize) -> &[u8] {
        let start = index.saturating_mul(SLOT);
        self.bufs.get(start..start.saturating_add(len.min(SLOT))).unwrap_or(&[])
    }
}

/// The destination address in an IP_PKTINFO or IPV6_PKTINFO control message, if any.
fn packet_info(msg: &libc::msghdr) -> Option<IpAddr> {
    if msg.msg_control.is_null() || (msg.msg_controllen as usize) < size_of::<libc::cmsghdr>() {
        return None;
    }
    // SAFETY: the kernel wrote msg_controllen bytes of well-formed control messages
    // into our buffer; CMSG_FIRSTHDR/NXTHDR stay within it, and each data read is
    // checked against its cmsg_len first.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let data_len = (c.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_PKTINFO && data_len >= size_of::<libc::in_pktinfo>() {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>());
                return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))));
            }
            if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO && data_len >= size_of::<libc::in6_pktinfo>() {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>());
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// A socket address from what the kernel wrote (None for other families or lengths).
pub fn from_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id)))
        }
        _ => None,
    }
}

/// The kernel form of a socket address and its length.
pub fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; we write one member of the right type.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Address and port bytes as ikecore.engine packs an endpoint (4 or 16, then 2).
pub fn endpoint_bytes(addr: &SocketAddr) -> Vec<u8> {
    let mut out = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// One datagram to send: payload, destination, and an optional IPv4 source address
/// (`IP_PKTINFO`; the socket must be bound to the wildcard address).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The UDP payload.
    pub data: &'a [u8],
    /// Where to.
    pub dest: SocketAddr,
    /// From which local IPv4 address (None: the kernel chooses).
    pub source: Option<Ipv4Addr>,
}

/// Space for one IP_PKTINFO control message (CMSG_SPACE of in_pktinfo), aligned.
type Control = [u64; 4];

/// `sendmmsg` everything in `msgs` (batches of [`MAX_BATCH`]); returns (sent, failed).
/// A datagram the kernel refuses (full buffer on a non-blocking socket, no route...)
/// is counted as failed and skipped; the rest still go.
pub fn send_batch(fd: RawFd, msgs: &[Outgoing<'_>]) -> (usize, usize) {
    let (mut sent, mut failed) = (0usize, 0usize);
    for chunk in msgs.chunks(MAX_BATCH) {
        let addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> = chunk.iter().map(|m| to_sockaddr(&m.dest)).collect();
        let mut iovs: Vec<libc::iovec> = chunk
            .iter()
            .map(|m| libc::iovec { iov_base: m.data.as_ptr() as *mut libc::c_void, iov_len: m.data.len() })
            .collect();
        let mut controls: Vec<Control> = vec![[0u64; 4]; chunk.len()];
        // SAFETY: plain old data, then every pointer aims into the vectors above,
        // which live until after the last sendmmsg of this chunk.
        let mut hdrs: Vec<libc::mmsghdr> = (0..chunk.len()).map(|_| unsafe { zeroed::<libc::mmsghdr>() }).collect();
        for (i, m) in chunk.iter().enumerate() {
            let hdr = &mut hdrs[i].msg_hdr;
            hdr.msg_name = (&addrs[i].0 as *const libc::sockaddr_storage) as *mut libc::c_void;
            hdr.msg_namelen = addrs[i].1;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            if let (Some(src), SocketAddr::V4(_)) = (m.source, m.dest) {
                let space = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
                debug_assert!(space <= size_of::<Control>());
                hdr.msg_control = controls[i].as_mut_ptr().cast();
                hdr.msg_controllen = space as _;
                // SAFETY: msg_control holds `space` bytes, enough for one in_pktinfo cmsg.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(hdr);
                    (*cmsg).cmsg_level = libc::IPPROTO_IP;
                    (*cmsg).cmsg_type = libc::IP_PKTINFO;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr { s_addr: u32::from(src).to_be() },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
                }
            }
        }
        let mut at = 0usize;
        while at < hdrs.len() {
            // SAFETY: hdrs[at..] are valid entries built above.
            let n = unsafe { libc::sendmmsg(fd, hdrs[at..].as_mut_ptr(), (hdrs.len() - at) as libc::c_uint, 0) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                failed += 1; // the first datagram of the rest failed: skip it
                at += 1;
            } else if n == 0 {
                failed += hdrs.len() - at;
                break;
            } else {
                sent += n as usize;
                at += n as usize;
            }
        }
    }
    (sent, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_with_chosen_sources() {
        let rx = UdpSocket::bind("0.0.0.0:0").unwrap();
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and option value.
        let rc = unsafe {
            libc::setsockopt(rx.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, (&on as *const libc::c_int).cast(),
                             size_of::<libc::c_int>() as libc::socklen_t)
        };
        assert_eq!(rc, 0);
        let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
        let dest: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)), rx.local_addr().unwrap().port());
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let msgs: Vec<Outgoing<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Outgoing { data: p, dest, source: Some(Ipv4Addr::new(127, 3, 0, i as u8 + 1)) })
            .collect();
        assert_eq!(send_batch(tx.as_raw_fd(), &msgs), (20, 0));
        let mut batch = RecvBatch::new(8);
        let mut out = Vec::new();
        let mut got = Vec::new();
        for _ in 0..100 {
            if batch.recv(rx.as_raw_fd(), &mut out).unwrap() == 0 && got.len() == 20 {
                break;
            }
            for (i, r) in out.iter().enumerate() {
                assert_eq!(r.dest, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7))));
                got.push((batch.data(i, r.len).to_vec(), r.source.unwrap(), r.truncated));
            }
            if got.len() < 20 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert_eq!(got.len(), 20);
        for (i, (data, source, truncated)) in got.iter().enumerate() {
            assert_eq!(data, &payloads[i]);
            assert_eq!(source.ip(), IpAddr::V4(Ipv4Addr::new(127, 3, 0, i as u8 + 1)));
            assert_eq!(source.port(), tx.local_addr().unwrap().port());
            assert!(!truncated);
        }
        assert_eq!(batch.recv(rx.as_raw_fd(), &mut out).unwrap(), 0);
        assert_eq!(batch.data(99, 10), &[] as &[u8]);
    }

    #[test]
    fn endpoint_bytes_match_the_engine() {
        let a: SocketAddr = "127.1.2.3:500".parse().unwrap();
        assert_eq!(endpoint_bytes(&a), vec![127, 1, 2, 3, 1, 244]);
        let b: SocketAddr = "[::1]:4500".parse().unwrap();
        let mut want = vec![0u8; 15];
        want.extend_from_slice(&[1, 0x11, 0x94]);
        assert_eq!(endpoint_bytes(&b), want);
    }
}
