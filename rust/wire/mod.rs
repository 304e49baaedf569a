//! ISAKMP wire codec (RFC 2408, RFC 2407 DOI, RFC 3947 NAT-T payloads).
//!
//! Structure only: [`parse_message`] checks the layout of a datagram (header,
//! payload chain, every known payload body down to SA attributes) and borrows
//! every byte from it; nothing here interprets values (that is `verify`'s job in
//! the layers above). Encoders compute every length and next-payload field.
//!
//! Parsing never panics and never loops without bound: see the limits below.
#![forbid(unsafe_code)]

pub mod header;
pub mod message;
pub mod payloads;
pub mod roundtrip;
pub mod sa;
pub mod types;

pub use header::{Header, HEADER_LEN};
pub use message::{encode_chain, parse_chain, parse_message, Message, RawPayload};
pub use payloads::Payload;
pub use sa::{Attribute, AttributeValue, Proposal, SaPayload, Transform};

use crate::error::WireError;

/// Largest datagram accepted or produced (the UDP payload limit).
pub const MAX_MESSAGE_LEN: usize = 65_535;
/// Most payloads in one message chain.
pub const MAX_PAYLOADS: usize = 64;
/// Most proposals in one SA payload.
pub const MAX_PROPOSALS: usize = 64;
/// Most transforms in one proposal (the count field is one octet anyway).
pub const MAX_TRANSFORMS: usize = 255;
/// Most data attributes in one transform.
pub const MAX_ATTRIBUTES: usize = 256;

/// Bounded cursor over a byte slice; every read checks the remaining length.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.data[self.pos..];
        self.pos = self.data.len();
        out
    }

    pub(crate) fn take(&mut self, n: usize, payload: &'static str, field: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Malformed { payload, field, problem: "is truncated" });
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, payload: &'static str, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, payload, field)?[0])
    }

    pub(crate) fn u16(&mut self, payload: &'static str, field: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, payload, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, payload: &'static str, field: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, payload, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Start a substructure with a 4-octet generic header (next payload, reserved,
/// length) at the end of `out`; returns the mark for [`end_generic`].
pub(crate) fn begin_generic(out: &mut Vec<u8>, next_payload: u8, reserved: u8) -> usize {
    let mark = out.len();
    out.extend_from_slice(&[next_payload, reserved, 0, 0]);
    mark
}

/// Back-patch the 16-bit length of the generic header started at `mark`.
pub(crate) fn end_generic(out: &mut [u8], mark: usize, item: &'static str) -> Result<(), WireError> {
    let len = out.len() - mark;
    let len16 = u16::try_from(len)
        .map_err(|_| WireError::Invalid { item, field: "length", problem: "exceeds 65535 bytes" })?;
    out[mark + 2..mark + 4].copy_from_slice(&len16.to_be_bytes());
    Ok(())
}
