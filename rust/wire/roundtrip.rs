//! The round-trip oracle shared by the cargo-fuzz target (`fuzz/`) and the
//! bounded random-input test below: whatever bytes come in, parsing either fails
//! cleanly or yields a message that encodes back to exactly the same bytes, and
//! every decoded SA re-encodes to a body that parses to the same structure.

use super::header::HEADER_LEN;
use super::message::{encode_message, parse_chain, parse_message};
use super::payloads::Payload;
use super::sa::SaPayload;

/// Check the round-trip properties on `data`; `Err` names the broken one.
pub fn check_round_trip(data: &[u8]) -> Result<(), &'static str> {
    let Ok(msg) = parse_message(data) else {
        return Ok(());
    };
    if msg.header.encrypted() {
        if msg.body != &data[HEADER_LEN..] {
            return Err("encrypted body is not the bytes after the header");
        }
        return Ok(());
    }
    let encoded = encode_message(
        &msg.header,
        msg.payloads.iter().map(|p| (p.payload_type, p.reserved(), p.body())),
        msg.header.next_payload,
    )
    .map_err(|_| "re-encoding a parsed message failed")?;
    if encoded != data {
        return Err("parse -> encode changed the bytes");
    }
    for p in &msg.payloads {
        let Ok(decoded) = p.decode() else {
            return Err("a payload accepted by parse_message does not decode");
        };
        if let Payload::Sa(sa) = decoded {
            let mut body = Vec::new();
            sa.encode_body(&mut body).map_err(|_| "SA re-encoding failed")?;
            let again = SaPayload::parse(&body).map_err(|_| "re-encoded SA does not parse")?;
            if again != sa {
                return Err("SA structure changed across encode -> parse");
            }
        }
    }
    // the same chain read as a decrypted body with padding after it
    let mut padded = data[HEADER_LEN..].to_vec();
    padded.extend_from_slice(&[0, 0, 0, 3]);
    let chain = parse_chain(msg.header.next_payload, &padded, false).map_err(|_| "padded chain rejected")?;
    if chain.len() != msg.payloads.len() {
        return Err("padding changed the payload count");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::Header;
    use crate::wire::payloads::{DeletePayload, IdPayload, NotifyPayload};
    use crate::wire::sa::{Attribute, AttributeValue, Proposal, Transform};

    /// xorshift64*: a small deterministic generator, no dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn seeds() -> Vec<Vec<u8>> {
        let header = Header {
            initiator_cookie: [0x5a; 8],
            responder_cookie: [0; 8],
            next_payload: 0,
            version: 0x10,
            exchange_type: 2,
            flags: 0,
            message_id: 0,
            length: 0,
        };
        let transform = |n: u8| Transform {
            number: n,
            transform_id: 1,
            attributes: vec![
                Attribute { attr_type: 1, value: AttributeValue::Basic(7) },
                Attribute { attr_type: 14, value: AttributeValue::Basic(128) },
                Attribute { attr_type: 12, value: AttributeValue::Variable(&[0u8, 0, 0x70, 0x80][..]) },
            ],
        };
        let sa = SaPayload {
            doi: 1,
            situation: 1,
            proposals: vec![
                Proposal { number: 1, protocol_id: 1, spi: &[][..], transforms: vec![transform(1), transform(2)] },
                Proposal { number: 2, protocol_id: 3, spi: &[1u8, 2, 3, 4][..], transforms: vec![transform(1)] },
            ],
        };
        let mut sa_body = Vec::new();
        sa.encode_body(&mut sa_body).unwrap();
        let mut notify = Vec::new();
        NotifyPayload { doi: 1, protocol_id: 1, notify_type: 36136, spi: &[9u8; 16][..], data: &[0u8, 0, 0, 1][..] }
            .encode_body(&mut notify)
            .unwrap();
        let mut delete = Vec::new();
        DeletePayload { doi: 1, protocol_id: 3, spi_size: 4, spis: vec![&[1u8, 2, 3, 4][..]] }.encode_body(&mut delete).unwrap();
        let mut id = Vec::new();
        IdPayload { id_type: 1, protocol_id: 17, port: 500, data: &[127u8, 0, 0, 1][..] }.encode_body(&mut id);
        let nat_oa = [1u8, 0, 0, 0, 10, 0, 0, 1];
        let payloads: Vec<(u8, u8, &[u8])> = vec![
            (1, 0, &sa_body),
            (4, 0, &[7u8; 64][..]),
            (5, 0, &id),
            (10, 0, &[3u8; 16][..]),
            (11, 0, &notify),
            (12, 0, &delete),
            (13, 0, &[0xafu8; 16][..]),
            (20, 0, &[1u8; 20][..]),
            (131, 0, &nat_oa[..]),
            (77, 0, &[1u8, 2, 3][..]),
        ];
        let first = encode_message(&header, payloads.iter().copied(), 1).unwrap();
        let second = encode_message(&header, payloads[4..].iter().copied(), 11).unwrap();
        vec![first, second]
    }

    #[test]
    fn seeds_pass_the_oracle() {
        for s in seeds() {
            assert!(parse_message(&s).is_ok());
            check_round_trip(&s).unwrap();
        }
    }

    /// Bounded random fuzzing (runs on stable, no cargo-fuzz needed): random bytes
    /// and mutations of valid messages, with the header Length sometimes fixed up so
    /// the payload chain is reached. Every input must pass the oracle without panic.
    #[test]
    fn bounded_random_inputs() {
        let mut rng = Rng(0x1CE_C0DE_2408);
        let seeds = seeds();
        let mut accepted = 0usize;
        for round in 0..60_000 {
            let mut data = if round % 4 == 0 {
                let len = rng.below(200);
                (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            for _ in 0..1 + rng.below(4) {
                if data.is_empty() {
                    break;
                }
                match rng.below(5) {
                    0 => {
                        let i = rng.below(data.len());
                        data[i] = rng.next() as u8;
                    }
                    1 => data.truncate(rng.below(data.len())),
                    2 => {
                        let i = rng.below(data.len());
                        data.insert(i, rng.next() as u8);
                    }
                    3 => {
                        let i = rng.below(data.len());
                        data[i] ^= 1 << rng.below(8);
                    }
                    _ => data.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
                }
            }
            if data.len() >= HEADER_LEN && rng.below(4) != 0 {
                let len = (data.len() as u32).to_be_bytes();
                data[24..28].copy_from_slice(&len);
                data[17] = 0x10;
                data[19] &= !1;
            }
            if parse_message(&data).is_ok() {
                accepted += 1;
            }
            if let Err(why) = check_round_trip(&data) {
                panic!("round {round}: {why}: {data:02x?}");
            }
        }
        // the mutations must reach deep parsing, not just bounce off the header
        assert!(accepted > 1_000, "only {accepted} inputs parsed");
    }
}
