//! The gateway's receive fast path on arbitrary datagrams (`rust/frontdoor.rs`).
//! The first input byte chooses the mode (stateless or not, whether the datagram's
//! own offer has a template, the ports); the rest is the datagram. Oracle: no panic;
//! a reply only for an unencrypted Main Mode message 1 with an SA payload whose offer
//! has a template, and then the reply parses, carries the datagram's CKY-I, the
//! cookie of `stateless_cookie` and the marker exactly when required.
#![no_main]

use _core::frontdoor::{offer_digest, stateless_cookie, FrontDoor, Verdict, NON_ESP_MARKER};
use _core::wire::header::Header;
use _core::wire::message::{encode_message, parse_message};
use libfuzzer_sys::fuzz_target;

const SRC: &[u8] = &[127, 2, 0, 1, 1, 244];
const LOCAL: &[u8] = &[127, 0, 0, 1, 1, 244];

/// Mode bit 16: wrap the bytes as the SA payload of a Main Mode message 1 (so the
/// reply path is reached without the fuzzer having to find a whole valid header).
fn wrapped(bytes: &[u8]) -> Vec<u8> {
    let header = Header {
        initiator_cookie: [0x5a; 8],
        responder_cookie: [0; 8],
        next_payload: 1,
        version: 0x10,
        exchange_type: 2,
        flags: 0,
        message_id: 0,
        length: 0,
    };
    encode_message(&header, [(1u8, 0u8, bytes)], 1).unwrap_or_default()
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, raw)) = input.split_first() else { return };
    let owned;
    let datagram = if mode & 16 != 0 {
        owned = wrapped(raw);
        &owned[..]
    } else {
        raw
    };
    let mut door = FrontDoor::new(if mode & 8 != 0 { 64 } else { 2048 }, 4);
    door.set_state(mode & 1 != 0, Some([3; 32]), 10.0);
    let marker = datagram.starts_with(&NON_ESP_MARKER);
    let message = if marker { &datagram[4..] } else { datagram };
    let mut expected_digest = None;
    if message.len() >= 28 {
        let mut offer = vec![message[16]];
        offer.extend_from_slice(&message[28..]);
        let digest = offer_digest(&offer);
        expected_digest = Some(digest);
        if mode & 2 != 0 {
            // a template: a valid message 2 when the input itself is one, else refused
            let _ = door.add_template(digest, message);
        }
    }
    let ports = mode & 4 != 0;
    match door.classify(datagram, SRC, LOCAL, ports, 1.0) {
        Verdict::Python => {}
        Verdict::Reply(reply) => {
            assert!(mode & 1 != 0 && mode & 2 != 0, "reply without stateless mode and a template");
            let parsed = parse_message(message).expect("answered an unparseable message");
            let h = parsed.header;
            assert_eq!(h.exchange_type, 2);
            assert_eq!(h.message_id, 0);
            assert_eq!(h.responder_cookie, [0; 8]);
            assert!(parsed.payloads.iter().any(|p| p.payload_type == 1), "answered without an SA payload");
            let framed = marker || ports;
            assert_eq!(reply.len(), message.len() + if framed { 4 } else { 0 }, "marker added wrongly");
            assert!(!framed || reply.starts_with(&NON_ESP_MARKER));
            let body = if framed { &reply[4..] } else { &reply[..] };
            assert_eq!(body.len(), message.len());
            let out = parse_message(body).expect("reply does not parse");
            assert_eq!(out.header.initiator_cookie, h.initiator_cookie);
            let digest = expected_digest.expect("digest");
            assert_eq!(out.header.responder_cookie, stateless_cookie(&[3; 32], &h.initiator_cookie, SRC, LOCAL, &digest));
        }
    }
});
