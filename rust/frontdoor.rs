//! The gateway's receive fast path: stateless Main Mode message 2 without Python.
//!
//! Design note
//! -----------
//! Under a half-open flood the engine's admission control (`python/ikecore/flood.py`)
//! answers Main Mode message 1 statelessly: message 2 is a pure function of message 1's
//! offer (its payload chain) and the responder cookie is a keyed hash. Doing that in
//! Python costs one interpreter round trip per spoofed datagram; this module does the
//! same decision in Rust for a whole `recvmmsg` batch. It is a *mirror*, never a second
//! policy: Python stays the authority for everything, and this module answers only
//! when the answer is already fixed by what Python told it:
//!
//! * `stateless` and the cookie `secret` with its `valid_until` time come from
//!   `AdmissionControl` (Python pushes them before every batch); at or after
//!   `valid_until` (a secret rotation is due) nothing is answered here.
//! * the reply is a *template* Python registered for exactly this offer digest: the
//!   message 2 Python itself built the first time it saw the offer, with both cookies
//!   to be stamped. An offer without a template goes to Python, which answers it and
//!   registers the template; when Python's offer cache forgets an offer it removes the
//!   template too, so Rust never answers an offer whose message 3 Python could not
//!   rebuild.
//! * the cookie is [`stateless_cookie`], the one definition of the formula; flood.py
//!   calls it through `ikecore._core`.
//!
//! A datagram is answered here only when every check the engine would make on the way
//! to its stateless reply passes the same way: not a NAT keepalive, a well-formed
//! (bounds-checked, [`parse_message`]) unencrypted Main Mode message with a zero
//! responder cookie and Message ID, an SA payload, an offer no larger than
//! `max_offer_size`, a known template. The caller adds the cookie-table checks (a
//! retransmitted first message of a stateful SA, a half-open pair) that need the
//! engine's table. Anything else returns [`Verdict::Python`] and goes to the engine
//! unchanged. Nothing here does I/O, reads a clock or panics on any input.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::wire::header::HEADER_LEN;
use crate::wire::message::parse_message;

/// Exchange type of Main Mode (Identity Protection).
const MAIN_MODE: u8 = 2;
/// Payload type of the SA payload.
const PAYLOAD_SA: u8 = 1;
/// RFC 3948 non-ESP marker in front of IKE on the NAT-T port.
pub const NON_ESP_MARKER: [u8; 4] = [0, 0, 0, 0];
/// A NAT-T keepalive (RFC 3948 section 2.3).
pub const KEEPALIVE: [u8; 1] = [0xff];

/// SHA-256 of an offer (message 1's first payload type, then its payload chain).
pub fn offer_digest(offer: &[u8]) -> [u8; 32] {
    Sha256::digest(offer).into()
}

/// The 6-byte MAC part of a stateless responder cookie:
/// `HMAC-SHA256(secret, CKY-I | source | local | digest)[:6]`.
pub fn cookie_mac(secret: &[u8], cky_i: &[u8], source: &[u8], local: &[u8], digest: &[u8]) -> [u8; 6] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(cky_i);
    mac.update(source);
    mac.update(local);
    mac.update(digest);
    let tag = mac.finalize().into_bytes();
    let mut out = [0u8; 6];
    out.copy_from_slice(&tag[..6]);
    out
}

/// The stateless CKY-R: `digest[:2] || cookie_mac(...)` (ikecore.flood's design note).
pub fn stateless_cookie(secret: &[u8], cky_i: &[u8], source: &[u8], local: &[u8], digest: &[u8; 32]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..2].copy_from_slice(&digest[..2]);
    out[2..].copy_from_slice(&cookie_mac(secret, cky_i, source, local, digest));
    out
}

/// What the fast path counted since the counters were last taken.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams read from the sockets.
    pub received: u64,
    /// Message 1 answered here with a stateless message 2.
    pub stateless_replies: u64,
    /// Datagrams handed to Python unchanged.
    pub to_python: u64,
    /// Datagrams the express lane handled (`rust/express/responder.rs`).
    pub express: u64,
    /// Datagrams longer than the receive slot (dropped: they cannot be IKE we accept).
    pub truncated: u64,
    /// Replies the kernel refused (`sendmmsg` errors or short sends).
    pub send_failures: u64,
    /// `recvmmsg` calls that failed with something other than EAGAIN.
    pub receive_errors: u64,
}

/// The decision for one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send this stateless message 2 back to the source.
    Reply(Vec<u8>),
    /// Let the engine decide.
    Python,
}

/// A parsed candidate message 1 (borrowing the datagram): what the caller needs for
/// its cookie-table checks before [`FrontDoor::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstMessage<'a> {
    /// The ISAKMP message without a non-ESP marker.
    pub message: &'a [u8],
    /// The datagram carried a non-ESP marker.
    pub marker: bool,
}

/// The fast path's state: a copy of what Python decided, and the templates.
#[derive(Debug)]
pub struct FrontDoor {
    stateless: bool,
    secret: Option<[u8; 32]>,
    valid_until: f64,
    max_offer_size: usize,
    max_templates: usize,
    templates: HashMap<[u8; 32], Box<[u8]>>,
    /// Counters since the last [`FrontDoor::take_counters`].
    pub counters: Counters,
}

impl FrontDoor {
    /// A fast path that answers nothing until [`FrontDoor::set_state`] says so.
    pub fn new(max_offer_size: usize, max_templates: usize) -> FrontDoor {
        FrontDoor {
            stateless: false,
            secret: None,
            valid_until: f64::NEG_INFINITY,
            max_offer_size,
            max_templates,
            templates: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// Mirror the admission control: stateless mode on or off, the current cookie
    /// secret and the engine time at which it stops being the current one.
    pub fn set_state(&mut self, stateless: bool, secret: Option<[u8; 32]>, valid_until: f64) {
        self.stateless = stateless && secret.is_some();
        self.secret = secret;
        self.valid_until = valid_until;
    }

    /// The current cookie secret while it is current (at engine time `now`).
    pub fn secret(&self, now: f64) -> Option<&[u8; 32]> {
        self.secret.as_ref().filter(|_| now < self.valid_until)
    }

    /// True when message 1 may be answered here (at engine time `now`).
    pub fn active(&self, now: f64) -> bool {
        self.stateless && self.secret.is_some() && now < self.valid_until
    }

    /// Register the message 2 Python built for the offer with this digest. The
    /// template must parse as an unencrypted Main Mode message with Message ID 0;
    /// its cookies are replaced on every use. False when it does not, or when
    /// `max_templates` are held already.
    pub fn add_template(&mut self, digest: [u8; 32], message2: &[u8]) -> bool {
        let Ok(parsed) = parse_message(message2) else { return false };
        let h = parsed.header;
        if h.exchange_type != MAIN_MODE || h.message_id != 0 || h.encrypted() {
            return false;
        }
        if !self.templates.contains_key(&digest) && self.templates.len() >= self.max_templates {
            return false;
        }
        let mut template = message2.to_vec();
        template[..16].fill(0);
        self.templates.insert(digest, template.into_boxed_slice());
        true
    }

    /// Forget the template of an offer Python no longer remembers; true when known.
    pub fn forget_template(&mut self, digest: &[u8; 32]) -> bool {
        self.templates.remove(digest).is_some()
    }

    /// Forget every template.
    pub fn clear_templates(&mut self) {
        self.templates.clear();
    }

    /// Number of templates held.
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// Return the counters and start again from zero.
    pub fn take_counters(&mut self) -> Counters {
        std::mem::take(&mut self.counters)
    }

    /// The datagram as a possible message 1: strip a non-ESP marker (only when
    /// `marker_allowed`: neither port is 500, RFC 3948; on port 500 four zero bytes
    /// start a cookie), require a full header with a zero responder cookie. None: not a
    /// candidate (Python decides).
    pub fn candidate<'a>(&self, datagram: &'a [u8], marker_allowed: bool, now: f64) -> Option<FirstMessage<'a>> {
        if !self.active(now) || datagram == KEEPALIVE {
            return None;
        }
        let (message, marker) = match datagram.strip_prefix(&NON_ESP_MARKER) {
            Some(rest) if marker_allowed => (rest, true),
            _ => (datagram, false),
        };
        if message.len() < HEADER_LEN || message[8..16] != [0u8; 8] {
            return None;
        }
        Some(FirstMessage { message, marker })
    }

    /// The stateless message 2 for a candidate from `source` to `local` (address and
    /// port bytes as ikecore.engine packs them), or Python. `ports_need_marker`:
    /// neither port is 500 (RFC 3948 framing even without a marker on message 1).
    pub fn answer(&self, first: FirstMessage<'_>, source: &[u8], local: &[u8], ports_need_marker: bool, now: f64) -> Verdict {
        let Some(secret) = self.secret.filter(|_| self.active(now)) else { return Verdict::Python };
        let Ok(parsed) = parse_message(first.message) else { return Verdict::Python };
        let h = parsed.header;
        if h.exchange_type != MAIN_MODE || h.message_id != 0 || h.encrypted() || h.responder_cookie != [0u8; 8] {
            return Verdict::Python;
        }
        if !parsed.payloads.iter().any(|p| p.payload_type == PAYLOAD_SA) {
            return Verdict::Python;
        }
        let body = &first.message[HEADER_LEN..];
        if body.len() + 1 > self.max_offer_size {
            return Verdict::Python;
        }
        let mut offer = Vec::with_capacity(body.len() + 1);
        offer.push(h.next_payload);
        offer.extend_from_slice(body);
        let digest = offer_digest(&offer);
        let Some(template) = self.templates.get(&digest) else { return Verdict::Python };
        let cky_r = stateless_cookie(&secret, &h.initiator_cookie, source, local, &digest);
        let marker = first.marker || ports_need_marker;
        let mut reply = Vec::with_capacity(template.len() + 4);
        if marker {
            reply.extend_from_slice(&NON_ESP_MARKER);
        }
        let start = reply.len();
        reply.extend_from_slice(template);
        reply[start..start + 8].copy_from_slice(&h.initiator_cookie);
        reply[start + 8..start + 16].copy_from_slice(&cky_r);
        Verdict::Reply(reply)
    }

    /// [`FrontDoor::candidate`] then [`FrontDoor::answer`] (no cookie-table checks).
    /// `ports_need_marker`: neither port is 500 (a marker may be stripped, and is added).
    pub fn classify(&self, datagram: &[u8], source: &[u8], local: &[u8], ports_need_marker: bool, now: f64) -> Verdict {
        match self.candidate(datagram, ports_need_marker, now) {
            Some(first) => self.answer(first, source, local, ports_need_marker, now),
            None => Verdict::Python,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::Header;
    use crate::wire::message::encode_message;

    fn message(cky_i: [u8; 8], cky_r: [u8; 8], exchange: u8, payloads: &[(u8, u8, &[u8])]) -> Vec<u8> {
        let header = Header {
            initiator_cookie: cky_i,
            responder_cookie: cky_r,
            next_payload: 0,
            version: 0x10,
            exchange_type: exchange,
            flags: 0,
            message_id: 0,
            length: 0,
        };
        let first = payloads.first().map_or(0, |p| p.0);
        encode_message(&header, payloads.iter().copied(), first).unwrap()
    }

    // An SA body: DOI 1, situation 1 and one empty-ish proposal are enough for the
    // generic chain parser (the fast path never decodes the SA).
    const SA: &[u8] = &[0, 0, 0, 1, 0, 0, 0, 1];

    fn door() -> (FrontDoor, Vec<u8>, [u8; 32]) {
        let mm1 = message([1; 8], [0; 8], MAIN_MODE, &[(PAYLOAD_SA, 0, SA), (13, 0, b"vendor")]);
        let mut offer = vec![PAYLOAD_SA];
        offer.extend_from_slice(&mm1[HEADER_LEN..]);
        let digest = offer_digest(&offer);
        let mut d = FrontDoor::new(2048, 16);
        d.set_state(true, Some([7; 32]), 100.0);
        let mm2 = message([1; 8], [9; 8], MAIN_MODE, &[(PAYLOAD_SA, 0, SA)]);
        assert!(d.add_template(digest, &mm2));
        (d, mm1, digest)
    }

    #[test]
    fn answers_a_known_offer_with_the_stamped_template() {
        let (d, mm1, digest) = door();
        let Verdict::Reply(reply) = d.classify(&mm1, b"src123", b"loc123", false, 1.0) else { panic!("no reply") };
        assert_eq!(&reply[..8], &[1; 8]);
        assert_eq!(&reply[8..16], &stateless_cookie(&[7; 32], &[1; 8], b"src123", b"loc123", &digest));
        assert_eq!(&reply[8..10], &digest[..2]);
        assert_eq!(parse_message(&reply).unwrap().header.length as usize, reply.len());
        // the marker off port 500: stripped and echoed, and added when neither port is 500
        let mut marked = NON_ESP_MARKER.to_vec();
        marked.extend_from_slice(&mm1);
        let Verdict::Reply(r2) = d.classify(&marked, b"src123", b"loc123", true, 1.0) else { panic!() };
        assert_eq!(&r2[4..], &reply[..]);
        let Verdict::Reply(r3) = d.classify(&mm1, b"src123", b"loc123", true, 1.0) else { panic!() };
        assert_eq!(r3, r2);
        // on port 500 the four zero bytes are part of the message: not stripped, so this
        // datagram is no message 1 the fast path knows (Python decides)
        assert_eq!(d.classify(&marked, b"src123", b"loc123", false, 1.0), Verdict::Python);
        // a message 1 whose CKY-I starts with four zero bytes is whole on port 500
        let zero_start = message([0, 0, 0, 0, 5, 5, 5, 5], [0; 8], MAIN_MODE, &[(PAYLOAD_SA, 0, SA)]);
        let first = d.candidate(&zero_start, false, 1.0).expect("a candidate on port 500");
        assert!(!first.marker && first.message == &zero_start[..]);
        assert!(d.candidate(&zero_start, true, 1.0).is_none_or(|f| f.marker && f.message.len() == zero_start.len() - 4));
    }

    #[test]
    fn a_datagram_of_two_messages_goes_to_python() {
        let (d, mm1, _digest) = door();
        let mut two = mm1.clone();
        two.extend_from_slice(&mm1);
        assert_eq!(d.classify(&two, b"src123", b"loc123", false, 1.0), Verdict::Python);
        let mut trailing = mm1.clone();
        trailing.extend_from_slice(&[0, 0, 0]);
        assert_eq!(d.classify(&trailing, b"src123", b"loc123", false, 1.0), Verdict::Python);
    }

    #[test]
    fn known_answer_cookie_mac() {
        // HMAC-SHA256(key = 32 x 0x07, "abc") computed independently (Python hmac module).
        let mac = cookie_mac(&[7; 32], b"a", b"b", b"c", b"");
        assert_eq!(mac, [0x12, 0x7d, 0xa4, 0xce, 0xd6, 0xa8]);
    }

    #[test]
    fn everything_else_goes_to_python() {
        let (mut d, mm1, digest) = door();
        let src: &[u8] = b"s";
        assert_eq!(d.classify(&mm1, src, src, false, 100.0), Verdict::Python); // secret expired
        assert_eq!(d.classify(&KEEPALIVE, src, src, false, 1.0), Verdict::Python);
        assert_eq!(d.classify(&mm1[..27], src, src, false, 1.0), Verdict::Python);
        let mut other = mm1.clone();
        other[8] = 1; // not message 1
        assert_eq!(d.classify(&other, src, src, false, 1.0), Verdict::Python);
        let mut am = mm1.clone();
        am[18] = 4; // Aggressive Mode
        assert_eq!(d.classify(&am, src, src, false, 1.0), Verdict::Python);
        let mut id = mm1.clone();
        id[23] = 1; // Message ID
        assert_eq!(d.classify(&id, src, src, false, 1.0), Verdict::Python);
        let mut changed = mm1.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1; // another offer: no template
        assert_eq!(d.classify(&changed, src, src, false, 1.0), Verdict::Python);
        let no_sa = message([1; 8], [0; 8], MAIN_MODE, &[(13, 0, b"vendor")]);
        assert_eq!(d.classify(&no_sa, src, src, false, 1.0), Verdict::Python);
        for cut in 28..mm1.len() {
            assert_eq!(d.classify(&mm1[..cut], src, src, false, 1.0), Verdict::Python);
        }
        d.set_state(false, Some([7; 32]), 100.0);
        assert_eq!(d.classify(&mm1, src, src, false, 1.0), Verdict::Python);
        d.set_state(true, Some([7; 32]), 100.0);
        assert!(d.forget_template(&digest));
        assert_eq!(d.classify(&mm1, src, src, false, 1.0), Verdict::Python);
        let mut small = FrontDoor::new(8, 16);
        small.set_state(true, Some([7; 32]), 100.0);
        assert!(small.add_template(digest, &mm1));
        assert_eq!(small.classify(&mm1, src, src, false, 1.0), Verdict::Python); // offer too large
    }

    #[test]
    fn templates_are_checked_and_bounded() {
        let mut d = FrontDoor::new(2048, 1);
        let mm2 = message([1; 8], [9; 8], MAIN_MODE, &[(PAYLOAD_SA, 0, SA)]);
        assert!(!d.add_template([1; 32], &mm2[..20]));
        let qm = message([1; 8], [9; 8], 32, &[(PAYLOAD_SA, 0, SA)]);
        assert!(!d.add_template([1; 32], &qm));
        assert!(d.add_template([1; 32], &mm2));
        assert!(!d.add_template([2; 32], &mm2));
        assert!(d.add_template([1; 32], &mm2)); // replacing is fine
        assert_eq!(d.template_count(), 1);
    }
}
