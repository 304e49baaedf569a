"""Main Mode (Identity Protection exchange) with pre-shared keys (RFC 2409 sections 5 and
5.4) or RSA signatures (section 5.1; ``auth`` builds and checks CR, CERT and SIG).

Design note
-----------
::

    Initiator                              Responder
    HDR, SA                    (MM1) -->                      R_EXPECT_MM1 -> R_EXPECT_MM3
    I_EXPECT_MM2          <-- (MM2)      HDR, SA (one transform chosen)
    HDR, KE, Ni                (MM3) -->   (responder's first DH work)  -> R_EXPECT_MM5
    I_EXPECT_MM4          <-- (MM4)      HDR, KE, Nr
    HDR*, IDii, HASH_I         (MM5) -->   (verify HASH_I)              -> ESTABLISHED
    I_EXPECT_MM6          <-- (MM6)      HDR*, IDir, HASH_R
    ESTABLISHED (verify HASH_R)

With RSA signatures MM3 and MM4 add CR payloads (our CAs), MM5/MM6 carry
``ID, CERT, SIG_I/SIG_R`` instead of ``ID, HASH`` and SKEYID = prf(Ni_b | Nr_b, g^xy);
the rows require only the ID and the handlers check HASH or CERT/SIG by method.

The state names say which message the SA waits for. ``TRANSITIONS`` maps (state,
exchange type) to a ``transitions.Row``: the handler, the next state, the payloads the
message must carry, whether it must be encrypted, and how the engine sends what the
handler returns: MM3 and MM5 are requests the initiator retransmits until answered; MM2,
MM4 and MM6 are replies the responder sends again only when the initiator repeats the
message they answer. A message with no row is a protocol error, counted and dropped.
Handlers are symmetric in style: ``_on_mmN_send_mmM`` processes message N and returns
message M (or None when the exchange is over). They raise ``ikecore.errors`` classes; the
engine turns those into counters, notifies and failures. Nothing here does I/O or reads a
clock.

Pitfalls handled here: HASH_I/HASH_R cover the bytes of SAi_b and of the ID bodies exactly
as sent or received (RFC 2409 section 5); the pre-shared key is chosen by the peer's
address, since its ID arrives only encrypted in MM5 (section 5.4); a wrong pre-shared key
shows as an MM5 that does not decrypt to a payload chain or whose HASH_I does not verify
(AUTHENTICATION-FAILED).
"""

from __future__ import annotations

from typing import Any

from ikecore import keymat, policy, wire
from ikecore.errors import AuthenticationFailed, NoProposalChosen, PayloadMalformed
from ikecore.protocol import auth, nat_traversal, vendor_ids
from ikecore.protocol.messages import (
    NONCE_SIZE,
    build_plain,
    constant_time_equal,
    open_keyed,
    required,
    run_handler,
    seal,
)
from ikecore.protocol.phase1 import (
    Phase1Handler,
    answer_ike,
    check_peer_id,
    exchange,
    my_identification,
    nat_d,
    phase1_keys,
    take_ke_nonce,
)
from ikecore.protocol.services import Services
from ikecore.protocol.transitions import Row, Send, handled_by
from ikecore.sa import IsakmpSa, Phase1State

__all__ = ["TRANSITIONS", "HANDLED", "FIRST", "start_initiator", "receive", "MAIN_MODE"]

MAIN_MODE = wire.ExchangeType.IDENTITY_PROTECTION
P = wire.PayloadType



def start_initiator(sa: IsakmpSa, services: Services) -> bytes:
    """MM1: HDR, SA with every suite of the IKE policy (plus vendor IDs)."""
    offer = sa.ike_policy.offer()
    sa.sa_b = offer.body
    sa.state = Phase1State.I_EXPECT_MM2
    return build_plain(sa, MAIN_MODE, [offer, *vendor_ids.initiator_vendor_ids(sa)])


def _on_mm1_send_mm2(sa: IsakmpSa, message: wire.Message, payloads: list[wire.Payload],
                     services: Services) -> bytes:
    sa_payload = required(payloads, P.SA)[P.SA]
    chosen, reply = answer_ike(sa_payload, sa.ike_policy)  # the chosen transform alone
    if not _can_authenticate(sa, chosen.auth_method):
        raise NoProposalChosen(f"authentication method {chosen.auth_method_name} is not configured")
    sa.chosen = chosen
    sa.sa_b = sa_payload.body
    vendor_ids.record(sa, payloads)
    return build_plain(sa, MAIN_MODE, [reply, *vendor_ids.responder_vendor_ids(sa)])


def _on_mm2_send_mm3(sa: IsakmpSa, message: wire.Message, payloads: list[wire.Payload],
                     services: Services) -> bytes:
    sa_payload = required(payloads, P.SA)[P.SA]
    if len(sa_payload.proposals) != 1 or len(sa_payload.proposals[0].transforms) != 1:
        raise NoProposalChosen("responder must choose exactly one proposal and transform")
    chosen = policy.IkeProposal.from_transform(sa_payload.proposals[0].transforms[0])
    if not any(mine.matches(chosen) for mine in sa.ike_policy.proposals):
        raise NoProposalChosen(f"responder chose {chosen.name}, which we did not offer")
    sa.chosen = chosen
    sa.responder_cookie = message.responder_cookie
    vendor_ids.record(sa, payloads)
    sa.dh = services.keypair(chosen.group)
    sa.g_xi = sa.dh.public
    sa.nonce_i = services.random(NONCE_SIZE)
    return build_plain(sa, MAIN_MODE, [wire.KePayload(sa.g_xi), wire.NoncePayload(sa.nonce_i),
                                       *nat_d(sa, services), *_cert_requests(sa)])


_RSA_SIG = int(wire.AuthMethod.RSA_SIG)


def _signatures(sa: IsakmpSa) -> bool:
    chosen = sa.chosen
    return chosen is not None and chosen.auth_method == _RSA_SIG


def _can_authenticate(sa: IsakmpSa, method: int) -> bool:
    if method == wire.AuthMethod.RSA_SIG:
        return sa.generic_filter.credentials is not None
    return method == wire.AuthMethod.PRE_SHARED_KEY and sa.generic_filter.psk() is not None


def _cert_requests(sa: IsakmpSa) -> list[wire.Payload]:
    """CR payloads in messages 3 and 4 when we authenticate with signatures."""
    return auth.request_payloads(sa.generic_filter.credentials) if _signatures(sa) else []


def _my_id(sa: IsakmpSa) -> wire.IdPayload:
    configured = sa.generic_filter.local_id
    if _signatures(sa):
        found = auth.my_certificate_id(sa.generic_filter.credentials, configured)
        if found is not None:
            return found
    return my_identification(sa, configured)


def _proof(sa: IsakmpSa, digest: bytes) -> list[wire.Payload]:
    """``HASH`` (pre-shared key) or ``CERT, SIG`` (signatures) after our ID."""
    if _signatures(sa):
        return auth.proof_payloads(sa.generic_filter.credentials, digest)
    return [wire.HashPayload(digest)]


def _verify(sa: IsakmpSa, payloads: list[wire.Payload], peer_id: wire.IdPayload, expected: bytes,
            services: Services, name: str, found: dict[int, Any] | None = None) -> None:
    """Check the peer's HASH (pre-shared key) or certificate and SIG, then its ID
    (``found``: ``required(payloads)`` when the caller has it already)."""
    if _signatures(sa):
        sa.peer_certificate = auth.verify_proof(sa.generic_filter.credentials, payloads, peer_id, expected,
                                                services.wall_clock(),
                                                sa.generic_filter.remote_id)
        return
    if found is None or P.HASH not in found:
        found = required(payloads, P.ID, P.HASH)  # raises when one is missing
    if not constant_time_equal(found[P.HASH].data, expected):
        raise AuthenticationFailed(f"{name} does not verify (pre-shared keys differ?)")
    check_peer_id(sa, peer_id)


def _on_mm3_send_mm4(sa: IsakmpSa, message: wire.Message, payloads: list[wire.Payload],
                     services: Services) -> bytes:
    assert sa.chosen is not None
    g_xi, sa.nonce_i = take_ke_nonce(payloads)
    hashes = None
    if sa.nat_t is not None:  # the same two hashes go into our NAT-D payloads below
        hashes = nat_traversal.endpoint_hashes(sa)
        sa.nat = nat_traversal.detect(sa, sa.nat_t, payloads, hashes)
    sa.dh = services.keypair(sa.chosen.group)
    sa.g_xi, sa.g_xr = g_xi, sa.dh.public
    g_xy = exchange(sa, g_xi)
    sa.nonce_r = services.random(NONCE_SIZE)
    phase1_keys(sa, services, g_xy)
    return build_plain(sa, MAIN_MODE, [wire.KePayload(sa.g_xr), wire.NoncePayload(sa.nonce_r),
                                       *nat_d(sa, services, hashes), *_cert_requests(sa)])


def _on_mm4_send_mm5(sa: IsakmpSa, message: wire.Message, payloads: list[wire.Payload],
                     services: Services) -> bytes:
    sa.g_xr, sa.nonce_r = take_ke_nonce(payloads)
    if sa.nat_t is not None:
        sa.nat = nat_traversal.detect(sa, sa.nat_t, payloads)
    g_xy = exchange(sa, sa.g_xr)
    phase1_keys(sa, services, g_xy)
    sa.my_id = _my_id(sa)
    hash_i = keymat.hash_i(sa.hash_name, sa.skeyids.skeyid, sa.g_xi, sa.g_xr, sa.initiator_cookie,
                           sa.responder_cookie, sa.sa_b, sa.my_id.body)
    mm5: list[wire.Payload] = [sa.my_id, *_proof(sa, hash_i)]
    if sa.initial_contact:  # we hold no other ISAKMP SA with this peer
        mm5.append(wire.NotifyPayload(wire.NotifyType.INITIAL_CONTACT, protocol_id=wire.ProtocolId.ISAKMP,
                                           spi=sa.initiator_cookie + sa.responder_cookie))
    nat_traversal.float_initiator(sa)  # MM5 goes to the NAT-T port when a NAT is in the way
    return seal(sa, MAIN_MODE, mm5, 0)


def _on_mm5_send_mm6(sa: IsakmpSa, message: wire.Message, payloads: list[wire.Payload],
                     services: Services) -> bytes:
    found = required(payloads, P.ID)
    peer_id = found[P.ID]
    expected = keymat.hash_i(sa.hash_name, sa.skeyids.skeyid, sa.g_xi, sa.g_xr, sa.initiator_cookie,
                             sa.responder_cookie, sa.sa_b, peer_id.body)
    _verify(sa, payloads, peer_id, expected, services, "HASH_I", found)
    sa.peer_id = peer_id
    sa.initial_contact = any(isinstance(p, wire.NotifyPayload) and p.notify_type == wire.NotifyType.INITIAL_CONTACT
                             for p in payloads)
    sa.my_id = _my_id(sa)
    hash_r = keymat.hash_r(sa.hash_name, sa.skeyids.skeyid, sa.g_xi, sa.g_xr, sa.initiator_cookie,
                           sa.responder_cookie, sa.sa_b, sa.my_id.body)
    return seal(sa, MAIN_MODE, [sa.my_id, *_proof(sa, hash_r)], 0)


def _on_mm6_established(sa: IsakmpSa, message: wire.Message, payloads: list[wire.Payload],
                        services: Services) -> None:
    found = required(payloads, P.ID)
    peer_id = found[P.ID]
    expected = keymat.hash_r(sa.hash_name, sa.skeyids.skeyid, sa.g_xi, sa.g_xr, sa.initiator_cookie,
                             sa.responder_cookie, sa.sa_b, peer_id.body)
    _verify(sa, payloads, peer_id, expected, services, "HASH_R", found)
    sa.peer_id = peer_id
    return None


_S = Phase1State
TRANSITIONS: dict[tuple[Phase1State, int], Row[Phase1State, Phase1Handler]] = {
    (_S.R_EXPECT_MM1, MAIN_MODE): Row(_on_mm1_send_mm2, _S.R_EXPECT_MM3, (P.SA,), 1,
                                      send=Send.REPLY, answers_repeat=True),
    (_S.I_EXPECT_MM2, MAIN_MODE): Row(_on_mm2_send_mm3, _S.I_EXPECT_MM4, (P.SA,), 2,
                                      send=Send.REQUEST, answers_repeat=False),
    (_S.R_EXPECT_MM3, MAIN_MODE): Row(_on_mm3_send_mm4, _S.R_EXPECT_MM5, (P.KE, P.NONCE), 3,
                                      send=Send.REPLY, answers_repeat=True),
    (_S.I_EXPECT_MM4, MAIN_MODE): Row(_on_mm4_send_mm5, _S.I_EXPECT_MM6, (P.KE, P.NONCE), 4,
                                      send=Send.REQUEST, answers_repeat=False),
    (_S.R_EXPECT_MM5, MAIN_MODE): Row(_on_mm5_send_mm6, _S.ESTABLISHED, (P.ID,), 5,
                                      send=Send.REPLY, answers_repeat=True, encrypted=True),
    (_S.I_EXPECT_MM6, MAIN_MODE): Row(_on_mm6_established, _S.ESTABLISHED, (P.ID,), 6,
                                      send=Send.NOTHING, answers_repeat=False, encrypted=True),
}
#: The row that handled message 1: how the responder answers it and a repeat of it.
FIRST = TRANSITIONS[(Phase1State.R_EXPECT_MM1, MAIN_MODE)]
#: ``(role, state) -> the row that led there``: whether a repeat of the last message is answered.
HANDLED = handled_by(TRANSITIONS)


def receive(sa: IsakmpSa, message: wire.Message, services: Services,
            plain: list[wire.Payload] | None = None) -> bytes | None:
    """Process one Main Mode message for ``sa``; return the reply datagram, if any.

    ``plain``: the payloads of an unencrypted message when the caller has them already
    (``message.payloads`` makes new objects at each reading). On success the SA moves to
    the row's next state. On any error nothing changes (the IV is only committed after
    validation), and the error propagates.

    Raises:
        RemoteProtocolError: the message is not acceptable now (the engine counts it).
    """
    row = TRANSITIONS.get((sa.state, message.exchange_type))
    if row is None:
        raise PayloadMalformed(f"unexpected Main Mode message in state {sa.state.value}",
                               notify_type=wire.NotifyType.INVALID_EXCHANGE_TYPE)
    if row.encrypted and not message.encrypted:
        # Not a wrong PSK: a plain message where an encrypted one belongs is dropped.
        raise PayloadMalformed(f"message {row.message_number} must be encrypted",
                               notify_type=wire.NotifyType.INVALID_FLAGS)
    if row.encrypted and (sa.crypto is None or not message.body or len(message.body) % sa.cipher.block_size):
        raise PayloadMalformed(f"message {row.message_number}: encrypted body is not whole cipher blocks")
    if row.encrypted:
        opened = open_keyed(sa, message, row.message_number, *row.required)
        payloads = opened.payloads
    else:
        if message.encrypted:
            raise PayloadMalformed(f"message {row.message_number} must not be encrypted",
                                   notify_type=wire.NotifyType.INVALID_FLAGS)
        payloads = message.payloads if plain is None else plain
        opened = None
    reply = run_handler(sa, 0, opened.next_iv if opened is not None else None,
                        row.handler, sa, message, payloads, services)
    sa.state = row.next_state
    return reply
