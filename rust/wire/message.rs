//! Whole messages: the header followed by a chain of payloads linked by their
//! Next Payload fields (RFC 2408 sections 3.1-3.2), or by ciphertext when the
//! E flag is set (RFC 2408 section 3.1, RFC 2409 Appendix B).

use super::header::{Header, HEADER_LEN};
use super::payloads::Payload;
use super::types::PayloadType;
use super::{begin_generic, end_generic, MAX_MESSAGE_LEN, MAX_PAYLOADS};
use crate::error::WireError;

/// One payload of a chain, exactly as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPayload<'a> {
    /// This payload's type (the previous Next Payload field).
    pub payload_type: u8,
    /// Offset of `raw` within the parsed buffer.
    pub offset: usize,
    /// Generic header and body, verbatim.
    pub raw: &'a [u8],
}

impl<'a> RawPayload<'a> {
    /// Next Payload field of this payload.
    pub fn next_payload(&self) -> u8 {
        self.raw[0]
    }

    /// RESERVED octet of the generic header (zero unless the peer is sloppy).
    pub fn reserved(&self) -> u8 {
        self.raw[1]
    }

    /// Body without the 4-octet generic header.
    pub fn body(&self) -> &'a [u8] {
        &self.raw[4..]
    }

    /// Decode the body by type (cannot fail for payloads from [`parse_chain`]).
    pub fn decode(&self) -> Result<Payload<'a>, WireError> {
        Payload::decode(self.payload_type, self.body())
    }
}

fn type_name(payload_type: u8) -> &'static str {
    PayloadType(payload_type).name().unwrap_or("unknown")
}

/// Walk a payload chain that starts with a payload of type `first`.
///
/// Every payload body is checked by [`Payload::decode`]. With `exact` the chain
/// must end (Next Payload 0) exactly where `data` ends; without it the bytes
/// after the last payload are ignored (padding of a decrypted message).
pub fn parse_chain(first: u8, data: &[u8], exact: bool) -> Result<Vec<RawPayload<'_>>, WireError> {
    let mut out = Vec::with_capacity(8);
    let mut next = first;
    let mut pos = 0usize;
    while next != 0 {
        let name = type_name(next);
        if out.len() >= MAX_PAYLOADS {
            return Err(WireError::Malformed { payload: name, field: "payload chain", problem: "exceeds the limit of 64 payloads" });
        }
        let rest = &data[pos..];
        if rest.len() < 4 {
            return Err(WireError::Malformed { payload: name, field: "generic header", problem: "runs past the message end" });
        }
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        if len < 4 {
            return Err(WireError::Malformed { payload: name, field: "payload length", problem: "is below 4" });
        }
        if len > rest.len() {
            return Err(WireError::Malformed { payload: name, field: "payload length", problem: "runs past the message end" });
        }
        let raw = &rest[..len];
        let payload = RawPayload { payload_type: next, offset: pos, raw };
        payload.decode()?;
        out.push(payload);
        next = raw[0];
        pos += len;
    }
    if exact && pos != data.len() {
        return Err(WireError::Malformed { payload: "message", field: "payload chain", problem: "ends before the data does" });
    }
    Ok(out)
}

/// A parsed message; every slice borrows from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The ISAKMP header.
    pub header: Header,
    /// Everything after the header (ciphertext when encrypted).
    pub body: &'a [u8],
    /// The payload chain (empty when encrypted).
    pub payloads: Vec<RawPayload<'a>>,
}

/// Parse and check one datagram (without a non-ESP marker).
pub fn parse_message(data: &[u8]) -> Result<Message<'_>, WireError> {
    let header = Header::parse(data)?;
    let body = &data[HEADER_LEN..];
    let payloads = if header.encrypted() {
        Vec::new()
    } else {
        let mut chain = parse_chain(header.next_payload, body, true)?;
        for p in &mut chain {
            p.offset += HEADER_LEN;
        }
        chain
    };
    Ok(Message { header, body, payloads })
}

/// Append a chain of payloads given as (type, reserved octet, body); sets every
/// Next Payload and Length field (the last Next Payload is 0).
pub fn encode_chain<'b, I>(out: &mut Vec<u8>, payloads: I) -> Result<(), WireError>
where
    I: IntoIterator<Item = (u8, u8, &'b [u8])>,
{
    let mut prev: Option<usize> = None;
    let mut count = 0usize;
    for (payload_type, reserved, body) in payloads {
        count += 1;
        if count > MAX_PAYLOADS {
            return Err(WireError::Invalid { item: "payload chain", field: "payloads", problem: "are more than 64" });
        }
        if payload_type == 0 {
            return Err(WireError::Invalid { item: "payload chain", field: "payload type", problem: "must not be 0" });
        }
        if let Some(mark) = prev {
            out[mark] = payload_type;
        }
        let mark = begin_generic(out, 0, reserved);
        out.extend_from_slice(body);
        end_generic(out, mark, "payload")?;
        prev = Some(mark);
    }
    Ok(())
}

/// Encode a whole message: `header.length` is recomputed, and `header.next_payload`
/// is taken from the first payload when there are payloads.
pub fn encode_message<'b, I>(header: &Header, payloads: I, first_type: u8) -> Result<Vec<u8>, WireError>
where
    I: IntoIterator<Item = (u8, u8, &'b [u8])>,
{
    let mut out = Vec::with_capacity(256);
    let mut h = *header;
    if first_type != 0 {
        h.next_payload = first_type;
    }
    h.encode(&mut out);
    encode_chain(&mut out, payloads)?;
    finish_length(&mut out)?;
    Ok(out)
}

/// Patch the header Length of an encoded message to its size.
pub fn finish_length(out: &mut [u8]) -> Result<(), WireError> {
    if out.len() > MAX_MESSAGE_LEN {
        return Err(WireError::Invalid { item: "Message", field: "length", problem: "exceeds 65535 bytes" });
    }
    let len = (out.len() as u32).to_be_bytes();
    out[24..28].copy_from_slice(&len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mm1() -> Vec<u8> {
        let header = Header {
            initiator_cookie: [0x11; 8],
            responder_cookie: [0; 8],
            next_payload: 0,
            version: 0x10,
            exchange_type: 2,
            flags: 0,
            message_id: 0,
            length: 0,
        };
        let sa: Vec<u8> = vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 20, 1, 1, 0, 1, 0, 0, 0, 12, 1, 1, 0, 0, 0x80, 1, 0, 5];
        let vid = [0xafu8, 0xca, 0xd7, 0x13, 0x68, 0xa1, 0xf1, 0xc9, 0x6b, 0x86, 0x96, 0xfc, 0x77, 0x57, 0x01, 0x00];
        encode_message(&header, [(1u8, 0u8, &sa[..]), (13, 0, &vid[..])], 1).unwrap()
    }

    #[test]
    fn message_round_trip() {
        let data = mm1();
        assert_eq!(data.len(), 28 + 4 + 28 + 4 + 16);
        let msg = parse_message(&data).unwrap();
        assert_eq!(msg.header.next_payload, 1);
        assert_eq!(msg.payloads.len(), 2);
        assert_eq!(msg.payloads[0].next_payload(), 13);
        assert_eq!(msg.payloads[1].next_payload(), 0);
        assert_eq!(msg.payloads[1].offset, 28 + 32);
        let again = encode_message(
            &msg.header,
            msg.payloads.iter().map(|p| (p.payload_type, p.reserved(), p.body())),
            msg.header.next_payload,
        )
        .unwrap();
        assert_eq!(again, data);
    }

    #[test]
    fn chain_errors() {
        let data = mm1();
        // trailing byte after the chain (header Length adjusted)
        let mut d = data.clone();
        d.push(0);
        finish_length(&mut d).unwrap();
        assert!(matches!(parse_message(&d), Err(WireError::Malformed { field: "payload chain", .. })));
        // last payload announces another
        let mut d = data.clone();
        d[60] = 10;
        assert!(parse_message(&d).is_err());
        // zero payload length
        let mut d = data.clone();
        d[30] = 0;
        d[31] = 0;
        assert!(parse_message(&d).is_err());
        // every truncation of the datagram fails (Length no longer matches)
        for n in 0..data.len() {
            assert!(parse_message(&data[..n]).is_err());
        }
        // decrypted chains ignore padding
        let body = &data[28..];
        let mut padded = body.to_vec();
        padded.extend_from_slice(&[0, 0, 0, 3]);
        assert_eq!(parse_chain(1, &padded, false).unwrap().len(), 2);
        assert!(parse_chain(1, &padded, true).is_err());
        assert!(parse_chain(1, &body[..10], false).is_err());
    }

    #[test]
    fn encrypted_body_is_opaque() {
        let mut d = mm1();
        d[19] = 1;
        let msg = parse_message(&d).unwrap();
        assert!(msg.payloads.is_empty());
        assert_eq!(msg.body, &d[28..]);
    }
}
