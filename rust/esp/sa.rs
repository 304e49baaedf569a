//! One direction of an ESP SA in tunnel mode (RFC 4303): encapsulation of an inner IP
//! packet and decapsulation back to it, with the per-SA counters and byte lifetimes.
//!
//! Outbound: `SPI | seq | IV | E(inner | pad 1..n | pad length | next header) | ICV`,
//! the ICV an HMAC over everything before it, truncated. Inbound checks in this order:
//! length, anti-replay (cheap), ICV (constant time), window update, decryption, padding
//! (the bytes 1, 2, ... of RFC 4303 2.4), next header (4 or 41) against the inner
//! version, inner source inside the SA's remote traffic selector. Every failure is a
//! counted drop, never a panic.

use std::net::IpAddr;

use zeroize::Zeroize;

use super::crypto::{constant_time_eq, random, CbcCipher, Encryption, Hmac, Integrity};
use super::replay::ReplayWindow;

pub const ESP_HEADER: usize = 8;
pub const NEXT_IPV4: u8 = 4;
pub const NEXT_IPV6: u8 = 41;

/// An address prefix (a traffic selector as CIDR text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    pub fn parse(text: &str) -> Option<Net> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Net { addr, prefix })
    }

    /// The prefix of `ip` that is `prefix` bits long (host bits cleared).
    pub fn of(ip: IpAddr, prefix: u8) -> Net {
        let addr = match ip {
            IpAddr::V4(a) => {
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32) as u32) };
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix.min(128) as u32) };
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        };
        Net { addr, prefix }
    }

    /// The same prefix with the host bits cleared (the key of a routing table).
    pub fn masked(&self) -> Net {
        Net::of(self.addr, self.prefix)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix as u32) };
                u32::from(n) & mask == u32::from(*a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix as u32) };
                u128::from(n) & mask == u128::from(*a) & mask
            }
            _ => false,
        }
    }
}

/// Source and destination of an inner IP packet (None: not IPv4/IPv6 or too short).
pub fn inner_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let s: [u8; 4] = packet[12..16].try_into().ok()?;
            let d: [u8; 4] = packet[16..20].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        6 if packet.len() >= 40 => {
            let s: [u8; 16] = packet[8..24].try_into().ok()?;
            let d: [u8; 16] = packet[24..40].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

/// Counters of one SA direction (read by the monitor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub replay_drops: u64,
    pub icv_failures: u64,
    pub padding_errors: u64,
    pub malformed: u64,
    pub policy_drops: u64,
}

/// Byte lifetimes (RFC 2407 4.5 kilobytes): soft then hard, each reported once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifetime {
    pub soft_bytes: u64,
    pub hard_bytes: u64,
    pub soft_done: bool,
    pub hard_done: bool,
}

/// What crossing a limit asks of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Soft,
    Hard,
}

impl Lifetime {
    /// After `bytes` in total: a limit crossed just now (hard wins).
    fn after(&mut self, bytes: u64) -> Option<Expiry> {
        if self.hard_bytes > 0 && !self.hard_done && bytes >= self.hard_bytes {
            self.hard_done = true;
            self.soft_done = true;
            return Some(Expiry::Hard);
        }
        if self.soft_bytes > 0 && !self.soft_done && bytes >= self.soft_bytes {
            self.soft_done = true;
            return Some(Expiry::Soft);
        }
        None
    }
}

/// Keys and algorithms of one direction.
pub struct Transform {
    pub encryption: Encryption,
    pub integrity: Integrity,
    pub enc_key: Vec<u8>,
    pub auth_key: Vec<u8>,
}

impl Drop for Transform {
    fn drop(&mut self) {
        self.enc_key.zeroize();
        self.auth_key.zeroize();
    }
}

pub struct OutboundSa {
    pub spi: u32,
    pub cipher: CbcCipher,
    pub mac: Hmac,
    pub seq: u32,
    pub counters: Counters,
    pub lifetime: Lifetime,
    /// Random IVs drawn from OpenSSL's CSPRNG in bulk; each used once.
    ivs: Vec<u8>,
    iv_at: usize,
}

/// Bytes of IVs drawn at a time (256 AES packets).
const IV_POOL: usize = 4096;

pub struct InboundSa {
    pub spi: u32,
    pub cipher: CbcCipher,
    pub mac: Hmac,
    pub window: ReplayWindow,
    pub counters: Counters,
    pub lifetime: Lifetime,
    /// Inner sources allowed (the peer's traffic selector); None: any.
    pub remote_ts: Option<Net>,
}

/// Why an inbound packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop_ {
    Malformed,
    Replay,
    Icv,
    Padding,
    Policy,
}

impl OutboundSa {
    pub fn new(spi: u32, t: &Transform, lifetime: Lifetime) -> Result<OutboundSa, String> {
        Ok(OutboundSa {
            spi,
            cipher: CbcCipher::new(t.encryption, &t.enc_key, true)?,
            mac: Hmac::new(t.integrity, &t.auth_key)?,
            seq: 0,
            counters: Counters::default(),
            lifetime,
            ivs: Vec::new(), // drawn with the first packet: an idle SA costs no pool
            iv_at: 0,
        })
    }

    /// The next unused random IV of `block` bytes (None: the CSPRNG failed).
    fn next_iv(&mut self, block: usize) -> Option<[u8; 16]> {
        if self.iv_at + block > self.ivs.len() {
            self.ivs.resize(IV_POOL, 0);
            if !random(&mut self.ivs) {
                return None;
            }
            self.iv_at = 0;
        }
        let mut iv = [0u8; 16];
        iv[..block].copy_from_slice(&self.ivs[self.iv_at..self.iv_at + block]);
        self.ivs[self.iv_at..self.iv_at + block].fill(0);
        self.iv_at += block;
        Some(iv)
    }

    /// Overhead beyond the inner packet at most (header, IV, padding, trailer, ICV).
    pub fn max_overhead(&self) -> usize {
        ESP_HEADER + 2 * self.cipher.algorithm.block() + 2 + self.mac.algorithm.icv_len()
    }

    /// Encapsulate `inner` into `out` (cleared first) with `iv` (None: random).
    /// Returns false when the sequence number space is used up (the SA must be
    /// rekeyed: RFC 4303 3.3.3, no cycling) or the cipher failed.
    pub fn encapsulate(&mut self, inner: &[u8], iv: Option<&[u8]>, out: &mut Vec<u8>) -> (bool, Option<Expiry>) {
        if self.seq == u32::MAX {
            return (false, None);
        }
        let Some((&first, _)) = inner.split_first() else { return (false, None) };
        let next = if first >> 4 == 6 { NEXT_IPV6 } else { NEXT_IPV4 };
        let block = self.cipher.algorithm.block();
        let icv_len = self.mac.algorithm.icv_len();
        let pad = (block - (inner.len() + 2) % block) % block;
        let payload = inner.len() + pad + 2;
        self.seq += 1;
        out.clear();
        out.reserve(ESP_HEADER + block + payload + icv_len);
        out.extend_from_slice(&self.spi.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        let iv_at = out.len();
        out.resize(iv_at + block, 0);
        match iv {
            Some(v) if v.len() == block => out[iv_at..].copy_from_slice(v),
            _ => match self.next_iv(block) {
                Some(fresh) => out[iv_at..].copy_from_slice(&fresh[..block]),
                None => {
                    self.seq -= 1;
                    return (false, None);
                }
            },
        }
        let body = out.len();
        out.extend_from_slice(inner);
        out.extend((1..=pad as u8).chain([pad as u8, next]));
        let (head, data) = out.split_at_mut(body);
        if !self.cipher.apply(&head[iv_at..], data) {
            return (false, None);
        }
        let covered = out.len();
        out.resize(covered + icv_len, 0);
        let (msg, icv) = out.split_at_mut(covered);
        if !self.mac.icv(msg, icv) {
            return (false, None);
        }
        self.counters.packets += 1;
        self.counters.bytes += inner.len() as u64;
        let expiry = self.lifetime.after(self.counters.bytes);
        if self.seq == u32::MAX {
            return (true, Some(Expiry::Hard));
        }
        (true, expiry)
    }
}

impl InboundSa {
    pub fn new(spi: u32, t: &Transform, lifetime: Lifetime, remote_ts: Option<Net>) -> Result<InboundSa, String> {
        Ok(InboundSa {
            spi,
            cipher: CbcCipher::new(t.encryption, &t.enc_key, false)?,
            mac: Hmac::new(t.integrity, &t.auth_key)?,
            window: ReplayWindow::new(),
            counters: Counters::default(),
            lifetime,
            remote_ts,
        })
    }

    /// Decapsulate `esp` (SPI onwards) in place; on success the inner packet is
    /// `esp[start..end]`.
    pub fn decapsulate(&mut self, esp: &mut [u8]) -> Result<((usize, usize), Option<Expiry>), Drop_> {
        let r = self.open(esp);
        match r {
            Ok((start, end)) => {
                self.counters.packets += 1;
                self.counters.bytes += (end - start) as u64;
                Ok(((start, end), self.lifetime.after(self.counters.bytes)))
            }
            Err(why) => {
                match why {
                    Drop_::Malformed => self.counters.malformed += 1,
                    Drop_::Replay => self.counters.replay_drops += 1,
                    Drop_::Icv => self.counters.icv_failures += 1,
                    Drop_::Padding => self.counters.padding_errors += 1,
                    Drop_::Policy => self.counters.policy_drops += 1,
                }
                Err(why)
            }
        }
    }

    fn open(&mut self, esp: &mut [u8]) -> Result<(usize, usize), Drop_> {
        let block = self.cipher.algorithm.block();
        let icv_len = self.mac.algorithm.icv_len();
        let body = ESP_HEADER + block;
        if esp.len() < body + block + icv_len || (esp.len() - body - icv_len) % block != 0 {
            return Err(Drop_::Malformed);
        }
        let seq = u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]]);
        if !self.window.check(seq) {
            return Err(Drop_::Replay);
        }
        let covered = esp.len() - icv_len;
        let mut icv = [0u8; 32];
        if !self.mac.icv(&esp[..covered], &mut icv) {
            return Err(Drop_::Malformed);
        }
        if !constant_time_eq(&icv[..icv_len], &esp[covered..]) {
            return Err(Drop_::Icv);
        }
        self.window.accept(seq);
        let (head, data) = esp[..covered].split_at_mut(body);
        if !self.cipher.apply(&head[ESP_HEADER..], data) {
            return Err(Drop_::Malformed);
        }
        let next = data[data.len() - 1];
        let pad = data[data.len() - 2] as usize;
        if pad + 2 > data.len() {
            return Err(Drop_::Padding);
        }
        let inner_len = data.len() - 2 - pad;
        if data[inner_len..inner_len + pad].iter().enumerate().any(|(i, &b)| b as usize != i + 1) {
            return Err(Drop_::Padding);
        }
        let inner = &data[..inner_len];
        let version = inner.first().map(|b| b >> 4);
        match (next, version) {
            (NEXT_IPV4, Some(4)) | (NEXT_IPV6, Some(6)) => {}
            _ => return Err(Drop_::Malformed), // includes 59, the dummy packet
        }
        let Some((source, _)) = inner_addresses(inner) else { return Err(Drop_::Malformed) };
        if let Some(ts) = &self.remote_ts {
            if !ts.contains(&source) {
                return Err(Drop_::Policy);
            }
        }
        Ok((body, body + inner_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform() -> Transform {
        Transform { encryption: Encryption::AesCbc(16), integrity: Integrity::Sha256, enc_key: vec![7; 16], auth_key: vec![9; 32] }
    }

    fn ping() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 84, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 1, 0, 1, 10, 2, 0, 1];
        p.extend((0..64).map(|i| i as u8));
        p
    }

    #[test]
    fn round_trip_and_counters() {
        let t = transform();
        let mut out = OutboundSa::new(0x1234, &t, Lifetime::default()).unwrap();
        let mut inb = InboundSa::new(0x1234, &t, Lifetime::default(), Net::parse("10.1.0.0/24")).unwrap();
        let mut buf = Vec::new();
        assert_eq!(out.encapsulate(&ping(), None, &mut buf), (true, None));
        assert_eq!(&buf[..8], &[0, 0, 0x12, 0x34, 0, 0, 0, 1]);
        assert_eq!((buf.len() - 8 - 16 - 16) % 16, 0);
        let mut copy = buf.clone();
        let ((s, e), _) = inb.decapsulate(&mut copy).unwrap();
        assert_eq!(&copy[s..e], &ping()[..]);
        let mut again = buf.clone();
        assert_eq!(inb.decapsulate(&mut again).unwrap_err(), Drop_::Replay);
        let mut bad = buf.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        bad[7] = 2; // a fresh sequence number, a wrong ICV
        assert_eq!(inb.decapsulate(&mut bad).unwrap_err(), Drop_::Icv);
        assert_eq!(inb.counters.packets, 1);
        assert_eq!(inb.counters.replay_drops, 1);
        assert_eq!(inb.counters.icv_failures, 1);
        assert_eq!(out.counters.bytes, 84);
    }

    #[test]
    fn byte_lifetime_soft_then_hard() {
        let t = transform();
        let life = Lifetime { soft_bytes: 150, hard_bytes: 250, ..Default::default() };
        let mut out = OutboundSa::new(1, &t, life).unwrap();
        let mut buf = Vec::new();
        assert_eq!(out.encapsulate(&ping(), None, &mut buf).1, None);
        assert_eq!(out.encapsulate(&ping(), None, &mut buf).1, Some(Expiry::Soft));
        assert_eq!(out.encapsulate(&ping(), None, &mut buf).1, Some(Expiry::Hard));
        assert_eq!(out.encapsulate(&ping(), None, &mut buf).1, None, "each reported once");
    }

    #[test]
    fn sequence_numbers_do_not_cycle() {
        let t = transform();
        let mut out = OutboundSa::new(1, &t, Lifetime::default()).unwrap();
        out.seq = u32::MAX - 1;
        let mut buf = Vec::new();
        assert_eq!(out.encapsulate(&ping(), None, &mut buf), (true, Some(Expiry::Hard)));
        assert_eq!(out.encapsulate(&ping(), None, &mut buf).0, false);
    }

    #[test]
    fn truncated_and_garbage_input_dropped() {
        let t = transform();
        let mut inb = InboundSa::new(1, &t, Lifetime::default(), None).unwrap();
        for len in 0..200 {
            let mut junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert!(inb.decapsulate(&mut junk).is_err());
        }
    }

    #[test]
    fn nets() {
        let n = Net::parse("10.2.0.0/24").unwrap();
        assert!(n.contains(&"10.2.0.77".parse().unwrap()));
        assert!(!n.contains(&"10.2.1.1".parse().unwrap()));
        assert!(Net::parse("0.0.0.0/0").unwrap().contains(&"8.8.8.8".parse().unwrap()));
        assert!(Net::parse("10.0.0.0/33").is_none());
        assert!(Net::parse("fd00::/8").unwrap().contains(&"fd12::1".parse().unwrap()));
    }
}
