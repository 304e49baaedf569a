//! Routes for the userland driver over rtnetlink (RFC 3549): `ip route replace DST dev
//! TUN src ADDR` and `ip route del DST dev TUN` without a process per route, and the
//! host's addresses (getifaddrs). Each request waits for the kernel's acknowledgement
//! (bounded by a receive timeout).

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::IpAddr;
use std::os::fd::RawFd;

use super::sa::Net;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_PREFSRC: u16 = 7;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

fn attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The route request for `dst` through interface `ifname` (source `src`).
pub fn route_message(add: bool, dst: Net, ifindex: u32, src: Option<IpAddr>, seq: u32) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    let family = if dst.addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    // struct rtmsg
    m.extend_from_slice(&[family, dst.prefix, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_LINK, RTN_UNICAST]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut m, RTA_DST, &octets(dst.addr));
    attr(&mut m, RTA_OIF, &ifindex.to_ne_bytes());
    if let Some(s) = src.filter(|s| s.is_ipv4() == dst.addr.is_ipv4()) {
        attr(&mut m, RTA_PREFSRC, &octets(s));
    }
    let flags = NLM_F_REQUEST | NLM_F_ACK | if add { NLM_F_CREATE | NLM_F_REPLACE } else { 0 };
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&(if add { RTM_NEWROUTE } else { RTM_DELROUTE }).to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

struct Socket(RawFd);

impl Drop for Socket {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

/// Send one route request and wait for its acknowledgement (an errno on refusal).
pub fn route(add: bool, dst: Net, ifname: &str, src: Option<IpAddr>) -> io::Result<()> {
    let name = CString::new(ifname).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = Socket(fd);
    let timeout = libc::timeval { tv_sec: 5, tv_usec: 0 };
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout as *const _ as *const _, size_of::<libc::timeval>() as u32);
    }
    let msg = route_message(add, dst, ifindex, src, 1);
    let mut kernel: libc::sockaddr_nl = unsafe { zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let n = unsafe {
        libc::sendto(sock.0, msg.as_ptr() as *const _, msg.len(), 0, &kernel as *const _ as *const libc::sockaddr, size_of::<libc::sockaddr_nl>() as u32)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    for _ in 0..8 {
        let n = unsafe { libc::recv(sock.0, buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR && u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]) == 1 {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-code)) };
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"))
}

/// Every address configured on this host (network namespace).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut at = list;
    while !at.is_null() {
        let entry = unsafe { &*at };
        if !entry.ifa_addr.is_null() {
            match unsafe { (*entry.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        at = entry.ifa_next;
    }
    unsafe { libc::freeifaddrs(list) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_message_layout() {
        let m = route_message(true, Net::parse("10.2.0.0/24").unwrap(), 7, Some("10.1.0.1".parse().unwrap()), 1);
        // nlmsghdr 16 + rtmsg 12 + RTA_DST 8 + RTA_OIF 8 + RTA_PREFSRC 8
        assert_eq!(m.len(), 52);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 52);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWROUTE);
        assert_eq!(&m[16..24], &[2, 24, 0, 0, 254, 4, 253, 1]);
        assert_eq!(&m[28..36], &[8, 0, 1, 0, 10, 2, 0, 0]);
        assert_eq!(&m[44..52], &[8, 0, 7, 0, 10, 1, 0, 1]);
        let v6 = route_message(false, Net::parse("fd02::/64").unwrap(), 7, Some("10.1.0.1".parse().unwrap()), 1);
        assert_eq!(v6.len(), 16 + 12 + 20 + 8, "a source of the other family is left out");
    }

    #[test]
    fn loopback_is_a_host_address() {
        assert!(host_addresses().iter().any(|a| a.is_loopback()));
    }
}
