"""Quick Mode: RFC 2409 section 5.5, both roles, with and without PFS.

Design note
-----------
::

    Initiator                                          Responder
    HDR*, HASH(1), SA, Ni [, KE] [, IDci, IDcr]  (QM1) -->   R_EXPECT_QM1 -> R_EXPECT_QM3
    I_EXPECT_QM2       <-- (QM2)  HDR*, HASH(2), SA, Nr [, KE] [, IDci, IDcr]
    HDR*, HASH(3)                                (QM3) -->   install SAs -> ESTABLISHED
    install SAs -> ESTABLISHED

Every Quick Mode has its own Message ID, its own IV chain (derived from the last phase 1
CBC block) and its own ``QuickModeExchange`` record, so many run at once on one ISAKMP SA.
``TRANSITIONS`` maps (state, exchange type) to a ``transitions.Row``: the handler, the next
state, the payloads required after the HASH payload, and how the engine sends the answer:
QM2 is a request, retransmitted until QM3 arrives; QM3 is a reply, sent again when QM2 is
repeated (our QM3 was lost). Hashes (RFC 2409 5.5):
``HASH(1) = prf(SKEYID_a, M-ID | <payloads after HASH>)``,
``HASH(2) = prf(SKEYID_a, M-ID | Ni_b | <payloads after HASH>)``,
``HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)``; KEYMAT per direction with the SPI of
the receiving side. The client IDs are traffic selectors; the responder returns them as
received (IKEv1 has no narrowing). Nothing here does I/O or reads a clock: SPIs and SA
installation go through ``QuickModeServices`` (the engine, which talks to the IPsec driver).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable

from ikecore import keymat, policy, wire
from ikecore.driver import IpsecSaKeys
from ikecore.errors import (
    AuthenticationFailed,
    InvalidHashInformation,
    InvalidIdInformation,
    InvalidPayloadType,
    NoProposalChosen,
    PayloadMalformed,
)
from ikecore.protocol import lifetime, nat_traversal
from ikecore.protocol.messages import (
    NONCE_SIZE,
    constant_time_equal,
    interned,
    leading_hash,
    nonce_ok,
    open_encrypted,
    required,
    run_handler,
    seal,
    seal_hashed,
)
from ikecore.protocol.services import QuickModeServices
from ikecore.protocol.transitions import Row, Send, handled_by
from ikecore.sa import IsakmpSa, Phase2State, QuickModeExchange, Role

__all__ = ["TRANSITIONS", "HANDLED", "Handler", "start_initiator", "receive", "QUICK_MODE", "traffic_selectors"]

QUICK_MODE = wire.ExchangeType.QUICK_MODE
P = wire.PayloadType

#: ``(sa, exchange, message, its payloads, services) -> the next message``, None when none follows.
Handler = Callable[[IsakmpSa, QuickModeExchange, wire.Message, list[wire.Payload], QuickModeServices],
                   bytes | None]


def _host(address: str) -> str:
    """An IKE address as host CIDR text. IPv4 without network objects and without a cache
    (a cache entry per peer was about 150 bytes of a gateway's memory per SA): a dotted
    quad that packs is already in the canonical form."""
    if len(keymat.packed_address(address)) == 4:
        return address + "/32"
    return _host6(address)


@functools.lru_cache(maxsize=4096)  # pure; parsing addresses was 15% of a load test's CPU
def _host6(address: str) -> str:
    return str(ipaddress.ip_network(address))


#: The ESP suites chosen so far, one object each: every IPsec SA of a suite refers to it
#: (an EspProposal per SA was 80 bytes of a gateway's 100,000). Bounded.
_SUITES: dict[tuple[policy.EspProposal, type, type], policy.EspProposal] = {}


def _shared(chosen: policy.EspProposal) -> policy.EspProposal:
    # the types too: an int and its IntEnum are equal, but print differently
    return interned(_SUITES, (chosen, type(chosen.transform_id), type(chosen.auth_algorithm)), chosen, 1024)


def _to_id(selector: policy.TrafficSelector) -> wire.IdPayload:
    """``selector.to_id()``, with an IPv4 host (the usual selector: an IKE address) packed
    without parsing it into network objects."""
    if selector.network.endswith("/32") and ":" not in selector.network:
        return wire.IdPayload(int(wire.IdType.IPV4_ADDR), keymat.packed_address(selector.network[:-3]),
                              protocol_id=selector.protocol, port=selector.port)
    return selector.to_id()


def traffic_selectors(sa: IsakmpSa) -> tuple[policy.TrafficSelector, policy.TrafficSelector]:
    """(local, remote) selectors: configured subnets, else the two IKE addresses."""
    flt = sa.generic_filter
    local = policy.TrafficSelector(flt.local_ts or _host(sa.local[0]))
    remote = policy.TrafficSelector(flt.remote_ts or _host(sa.remote[0]))
    return local, remote


def start_initiator(sa: IsakmpSa, qm: QuickModeExchange, services: QuickModeServices) -> bytes:
    """QM1: HASH(1), SA (our ESP suites, our inbound SPI), Ni, [KE], IDci, IDcr."""
    qm.nonce_i = services.random(NONCE_SIZE)
    qm.spi_in = services.get_spi(sa)
    mode = qm.esp_policy.encapsulation_mode
    if sa.encapsulated and sa.nat_t is not None:
        mode = nat_traversal.udp_mode(mode, sa.nat_t)  # RFC 3947 3/4, drafts 61443/61444
    transforms = [p.to_transform(i + 1, mode) for i, p in enumerate(qm.esp_policy.proposals)]
    payloads: list[wire.Payload] = [
        wire.SaPayload([wire.Proposal(1, wire.ProtocolId.IPSEC_ESP, transforms, spi=qm.spi_in)]),
        wire.NoncePayload(qm.nonce_i),
    ]
    group = qm.esp_policy.pfs_group
    if group:
        qm.dh = services.keypair(group)
        payloads.append(wire.KePayload(qm.dh.public))
    local, remote = traffic_selectors(sa)
    qm.id_ci, qm.id_cr = _to_id(local), _to_id(remote)
    payloads += [qm.id_ci, qm.id_cr]
    qm.state = Phase2State.I_EXPECT_QM2
    hash_name = sa.hash_name
    return seal_hashed(sa, QUICK_MODE, payloads, qm.message_id, lambda chain: keymat.qm_hash1(
        hash_name, sa.skeyids.skeyid_a, qm.message_id, chain))


def _client_ids(payloads: list[wire.Payload]) -> tuple[wire.IdPayload, wire.IdPayload] | None:
    ids = [p for p in payloads if isinstance(p, wire.IdPayload)]
    if not ids:
        return None
    if len(ids) != 2:
        raise PayloadMalformed(f"Quick Mode carries {len(ids)} ID payloads; need none or two")
    return ids[0], ids[1]


def _pfs_secret(qm: QuickModeExchange, group: int | None, payloads: list[wire.Payload],
                services: QuickModeServices, make_keypair: bool) -> bytearray | None:
    ke = next((p for p in payloads if isinstance(p, wire.KePayload)), None)
    if not group:
        if ke is not None:
            raise InvalidPayloadType("KE payload in a Quick Mode without PFS")
        return None
    if ke is None:
        raise NoProposalChosen("PFS group chosen but no KE payload")
    if make_keypair:  # the responder: its public value goes into QM2, then the pair is dropped
        qm.dh = services.keypair(group)
        return bytearray(qm.dh.exchange(ke.data))
    pair, qm.dh = qm.dh, None  # the initiator's: single use, gone whether the exchange works or not
    assert pair is not None
    return bytearray(pair.exchange(ke.data))


def _keys(sa: IsakmpSa, qm: QuickModeExchange, g_qm_xy: bytearray | None) -> tuple[IpsecSaKeys, IpsecSaKeys]:
    """Both directions' keys, each in bytearrays of its own (KEYMAT itself is wiped here)."""
    chosen = qm.chosen
    assert chosen is not None
    length = chosen.encryption_key_bytes + chosen.integrity_key_bytes
    split = chosen.encryption_key_bytes
    mode = "transport" if qm.mode in (wire.EncapsulationMode.TRANSPORT, wire.EncapsulationMode.UDP_TRANSPORT,
                                      wire.EncapsulationMode.UDP_TRANSPORT_DRAFT) else "tunnel"
    udp = qm.mode not in (wire.EncapsulationMode.TRANSPORT, wire.EncapsulationMode.TUNNEL)
    local_ts, remote_ts = traffic_selectors(sa)
    if qm.id_ci is not None and qm.id_cr is not None:
        ci = policy.TrafficSelector.from_id(qm.id_ci)
        cr = policy.TrafficSelector.from_id(qm.id_cr)
        local_ts, remote_ts = (ci, cr) if qm.role is Role.INITIATOR else (cr, ci)
    local_text, remote_text = str(local_ts), str(remote_ts)  # one string each for both directions

    def one(spi: bytes, source: str, destination: str) -> IpsecSaKeys:
        material = keymat.keymat(sa.hash_name, sa.skeyids.skeyid_d, wire.ProtocolId.IPSEC_ESP, spi,
                                 qm.nonce_i, qm.nonce_r, length, g_qm_xy=g_qm_xy)
        keys = IpsecSaKeys(spi=spi, protocol_id=wire.ProtocolId.IPSEC_ESP, source=source,
                           destination=destination, encryption=chosen.encryption_name,
                           encryption_key=material[:split], integrity=chosen.integrity_name,
                           integrity_key=material[split:], mode=mode, lifetime=chosen.lifetime,
                           lifetime_kilobytes=chosen.lifetime_kilobytes, local_ts=local_text,
                           remote_ts=remote_text, udp_encapsulation=udp)
        keymat.wipe(material)
        return keys

    inbound = one(qm.spi_in, sa.remote[0], sa.local[0])
    outbound = one(qm.spi_out, sa.local[0], sa.remote[0])
    return inbound, outbound


def _inside(network: str, allowed: str) -> bool:
    # both normalised CIDR text: the usual host-to-host case, never worth a cache entry
    return network == allowed or _inside_subnet(network, allowed)


@functools.lru_cache(maxsize=4096)
def _inside_subnet(network: str, allowed: str) -> bool:
    inner, outer = ipaddress.ip_network(network), ipaddress.ip_network(allowed)
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def _is_host(network: str) -> bool:
    net = ipaddress.ip_network(network)
    return net.prefixlen == net.max_prefixlen


def _check_selectors(sa: IsakmpSa, ids: tuple[wire.IdPayload, wire.IdPayload] | None) -> None:
    """The initiator's IDci must be the peer's side and IDcr ours, per our filter."""
    local, remote = traffic_selectors(sa)
    if ids is None:
        if sa.generic_filter.local_ts or sa.generic_filter.remote_ts:
            raise InvalidIdInformation("no client IDs, but the filter names subnets")
        return
    try:
        ci, cr = policy.TrafficSelector.from_id(ids[0]), policy.TrafficSelector.from_id(ids[1])
    except ValueError as exc:
        raise InvalidIdInformation(str(exc)) from exc
    if sa.nat in ("remote", "both") and not sa.generic_filter.remote_ts and _is_host(ci.network):
        remote = ci  # a peer behind a NAT names its private address (RFC 3947 section 5.2)
    if not (_inside(ci.network, remote.network) and _inside(cr.network, local.network)):
        raise InvalidIdInformation(f"traffic selectors {ci} <-> {cr} are outside {remote} <-> {local}")


def _on_qm1_send_qm2(sa: IsakmpSa, qm: QuickModeExchange, message: wire.Message, payloads: list[wire.Payload],
                     services: QuickModeServices) -> bytes:
    received, after = leading_hash(payloads)
    expected = keymat.qm_hash1(sa.hash_name, sa.skeyids.skeyid_a, qm.message_id, after)
    if not constant_time_equal(received, expected):
        raise AuthenticationFailed("Quick Mode HASH(1) does not verify")
    offer = next((p for p in payloads if isinstance(p, wire.SaPayload)), None)
    if offer is not None and offer.proposals:
        qm.spi_out = bytes(offer.proposals[0].spi)  # named in a refusal's notify (RFC 2408 3.14)
    services.admit_quick_mode(sa)  # the limits, before any SPI or Diffie-Hellman work
    found = required(payloads, P.SA, P.NONCE)
    qm.nonce_i = found[P.NONCE].data
    if not nonce_ok(qm.nonce_i):
        raise PayloadMalformed("Quick Mode nonce must be 8-256 bytes")
    proposal, transform, chosen, mode = policy.choose_esp_transform(found[P.SA], qm.esp_policy)
    chosen = _shared(chosen)
    ids = _client_ids(payloads)
    _check_selectors(sa, ids)
    if ids is not None:
        qm.id_ci, qm.id_cr = ids
    qm.chosen, qm.mode, qm.spi_out = chosen, mode, proposal.spi
    g_qm_xy = qm.g_qm_xy = _pfs_secret(qm, chosen.pfs_group, payloads, services, make_keypair=True)
    qm.nonce_r = services.random(NONCE_SIZE)
    qm.spi_in = services.get_spi(sa)
    reply: list[wire.Payload] = [
        wire.SaPayload([wire.Proposal(proposal.number, proposal.protocol_id, [transform], spi=qm.spi_in)]),
        wire.NoncePayload(qm.nonce_r),
    ]
    if g_qm_xy is not None and qm.dh is not None:
        reply.append(wire.KePayload(qm.dh.public))
        qm.dh = None
    if ids is not None:
        reply += list(ids)
    offered, _mode = policy.EspProposal.from_transform(transform)
    notify = lifetime.responder_lifetime_notify(offered, chosen, proposal.spi)
    if notify is not None:  # RFC 2407 4.6.3.1: our limits are shorter than offered
        reply.append(notify)
        qm.lifetime_notify = (chosen.lifetime, chosen.lifetime_kilobytes)
    nonce_i = qm.nonce_i
    return seal_hashed(sa, QUICK_MODE, reply, qm.message_id, lambda chain: keymat.qm_hash2(
        sa.hash_name, sa.skeyids.skeyid_a, qm.message_id, nonce_i, chain))


def _on_qm2_send_qm3(sa: IsakmpSa, qm: QuickModeExchange, message: wire.Message, payloads: list[wire.Payload],
                     services: QuickModeServices) -> bytes:
    received, after = leading_hash(payloads)
    expected = keymat.qm_hash2(sa.hash_name, sa.skeyids.skeyid_a, qm.message_id, qm.nonce_i, after)
    if not constant_time_equal(received, expected):
        raise AuthenticationFailed("Quick Mode HASH(2) does not verify")
    found = required(payloads, P.SA, P.NONCE)
    sa_payload = found[P.SA]
    if len(sa_payload.proposals) != 1 or len(sa_payload.proposals[0].transforms) != 1:
        raise NoProposalChosen("responder must choose exactly one ESP proposal and transform")
    proposal = sa_payload.proposals[0]
    if proposal.protocol_id != wire.ProtocolId.IPSEC_ESP or len(proposal.spi) != 4:
        raise NoProposalChosen("responder's choice is not ESP with a 4-byte SPI")
    chosen, mode = policy.EspProposal.from_transform(proposal.transforms[0])
    chosen = _shared(chosen)
    if not any(mine.matches(chosen) for mine in qm.esp_policy.proposals):
        raise NoProposalChosen(f"responder chose ESP {chosen.name}, which we did not offer")
    qm.nonce_r = found[P.NONCE].data
    if not nonce_ok(qm.nonce_r):
        raise PayloadMalformed("Quick Mode nonce must be 8-256 bytes")
    ids = _client_ids(payloads)
    if ids is not None and (ids[0].body != qm.id_ci.body or ids[1].body != qm.id_cr.body):  # type: ignore[union-attr]
        raise InvalidIdInformation("responder changed the client IDs")
    limits = lifetime.read_responder_lifetime(payloads)
    if limits is not None:
        chosen = lifetime.apply_responder_lifetime(chosen, limits)
        qm.lifetime_notify = limits
    qm.chosen, qm.mode, qm.spi_out = chosen, mode, proposal.spi
    g_qm_xy = _pfs_secret(qm, chosen.pfs_group, payloads, services, make_keypair=False)
    try:
        inbound, outbound = _keys(sa, qm, g_qm_xy)
    finally:
        keymat.wipe(g_qm_xy)
    services.install(sa, qm, inbound, outbound)
    hash3 = keymat.qm_hash3(sa.hash_name, sa.skeyids.skeyid_a, qm.message_id, qm.nonce_i, qm.nonce_r)
    return seal(sa, QUICK_MODE, [wire.HashPayload(hash3)], qm.message_id)


def _on_qm3_established(sa: IsakmpSa, qm: QuickModeExchange, message: wire.Message, payloads: list[wire.Payload],
                        services: QuickModeServices) -> None:
    first = payloads[0] if payloads else None
    if not isinstance(first, wire.HashPayload):
        raise InvalidPayloadType("QM3 must carry HASH(3)")
    expected = keymat.qm_hash3(sa.hash_name, sa.skeyids.skeyid_a, qm.message_id, qm.nonce_i, qm.nonce_r)
    if not constant_time_equal(first.data, expected):
        raise InvalidHashInformation("Quick Mode HASH(3) does not verify")
    inbound, outbound = _keys(sa, qm, qm.g_qm_xy)
    keymat.wipe(qm.g_qm_xy)
    qm.g_qm_xy = None
    services.install(sa, qm, inbound, outbound)
    return None


_S = Phase2State
TRANSITIONS: dict[tuple[Phase2State, int], Row[Phase2State, Handler]] = {
    (_S.R_EXPECT_QM1, QUICK_MODE): Row(_on_qm1_send_qm2, _S.R_EXPECT_QM3, (P.HASH, P.SA, P.NONCE), 1,
                                       send=Send.REQUEST, answers_repeat=True, encrypted=True),
    (_S.I_EXPECT_QM2, QUICK_MODE): Row(_on_qm2_send_qm3, _S.ESTABLISHED, (P.HASH, P.SA, P.NONCE), 2,
                                       send=Send.REPLY, answers_repeat=True, encrypted=True),
    (_S.R_EXPECT_QM3, QUICK_MODE): Row(_on_qm3_established, _S.ESTABLISHED, (P.HASH,), 3,
                                       send=Send.NOTHING, answers_repeat=False, encrypted=True),
}
#: ``(role, state) -> the row that led there``: whether a repeat of the last message is answered.
HANDLED = handled_by(TRANSITIONS)


def receive(sa: IsakmpSa, qm: QuickModeExchange, message: wire.Message, services: QuickModeServices) -> bytes | None:
    """Process one Quick Mode message of exchange ``qm``; return the reply, if any.

    The IV of the Message ID is committed only when the message is accepted.

    Raises:
        RemoteProtocolError: the message is not acceptable (nothing changed).
    """
    row = TRANSITIONS.get((qm.state, message.exchange_type))
    if row is None:
        raise PayloadMalformed(f"unexpected Quick Mode message in state {qm.state.value}",
                               notify_type=wire.NotifyType.INVALID_EXCHANGE_TYPE)
    opened = open_encrypted(sa, message)
    required(opened.payloads, *row.required)
    reply = run_handler(sa, qm.message_id, opened.next_iv,
                        lambda: row.handler(sa, qm, message, opened.payloads, services))
    qm.state = row.next_state
    return reply
