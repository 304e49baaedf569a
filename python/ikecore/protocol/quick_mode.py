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

__all__ = ["TRANSITIONS", "HANDLED", "Handler", "start_initiator", "receive", "QUICK_MODE", "traffic_selectors",
           "selector_texts"]

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


#: Suite objects already looked up in _SUITES, by id (kept with the object, so that a reused id
#: never passes for it): the transforms read are cached (``policy``), so the same object comes
#: back for every Quick Mode, and hashing a dataclass is Python code. Bounded, cleared when full.
_SHARED_BY_ID: dict[int, tuple[policy.EspProposal, policy.EspProposal]] = {}


def _shared(chosen: policy.EspProposal) -> policy.EspProposal:
    known = _SHARED_BY_ID.get(id(chosen))
    if known is not None and known[0] is chosen:
        return known[1]
    # the types too: an int and its IntEnum are equal, but print differently
    shared = interned(_SUITES, (chosen, type(chosen.transform_id), type(chosen.auth_algorithm)), chosen, 1024)
    if len(_SHARED_BY_ID) >= 1024:
        _SHARED_BY_ID.clear()
    _SHARED_BY_ID[id(chosen)] = (chosen, shared)
    return shared


#: What ``_keys`` reads of a (shared, immutable) suite: (encryption key bytes, integrity key
#: bytes, encryption name, integrity name), by id as _SHARED_BY_ID.
_KEY_FACTS: dict[int, tuple[policy.EspProposal, int, int, str, str]] = {}


def _key_facts(chosen: policy.EspProposal) -> tuple[policy.EspProposal, int, int, str, str]:
    known = _KEY_FACTS.get(id(chosen))
    if known is None or known[0] is not chosen:
        if len(_KEY_FACTS) >= 1024:
            _KEY_FACTS.clear()
        known = _KEY_FACTS[id(chosen)] = (chosen, chosen.encryption_key_bytes, chosen.integrity_key_bytes,
                                          chosen.encryption_name, chosen.integrity_name)
    return known


def _to_id(selector: policy.TrafficSelector) -> wire.IdPayload:
    """``selector.to_id()``, with an IPv4 host (the usual selector: an IKE address) packed
    without parsing it into network objects."""
    if selector.network.endswith("/32") and ":" not in selector.network:
        return wire.IdPayload(int(wire.IdType.IPV4_ADDR), keymat.packed_address(selector.network[:-3]),
                              protocol_id=selector.protocol, port=selector.port)
    return selector.to_id()


def _network_id(network: str) -> wire.IdPayload:
    """``_to_id(TrafficSelector(network))`` (no protocol, no port), an IPv4 host without
    making the selector."""
    if network.endswith("/32") and ":" not in network:
        return wire.IdPayload(_ID_IPV4_ADDR, keymat.packed_address(network[:-3]))
    return _to_id(policy.TrafficSelector(network))


def selector_texts(sa: IsakmpSa) -> tuple[str, str]:
    """(local, remote) networks as text: configured subnets, else the two IKE addresses
    (what ``str`` gives of ``traffic_selectors``, which carry no protocol or port)."""
    flt = sa.generic_filter
    local = flt.local_ts
    if not local:  # a gateway's own address: one string for all its SAs, not one each
        address = sa.local[0]
        local = _LOCAL_HOSTS.get(address) or interned(_LOCAL_HOSTS, address, _host(address), 64)
    return local, flt.remote_ts or _host(sa.remote[0])


#: our own addresses as host CIDR text (a load generator has one per peer: bounded)
_LOCAL_HOSTS: dict[str, str] = {}


def traffic_selectors(sa: IsakmpSa) -> tuple[policy.TrafficSelector, policy.TrafficSelector]:
    """(local, remote) selectors: configured subnets, else the two IKE addresses."""
    local, remote = selector_texts(sa)
    return policy.TrafficSelector(local), policy.TrafficSelector(remote)


_ID_IPV4_ADDR = int(wire.IdType.IPV4_ADDR)


def _id_text(payload: wire.IdPayload) -> str:
    """``str(TrafficSelector.from_id(payload))`` of a client ID already accepted; the usual
    one, an IPv4 host with neither protocol nor port, read without making a selector."""
    if payload.id_type == _ID_IPV4_ADDR and not payload.protocol_id and not payload.port:
        return policy.host_text(payload.data)  # the text from_id gives (one string per host)
    return str(policy.TrafficSelector.from_id(payload))


def start_initiator(sa: IsakmpSa, qm: QuickModeExchange, services: QuickModeServices) -> bytes:
    """QM1: HASH(1), SA (our ESP suites, our inbound SPI), Ni, [KE], IDci, IDcr."""
    qm.nonce_i = services.random(NONCE_SIZE)
    qm.spi_in = services.get_spi(sa)
    mode = qm.esp_policy.encapsulation_mode
    if sa.encapsulated and sa.nat_t is not None:
        mode = nat_traversal.udp_mode(mode, sa.nat_t)  # RFC 3947 3/4, drafts 61443/61444
    transforms = qm.esp_policy.transforms(mode)
    payloads: list[wire.Payload] = [
        wire.SaPayload([wire.Proposal(1, wire.ProtocolId.IPSEC_ESP, transforms, spi=qm.spi_in)]),
        wire.NoncePayload(qm.nonce_i),
    ]
    group = qm.esp_policy.pfs_group
    if group:
        qm.dh = services.keypair(group)
        payloads.append(wire.KePayload(qm.dh.public))
    local, remote = selector_texts(sa)
    qm.id_ci, qm.id_cr = _network_id(local), _network_id(remote)
    payloads += [qm.id_ci, qm.id_cr]
    qm.state = Phase2State.I_EXPECT_QM2
    hash_name = sa.hash_name
    return seal_hashed(sa, QUICK_MODE, payloads, qm.message_id, lambda chain: keymat.qm_hash1(
        hash_name, sa.skeyids.skeyid_a, qm.message_id, chain))


_ID = int(P.ID)


def _client_ids(payloads: list[wire.Payload]) -> tuple[wire.IdPayload, wire.IdPayload] | None:
    ids: list[wire.IdPayload] = [p for p in payloads if p.payload_type == _ID]  # type: ignore[misc]  # IdPayload by type
    if not ids:
        return None
    if len(ids) != 2:
        raise PayloadMalformed(f"Quick Mode carries {len(ids)} ID payloads; need none or two")
    return ids[0], ids[1]


def _pfs_secret(qm: QuickModeExchange, group: int | None, ke: wire.KePayload | None,
                services: QuickModeServices, make_keypair: bool) -> bytearray | None:
    """The PFS secret from the message's (first) KE payload, if PFS was chosen."""
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


def _keys(sa: IsakmpSa, qm: QuickModeExchange, g_qm_xy: bytearray | None,
          material: tuple[bytes, bytes] | None = None) -> tuple[IpsecSaKeys, IpsecSaKeys]:
    """Both directions' keys, each in bytearrays of its own (KEYMAT itself is wiped here);
    ``material``: the (inbound, outbound) KEYMAT when it was computed already."""
    chosen = qm.chosen
    assert chosen is not None
    _suite, split, integrity_bytes, encryption, integrity = _key_facts(chosen)
    length = split + integrity_bytes
    mode = "transport" if qm.mode in (wire.EncapsulationMode.TRANSPORT, wire.EncapsulationMode.UDP_TRANSPORT,
                                      wire.EncapsulationMode.UDP_TRANSPORT_DRAFT) else "tunnel"
    udp = qm.mode not in (wire.EncapsulationMode.TRANSPORT, wire.EncapsulationMode.TUNNEL)
    if qm.id_ci is not None and qm.id_cr is not None:  # one string each for both directions
        ci, cr = _id_text(qm.id_ci), _id_text(qm.id_cr)
        local_text, remote_text = (ci, cr) if qm.role is Role.INITIATOR else (cr, ci)
    else:
        local_text, remote_text = selector_texts(sa)
    hash_name, skeyid_d = sa.hash_name, sa.skeyids.skeyid_d

    def one(spi: bytes, source: str, destination: str, given: bytes | None) -> IpsecSaKeys:
        material = bytearray(given) if given is not None else keymat.keymat(
            hash_name, skeyid_d, wire.ProtocolId.IPSEC_ESP, spi, qm.nonce_i, qm.nonce_r, length, g_qm_xy=g_qm_xy)
        keys = IpsecSaKeys(spi=spi, protocol_id=wire.ProtocolId.IPSEC_ESP, source=source,
                           destination=destination, encryption=encryption,
                           encryption_key=material[:split], integrity=integrity,
                           integrity_key=material[split:], mode=mode, lifetime=chosen.lifetime,
                           lifetime_kilobytes=chosen.lifetime_kilobytes, local_ts=local_text,
                           remote_ts=remote_text, udp_encapsulation=udp)
        keymat.wipe(material)
        return keys

    given_in, given_out = material if material is not None and all(len(m) == length for m in material) \
        else (None, None)
    inbound = one(qm.spi_in, sa.remote[0], sa.local[0], given_in)
    outbound = one(qm.spi_out, sa.local[0], sa.remote[0], given_out)
    return inbound, outbound


def established_keys(sa: IsakmpSa, qm: QuickModeExchange,
                     material: tuple[bytes, bytes] | None = None) -> tuple[IpsecSaKeys, IpsecSaKeys]:
    """(inbound, outbound) keys of a Quick Mode without PFS whose nonces, SPIs and suite are set;
    ``material``: its (inbound, outbound) KEYMAT when computed already (the express lane)."""
    return _keys(sa, qm, None, material)


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
    if ids is None:
        if sa.generic_filter.local_ts or sa.generic_filter.remote_ts:
            raise InvalidIdInformation("no client IDs, but the filter names subnets")
        return
    local, remote = selector_texts(sa)
    try:
        (ci, ci_text), (cr, cr_text) = _selector_network(ids[0]), _selector_network(ids[1])
    except ValueError as exc:
        raise InvalidIdInformation(str(exc)) from exc
    remote_shown = remote
    if sa.nat in ("remote", "both") and not sa.generic_filter.remote_ts and _is_host(ci):
        # a peer behind a NAT names its private address (RFC 3947 section 5.2)
        remote, remote_shown = ci, ci_text
    if not (_inside(ci, remote) and _inside(cr, local)):
        raise InvalidIdInformation(f"traffic selectors {ci_text} <-> {cr_text} are outside {remote_shown} <-> {local}")


def _selector_network(payload: wire.IdPayload) -> tuple[str, str]:
    """(network, text) of ``TrafficSelector.from_id(payload)``; an IPv4 host without protocol
    or port (the usual client ID) read without making the selector. ValueError as from_id."""
    data = payload.data
    if payload.id_type == _ID_IPV4_ADDR and len(data) == 4 and not payload.protocol_id and not payload.port:
        network = policy.host_text(data)
        return network, network
    selector = policy.TrafficSelector.from_id(payload)
    return selector.network, str(selector)


def _on_qm1_send_qm2(sa: IsakmpSa, qm: QuickModeExchange, message: wire.Message, payloads: list[wire.Payload],
                     services: QuickModeServices) -> bytes:
    received, after = leading_hash(payloads)
    hash_name, skeyid_a = sa.hash_name, sa.skeyids.skeyid_a
    expected = keymat.qm_hash1(hash_name, skeyid_a, qm.message_id, after)
    if not constant_time_equal(received, expected):
        raise AuthenticationFailed("Quick Mode HASH(1) does not verify")
    found = required(payloads, P.SA, P.NONCE)  # receive checked them: the first of each type
    offered_proposals = found[P.SA].proposals
    if offered_proposals:
        qm.spi_out = bytes(offered_proposals[0].spi)  # named in a refusal's notify (RFC 2408 3.14)
    services.admit_quick_mode(sa)  # the limits, before any SPI or Diffie-Hellman work
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
    g_qm_xy = qm.g_qm_xy = _pfs_secret(qm, chosen.pfs_group, found.get(P.KE), services, make_keypair=True)
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
    if g_qm_xy is None:  # no PFS: offers of this shape get the same answer
        services.esp_answered(sa, qm, found[P.SA].body, reply[0].body, notify.data if notify is not None else None)
    return seal_hashed(sa, QUICK_MODE, reply, qm.message_id, lambda chain: keymat.qm_hash2(
        hash_name, skeyid_a, qm.message_id, nonce_i, chain))


def _on_qm2_send_qm3(sa: IsakmpSa, qm: QuickModeExchange, message: wire.Message, payloads: list[wire.Payload],
                     services: QuickModeServices) -> bytes:
    received, after = leading_hash(payloads)
    hash_name, skeyid_a = sa.hash_name, sa.skeyids.skeyid_a
    expected = keymat.qm_hash2(hash_name, skeyid_a, qm.message_id, qm.nonce_i, after)
    if not constant_time_equal(received, expected):
        raise AuthenticationFailed("Quick Mode HASH(2) does not verify")
    found = required(payloads, P.SA, P.NONCE)
    proposals = found[P.SA].proposals
    transforms = proposals[0].transforms if len(proposals) == 1 else []
    if len(transforms) != 1:
        raise NoProposalChosen("responder must choose exactly one ESP proposal and transform")
    proposal = proposals[0]
    if proposal.protocol_id != wire.ProtocolId.IPSEC_ESP or len(proposal.spi) != 4:
        raise NoProposalChosen("responder's choice is not ESP with a 4-byte SPI")
    chosen, mode = policy.EspProposal.from_transform(transforms[0])
    chosen = _shared(chosen)
    if not any(mine.matches(chosen) for mine in qm.esp_policy.proposals):
        raise NoProposalChosen(f"responder chose ESP {chosen.name}, which we did not offer")
    qm.nonce_r = found[P.NONCE].data
    if not nonce_ok(qm.nonce_r):
        raise PayloadMalformed("Quick Mode nonce must be 8-256 bytes")
    ids = _client_ids(payloads)
    if ids is not None and (ids[0].body != qm.id_ci.body or ids[1].body != qm.id_cr.body):  # type: ignore[union-attr]
        raise InvalidIdInformation("responder changed the client IDs")
    limits = lifetime.read_responder_lifetime(payloads) if P.N in found else None
    if limits is not None:
        chosen = lifetime.apply_responder_lifetime(chosen, limits)
        qm.lifetime_notify = limits
    qm.chosen, qm.mode, qm.spi_out = chosen, mode, proposal.spi
    g_qm_xy = _pfs_secret(qm, chosen.pfs_group, found.get(P.KE), services, make_keypair=False)
    try:
        inbound, outbound = _keys(sa, qm, g_qm_xy)
    finally:
        keymat.wipe(g_qm_xy)
    services.install(sa, qm, inbound, outbound)
    hash3 = keymat.qm_hash3(hash_name, skeyid_a, qm.message_id, qm.nonce_i, qm.nonce_r)
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
    payloads, next_iv = open_encrypted(sa, message)
    required(payloads, *row.required)
    reply = run_handler(sa, qm.message_id, next_iv, row.handler, sa, qm, message, payloads, services)
    qm.state = row.next_state
    return reply
