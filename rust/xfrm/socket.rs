//! The `NETLINK_XFRM` socket: requests answered by an acknowledgement (or ALLOCSPI's
//! NEWSA), and, on a socket bound to the key manager's groups, the kernel's ACQUIRE and
//! EXPIRE notifications read without blocking.
//!
//! A request socket waits for its answer at most `REQUEST_TIMEOUT`; answers to other
//! sequence numbers and multicast messages met on the way are skipped (bounded). The
//! extended acknowledgement (`NETLINK_EXT_ACK`) is on, so a refusal carries the kernel's
//! own words ("Requested type not found") besides the errno.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use zeroize::Zeroize;

use super::msg::{self, Notification, Request};
use super::XfrmError;

const NETLINK_XFRM: libc::c_int = 6;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_EXT_ACK: libc::c_int = 11;
const RECEIVE_BUFFER: usize = 65536;
/// seconds a request waits for the kernel's answer
const REQUEST_TIMEOUT: libc::time_t = 2;
/// messages skipped while waiting for an answer before giving up
const MAX_SKIPPED: usize = 256;

/// One `NETLINK_XFRM` socket.
pub struct XfrmSocket {
    fd: OwnedFd,
    seq: u32,
    buffer: Vec<u8>,
    /// notifications lost because the socket's receive queue overflowed (ENOBUFS)
    pub overruns: u64,
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

impl XfrmSocket {
    /// Open a socket; `groups`: the multicast bind mask (`msg::KEY_MANAGER_GROUPS` for
    /// ACQUIRE and EXPIRE, 0 for a request socket). A notification socket is non-blocking.
    pub fn open(groups: u32) -> Result<XfrmSocket, XfrmError> {
        let mut flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
        if groups != 0 {
            flags |= libc::SOCK_NONBLOCK;
        }
        // SAFETY: plain system call; the descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, flags, NETLINK_XFRM) };
        if raw < 0 {
            return Err(XfrmError::from_errno("socket(NETLINK_XFRM)", last_errno(), None));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let bound = unsafe {
            libc::bind(raw, &addr as *const libc::sockaddr_nl as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_nl>() as u32)
        };
        if bound < 0 {
            return Err(XfrmError::from_errno("bind(NETLINK_XFRM)", last_errno(), None));
        }
        let one: libc::c_int = 1;
        // SAFETY: valid option value pointer and size. Failure (old kernel) only loses the text.
        unsafe {
            libc::setsockopt(raw, SOL_NETLINK, NETLINK_EXT_ACK, &one as *const _ as *const libc::c_void, 4);
        }
        if groups == 0 {
            let timeout = libc::timeval { tv_sec: REQUEST_TIMEOUT, tv_usec: 0 };
            // SAFETY: valid option value pointer and size.
            unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &timeout as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
            }
        }
        Ok(XfrmSocket { fd, seq: 1, buffer: vec![0u8; RECEIVE_BUFFER], overruns: 0 })
    }

    pub fn fileno(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn receive(&mut self, nonblocking: bool) -> Result<usize, i32> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buffer.as_mut_ptr() as *mut libc::c_void, self.buffer.len(), flags) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let errno = last_errno();
            if errno != libc::EINTR {
                return Err(errno);
            }
        }
    }

    /// Send `request` and wait for its answer: Ok(None) for an acknowledgement, Ok(Some(body))
    /// for a reply message (ALLOCSPI's NEWSA), Err with the errno and the kernel's text.
    pub fn request(&mut self, request: &Request) -> Result<Option<Vec<u8>>, XfrmError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut message = request.to_message(seq, 0);
        // SAFETY: the message buffer is valid for its length.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), message.as_ptr() as *const libc::c_void, message.len(), 0) };
        message.zeroize();
        if sent < 0 {
            return Err(XfrmError::from_errno(request.name, last_errno(), None));
        }
        let expect_reply = request.flags & msg::NLM_F_ACK == 0;
        let answer = self.await_answer(request, seq, expect_reply);
        self.buffer.as_mut_slice().zeroize(); // an error echoes the request, keys included
        answer
    }

    fn await_answer(&mut self, request: &Request, seq: u32, expect_reply: bool) -> Result<Option<Vec<u8>>, XfrmError> {
        for _ in 0..MAX_SKIPPED {
            let n = match self.receive(false) {
                Ok(n) => n,
                Err(libc::EAGAIN) => {
                    return Err(XfrmError::from_errno(request.name, libc::ETIMEDOUT, Some("the kernel did not answer".into())))
                }
                Err(errno) => return Err(XfrmError::from_errno(request.name, errno, None)),
            };
            let data = &self.buffer[..n];
            for (msg_type, flags, got_seq, body) in msg::split_messages(data) {
                if got_seq != seq {
                    continue;
                }
                if msg_type == msg::NLMSG_ERROR {
                    let (errno, text) = msg::parse_error(flags, body)
                        .ok_or_else(|| XfrmError::local(request.name, "short NLMSG_ERROR from the kernel"))?;
                    return if errno == 0 { Ok(None) } else { Err(XfrmError::from_errno(request.name, errno, text)) };
                }
                if expect_reply {
                    return Ok(Some(body.to_vec()));
                }
            }
        }
        Err(XfrmError::local(request.name, "no answer among the kernel's messages"))
    }

    /// ALLOCSPI: the SPI of a new larval SA.
    pub fn alloc_spi(&mut self, info: &msg::SaInfo, min: u32, max: u32) -> Result<u32, XfrmError> {
        let request = msg::alloc_spi(info, min, max);
        let body = self.request(&request)?.ok_or_else(|| XfrmError::local(request.name, "acknowledged without an SA"))?;
        msg::parse_sa(&body).map(|state| state.spi).ok_or_else(|| XfrmError::local(request.name, "unreadable SA in the answer"))
    }

    /// Read the notifications waiting (at most `max` datagrams), never blocking.
    pub fn notifications(&mut self, max: usize) -> Result<Vec<Notification>, XfrmError> {
        let mut out = Vec::new();
        for _ in 0..max {
            let n = match self.receive(true) {
                Ok(n) => n,
                Err(libc::EAGAIN) => break,
                Err(libc::ENOBUFS) => {
                    self.overruns += 1; // the kernel dropped some: keep reading what is left
                    continue;
                }
                Err(errno) => return Err(XfrmError::from_errno("recv(NETLINK_XFRM)", errno, None)),
            };
            let data = self.buffer[..n].to_vec();
            for (msg_type, _flags, _seq, body) in msg::split_messages(&data) {
                if let Some(notification) = msg::parse_notification(msg_type, body) {
                    out.push(notification);
                }
            }
        }
        Ok(out)
    }
}

const IP_XFRM_POLICY: libc::c_int = 17;
const IPV6_XFRM_POLICY: libc::c_int = 35;

/// Let every packet of socket `fd` pass the XFRM policies, both ways (strongSwan's socket
/// bypass of its IKE sockets): IKE between the gateways never waits for the SAs it makes.
pub fn bypass_policies(fd: RawFd, ipv6: bool) -> Result<(), XfrmError> {
    let (level, name) = if ipv6 { (libc::IPPROTO_IPV6, IPV6_XFRM_POLICY) } else { (libc::IPPROTO_IP, IP_XFRM_POLICY) };
    for dir in [msg::XFRM_POLICY_IN, msg::XFRM_POLICY_OUT] {
        let policy = msg::socket_bypass_policy(dir, ipv6);
        // SAFETY: a valid buffer of the length given; the kernel copies it.
        let done = unsafe { libc::setsockopt(fd, level, name, policy.as_ptr() as *const libc::c_void, policy.len() as u32) };
        if done < 0 {
            return Err(XfrmError::from_errno("setsockopt(IP_XFRM_POLICY)", last_errno(), None));
        }
    }
    Ok(())
}
