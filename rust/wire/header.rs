//! The ISAKMP header (RFC 2408 section 3.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                          Initiator                            !
//! !                            Cookie                             !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                          Responder                            !
//! !                            Cookie                             !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !  Next Payload ! MjVer ! MnVer ! Exchange Type !     Flags     !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                          Message ID                           !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! !                            Length                             !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::{Reader, MAX_MESSAGE_LEN};
use crate::error::WireError;

/// Size of the fixed ISAKMP header.
pub const HEADER_LEN: usize = 28;

/// The 28-octet ISAKMP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// CKY-I: chosen by the initiator, never zero.
    pub initiator_cookie: [u8; 8],
    /// CKY-R: zero in the first message of an exchange.
    pub responder_cookie: [u8; 8],
    /// Type of the first payload (0 when there is none).
    pub next_payload: u8,
    /// Major version in the high nibble, minor in the low one (0x10 for IKEv1).
    pub version: u8,
    /// Exchange type (2 = Main Mode, 32 = Quick Mode, ...).
    pub exchange_type: u8,
    /// E (0x01), C (0x02), A (0x04).
    pub flags: u8,
    /// Message ID: zero in Phase 1.
    pub message_id: u32,
    /// Length of the whole message, header included.
    pub length: u32,
}

impl Header {
    /// Read the header from the first 28 octets of `data`, checking the major
    /// version and that Length equals `data.len()` exactly.
    pub fn parse(data: &[u8]) -> Result<Header, WireError> {
        if data.len() > MAX_MESSAGE_LEN {
            return Err(WireError::Malformed {
                payload: "header",
                field: "datagram",
                problem: "is longer than 65535 bytes",
            });
        }
        let header = Header::parse_prefix(data)?;
        if header.version >> 4 != 1 {
            return Err(WireError::InvalidMajorVersion { version: header.version });
        }
        if header.length as usize != data.len() {
            return Err(WireError::UnequalLengths { declared: header.length, actual: data.len() });
        }
        Ok(header)
    }

    /// Read the 28 header octets without checking version or Length.
    pub fn parse_prefix(data: &[u8]) -> Result<Header, WireError> {
        let mut r = Reader::new(data);
        let h = "header";
        let mut initiator_cookie = [0u8; 8];
        initiator_cookie.copy_from_slice(r.take(8, h, "initiator cookie")?);
        let mut responder_cookie = [0u8; 8];
        responder_cookie.copy_from_slice(r.take(8, h, "responder cookie")?);
        Ok(Header {
            initiator_cookie,
            responder_cookie,
            next_payload: r.u8(h, "next payload")?,
            version: r.u8(h, "version")?,
            exchange_type: r.u8(h, "exchange type")?,
            flags: r.u8(h, "flags")?,
            message_id: r.u32(h, "message id")?,
            length: r.u32(h, "length")?,
        })
    }

    /// True when the E flag is set (payloads after the header are ciphertext).
    pub fn encrypted(&self) -> bool {
        self.flags & super::types::FLAG_ENCRYPTION != 0
    }

    /// Append the 28 octets, with the Length field as stored.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initiator_cookie);
        out.extend_from_slice(&self.responder_cookie);
        out.extend_from_slice(&[self.next_payload, self.version, self.exchange_type, self.flags]);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 2, 0];
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 28]);
        v
    }

    #[test]
    fn parses_and_reencodes() {
        let data = sample();
        let h = Header::parse(&data).unwrap();
        assert_eq!(h.initiator_cookie, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(h.exchange_type, 2);
        assert_eq!(h.length, 28);
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out, data);
    }

    #[test]
    fn rejects_bad_version_and_lengths() {
        let mut data = sample();
        data[17] = 0x20;
        assert_eq!(Header::parse(&data), Err(WireError::InvalidMajorVersion { version: 0x20 }));
        let mut data = sample();
        data.push(0);
        assert!(matches!(Header::parse(&data), Err(WireError::UnequalLengths { declared: 28, actual: 29 })));
        let data = sample();
        assert!(matches!(Header::parse(&data[..27]), Err(WireError::Malformed { .. })));
    }
}
