//! Building and reading the few payloads an express lane writes: a payload chain with its
//! generic headers, the ISAKMP header, ID, Notify, and the walk of a decrypted chain.

use crate::wire::header::HEADER_LEN;
use crate::wire::message::{parse_chain, RawPayload};

pub const SA: u8 = 1;
pub const KE: u8 = 4;
pub const ID: u8 = 5;
pub const HASH: u8 = 8;
pub const NONCE: u8 = 10;
pub const N: u8 = 11;
pub const D: u8 = 12;
pub const VID: u8 = 13;

pub const MAIN_MODE: u8 = 2;
pub const INFORMATIONAL: u8 = 5;
pub const QUICK_MODE: u8 = 32;

pub const FLAG_E: u8 = 0x01;
pub const ID_IPV4_ADDR: u8 = 1;
pub const PROTO_ISAKMP: u8 = 1;
pub const PROTO_ESP: u8 = 3;
pub const INITIAL_CONTACT: u16 = 24578;

/// A payload chain being written: each push links the previous payload to this one.
#[derive(Default)]
pub struct Chain {
    pub bytes: Vec<u8>,
    pub first: u8,
    last: Option<usize>,
}

impl Chain {
    pub fn new() -> Chain {
        Chain { bytes: Vec::with_capacity(256), first: 0, last: None }
    }

    /// Append a payload of `kind` whose body is the concatenation of `parts`.
    pub fn push(&mut self, kind: u8, parts: &[&[u8]]) -> &mut Chain {
        match self.last {
            Some(at) => self.bytes[at] = kind,
            None => self.first = kind,
        }
        let at = self.bytes.len();
        let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes.extend_from_slice(&(len as u16).to_be_bytes());
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        self.last = Some(at);
        self
    }

    /// Append a chain encoded elsewhere (first payload type `first`), e.g. Python's offer.
    pub fn extend(&mut self, first: u8, chain: &[u8]) -> &mut Chain {
        if chain.is_empty() {
            return self;
        }
        match self.last {
            Some(at) => self.bytes[at] = first,
            None => self.first = first,
        }
        let base = self.bytes.len();
        self.bytes.extend_from_slice(chain);
        // the last payload of the appended chain is the new tail
        let mut pos = base;
        loop {
            let len = u16::from_be_bytes([self.bytes[pos + 2], self.bytes[pos + 3]]) as usize;
            if self.bytes[pos] == 0 || len < 4 || pos + len >= self.bytes.len() {
                break;
            }
            pos += len;
        }
        self.last = Some(pos);
        self
    }
}

/// An ISAKMP header (version 1.0) with the Length of a message of `body_len` bytes.
pub fn header(cky_i: &[u8; 8], cky_r: &[u8; 8], next: u8, exchange: u8, flags: u8, message_id: u32,
              body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(cky_i);
    out.extend_from_slice(cky_r);
    out.extend_from_slice(&[next, 0x10, exchange, flags]);
    out.extend_from_slice(&message_id.to_be_bytes());
    out.extend_from_slice(&((HEADER_LEN + body_len) as u32).to_be_bytes());
    out
}

/// A whole unencrypted message.
pub fn plain(cky_i: &[u8; 8], cky_r: &[u8; 8], exchange: u8, chain: &Chain) -> Vec<u8> {
    let mut out = header(cky_i, cky_r, chain.first, exchange, 0, 0, chain.bytes.len());
    out.extend_from_slice(&chain.bytes);
    out
}

/// The body of an ID payload: type, protocol 0, port 0, data (RFC 2407 section 4.6.2).
pub fn id_body(id_type: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![id_type, 0, 0, 0];
    out.extend_from_slice(data);
    out
}

/// The body of a Notify payload of the IPsec DOI.
pub fn notify_body(protocol: u8, notify_type: u16, spi: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + spi.len());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.push(protocol);
    out.push(spi.len() as u8);
    out.extend_from_slice(&notify_type.to_be_bytes());
    out.extend_from_slice(spi);
    out
}

/// The payloads of a decrypted (padded) chain, each body checked; None: not a chain.
pub fn opened(first: u8, plain: &[u8]) -> Option<Vec<RawPayload<'_>>> {
    parse_chain(first, plain, false).ok()
}

/// A decrypted Quick Mode or Informational chain: its payloads when it parses, passes RFC
/// 2408 section 5.2 and starts with HASH; None otherwise.
pub fn hashed(first: u8, plain: &[u8]) -> Option<Vec<RawPayload<'_>>> {
    let payloads = opened(first, plain)?;
    (generic_headers_ok(&payloads) && payloads.first().map(|p| p.payload_type) == Some(HASH)).then_some(payloads)
}

/// The first payload of `kind`.
pub fn find<'a>(payloads: &[RawPayload<'a>], kind: u8) -> Option<&'a [u8]> {
    payloads.iter().find(|p| p.payload_type == kind).map(|p| p.body())
}

/// RFC 2408 section 5.2: RESERVED zero and every type known (or private use).
pub fn generic_headers_ok(payloads: &[RawPayload<'_>]) -> bool {
    payloads.iter().all(|p| p.reserved() == 0 && (p.payload_type <= 13 || matches!(p.payload_type, 20 | 21 | 130 | 131) || p.payload_type >= 128))
}

/// Every byte of a decrypted chain after the payload at `index`: what a HASH covers.
pub fn after<'a>(plain: &'a [u8], payloads: &[RawPayload<'a>], index: usize) -> &'a [u8] {
    let start = payloads.get(index + 1).map(|p| p.offset).unwrap_or(plain.len());
    let end = payloads.last().map(|p| p.offset + p.raw.len()).unwrap_or(start);
    &plain[start.min(end)..end]
}

/// The error Notify types (below 8192) of a chain, and whether a Delete of the ISAKMP SA is in it.
pub fn notifies(payloads: &[RawPayload<'_>]) -> (Option<u16>, bool) {
    let mut error = None;
    let mut deleted = false;
    for p in payloads {
        let body = p.body();
        if p.payload_type == N && body.len() >= 8 {
            let t = u16::from_be_bytes([body[6], body[7]]);
            if t < 8192 && error.is_none() {
                error = Some(t);
            }
        } else if p.payload_type == D && body.len() >= 8 && body[4] == PROTO_ISAKMP {
            deleted = true;
        }
    }
    (error, deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::parse_message;

    #[test]
    fn a_built_message_parses() {
        let mut chain = Chain::new();
        chain.push(KE, &[&[1, 2, 3, 4]]).push(NONCE, &[&[9; 16]]);
        let mut offer = Chain::new();
        offer.push(VID, &[b"abcd"]).push(VID, &[b"efgh"]);
        chain.extend(offer.first, &offer.bytes);
        chain.push(HASH, &[&[7; 20]]);
        let msg = plain(&[1; 8], &[2; 8], MAIN_MODE, &chain);
        let parsed = parse_message(&msg).unwrap();
        let kinds: Vec<u8> = parsed.payloads.iter().map(|p| p.payload_type).collect();
        assert_eq!(kinds, vec![KE, NONCE, VID, VID, HASH]);
        assert_eq!(after(&msg[28..], &opened(KE, &msg[28..]).unwrap(), 0).len(), msg.len() - 28 - 8);
    }
}
