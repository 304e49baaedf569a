//! Payload bodies other than SA (RFC 2408 sections 3.7-3.16, RFC 2407 section
//! 4.6.2, RFC 3947 sections 3.2 and 5.2).
//!
//! Every payload starts with the generic payload header (RFC 2408 section 3.2),
//! handled by `message.rs`; the types here see only the body after it:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ! Next Payload  !   RESERVED    !         Payload Length        !
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! KE (3.7), HASH (3.11), SIG (3.12), NONCE (3.13), VID (3.16) and NAT-D (RFC 3947
//! 3.2) carry only opaque data after the generic header.

use super::sa::SaPayload;
use super::types::PayloadType;
use super::Reader;
use crate::error::WireError;

/// Identification Payload, IPsec DOI form (RFC 2408 section 3.8, RFC 2407 section 4.6.2).
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !   ID Type     !  Protocol ID  !             Port              !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                     Identification Data                       ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPayload<B> {
    /// ID_IPV4_ADDR = 1, ID_FQDN = 2, ... ID_KEY_ID = 11.
    pub id_type: u8,
    /// IP protocol (0 = any, 17 = UDP).
    pub protocol_id: u8,
    /// Port (0 = any).
    pub port: u16,
    /// Identification data (address, name, ...).
    pub data: B,
}

/// Certificate (3.9) and Certificate Request (3.10) payloads share one layout.
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ! Cert Encoding !                                               !
/// +-+-+-+-+-+-+-+-+                                               !
/// ~            Certificate Data / Certificate Authority           ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPayload<B> {
    /// Certificate encoding (4 = X.509 signature, ...).
    pub encoding: u8,
    /// Certificate data, or the authority for a CR.
    pub data: B,
}

/// Notification Payload (RFC 2408 section 3.14).
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !              Domain of Interpretation  (DOI)                  !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !  Protocol-ID  !   SPI Size    !      Notify Message Type      !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                Security Parameter Index (SPI)                 ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~                       Notification Data                       ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyPayload<B> {
    /// DOI (1 = IPsec).
    pub doi: u32,
    /// Protocol the SPI belongs to.
    pub protocol_id: u8,
    /// Notify Message Type (1-30 errors, 16384.. status).
    pub notify_type: u16,
    /// SPI (size taken from the SPI Size field).
    pub spi: B,
    /// Notification data.
    pub data: B,
}

/// Delete Payload (RFC 2408 section 3.15).
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !              Domain of Interpretation  (DOI)                  !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !  Protocol-Id  !   SPI Size    !           # of SPIs           !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ~               Security Parameter Index(es) (SPI)              ~
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletePayload<B> {
    /// DOI (1 = IPsec).
    pub doi: u32,
    /// Protocol of the SAs deleted.
    pub protocol_id: u8,
    /// Size of each SPI (16 for ISAKMP: CKY-I | CKY-R).
    pub spi_size: u8,
    /// The SPIs.
    pub spis: Vec<B>,
}

/// NAT Original Address payload (RFC 3947 section 5.2; draft number 131).
///
/// ```text
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !    ID Type    !   RESERVED    !            RESERVED           !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// !           IPv4 (4 octets) or IPv6 address (16 octets)         !
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatOaPayload<B> {
    /// ID_IPV4_ADDR = 1 or ID_IPV6_ADDR = 5.
    pub id_type: u8,
    /// The address octets.
    pub data: B,
}

/// One payload body, decoded by its type. Unknown types stay opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload<'a> {
    /// SA (1).
    Sa(SaPayload<&'a [u8]>),
    /// Key Exchange (4): DH public value.
    Ke(&'a [u8]),
    /// Identification (5).
    Id(IdPayload<&'a [u8]>),
    /// Certificate (6).
    Cert(CertPayload<&'a [u8]>),
    /// Certificate Request (7).
    Cr(CertPayload<&'a [u8]>),
    /// Hash (8).
    Hash(&'a [u8]),
    /// Signature (9).
    Sig(&'a [u8]),
    /// Nonce (10).
    Nonce(&'a [u8]),
    /// Notification (11).
    Notify(NotifyPayload<&'a [u8]>),
    /// Delete (12).
    Delete(DeletePayload<&'a [u8]>),
    /// Vendor ID (13).
    VendorId(&'a [u8]),
    /// NAT-D (20, draft 130): hash of address and port.
    NatD(&'a [u8]),
    /// NAT-OA (21, draft 131).
    NatOa(NatOaPayload<&'a [u8]>),
    /// Any other payload type, including 2 and 3 outside an SA.
    Unknown(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// Decode the body of a payload of type `payload_type`.
    pub fn decode(payload_type: u8, body: &'a [u8]) -> Result<Payload<'a>, WireError> {
        Ok(match PayloadType(payload_type) {
            PayloadType::SA => Payload::Sa(SaPayload::parse(body)?),
            PayloadType::KE => Payload::Ke(body),
            PayloadType::ID => {
                let mut r = Reader::new(body);
                Payload::Id(IdPayload {
                    id_type: r.u8("ID", "id type")?,
                    protocol_id: r.u8("ID", "protocol id")?,
                    port: r.u16("ID", "port")?,
                    data: r.rest(),
                })
            }
            PayloadType::CERT | PayloadType::CR => {
                let name = if payload_type == 6 { "CERT" } else { "CR" };
                let mut r = Reader::new(body);
                let cert = CertPayload { encoding: r.u8(name, "encoding")?, data: r.rest() };
                if payload_type == 6 { Payload::Cert(cert) } else { Payload::Cr(cert) }
            }
            PayloadType::HASH => Payload::Hash(body),
            PayloadType::SIG => Payload::Sig(body),
            PayloadType::NONCE => Payload::Nonce(body),
            PayloadType::N => {
                let mut r = Reader::new(body);
                let doi = r.u32("N", "doi")?;
                let protocol_id = r.u8("N", "protocol id")?;
                let spi_size = r.u8("N", "spi size")?;
                let notify_type = r.u16("N", "notify message type")?;
                let spi = r.take(spi_size as usize, "N", "spi")?;
                Payload::Notify(NotifyPayload { doi, protocol_id, notify_type, spi, data: r.rest() })
            }
            PayloadType::D => {
                let mut r = Reader::new(body);
                let doi = r.u32("D", "doi")?;
                let protocol_id = r.u8("D", "protocol id")?;
                let spi_size = r.u8("D", "spi size")?;
                let count = r.u16("D", "number of spis")? as usize;
                if spi_size == 0 && count != 0 {
                    return Err(WireError::Malformed { payload: "D", field: "spi size", problem: "is 0 with SPIs announced" });
                }
                if count * spi_size as usize != r.remaining() {
                    return Err(WireError::Malformed { payload: "D", field: "number of spis", problem: "does not match the payload length" });
                }
                let spis = (0..count).map(|_| r.take(spi_size as usize, "D", "spi")).collect::<Result<Vec<_>, _>>()?;
                Payload::Delete(DeletePayload { doi, protocol_id, spi_size, spis })
            }
            PayloadType::VID => Payload::VendorId(body),
            PayloadType::NAT_D | PayloadType::NAT_D_DRAFT => Payload::NatD(body),
            PayloadType::NAT_OA | PayloadType::NAT_OA_DRAFT => {
                let mut r = Reader::new(body);
                let id_type = r.u8("NAT-OA", "id type")?;
                let _reserved = r.take(3, "NAT-OA", "reserved")?;
                Payload::NatOa(NatOaPayload { id_type, data: r.rest() })
            }
            _ => Payload::Unknown(body),
        })
    }
}

impl<B: AsRef<[u8]>> IdPayload<B> {
    /// Append the body.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.id_type, self.protocol_id]);
        out.extend_from_slice(&self.port.to_be_bytes());
        out.extend_from_slice(self.data.as_ref());
    }
}

impl<B: AsRef<[u8]>> CertPayload<B> {
    /// Append the body.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.encoding);
        out.extend_from_slice(self.data.as_ref());
    }
}

impl<B: AsRef<[u8]>> NotifyPayload<B> {
    /// Append the body; the SPI Size comes from the SPI.
    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let spi = self.spi.as_ref();
        let spi_size = u8::try_from(spi.len())
            .map_err(|_| WireError::Invalid { item: "NotifyPayload", field: "spi", problem: "is longer than 255 bytes" })?;
        out.extend_from_slice(&self.doi.to_be_bytes());
        out.extend_from_slice(&[self.protocol_id, spi_size]);
        out.extend_from_slice(&self.notify_type.to_be_bytes());
        out.extend_from_slice(spi);
        out.extend_from_slice(self.data.as_ref());
        Ok(())
    }
}

impl<B: AsRef<[u8]>> DeletePayload<B> {
    /// Append the body; every SPI must be `spi_size` octets.
    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let count = u16::try_from(self.spis.len())
            .map_err(|_| WireError::Invalid { item: "DeletePayload", field: "spis", problem: "are more than 65535" })?;
        if self.spis.iter().any(|s| s.as_ref().len() != self.spi_size as usize) {
            return Err(WireError::Invalid { item: "DeletePayload", field: "spis", problem: "must all have the same size (at most 255)" });
        }
        if self.spi_size == 0 && count != 0 {
            return Err(WireError::Invalid { item: "DeletePayload", field: "spis", problem: "must not be empty byte strings" });
        }
        out.extend_from_slice(&self.doi.to_be_bytes());
        out.extend_from_slice(&[self.protocol_id, self.spi_size]);
        out.extend_from_slice(&count.to_be_bytes());
        for spi in &self.spis {
            out.extend_from_slice(spi.as_ref());
        }
        Ok(())
    }
}

impl<B: AsRef<[u8]>> NatOaPayload<B> {
    /// Append the body (reserved octets zero).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.id_type, 0, 0, 0]);
        out.extend_from_slice(self.data.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_round_trip() {
        let n = NotifyPayload { doi: 1, protocol_id: 1, notify_type: 36136, spi: &[7u8; 16][..], data: &[0, 0, 0, 5][..] };
        let mut body = Vec::new();
        n.encode_body(&mut body).unwrap();
        assert_eq!(body.len(), 8 + 16 + 4);
        assert_eq!(&body[..8], &[0, 0, 0, 1, 1, 16, 0x8d, 0x28]);
        assert_eq!(Payload::decode(11, &body).unwrap(), Payload::Notify(n));
        assert!(Payload::decode(11, &body[..7]).is_err());
        assert!(Payload::decode(11, &body[..20]).is_err());
    }

    #[test]
    fn delete_checks_counts() {
        let d = DeletePayload { doi: 1, protocol_id: 3, spi_size: 4, spis: vec![&[1u8, 2, 3, 4][..], &[5, 6, 7, 8][..]] };
        let mut body = Vec::new();
        d.encode_body(&mut body).unwrap();
        assert_eq!(Payload::decode(12, &body).unwrap(), Payload::Delete(d));
        // count larger than the data
        body[7] = 3;
        assert!(Payload::decode(12, &body).is_err());
        // spi size 0 with a huge count must not allocate or loop
        let huge = [0, 0, 0, 1, 3, 0, 0xff, 0xff];
        assert!(Payload::decode(12, &huge).is_err());
    }

    #[test]
    fn id_and_nat_oa() {
        let body = [1, 17, 1, 244, 192, 0, 2, 1];
        match Payload::decode(5, &body).unwrap() {
            Payload::Id(id) => assert_eq!((id.id_type, id.protocol_id, id.port, id.data), (1, 17, 500, &body[4..])),
            other => panic!("{other:?}"),
        }
        assert!(Payload::decode(5, &body[..3]).is_err());
        assert!(matches!(Payload::decode(131, &[1, 0, 0, 0, 10, 0, 0, 1]).unwrap(), Payload::NatOa(_)));
        assert!(Payload::decode(21, &[1, 0]).is_err());
        assert_eq!(Payload::decode(200, &[9]).unwrap(), Payload::Unknown(&[9]));
    }
}
