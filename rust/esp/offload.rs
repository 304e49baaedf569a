//! TUN offloads (virtio-net header, `IFF_VNET_HDR`): the kernel hands the TUN device TCP
//! super-segments (up to 64 KiB, TSO) and packets whose checksum is left to the device;
//! `segment` cuts them into the packets the wire would carry, each with its headers and
//! checksums complete, before they are encapsulated one by one. Inbound packets are
//! written with an empty header (nothing for the kernel to do).
//!
//! Header layout (`struct virtio_net_hdr`, native byte order): flags, gso_type, hdr_len,
//! gso_size, csum_start, csum_offset. Every offset is checked against the packet; a
//! packet that does not add up is dropped (counted by the caller), never a panic.

/// Bytes of the header before each packet read from or written to the TUN device.
pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// Offload flags for `TUNSETOFFLOAD`: checksums, TCP segmentation over IPv4 and IPv6.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        if b.len() < VNET_HDR_LEN {
            return None;
        }
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
    }
}

/// One's complement sum of `data` (RFC 1071), folded to 16 bits, not complemented.
pub fn sum16(data: &[u8], initial: u32) -> u16 {
    let mut acc: u64 = initial as u64;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u16::from_be_bytes([rest[i], rest[i + 1]]) as u64;
        i += 2;
    }
    if i < rest.len() {
        acc += (rest[i] as u64) << 8;
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum of a transport header for `packet` (IPv4 or IPv6), protocol
/// `proto`, transport length `len`.
fn pseudo_sum(packet: &[u8], proto: u8, len: usize) -> Option<u32> {
    let (src, dst): (&[u8], &[u8]) = match packet.first()? >> 4 {
        4 => (packet.get(12..16)?, packet.get(16..20)?),
        6 => (packet.get(8..24)?, packet.get(24..40)?),
        _ => return None,
    };
    let mut acc = sum16(src, 0) as u32 + sum16(dst, 0) as u32 + proto as u32;
    acc += (len as u32 >> 16) + (len as u32 & 0xffff);
    Some(acc)
}

fn ip_header_len(packet: &[u8]) -> Option<(usize, u8)> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = (packet[0] & 0x0f) as usize * 4;
            (ihl >= 20 && packet.len() >= ihl).then(|| (ihl, packet[9]))
        }
        6 if packet.len() >= 40 => Some((40, packet[6])), // TSO packets carry no extension headers
        _ => None,
    }
}

/// Finish a packet whose checksum the kernel left to the device (`F_NEEDS_CSUM`): the
/// sum from `csum_start` to the end, stored at `csum_start + csum_offset` (the field
/// holds the pseudo-header sum already).
fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start + offset;
    if start >= packet.len() || at + 2 > packet.len() {
        return false;
    }
    let sum = !sum16(&packet[start..], 0);
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// Cut what the TUN device read (`hdr` and `packet`) into wire-sized packets, each
/// handed to `emit`; `scratch` is reused between calls. False: malformed, nothing emitted
/// after the point of failure.
pub fn segment(hdr: VnetHdr, packet: &mut [u8], scratch: &mut Vec<u8>, mut emit: impl FnMut(&[u8])) -> bool {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 && !complete_checksum(packet, hdr.csum_start as usize, hdr.csum_offset as usize) {
            return false;
        }
        emit(packet);
        return true;
    }
    if gso != GSO_TCPV4 && gso != GSO_TCPV6 {
        return false;
    }
    let Some((ip_len, proto)) = ip_header_len(packet) else { return false };
    if proto != 6 || packet.len() < ip_len + 20 {
        return false;
    }
    let tcp_len = ((packet[ip_len + 12] >> 4) as usize) * 4;
    let headers = ip_len + tcp_len;
    let mss = hdr.gso_size as usize;
    if tcp_len < 20 || packet.len() < headers || mss == 0 {
        return false;
    }
    let v4 = packet[0] >> 4 == 4;
    let payload = &packet[headers..];
    let count = payload.len().div_ceil(mss).max(1);
    let seq0 = u32::from_be_bytes([packet[ip_len + 4], packet[ip_len + 5], packet[ip_len + 6], packet[ip_len + 7]]);
    let id0 = u16::from_be_bytes([packet[4], packet[5]]);
    let flags0 = packet[ip_len + 13];
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        scratch.clear();
        scratch.extend_from_slice(&packet[..headers]);
        scratch.extend_from_slice(chunk);
        let total = scratch.len();
        if v4 {
            scratch[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            scratch[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            scratch[10..12].copy_from_slice(&[0, 0]);
            let c = !sum16(&scratch[..ip_len], 0);
            scratch[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            scratch[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
        let t = ip_len;
        scratch[t + 4..t + 8].copy_from_slice(&seq0.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(0x01 | 0x08); // FIN and PSH only on the last segment
        }
        if i > 0 {
            flags &= !0x80; // CWR only on the first
        }
        scratch[t + 13] = flags;
        scratch[t + 16..t + 18].copy_from_slice(&[0, 0]);
        let Some(pseudo) = pseudo_sum(scratch, 6, total - ip_len) else { return false };
        let c = !sum16(&scratch[ip_len..], pseudo);
        scratch[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        emit(scratch);
    }
    true
}

impl VnetHdr {
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Largest super-packet handed to the kernel.
const MAX_COALESCED: usize = 65535;

/// Receive-side coalescing (what GRO does in a NIC driver) of decrypted inner packets:
/// consecutive full-sized segments of one IPv4 TCP flow (same addresses, ports, ACK,
/// window, options; sequence numbers in a row; flags ACK, PSH only on the last) become
/// one TCP super-packet written with a virtio-net header (TCPV4, the segment size, the
/// checksum left to the kernel), so the kernel's TCP receive path and its ACKs run once
/// per super-packet. Anything else is written as it came.
#[derive(Default)]
pub struct Coalescer {
    buf: Vec<u8>,
    open: bool,
    closed: bool,
    mss: usize,
    segments: usize,
    next_seq: u32,
    tcp_len: usize,
}

/// (TCP header length, payload length, sequence number, flags) of an IPv4 TCP packet
/// without IP options or fragmentation, whose lengths add up.
fn tcp4(p: &[u8]) -> Option<(usize, usize, u32, u8)> {
    if p.len() < 40 || p[0] != 0x45 || p[9] != 6 {
        return None;
    }
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    let fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff; // MF and the offset
    let tcp_len = ((p[32] >> 4) as usize) * 4;
    if total != p.len() || fragment != 0 || tcp_len < 20 || 20 + tcp_len > total {
        return None;
    }
    let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
    Some((tcp_len, total - 20 - tcp_len, seq, p[33]))
}

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

impl Coalescer {
    /// Take one inner packet; `write(header, packet)` receives what is complete.
    pub fn push(&mut self, p: &[u8], write: &mut dyn FnMut(VnetHdr, &[u8])) {
        let Some((tcp_len, payload, seq, flags)) = tcp4(p) else {
            self.flush(write);
            write(VnetHdr::default(), p);
            return;
        };
        if payload == 0 || (flags != ACK && flags != ACK | PSH) {
            self.flush(write);
            write(VnetHdr::default(), p);
            return;
        }
        if self.open && !self.closed && self.fits(p, tcp_len, payload, seq) {
            self.buf.extend_from_slice(&p[20 + tcp_len..]);
            self.segments += 1;
            self.next_seq = seq.wrapping_add(payload as u32);
            if payload < self.mss || flags & PSH != 0 {
                self.closed = true;
                self.buf[33] |= flags & PSH;
            }
            return;
        }
        self.flush(write);
        self.buf.clear();
        self.buf.extend_from_slice(p);
        self.open = true;
        self.closed = flags & PSH != 0;
        self.mss = payload;
        self.segments = 1;
        self.next_seq = seq.wrapping_add(payload as u32);
        self.tcp_len = tcp_len;
    }

    fn fits(&self, p: &[u8], tcp_len: usize, payload: usize, seq: u32) -> bool {
        let b = &self.buf;
        tcp_len == self.tcp_len
            && seq == self.next_seq
            && payload <= self.mss
            && b.len() + payload <= MAX_COALESCED
            && p[1] == b[1] // TOS/ECN
            && p[6] == b[6] // DF
            && p[8] == b[8] // TTL
            && p[12..20] == b[12..20] // addresses
            && p[20..24] == b[20..24] // ports
            && p[28..32] == b[28..32] // acknowledgment number
            && p[34..36] == b[34..36] // window
            && p[40..20 + tcp_len] == b[40..20 + tcp_len] // options (timestamps)
    }

    /// Write what is held.
    pub fn flush(&mut self, write: &mut dyn FnMut(VnetHdr, &[u8])) {
        if !self.open {
            return;
        }
        self.open = false;
        if self.segments == 1 {
            write(VnetHdr::default(), &self.buf);
            return;
        }
        let total = self.buf.len();
        let b = &mut self.buf;
        b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        b[10..12].copy_from_slice(&[0, 0]);
        let c = !sum16(&b[..20], 0);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel does the rest
        let pseudo = pseudo_sum(b, 6, total - 20).unwrap_or(0);
        b[36..38].copy_from_slice(&sum16(&[], pseudo).to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | if b[1] & 0x03 == 0x03 { GSO_ECN } else { 0 },
            hdr_len: (20 + self.tcp_len) as u16,
            gso_size: self.mss as u16,
            csum_start: 20,
            csum_offset: 16,
        };
        write(hdr, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(payload_len: usize, flags: u8) -> Vec<u8> {
        let total = 20 + 20 + payload_len;
        let mut p = vec![0x45, 0, (total >> 8) as u8, total as u8, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 1, 0, 1, 10, 2, 0, 1];
        p.extend_from_slice(&[0x13, 0x88, 0x14, 0x51, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend((0..payload_len).map(|i| (i * 7) as u8));
        p
    }

    fn valid(seg: &[u8]) -> bool {
        let ihl = (seg[0] & 0x0f) as usize * 4;
        let ip_ok = sum16(&seg[..ihl], 0) == 0xffff;
        let pseudo = pseudo_sum(seg, 6, seg.len() - ihl).unwrap();
        ip_ok && sum16(&seg[ihl..], pseudo) == 0xffff
    }

    #[test]
    fn tso_cut_into_valid_segments() {
        let mut p = tcp4(3000, 0x18); // ACK|PSH
        let hdr = VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV4, hdr_len: 40, gso_size: 1200, csum_start: 20, csum_offset: 16 };
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut scratch = Vec::new();
        assert!(segment(hdr, &mut p, &mut scratch, |s| out.push(s.to_vec())));
        assert_eq!(out.iter().map(|s| s.len()).collect::<Vec<_>>(), vec![1240, 1240, 640]);
        assert!(out.iter().all(|s| valid(s)));
        let seqs: Vec<u32> = out.iter().map(|s| u32::from_be_bytes([s[24], s[25], s[26], s[27]])).collect();
        assert_eq!(seqs, vec![4096, 4096 + 1200, 4096 + 2400]);
        assert_eq!(out.iter().map(|s| s[33]).collect::<Vec<_>>(), vec![0x10, 0x10, 0x18], "PSH on the last");
        let payload: Vec<u8> = out.iter().flat_map(|s| s[40..].to_vec()).collect();
        assert_eq!(payload, tcp4(3000, 0x18)[40..].to_vec());
    }

    #[test]
    fn checksum_completed() {
        let mut p = tcp4(100, 0x10);
        let pseudo = pseudo_sum(&p, 6, 120).unwrap();
        let folded = sum16(&[], pseudo);
        p[36..38].copy_from_slice(&folded.to_be_bytes()); // as the kernel leaves it
        let hdr = VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_NONE, csum_start: 20, csum_offset: 16, ..Default::default() };
        let mut out = Vec::new();
        assert!(segment(hdr, &mut p, &mut Vec::new(), |s| out.push(s.to_vec())));
        // the IP checksum of tcp4() is zero: fix it, then everything must verify
        let c = !sum16(&out[0][..20], 0);
        out[0][10..12].copy_from_slice(&c.to_be_bytes());
        assert!(valid(&out[0]));
    }

    #[test]
    fn malformed_refused() {
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 100, ..Default::default() };
        for len in 0..60 {
            let mut junk: Vec<u8> = (0..len).map(|i| 0x45u8.wrapping_add(i as u8)).collect();
            let _ = segment(hdr, &mut junk, &mut Vec::new(), |_| {});
        }
        let bad = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 500, csum_offset: 16, ..Default::default() };
        assert!(!segment(bad, &mut tcp4(10, 0x10), &mut Vec::new(), |_| {}));
        assert!(!segment(VnetHdr { gso_type: 3, ..Default::default() }, &mut tcp4(10, 0x10), &mut Vec::new(), |_| {}));
    }

    /// Segment a TSO packet, coalesce the segments again: the same bytes, one header.
    #[test]
    fn coalescing_undoes_segmentation() {
        let original = tcp4(5000, 0x18);
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1400, ..Default::default() };
        let mut segments: Vec<Vec<u8>> = Vec::new();
        assert!(segment(hdr, &mut original.clone(), &mut Vec::new(), |s| segments.push(s.to_vec())));
        assert_eq!(segments.len(), 4);
        let mut written: Vec<(VnetHdr, Vec<u8>)> = Vec::new();
        let mut c = Coalescer::default();
        let mut w = |h: VnetHdr, p: &[u8]| written.push((h, p.to_vec()));
        for s in &segments {
            c.push(s, &mut w);
        }
        c.push(&segments[0], &mut w); // a repeat: not in sequence, ends the super-packet
        c.flush(&mut w);
        assert_eq!(written.len(), 2);
        let (h, p) = &written[0];
        assert_eq!((h.gso_type, h.gso_size, h.flags, h.csum_start, h.csum_offset, h.hdr_len), (GSO_TCPV4, 1400, F_NEEDS_CSUM, 20, 16, 40));
        assert_eq!(p.len(), original.len());
        assert_eq!(p[40..], original[40..]);
        assert_eq!(p[33], 0x18, "PSH of the last segment kept");
        assert_eq!(sum16(&p[..20], 0), 0xffff, "IP checksum");
        assert_eq!(written[1].0, VnetHdr::default(), "a lone segment goes as it is");
        assert_eq!(written[1].1, segments[0]);
    }

    #[test]
    fn coalescing_leaves_other_packets_alone() {
        let mut written: Vec<(VnetHdr, Vec<u8>)> = Vec::new();
        let mut c = Coalescer::default();
        let mut w = |h: VnetHdr, p: &[u8]| written.push((h, p.to_vec()));
        let syn = tcp4(0, 0x02);
        let ack_only = tcp4(0, 0x10);
        let mut other_flow = tcp4(100, 0x10);
        other_flow[21] = 0x99; // another source port
        let icmp = { let mut p = tcp4(30, 0x10); p[9] = 1; p };
        for p in [&syn, &ack_only, &tcp4(100, 0x10), &other_flow, &icmp] {
            c.push(p, &mut w);
        }
        c.flush(&mut w);
        assert_eq!(written.len(), 5);
        assert!(written.iter().all(|(h, _)| *h == VnetHdr::default()));
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2
        assert_eq!(sum16(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0), 0xddf2);
        assert_eq!(sum16(&[0x00, 0x01, 0xf2], 0), 0xf201, "an odd byte is padded with zero");
    }
}
