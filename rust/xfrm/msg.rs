//! XFRM netlink messages: requests encoded as the kernel reads them (`linux/xfrm.h`,
//! x86-64 and every other Linux ABI: the structures have no pointer-sized fields) and the
//! kernel's answers and notifications parsed without ever panicking on short input.
//!
//! Layouts (bytes): `xfrm_selector` 56, `xfrm_id` 24, `xfrm_lifetime_cfg` 64,
//! `xfrm_lifetime_cur` 32, `xfrm_usersa_info` 224, `xfrm_userspi_info` 232,
//! `xfrm_usersa_id` 24, `xfrm_userpolicy_info` 168, `xfrm_userpolicy_id` 64,
//! `xfrm_user_tmpl` 64, `xfrm_user_acquire` 280, `xfrm_user_expire` 232,
//! `xfrm_user_polexpire` 176. Integers are host order (little-endian here) except the
//! SPI and ports, which are network order.

use std::net::IpAddr;

use zeroize::Zeroizing;

use super::XfrmError;

// --- constants of linux/netlink.h and linux/xfrm.h ------------------------------------

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_ACK: u16 = 0x04;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

pub const XFRM_MSG_NEWSA: u16 = 0x10;
pub const XFRM_MSG_DELSA: u16 = 0x11;
pub const XFRM_MSG_NEWPOLICY: u16 = 0x13;
pub const XFRM_MSG_DELPOLICY: u16 = 0x14;
pub const XFRM_MSG_ALLOCSPI: u16 = 0x16;
pub const XFRM_MSG_ACQUIRE: u16 = 0x17;
pub const XFRM_MSG_EXPIRE: u16 = 0x18;
pub const XFRM_MSG_UPDPOLICY: u16 = 0x19;
pub const XFRM_MSG_UPDSA: u16 = 0x1a;
pub const XFRM_MSG_POLEXPIRE: u16 = 0x1b;

pub const XFRMA_ALG_CRYPT: u16 = 2;
pub const XFRMA_ENCAP: u16 = 4;
pub const XFRMA_TMPL: u16 = 5;
pub const XFRMA_SRCADDR: u16 = 13;
pub const XFRMA_ALG_AUTH_TRUNC: u16 = 20;

/// Multicast groups (`XFRMNLGRP_*`), and the bind mask of the two a key manager needs.
pub const XFRMNLGRP_ACQUIRE: u32 = 1;
pub const XFRMNLGRP_EXPIRE: u32 = 2;
pub const KEY_MANAGER_GROUPS: u32 = (1 << (XFRMNLGRP_ACQUIRE - 1)) | (1 << (XFRMNLGRP_EXPIRE - 1));

pub const IPPROTO_ESP: u8 = 50;
pub const XFRM_MODE_TRANSPORT: u8 = 0;
pub const XFRM_MODE_TUNNEL: u8 = 1;
pub const XFRM_POLICY_IN: u8 = 0;
pub const XFRM_POLICY_OUT: u8 = 1;
pub const XFRM_POLICY_FWD: u8 = 2;
pub const XFRM_POLICY_ALLOW: u8 = 0;
pub const XFRM_POLICY_BLOCK: u8 = 1;
/// `XFRM_INF`: no limit.
pub const XFRM_INF: u64 = u64::MAX;
/// `UDP_ENCAP_ESPINUDP` (RFC 3948).
pub const UDP_ENCAP_ESPINUDP: u16 = 2;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

const SELECTOR_LEN: usize = 56;
const LIFETIME_CFG_LEN: usize = 64;
pub const USERSA_INFO_LEN: usize = 224;
const USERPOLICY_INFO_LEN: usize = 168;
const TMPL_LEN: usize = 64;
const ACQUIRE_LEN: usize = 280;
const EXPIRE_LEN: usize = 232;
const POLEXPIRE_LEN: usize = 176;

fn family_of(address: &IpAddr) -> u16 {
    if address.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn put_address(out: &mut [u8], address: &IpAddr) {
    match address {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out[..16].copy_from_slice(&a.octets()),
    }
}

fn read_address(data: &[u8], family: u16) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(&data[..4]).ok()?)),
        AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(&data[..16]).ok()?)),
        _ => None,
    }
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([data[at], data[at + 1]])
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

// --- selectors, lifetimes -------------------------------------------------------------

/// `struct xfrm_selector`: the traffic a policy or SA covers (0 = any protocol or port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    pub src: IpAddr,
    pub src_prefix: u8,
    pub dst: IpAddr,
    pub dst_prefix: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub ifindex: i32,
}

impl Selector {
    /// A selector from two CIDR networks (`10.1.0.0/24`; a bare address is a host).
    pub fn from_cidrs(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Result<Self, XfrmError> {
        let (src, src_prefix) = parse_cidr(src)?;
        let (dst, dst_prefix) = parse_cidr(dst)?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(XfrmError::local("selector", "source and destination differ in address family"));
        }
        Ok(Selector { src, src_prefix, dst, dst_prefix, proto, sport, dport, ifindex: 0 })
    }

    fn encode(&self, out: &mut [u8]) {
        put_address(&mut out[0..16], &self.dst);
        put_address(&mut out[16..32], &self.src);
        out[32..34].copy_from_slice(&self.dport.to_be_bytes());
        out[34..36].copy_from_slice(&if self.dport != 0 { [0xff, 0xff] } else { [0, 0] });
        out[36..38].copy_from_slice(&self.sport.to_be_bytes());
        out[38..40].copy_from_slice(&if self.sport != 0 { [0xff, 0xff] } else { [0, 0] });
        out[40..42].copy_from_slice(&family_of(&self.dst).to_ne_bytes());
        out[42] = self.dst_prefix;
        out[43] = self.src_prefix;
        out[44] = self.proto;
        out[48..52].copy_from_slice(&self.ifindex.to_ne_bytes());
    }

    fn parse(data: &[u8]) -> Option<Selector> {
        if data.len() < SELECTOR_LEN {
            return None;
        }
        let family = u16_at(data, 40);
        Some(Selector {
            dst: read_address(&data[0..16], family)?,
            src: read_address(&data[16..32], family)?,
            dport: u16::from_be_bytes([data[32], data[33]]),
            sport: u16::from_be_bytes([data[36], data[37]]),
            dst_prefix: data[42],
            src_prefix: data[43],
            proto: data[44],
            ifindex: i32::from_ne_bytes(data[48..52].try_into().ok()?),
        })
    }

    /// `10.1.0.0/24`
    pub fn src_text(&self) -> String {
        format!("{}/{}", self.src, self.src_prefix)
    }

    pub fn dst_text(&self) -> String {
        format!("{}/{}", self.dst, self.dst_prefix)
    }
}

/// Parse `ADDRESS[/PREFIX]`.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), XfrmError> {
    let bad = || XfrmError::local("selector", format!("'{text}' is not an address or CIDR network"));
    let (address, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let address: IpAddr = address.trim().parse().map_err(|_| bad())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
        None => max,
    };
    if prefix > max {
        return Err(bad());
    }
    Ok((address, prefix))
}

/// `struct xfrm_lifetime_cfg`: byte, packet and time limits (seconds 0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub soft_bytes: u64,
    pub hard_bytes: u64,
    pub soft_packets: u64,
    pub hard_packets: u64,
    pub soft_add_seconds: u64,
    pub hard_add_seconds: u64,
    pub soft_use_seconds: u64,
    pub hard_use_seconds: u64,
}

impl Lifetime {
    /// No limit at all (what iproute2 sends by default).
    pub const INFINITE: Lifetime = Lifetime {
        soft_bytes: XFRM_INF,
        hard_bytes: XFRM_INF,
        soft_packets: XFRM_INF,
        hard_packets: XFRM_INF,
        soft_add_seconds: 0,
        hard_add_seconds: 0,
        soft_use_seconds: 0,
        hard_use_seconds: 0,
    };

    fn encode(&self, out: &mut [u8]) {
        let values = [
            self.soft_bytes,
            self.hard_bytes,
            self.soft_packets,
            self.hard_packets,
            self.soft_add_seconds,
            self.hard_add_seconds,
            self.soft_use_seconds,
            self.hard_use_seconds,
        ];
        for (i, value) in values.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&value.to_ne_bytes());
        }
    }
}

// --- requests ---------------------------------------------------------------------------

/// One request: type, flags and body (zeroized on drop: it may hold keys).
pub struct Request {
    pub msg_type: u16,
    pub flags: u16,
    pub body: Zeroizing<Vec<u8>>,
    /// the request's name for errors ("XFRM_MSG_NEWSA")
    pub name: &'static str,
}

impl Request {
    fn new(msg_type: u16, flags: u16, name: &'static str, fixed: usize) -> Request {
        Request { msg_type, flags, body: Zeroizing::new(vec![0u8; fixed]), name }
    }

    fn attribute(&mut self, attr_type: u16, fill: impl FnOnce(&mut [u8]), len: usize) {
        let start = self.body.len();
        let total = 4 + len;
        self.body.resize(start + ((total + 3) & !3), 0);
        self.body[start..start + 2].copy_from_slice(&(total as u16).to_ne_bytes());
        self.body[start + 2..start + 4].copy_from_slice(&attr_type.to_ne_bytes());
        fill(&mut self.body[start + 4..start + total]);
    }

    /// The whole netlink message (`nlmsghdr` + body), zeroized on drop.
    pub fn to_message(&self, seq: u32, pid: u32) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(NLMSG_HDRLEN + self.body.len()));
        out.extend_from_slice(&((NLMSG_HDRLEN + self.body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&self.msg_type.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&pid.to_ne_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// The fields of `struct xfrm_usersa_info` a key manager sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaInfo {
    /// None: an all-zero selector (the kernel then uses the SA's addresses)
    pub selector: Option<Selector>,
    /// the SA's destination (outer) address: with the SPI and protocol, its key
    pub daddr: IpAddr,
    pub spi: u32,
    pub proto: u8,
    pub saddr: IpAddr,
    pub lifetime: Lifetime,
    pub reqid: u32,
    pub mode: u8,
    pub replay_window: u8,
    pub flags: u8,
}

impl SaInfo {
    fn encode(&self, out: &mut [u8]) {
        if let Some(selector) = &self.selector {
            selector.encode(&mut out[0..SELECTOR_LEN]);
        }
        put_address(&mut out[56..72], &self.daddr);
        out[72..76].copy_from_slice(&self.spi.to_be_bytes());
        out[76] = self.proto;
        put_address(&mut out[80..96], &self.saddr);
        self.lifetime.encode(&mut out[96..96 + LIFETIME_CFG_LEN]);
        out[208..212].copy_from_slice(&self.reqid.to_ne_bytes());
        out[212..214].copy_from_slice(&family_of(&self.daddr).to_ne_bytes());
        out[214] = self.mode;
        out[215] = self.replay_window;
        out[216] = self.flags;
    }
}

/// A key: the kernel's algorithm name and the key bytes.
pub struct Key<'a> {
    pub kernel_name: &'a str,
    pub key: &'a [u8],
}

/// UDP encapsulation (`struct xfrm_encap_tmpl`, RFC 3948): ports of the outer UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encap {
    pub sport: u16,
    pub dport: u16,
}

fn algorithm_name(out: &mut [u8], name: &str) -> Result<(), XfrmError> {
    if name.len() >= 64 {
        return Err(XfrmError::local("algorithm", format!("name '{name}' is longer than 63 bytes")));
    }
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(())
}

/// XFRM_MSG_NEWSA (Key Addition) or, with `update`, XFRM_MSG_UPDSA (Key Update: replaces
/// the larval SA that ALLOCSPI made). `auth_trunc_bits`: the ICV length (RFC 4868).
pub fn new_sa(
    update: bool,
    info: &SaInfo,
    encryption: Option<Key<'_>>,
    integrity: Option<(Key<'_>, u32)>,
    encap: Option<Encap>,
) -> Result<Request, XfrmError> {
    let (msg_type, name) = if update { (XFRM_MSG_UPDSA, "XFRM_MSG_UPDSA") } else { (XFRM_MSG_NEWSA, "XFRM_MSG_NEWSA") };
    let mut request = Request::new(msg_type, NLM_F_REQUEST | NLM_F_ACK, name, USERSA_INFO_LEN);
    info.encode(&mut request.body);
    if let Some(key) = encryption {
        algorithm_name(&mut [0u8; 64], key.kernel_name)?;
        request.attribute(
            XFRMA_ALG_CRYPT,
            |out| {
                out[..key.kernel_name.len()].copy_from_slice(key.kernel_name.as_bytes());
                out[64..68].copy_from_slice(&((key.key.len() * 8) as u32).to_ne_bytes());
                out[68..].copy_from_slice(key.key);
            },
            68 + key.key.len(),
        );
    }
    if let Some((key, trunc)) = integrity {
        algorithm_name(&mut [0u8; 64], key.kernel_name)?;
        request.attribute(
            XFRMA_ALG_AUTH_TRUNC,
            |out| {
                out[..key.kernel_name.len()].copy_from_slice(key.kernel_name.as_bytes());
                out[64..68].copy_from_slice(&((key.key.len() * 8) as u32).to_ne_bytes());
                out[68..72].copy_from_slice(&trunc.to_ne_bytes());
                out[72..].copy_from_slice(key.key);
            },
            72 + key.key.len(),
        );
    }
    if let Some(encap) = encap {
        request.attribute(
            XFRMA_ENCAP,
            |out| {
                out[0..2].copy_from_slice(&UDP_ENCAP_ESPINUDP.to_ne_bytes());
                out[2..4].copy_from_slice(&encap.sport.to_be_bytes());
                out[4..6].copy_from_slice(&encap.dport.to_be_bytes());
            },
            24,
        );
    }
    Ok(request)
}

/// XFRM_MSG_ALLOCSPI (Get SPI): a larval SA `saddr -> daddr` with an SPI in [min, max].
pub fn alloc_spi(info: &SaInfo, min: u32, max: u32) -> Request {
    let mut request = Request::new(XFRM_MSG_ALLOCSPI, NLM_F_REQUEST, "XFRM_MSG_ALLOCSPI", USERSA_INFO_LEN + 8);
    info.encode(&mut request.body);
    request.body[224..228].copy_from_slice(&min.to_ne_bytes());
    request.body[228..232].copy_from_slice(&max.to_ne_bytes());
    request
}

/// XFRM_MSG_DELSA: the SA (`daddr`, `spi`, `proto`), from `saddr` when given.
pub fn del_sa(daddr: &IpAddr, spi: u32, proto: u8, saddr: Option<&IpAddr>) -> Request {
    let mut request = Request::new(XFRM_MSG_DELSA, NLM_F_REQUEST | NLM_F_ACK, "XFRM_MSG_DELSA", 24);
    put_address(&mut request.body[0..16], daddr);
    request.body[16..20].copy_from_slice(&spi.to_be_bytes());
    request.body[20..22].copy_from_slice(&family_of(daddr).to_ne_bytes());
    request.body[22] = proto;
    if let Some(saddr) = saddr {
        request.attribute(XFRMA_SRCADDR, |out| put_address(out, saddr), 16);
    }
    request
}

/// `struct xfrm_user_tmpl`: the SA a policy requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    pub daddr: IpAddr,
    pub saddr: IpAddr,
    pub proto: u8,
    pub mode: u8,
    pub reqid: u32,
}

/// The fields of `struct xfrm_userpolicy_info` a key manager sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyInfo {
    pub selector: Selector,
    pub lifetime: Lifetime,
    /// lower is preferred
    pub priority: u32,
    pub dir: u8,
    pub action: u8,
}

/// XFRM_MSG_NEWPOLICY, or with `update` XFRM_MSG_UPDPOLICY (add or replace).
pub fn new_policy(update: bool, info: &PolicyInfo, template: Option<&Template>) -> Request {
    let (msg_type, name) =
        if update { (XFRM_MSG_UPDPOLICY, "XFRM_MSG_UPDPOLICY") } else { (XFRM_MSG_NEWPOLICY, "XFRM_MSG_NEWPOLICY") };
    let mut request = Request::new(msg_type, NLM_F_REQUEST | NLM_F_ACK, name, USERPOLICY_INFO_LEN);
    info.selector.encode(&mut request.body[0..SELECTOR_LEN]);
    info.lifetime.encode(&mut request.body[56..56 + LIFETIME_CFG_LEN]);
    request.body[152..156].copy_from_slice(&info.priority.to_ne_bytes());
    request.body[160] = info.dir;
    request.body[161] = info.action;
    if let Some(t) = template {
        request.attribute(
            XFRMA_TMPL,
            |out| {
                put_address(&mut out[0..16], &t.daddr);
                out[20] = t.proto;
                out[24..26].copy_from_slice(&family_of(&t.daddr).to_ne_bytes());
                put_address(&mut out[28..44], &t.saddr);
                out[44..48].copy_from_slice(&t.reqid.to_ne_bytes());
                out[48] = t.mode;
                out[52..64].fill(0xff); // aalgos, ealgos, calgos: any
            },
            TMPL_LEN,
        );
    }
    request
}

/// The `struct xfrm_userpolicy_info` of a per-socket policy (`setsockopt(IP_XFRM_POLICY)`)
/// that lets everything of that socket pass in direction `dir`: a key manager's own IKE
/// sockets bypass the policies it installs (which may cover the gateways' addresses).
pub fn socket_bypass_policy(dir: u8, ipv6: bool) -> [u8; USERPOLICY_INFO_LEN] {
    let mut out = [0u8; USERPOLICY_INFO_LEN];
    out[40..42].copy_from_slice(&(if ipv6 { AF_INET6 } else { AF_INET }).to_ne_bytes());
    out[160] = dir;
    out[161] = XFRM_POLICY_ALLOW;
    out
}

/// XFRM_MSG_DELPOLICY by selector and direction.
pub fn del_policy(selector: &Selector, dir: u8) -> Request {
    let mut request = Request::new(XFRM_MSG_DELPOLICY, NLM_F_REQUEST | NLM_F_ACK, "XFRM_MSG_DELPOLICY", 64);
    selector.encode(&mut request.body[0..SELECTOR_LEN]);
    request.body[60] = dir;
    request
}

// --- answers and notifications --------------------------------------------------------

/// One netlink message of a datagram: (type, flags, seq, body).
pub fn split_messages(data: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= data.len() {
        let len = u32_at(data, at) as usize;
        if len < NLMSG_HDRLEN || at + len > data.len() {
            break;
        }
        out.push((u16_at(data, at + 4), u16_at(data, at + 6), u32_at(data, at + 8), &data[at + NLMSG_HDRLEN..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// The attributes after a fixed header: (type, value).
pub fn attributes(data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= data.len() {
        let len = u16_at(data, at) as usize;
        if len < 4 || at + len > data.len() {
            break;
        }
        out.push((u16_at(data, at + 2) & 0x3fff, &data[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// An NLMSG_ERROR body: (positive errno, 0 for an ack; the extended ack text).
pub fn parse_error(flags: u16, body: &[u8]) -> Option<(i32, Option<String>)> {
    if body.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let errno = -i32::from_ne_bytes(body[0..4].try_into().ok()?);
    let mut text = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let echoed = if flags & NLM_F_CAPPED != 0 { NLMSG_HDRLEN } else { (u32_at(body, 4) as usize + 3) & !3 };
        if let Some(tlvs) = body.get(4 + echoed..) {
            for (attr_type, value) in attributes(tlvs) {
                if attr_type == NLMSGERR_ATTR_MSG {
                    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
                    text = Some(String::from_utf8_lossy(&value[..end]).trim().to_string());
                }
            }
        }
    }
    Some((errno, text))
}

/// An SA as the kernel describes it (`xfrm_usersa_info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaState {
    pub selector: Option<Selector>,
    pub daddr: IpAddr,
    pub spi: u32,
    pub proto: u8,
    pub saddr: IpAddr,
    pub bytes: u64,
    pub packets: u64,
    pub reqid: u32,
    pub mode: u8,
}

/// Read an `xfrm_usersa_info` (ALLOCSPI's answer, the head of an EXPIRE).
pub fn parse_sa(data: &[u8]) -> Option<SaState> {
    if data.len() < USERSA_INFO_LEN {
        return None;
    }
    let family = u16_at(data, 212);
    Some(SaState {
        selector: Selector::parse(&data[0..SELECTOR_LEN]),
        daddr: read_address(&data[56..72], family)?,
        spi: u32::from_be_bytes(data[72..76].try_into().ok()?),
        proto: data[76],
        saddr: read_address(&data[80..96], family)?,
        bytes: u64_at(data, 160),
        packets: u64_at(data, 168),
        reqid: u32_at(data, 208),
        mode: data[214],
    })
}

/// What the kernel tells a key manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A packet matched `policy_selector` (direction `dir`) with no SA: negotiate SAs
    /// from `saddr` (us) to `daddr` (the peer) for the flow `selector`.
    Acquire {
        daddr: IpAddr,
        saddr: IpAddr,
        proto: u8,
        selector: Option<Selector>,
        policy_selector: Option<Selector>,
        policy_index: u32,
        priority: u32,
        dir: u8,
        reqid: u32,
        seq: u32,
    },
    /// An SA reached a soft (rekey) or hard (gone) limit.
    Expire { state: SaState, hard: bool },
    /// A policy's lifetime ended (hard: the kernel removed it).
    PolicyExpire { selector: Option<Selector>, dir: u8, index: u32, hard: bool },
}

/// Parse a notification body of type `msg_type`; None for other types or short bodies.
pub fn parse_notification(msg_type: u16, body: &[u8]) -> Option<Notification> {
    match msg_type {
        XFRM_MSG_ACQUIRE => {
            if body.len() < ACQUIRE_LEN {
                return None;
            }
            // the outer family is the template's (it may differ from the selector's)
            let template = attributes(&body[ACQUIRE_LEN..])
                .into_iter()
                .find(|(t, v)| *t == XFRMA_TMPL && v.len() >= TMPL_LEN)
                .map(|(_, v)| (u16_at(v, 24), u32_at(v, 44)));
            let (family, reqid) = template.unwrap_or((u16_at(body, 80), 0));
            Some(Notification::Acquire {
                daddr: read_address(&body[0..16], family)?,
                saddr: read_address(&body[24..40], family)?,
                proto: body[20],
                selector: Selector::parse(&body[40..96]),
                policy_selector: Selector::parse(&body[96..152]),
                priority: u32_at(body, 96 + 152),
                policy_index: u32_at(body, 96 + 156),
                dir: body[96 + 160],
                reqid,
                seq: u32_at(body, 276),
            })
        }
        XFRM_MSG_EXPIRE => {
            if body.len() < EXPIRE_LEN {
                return None;
            }
            Some(Notification::Expire { state: parse_sa(body)?, hard: body[224] != 0 })
        }
        XFRM_MSG_POLEXPIRE => {
            if body.len() < POLEXPIRE_LEN {
                return None;
            }
            Some(Notification::PolicyExpire {
                selector: Selector::parse(&body[0..SELECTOR_LEN]),
                index: u32_at(body, 156),
                dir: body[160],
                hard: body[168] != 0,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Vec<u8> {
        let text = match name {
            "newsa" => include_str!("vectors/newsa.hex"),
            "allocspi" => include_str!("vectors/allocspi.hex"),
            "newpolicy" => include_str!("vectors/newpolicy.hex"),
            "delpolicy" => include_str!("vectors/delpolicy.hex"),
            "delsa" => include_str!("vectors/delsa.hex"),
            "acquire" => include_str!("vectors/acquire.hex"),
            "expire" => include_str!("vectors/expire.hex"),
            _ => unreachable!(),
        };
        let text = text.trim();
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn sa_info(selector: Option<Selector>, spi: u32, daddr: &str, saddr: &str) -> SaInfo {
        SaInfo {
            selector,
            daddr: ip(daddr),
            spi,
            proto: IPPROTO_ESP,
            saddr: ip(saddr),
            lifetime: Lifetime::INFINITE,
            reqid: 7,
            mode: XFRM_MODE_TUNNEL,
            replay_window: 0,
            flags: 0,
        }
    }

    #[test]
    fn newsa_matches_iproute2() {
        let sel = Selector::from_cidrs("10.1.0.0/24", "10.2.0.0/24", 0, 0, 0).unwrap();
        let enc: Vec<u8> = (0..16u8).map(|i| i * 0x11).collect();
        let auth: Vec<u8> = enc.iter().chain(enc.iter()).copied().collect();
        let request = new_sa(
            false,
            &sa_info(Some(sel), 0x1000, "10.0.0.2", "10.0.0.1"),
            Some(Key { kernel_name: "cbc(aes)", key: &enc }),
            Some((Key { kernel_name: "hmac(sha256)", key: &auth }, 128)),
            None,
        )
        .unwrap();
        assert_eq!(request.msg_type, XFRM_MSG_NEWSA);
        assert_eq!(request.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(&request.body[..], &vector("newsa")[..]);
        let message = request.to_message(9, 0);
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()), 436); // strace: nlmsg_len=436
    }

    #[test]
    fn allocspi_matches_iproute2() {
        // the larval SA: iproute2 leaves the selector and lifetimes zero
        let mut info = sa_info(None, 0, "10.0.0.2", "10.0.0.1");
        info.lifetime = Lifetime { soft_bytes: 0, hard_bytes: 0, soft_packets: 0, hard_packets: 0, ..Lifetime::INFINITE };
        let request = alloc_spi(&info, 0xc000_0000, 0xcfff_ffff);
        assert_eq!((request.msg_type, request.flags), (XFRM_MSG_ALLOCSPI, NLM_F_REQUEST));
        assert_eq!(&request.body[..], &vector("allocspi")[..]);
    }

    #[test]
    fn policy_requests_match_iproute2() {
        let sel = Selector::from_cidrs("10.1.0.0/24", "10.2.0.0/24", 0, 0, 0).unwrap();
        let info = PolicyInfo { selector: sel, lifetime: Lifetime::INFINITE, priority: 65530, dir: XFRM_POLICY_OUT, action: XFRM_POLICY_ALLOW };
        let tmpl = Template { daddr: ip("192.0.2.2"), saddr: ip("192.0.2.1"), proto: IPPROTO_ESP, mode: XFRM_MODE_TUNNEL, reqid: 7 };
        let request = new_policy(false, &info, Some(&tmpl));
        assert_eq!(request.msg_type, XFRM_MSG_NEWPOLICY);
        assert_eq!(&request.body[..], &vector("newpolicy")[..]);
        assert_eq!(new_policy(true, &info, Some(&tmpl)).msg_type, XFRM_MSG_UPDPOLICY);
        let delete = del_policy(&sel, XFRM_POLICY_OUT);
        assert_eq!(&delete.body[..], &vector("delpolicy")[..]);
    }

    #[test]
    fn delsa_matches_iproute2() {
        let request = del_sa(&ip("10.0.0.2"), 0x1000, IPPROTO_ESP, Some(&ip("10.0.0.1")));
        assert_eq!((request.msg_type, request.flags), (XFRM_MSG_DELSA, NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(&request.body[..], &vector("delsa")[..]);
    }

    #[test]
    fn kernel_acquire_is_read() {
        let body = vector("acquire");
        let Some(Notification::Acquire { daddr, saddr, proto, selector, policy_selector, policy_index, priority, dir, reqid, seq }) =
            parse_notification(XFRM_MSG_ACQUIRE, &body)
        else {
            panic!("not an acquire")
        };
        assert_eq!((daddr, saddr, proto), (ip("192.0.2.2"), ip("192.0.2.1"), IPPROTO_ESP));
        let flow = selector.unwrap();
        assert_eq!((flow.src_text(), flow.dst_text()), ("10.1.0.1/32".into(), "10.2.0.1/32".into()));
        assert_eq!((flow.proto, flow.sport, flow.dport, flow.ifindex), (17, 41959, 1025, 3));
        let policy = policy_selector.unwrap();
        assert_eq!((policy.src_text(), policy.dst_text()), ("10.1.0.0/24".into(), "10.2.0.0/24".into()));
        assert_eq!((policy_index, priority, dir, reqid, seq), (9, 65530, XFRM_POLICY_OUT, 7, 1));
    }

    #[test]
    fn kernel_expire_is_read() {
        let body = vector("expire");
        let Some(Notification::Expire { state, hard }) = parse_notification(XFRM_MSG_EXPIRE, &body) else {
            panic!("not an expire")
        };
        assert!(hard);
        assert_eq!((state.daddr, state.saddr, state.spi, state.reqid), (ip("192.0.2.2"), ip("192.0.2.1"), 0, 7));
        assert_eq!(state.mode, XFRM_MODE_TUNNEL);
    }

    #[test]
    fn short_or_garbage_input_never_panics() {
        let acquire = vector("acquire");
        for cut in 0..acquire.len() {
            let _ = parse_notification(XFRM_MSG_ACQUIRE, &acquire[..cut]);
            let _ = parse_notification(XFRM_MSG_EXPIRE, &acquire[..cut]);
            let _ = parse_notification(XFRM_MSG_POLEXPIRE, &acquire[..cut]);
            let _ = split_messages(&acquire[..cut]);
            let _ = attributes(&acquire[..cut]);
            let _ = parse_error(NLM_F_ACK_TLVS, &acquire[..cut]);
        }
        assert!(parse_notification(XFRM_MSG_ACQUIRE, &acquire[..ACQUIRE_LEN - 1]).is_none());
    }

    #[test]
    fn extended_ack_text_is_read() {
        // EPROTONOSUPPORT with "Requested type not found", as this kernel answers NEWSA for ESP
        let mut body = (-libc::EPROTONOSUPPORT).to_ne_bytes().to_vec();
        body.extend_from_slice(&16u32.to_ne_bytes());
        body.extend_from_slice(&[0u8; 12]);
        let text = b"Requested type not found\0";
        body.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        body.extend_from_slice(text);
        let (errno, text) = parse_error(NLM_F_ACK_TLVS | NLM_F_CAPPED, &body).unwrap();
        assert_eq!(errno, libc::EPROTONOSUPPORT);
        assert_eq!(text.as_deref(), Some("Requested type not found"));
    }

    #[test]
    fn socket_bypass_policy_is_an_allow_of_one_direction() {
        let policy = socket_bypass_policy(XFRM_POLICY_IN, false);
        assert_eq!(policy.len(), 168);
        assert_eq!((policy[40], policy[41], policy[160], policy[161]), (2, 0, XFRM_POLICY_IN, XFRM_POLICY_ALLOW));
        assert!(policy[..40].iter().chain(&policy[42..160]).chain(&policy[162..]).all(|&b| b == 0));
        assert_eq!(socket_bypass_policy(XFRM_POLICY_OUT, true)[40..42], 10u16.to_ne_bytes());
    }

    #[test]
    fn bad_selectors_are_refused() {
        assert!(Selector::from_cidrs("10.1.0.0/33", "10.2.0.0/24", 0, 0, 0).is_err());
        assert!(Selector::from_cidrs("10.1.0.0/24", "2001:db8::/32", 0, 0, 0).is_err());
        assert!(Selector::from_cidrs("nonsense", "10.2.0.0/24", 0, 0, 0).is_err());
        let host = Selector::from_cidrs("10.1.0.1", "2001:db8::1", 0, 0, 0);
        assert!(host.is_err());
    }
}
