//! Security Association payload and its Proposal / Transform substructures
//! (RFC 2408 sections 3.3-3.6, IPsec DOI RFC 2407 section 4.6.1).
//!
//! The types are generic over the byte storage `B`: parsing yields `&[u8]` slices
//! of the datagram, callers that keep values around use owned storage, and
//! [`SaPayload::encode`] works for both.

use super::{begin_generic, end_generic, Reader, MAX_ATTRIBUTES, MAX_PROPOSALS, MAX_TRANSFORMS};
use crate::error::WireError;

/// Next-payload value of a Proposal that is followed by another Proposal.
const NEXT_PROPOSAL: u8 = 2;
/// Next-payload value of a Transform that is followed by another Transform.
const NEXT_TRANSFORM: u8 = 3;
/// Attribute Format bit: set for TV (2-octet value), clear for TLV.
const AF_BIT: u16 = 0x8000;

/// Value of a data attribute: the AF bit chooses the form on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttributeValue<B> {
    /// AF = 1 (TV): the value sits in the 16-bit length field.
    Basic(u16),
    /// AF = 0 (TLV): a 16-bit length and that many octets.
    Variable(B),
}

/// Data Attribute (RFC 2408 section 3.3).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !A!       Attribute Type        !    AF=0  Attribute Length     !
/// !F!                             !    AF=1  Attribute Value      !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// .                   AF=0  Attribute Value                       .
/// .                   AF=1  Not Transmitted                       .
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute<B> {
    /// Attribute type without the AF bit (0..=0x7fff).
    pub attr_type: u16,
    /// TV or TLV value.
    pub value: AttributeValue<B>,
}

/// Transform Payload (RFC 2408 section 3.6).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ! Next Payload  !   RESERVED    !         Payload Length        !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !  Transform #  !  Transform-Id !           RESERVED2           !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                        SA Attributes                          ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Transform<B> {
    /// Transform number within the proposal.
    pub number: u8,
    /// Transform ID (KEY_IKE = 1 in an ISAKMP proposal, ESP_AES = 12, ...).
    pub transform_id: u8,
    /// SA attributes in wire order.
    pub attributes: Vec<Attribute<B>>,
}

/// Proposal Payload (RFC 2408 section 3.5).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ! Next Payload  !   RESERVED    !         Payload Length        !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !  Proposal #   !  Protocol-Id  !    SPI Size   !# of Transforms!
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !                        SPI (variable)                         !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Proposal<B> {
    /// Proposal number (equal numbers form one AND-ed proposal).
    pub number: u8,
    /// PROTO_ISAKMP = 1, PROTO_IPSEC_AH = 2, PROTO_IPSEC_ESP = 3, PROTO_IPCOMP = 4.
    pub protocol_id: u8,
    /// SPI, its size is the SPI Size field.
    pub spi: B,
    /// Transforms offered for this protocol.
    pub transforms: Vec<Transform<B>>,
}

/// Security Association Payload (RFC 2408 section 3.4, RFC 2407 section 4.6.1).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ! Next Payload  !   RESERVED    !         Payload Length        !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !              Domain of Interpretation  (DOI)                  !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !                           Situation                           !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
/// The situation is 4 octets (IPsec DOI); Proposal payloads fill the rest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SaPayload<B> {
    /// DOI: 1 = IPsec.
    pub doi: u32,
    /// Situation bitmap: SIT_IDENTITY_ONLY = 1.
    pub situation: u32,
    /// Proposals in wire order.
    pub proposals: Vec<Proposal<B>>,
}

/// Split a chain of substructures (proposals or transforms) inside `data`.
/// `more` is the next-payload value meaning "another one follows".
fn next_sub<'a>(
    r: &mut Reader<'a>,
    more: u8,
    item: &'static str,
) -> Result<(bool, &'a [u8]), WireError> {
    let next = r.u8(item, "next payload")?;
    let _reserved = r.u8(item, "reserved")?;
    let len = r.u16(item, "payload length")? as usize;
    if len < 4 {
        return Err(WireError::Malformed { payload: item, field: "payload length", problem: "is below 4" });
    }
    let body = r.take(len - 4, item, "payload length")?;
    let has_more = match next {
        0 => false,
        n if n == more => true,
        _ => {
            return Err(WireError::Malformed { payload: item, field: "next payload", problem: "is not 0 or the same substructure type" })
        }
    };
    if has_more && r.is_empty() {
        return Err(WireError::Malformed { payload: item, field: "next payload", problem: "announces one more but the data ends" });
    }
    if !has_more && !r.is_empty() {
        return Err(WireError::Malformed { payload: item, field: "next payload", problem: "ends the chain before the data does" });
    }
    Ok((has_more, body))
}

/// Parse the attributes of a transform body.
fn parse_attributes(data: &[u8]) -> Result<Vec<Attribute<&[u8]>>, WireError> {
    let mut r = Reader::new(data);
    let mut out = Vec::with_capacity(8);
    while !r.is_empty() {
        if out.len() >= MAX_ATTRIBUTES {
            return Err(WireError::Malformed { payload: "transform", field: "attributes", problem: "exceed the limit of 256" });
        }
        let t = r.u16("attribute", "type")?;
        let l = r.u16("attribute", "length/value")?;
        let value = if t & AF_BIT != 0 {
            AttributeValue::Basic(l)
        } else {
            AttributeValue::Variable(r.take(l as usize, "attribute", "length")?)
        };
        out.push(Attribute { attr_type: t & !AF_BIT, value });
    }
    Ok(out)
}

fn parse_transform(body: &[u8]) -> Result<Transform<&[u8]>, WireError> {
    let mut r = Reader::new(body);
    let number = r.u8("transform", "transform number")?;
    let transform_id = r.u8("transform", "transform id")?;
    let _reserved2 = r.take(2, "transform", "reserved2")?;
    Ok(Transform { number, transform_id, attributes: parse_attributes(r.rest())? })
}

fn parse_proposal(body: &[u8]) -> Result<Proposal<&[u8]>, WireError> {
    let mut r = Reader::new(body);
    let number = r.u8("proposal", "proposal number")?;
    let protocol_id = r.u8("proposal", "protocol id")?;
    let spi_size = r.u8("proposal", "spi size")?;
    let count = r.u8("proposal", "number of transforms")?;
    let spi = r.take(spi_size as usize, "proposal", "spi")?;
    let mut transforms = Vec::with_capacity(count as usize);
    let mut more = !r.is_empty();
    while more {
        if transforms.len() >= MAX_TRANSFORMS {
            return Err(WireError::Malformed { payload: "proposal", field: "transforms", problem: "exceed the limit of 255" });
        }
        let (m, tbody) = next_sub(&mut r, NEXT_TRANSFORM, "transform")?;
        more = m;
        transforms.push(parse_transform(tbody)?);
    }
    if transforms.len() != count as usize {
        return Err(WireError::Malformed { payload: "proposal", field: "number of transforms", problem: "differs from the transforms present" });
    }
    Ok(Proposal { number, protocol_id, spi, transforms })
}

impl<'a> SaPayload<&'a [u8]> {
    /// Parse an SA payload body (without the generic header).
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let doi = r.u32("SA", "doi")?;
        let situation = r.u32("SA", "situation")?;
        let mut proposals = Vec::with_capacity(1);
        let mut more = !r.is_empty();
        while more {
            if proposals.len() >= MAX_PROPOSALS {
                return Err(WireError::Malformed { payload: "SA", field: "proposals", problem: "exceed the limit of 64" });
            }
            let (m, pbody) = next_sub(&mut r, NEXT_PROPOSAL, "proposal")?;
            more = m;
            proposals.push(parse_proposal(pbody)?);
        }
        Ok(SaPayload { doi, situation, proposals })
    }
}

impl<B: AsRef<[u8]>> Attribute<B> {
    /// Append the attribute: TV for a basic value, TLV otherwise.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.attr_type & AF_BIT != 0 {
            return Err(WireError::Invalid { item: "Attribute", field: "type", problem: "must be below 32768" });
        }
        match &self.value {
            AttributeValue::Basic(v) => {
                out.extend_from_slice(&(self.attr_type | AF_BIT).to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
            AttributeValue::Variable(bytes) => {
                let bytes = bytes.as_ref();
                let len = u16::try_from(bytes.len())
                    .map_err(|_| WireError::Invalid { item: "Attribute", field: "value", problem: "is longer than 65535 bytes" })?;
                out.extend_from_slice(&self.attr_type.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
        Ok(())
    }

    /// The value as an integer: a TV value, or a TLV value read big-endian
    /// (None when a TLV value is longer than 8 octets).
    pub fn int_value(&self) -> Option<u64> {
        match &self.value {
            AttributeValue::Basic(v) => Some(u64::from(*v)),
            AttributeValue::Variable(b) => {
                let b = b.as_ref();
                if b.len() > 8 {
                    return None;
                }
                Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
            }
        }
    }

    /// Copy into owned storage.
    pub fn to_owned_attr(&self) -> Attribute<Box<[u8]>> {
        Attribute {
            attr_type: self.attr_type,
            value: match &self.value {
                AttributeValue::Basic(v) => AttributeValue::Basic(*v),
                AttributeValue::Variable(b) => AttributeValue::Variable(b.as_ref().into()),
            },
        }
    }
}

impl<B: AsRef<[u8]>> Transform<B> {
    /// Append the transform with its generic header (`next_payload` 3 or 0).
    pub fn encode(&self, out: &mut Vec<u8>, next_payload: u8) -> Result<(), WireError> {
        let mark = begin_generic(out, next_payload, 0);
        out.extend_from_slice(&[self.number, self.transform_id, 0, 0]);
        for attribute in &self.attributes {
            attribute.encode(out)?;
        }
        end_generic(out, mark, "Transform")
    }

    /// Copy into owned storage.
    pub fn to_owned_transform(&self) -> Transform<Box<[u8]>> {
        Transform {
            number: self.number,
            transform_id: self.transform_id,
            attributes: self.attributes.iter().map(Attribute::to_owned_attr).collect(),
        }
    }
}

impl<B: AsRef<[u8]>> Proposal<B> {
    /// Append the proposal and its transforms (`next_payload` 2 or 0).
    pub fn encode(&self, out: &mut Vec<u8>, next_payload: u8) -> Result<(), WireError> {
        let spi = self.spi.as_ref();
        let spi_size = u8::try_from(spi.len())
            .map_err(|_| WireError::Invalid { item: "Proposal", field: "spi", problem: "is longer than 255 bytes" })?;
        let count = u8::try_from(self.transforms.len())
            .map_err(|_| WireError::Invalid { item: "Proposal", field: "transforms", problem: "are more than 255" })?;
        let mark = begin_generic(out, next_payload, 0);
        out.extend_from_slice(&[self.number, self.protocol_id, spi_size, count]);
        out.extend_from_slice(spi);
        let last = self.transforms.len().saturating_sub(1);
        for (i, transform) in self.transforms.iter().enumerate() {
            transform.encode(out, if i == last { 0 } else { NEXT_TRANSFORM })?;
        }
        end_generic(out, mark, "Proposal")
    }

    /// Copy into owned storage.
    pub fn to_owned_proposal(&self) -> Proposal<Box<[u8]>> {
        Proposal {
            number: self.number,
            protocol_id: self.protocol_id,
            spi: self.spi.as_ref().into(),
            transforms: self.transforms.iter().map(Transform::to_owned_transform).collect(),
        }
    }
}

impl<B: AsRef<[u8]>> SaPayload<B> {
    /// Append the SA payload body (DOI, situation, proposals), without the
    /// generic header.
    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.proposals.len() > MAX_PROPOSALS {
            return Err(WireError::Invalid { item: "SaPayload", field: "proposals", problem: "are more than 64" });
        }
        out.extend_from_slice(&self.doi.to_be_bytes());
        out.extend_from_slice(&self.situation.to_be_bytes());
        let last = self.proposals.len().saturating_sub(1);
        for (i, proposal) in self.proposals.iter().enumerate() {
            proposal.encode(out, if i == last { 0 } else { NEXT_PROPOSAL })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SA body of an IKE proposal: AES-128, SHA1, PSK, group 2, 28800 s.
    fn ike_sa_body() -> Vec<u8> {
        let mut v = vec![0, 0, 0, 1, 0, 0, 0, 1]; // DOI IPsec, SIT_IDENTITY_ONLY
        v.extend_from_slice(&[0, 0, 0, 48, 1, 1, 0, 1]); // proposal 1, ISAKMP, no SPI, 1 transform
        v.extend_from_slice(&[0, 0, 0, 40, 1, 1, 0, 0]); // transform 1, KEY_IKE
        v.extend_from_slice(&[0x80, 1, 0, 7, 0x80, 14, 0, 128, 0x80, 2, 0, 2, 0x80, 3, 0, 1]);
        v.extend_from_slice(&[0x80, 4, 0, 2, 0x80, 11, 0, 1, 0, 12, 0, 4, 0, 0, 0x70, 0x80]);
        v
    }

    #[test]
    fn parses_known_sa_and_reencodes_identically() {
        let body = ike_sa_body();
        let sa = SaPayload::parse(&body).unwrap();
        assert_eq!((sa.doi, sa.situation), (1, 1));
        assert_eq!(sa.proposals.len(), 1);
        let t = &sa.proposals[0].transforms[0];
        assert_eq!((t.number, t.transform_id), (1, 1));
        assert_eq!(t.attributes.len(), 7);
        assert_eq!(t.attributes[0], Attribute { attr_type: 1, value: AttributeValue::Basic(7) });
        assert_eq!(t.attributes[6].attr_type, 12);
        assert_eq!(t.attributes[6].int_value(), Some(28800));
        let mut out = Vec::new();
        sa.encode_body(&mut out).unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn rejects_layout_errors() {
        let body = ike_sa_body();
        // transform count says 2
        let mut b = body.clone();
        b[15] = 2;
        assert!(matches!(SaPayload::parse(&b), Err(WireError::Malformed { field: "number of transforms", .. })));
        // proposal length too long
        let mut b = body.clone();
        b[11] = 49;
        assert!(SaPayload::parse(&b).is_err());
        // proposal length below 4
        let mut b = body.clone();
        b[11] = 3;
        assert!(SaPayload::parse(&b).is_err());
        // bad next payload in the proposal
        let mut b = body.clone();
        b[8] = 5;
        assert!(SaPayload::parse(&b).is_err());
        // TLV attribute running past the transform
        let mut b = body.clone();
        b[51] = 9;
        assert!(SaPayload::parse(&b).is_err());
        // every truncation fails cleanly
        for n in 0..body.len() {
            if n == 8 {
                continue; // DOI + situation alone is a valid SA without proposals
            }
            assert!(SaPayload::parse(&body[..n]).is_err(), "truncated at {n}");
        }
    }
}
