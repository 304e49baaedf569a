"""Aggressive Mode with pre-shared keys: RFC 2409 sections 5 and 5.4, both roles.

Design note
-----------
::

    Initiator                                      Responder
    HDR, SA, KE, Ni, IDii [VID]       (AM1) -->            R_EXPECT_AM1 -> R_EXPECT_AM3
    I_EXPECT_AM2   <-- (AM2)  HDR, SA, KE, Nr, IDir, HASH_R [VID, NAT-D, NAT-D]
    HDR*, HASH_I [N(INITIAL-CONTACT), NAT-D, NAT-D] (AM3) --> verify HASH_I -> ESTABLISHED
    ESTABLISHED (after verifying HASH_R and sending AM3)

Three messages instead of six: the identities travel in the clear and the responder does
its Diffie-Hellman work (and proves knowledge of the PSK) on the very first message, which
is why Aggressive Mode is off by default and allowed only per filter
(``GenericFilter.aggressive``); it exists for load tests against legacy concentrators.
One IKE suite only: the DH group must be known before the responder answers, so the
initiator offers the suites of its IKE policy that share the first suite's group.

``TRANSITIONS`` maps (state, exchange type) to a ``transitions.Row`` like Main Mode's;
handlers are named ``_on_amN_send_amM``. The responder's AM2 is a request, retransmitted
until AM3 arrives; the initiator's AM3 is a reply, sent again when AM2 is repeated (our
AM3 was lost). NAT-T: vendor IDs in AM1/AM2, NAT-D in AM2 and AM3, and the
initiator floats to the NAT-T port for AM3 (RFC 3947 section 4). AM3 is sent encrypted
(as charon and Libreswan do) and accepted either way. HASH_I and HASH_R are the Main
Mode formulas over SAi_b and the ID bodies as sent. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from ikecore import keymat, policy, wire
from ikecore.errors import AuthenticationFailed, NoProposalChosen, PayloadMalformed
from ikecore.protocol import nat_traversal, vendor_ids
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
    check_peer_id,
    choose_ike,
    exchange,
    my_identification,
    nat_d,
    phase1_keys,
    take_ke_nonce,
)
from ikecore.protocol.services import Services
from ikecore.protocol.transitions import Row, Send, handled_by
from ikecore.sa import IsakmpSa, Phase1State

__all__ = ["TRANSITIONS", "HANDLED", "FIRST", "start_initiator", "receive", "AGGRESSIVE_MODE"]

AGGRESSIVE_MODE = wire.ExchangeType.AGGRESSIVE
P = wire.PayloadType



def _offer(sa: IsakmpSa) -> wire.SaPayload:
    """The suites of the policy that use the first suite's DH group (KE is sent now)."""
    group = sa.ike_policy.proposals[0].group
    suites = [p for p in sa.ike_policy.proposals if p.group == group]
    transforms = [p.to_transform(i + 1) for i, p in enumerate(suites)]
    return wire.SaPayload([wire.Proposal(1, wire.ProtocolId.ISAKMP, transforms)])


def start_initiator(sa: IsakmpSa, services: Services) -> bytes:
    """AM1: HDR, SA, KE, Ni, IDii plus our vendor IDs."""
    offer = _offer(sa)
    sa.sa_b = offer.body
    sa.aggressive = True
    sa.dh = services.keypair(sa.ike_policy.proposals[0].group)
    sa.g_xi = sa.dh.public
    sa.nonce_i = services.random(NONCE_SIZE)
    sa.my_id = my_identification(sa, sa.generic_filter.local_id)
    sa.state = Phase1State.I_EXPECT_AM2
    return build_plain(sa, AGGRESSIVE_MODE, [offer, wire.KePayload(sa.g_xi), wire.NoncePayload(sa.nonce_i),
                                             sa.my_id, *vendor_ids.initiator_vendor_ids(sa)])








def _on_am1_send_am2(sa: IsakmpSa, message: wire.Message, payloads: list[wire.Payload],
                     services: Services) -> bytes:
    if not sa.generic_filter.aggressive:
        raise NoProposalChosen(f"Aggressive Mode is not enabled in filter {sa.generic_filter.name!r}")
    found = required(payloads, P.SA, P.KE, P.NONCE, P.ID)
    sa_payload = found[P.SA]
    proposal, transform, chosen = choose_ike(sa_payload, sa.ike_policy)
    if chosen.auth_method != wire.AuthMethod.PRE_SHARED_KEY or sa.generic_filter.psk() is None:
        raise NoProposalChosen("only pre-shared key authentication is configured")
    peer_id = found[P.ID]
    check_peer_id(sa, peer_id)
    sa.aggressive = True
    sa.chosen = chosen
    sa.sa_b = sa_payload.body
    sa.peer_id = peer_id
    vendor_ids.record(sa, payloads)
    sa.g_xi, sa.nonce_i = take_ke_nonce(payloads)
    sa.dh = services.keypair(chosen.group)
    sa.g_xr = sa.dh.public
    g_xy = exchange(sa, sa.g_xi)
    sa.nonce_r = services.random(NONCE_SIZE)
    phase1_keys(sa, services, g_xy)
    sa.my_id = my_identification(sa, sa.generic_filter.local_id)
    hash_r = keymat.hash_r(sa.hash_name, sa.skeyids.skeyid, sa.g_xi, sa.g_xr, sa.initiator_cookie,
                           sa.responder_cookie, sa.sa_b, sa.my_id.body)
    reply = wire.SaPayload([wire.Proposal(proposal.number, proposal.protocol_id, [transform], spi=proposal.spi)],
                           doi=sa_payload.doi, situation=sa_payload.situation)
    return build_plain(sa, AGGRESSIVE_MODE, [reply, wire.KePayload(sa.g_xr), wire.NoncePayload(sa.nonce_r),
                                             sa.my_id, wire.HashPayload(hash_r),
                                             *vendor_ids.responder_vendor_ids(sa), *nat_d(sa, services)])


def _on_am2_send_am3(sa: IsakmpSa, message: wire.Message, payloads: list[wire.Payload],
                     services: Services) -> bytes:
    found = required(payloads, P.SA, P.KE, P.NONCE, P.ID, P.HASH)
    sa_payload = found[P.SA]
    if len(sa_payload.proposals) != 1 or len(sa_payload.proposals[0].transforms) != 1:
        raise NoProposalChosen("responder must choose exactly one proposal and transform")
    chosen = policy.IkeProposal.from_transform(sa_payload.proposals[0].transforms[0])
    if not any(mine.matches(chosen) for mine in sa.ike_policy.proposals) or \
            chosen.group != sa.ike_policy.proposals[0].group:
        raise NoProposalChosen(f"responder chose {chosen.name}, which we did not offer")
    sa.chosen = chosen
    sa.responder_cookie = message.responder_cookie
    vendor_ids.record(sa, payloads)
    sa.g_xr, sa.nonce_r = take_ke_nonce(payloads)
    g_xy = exchange(sa, sa.g_xr)
    phase1_keys(sa, services, g_xy)
    peer_id = found[P.ID]
    expected = keymat.hash_r(sa.hash_name, sa.skeyids.skeyid, sa.g_xi, sa.g_xr, sa.initiator_cookie,
                             sa.responder_cookie, sa.sa_b, peer_id.body)
    if not constant_time_equal(found[P.HASH].data, expected):
        raise AuthenticationFailed("HASH_R does not verify (pre-shared keys differ?)")
    check_peer_id(sa, peer_id)
    sa.peer_id = peer_id
    if sa.nat_t is not None:
        sa.nat = nat_traversal.detect(sa, sa.nat_t, payloads)
    our_nat_d = nat_d(sa, services)  # hashes of the addresses before the float
    hash_i = keymat.hash_i(sa.hash_name, sa.skeyids.skeyid, sa.g_xi, sa.g_xr, sa.initiator_cookie,
                           sa.responder_cookie, sa.sa_b, sa.my_id.body)  # type: ignore[union-attr]
    notify: list[wire.Payload] = []
    if sa.initial_contact:  # we hold no other ISAKMP SA with this peer (RFC 2407 4.6.3.3)
        notify.append(wire.NotifyPayload(wire.NotifyType.INITIAL_CONTACT, protocol_id=wire.ProtocolId.ISAKMP,
                                         spi=sa.initiator_cookie + sa.responder_cookie))
    nat_traversal.float_initiator(sa)
    return seal(sa, AGGRESSIVE_MODE, [wire.HashPayload(hash_i), *notify, *our_nat_d], 0)


def _on_am3_established(sa: IsakmpSa, message: wire.Message, payloads: list[wire.Payload],
                        services: Services) -> None:
    found = required(payloads, P.HASH)
    assert sa.peer_id is not None
    expected = keymat.hash_i(sa.hash_name, sa.skeyids.skeyid, sa.g_xi, sa.g_xr, sa.initiator_cookie,
                             sa.responder_cookie, sa.sa_b, sa.peer_id.body)
    if not constant_time_equal(found[P.HASH].data, expected):
        raise AuthenticationFailed("HASH_I does not verify (pre-shared keys differ?)")
    if sa.nat_t is not None:
        sa.nat = nat_traversal.detect(sa, sa.nat_t, payloads)
    sa.initial_contact = any(isinstance(p, wire.NotifyPayload) and p.notify_type == wire.NotifyType.INITIAL_CONTACT
                             for p in payloads)
    return None


_S = Phase1State
TRANSITIONS: dict[tuple[Phase1State, int], Row[Phase1State, Phase1Handler]] = {
    (_S.R_EXPECT_AM1, AGGRESSIVE_MODE): Row(_on_am1_send_am2, _S.R_EXPECT_AM3, (P.SA, P.KE, P.NONCE, P.ID), 1,
                                            send=Send.REQUEST, answers_repeat=True),
    (_S.I_EXPECT_AM2, AGGRESSIVE_MODE): Row(_on_am2_send_am3, _S.ESTABLISHED, (P.SA, P.KE, P.NONCE, P.ID, P.HASH), 2,
                                            send=Send.REPLY, answers_repeat=True),
    (_S.R_EXPECT_AM3, AGGRESSIVE_MODE): Row(_on_am3_established, _S.ESTABLISHED, (P.HASH,), 3,
                                            # AM3 ends the exchange and asks for nothing: a repeat of it
                                            # (the initiator answering our retransmitted AM2) is ignored.
                                            # Answering it with AM2 would make the initiator send AM3
                                            # again, and so on until the negotiation timeout.
                                            send=Send.NOTHING, answers_repeat=False, encrypted=True),
}
#: The row that handled message 1: how the responder answers it and a repeat of it.
FIRST = TRANSITIONS[(Phase1State.R_EXPECT_AM1, AGGRESSIVE_MODE)]
#: ``(role, state) -> the row that led there``: whether a repeat of the last message is answered.
HANDLED = handled_by(TRANSITIONS)


def receive(sa: IsakmpSa, message: wire.Message, services: Services) -> bytes | None:
    """Process one Aggressive Mode message for ``sa``; return the reply datagram, if any.

    AM1 and AM2 must be plain; AM3 may be encrypted (committing the IV only when the
    message is accepted) or plain. On any error the SA is unchanged.

    Raises:
        RemoteProtocolError: the message is not acceptable now (the engine counts it).
    """
    row = TRANSITIONS.get((sa.state, message.exchange_type))
    if row is None:
        raise PayloadMalformed(f"unexpected Aggressive Mode message in state {sa.state.value}",
                               notify_type=wire.NotifyType.INVALID_EXCHANGE_TYPE)
    next_iv = None
    if message.encrypted:
        if not row.encrypted:
            raise PayloadMalformed(f"message {row.message_number} must not be encrypted",
                                   notify_type=wire.NotifyType.INVALID_FLAGS)
        opened = open_keyed(sa, message, row.message_number, *row.required)
        payloads = opened.payloads
        next_iv = opened.next_iv
    else:
        payloads = list(message.payloads)
        required(payloads, *row.required)
    reply = run_handler(sa, 0, next_iv, lambda: row.handler(sa, message, payloads, services))
    sa.state = row.next_state
    return reply
