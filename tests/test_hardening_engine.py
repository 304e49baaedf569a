"""Engine hardening: replays never move an SA, limits past the half-open stage, strict
generic headers, keys zeroed when SAs end, no Aggressive Mode ping-pong.

The truth is on the wire and in the engines' own state: two (or more) sans-IO engines
with a fake clock exchange real datagrams; what a replay or an over-limit request changes
is read back from the SA (its endpoint, its IPsec SAs), from the datagrams the engine
queued (where they go, with which Notify) and from the monitor's counters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from helpers import INITIATOR, RESPONDER, Link, make_config, seeded_random
from ikecore import events as ev
from ikecore import keymat, wire
from ikecore.config import Config, FloodLimits, Limits, config_from_dict
from ikecore.driver import MemoryDriver
from ikecore.engine.admission import SaLimits
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
from ikecore.monitor.counters import Monitor, Statistic
from ikecore.protocol import messages
from ikecore.sa import Phase1State, Phase2State
from test_engine import _established, _keys_agree

MM = wire.ExchangeType.IDENTITY_PROTECTION
QM = wire.ExchangeType.QUICK_MODE
AM = wire.ExchangeType.AGGRESSIVE
INFO = wire.ExchangeType.INFORMATIONAL
MARKER = wire.NON_ESP_MARKER
ATTACKER = (INITIATOR[0], 4501)          # the peer's address, another source port
NAT_T_LOCAL = (RESPONDER[0], 4500)


def _monitor(events: list[ev.Event]) -> Monitor:
    monitor = Monitor()
    for event in events:
        monitor.observe(event)
    return monitor


def _sent(link: Link, side: str, exchange_type: int) -> list[bytes]:
    return [d for s, d in link.sent if s == side and d[18] == exchange_type]


def _endpoint(sa: Any) -> tuple[Any, ...]:
    return sa.remote, sa.local, sa.encapsulated, sa.non_esp_marker


def _with_limits(config: Config, **limits: int) -> Config:
    return dataclasses.replace(config, limits=Limits(**limits))


def _notifies(datagrams: list[tuple[bytes, Any, Any]]) -> list[bytes]:
    return [d for d, _r, _l in datagrams if d[18] == INFO]


# --- an SA's endpoint moves only on a new, authenticated message (RFC 3947 section 4) ------------


def _nat_t_link() -> tuple[Link, Any]:
    """MM + QM with NAT-T agreed (no NAT on the path): the responder's SA is on port 500."""
    link = Link()
    link.connect()
    _established(link)
    (r_sa,) = link.responder.sas()
    assert r_sa.nat_t is not None and _endpoint(r_sa) == (INITIATOR, RESPONDER, False, False)
    return link, r_sa


def _quick_mode_from_the_peer(link: Link) -> list[tuple[Any, Any, bool]]:
    """One more Quick Mode started by the legitimate peer; returns where the responder's
    datagrams went: (remote, local, with marker)."""
    link.initiator.initiate_quick_mode(link.initiator.sas()[0].handle, link.now)
    where = []
    for _ in range(10):
        batch = link.collect()
        if not batch:
            break
        for side, datagram in batch:
            if side == "responder":
                where.append((datagram[1], datagram[2], datagram[0][:4] == MARKER))
            link.deliver(side, datagram)
    link.drain_events()
    return where


@pytest.mark.parametrize("when", ["just established", "quick mode forgotten"])
def test_replayed_quick_mode_3_from_another_port_with_the_marker_does_not_move_the_sa(when: str) -> None:
    link, r_sa = _nat_t_link()
    qm3 = _sent(link, "initiator", QM)[1]
    if when == "quick mode forgotten":
        link.advance(link.responder_config.timing.negotiation_timeout + 1)
        assert not r_sa.quick_modes
    before = _endpoint(r_sa)
    link.responder.receive_datagram(MARKER + qm3, ATTACKER, NAT_T_LOCAL, link.now)
    assert link.responder.datagrams_to_send() == []
    assert _endpoint(r_sa) == before
    (replay,) = link.of("responder", ev.ReplayDropped)
    assert replay.handle == r_sa.handle and replay.message_id == int.from_bytes(qm3[20:24], "big")
    monitor = _monitor(link.events["responder"])
    assert monitor.extended["replays_dropped"] == monitor.extended["replays:endpoint"] == 1
    assert replay.remote == ATTACKER
    # the legitimate peer's next Quick Mode: answered where it really is, and it succeeds
    where = _quick_mode_from_the_peer(link)
    assert where and all(w == (INITIATOR, RESPONDER, False) for w in where)
    assert len(link.of("responder", ev.Phase2Established)) == 2
    assert len(link.of("initiator", ev.Phase2Established)) == 2
    _keys_agree(link)
    assert _endpoint(r_sa) == before


def test_replayed_quick_mode_1_and_informational_from_another_port_are_replays() -> None:
    link, r_sa = _nat_t_link()
    qm1 = _sent(link, "initiator", QM)[0]
    isa = link.initiator.sas()[0]
    link.initiator._notify_protected(isa, wire.NotifyType.R_U_THERE)   # an Informational the responder takes
    (dpd, remote, local), = link.initiator.datagrams_to_send()
    link.responder.receive_datagram(dpd, local, remote, link.now)
    assert len(link.responder.datagrams_to_send()) == 1                # its R-U-THERE-ACK
    before = _endpoint(r_sa)
    for data in (qm1, dpd):
        link.responder.receive_datagram(MARKER + data, ATTACKER, NAT_T_LOCAL, link.now)
    assert link.responder.datagrams_to_send() == []
    assert _endpoint(r_sa) == before
    assert [e.reason for e in link.of("responder", ev.ReplayDropped)] == ["endpoint", "endpoint"]


def test_quick_mode_1_failing_authentication_from_another_port_does_not_move_the_sa() -> None:
    """A message that decrypts to a valid chain but whose HASH(1) is wrong is not authentic:
    the SA must not follow it, though the refusal itself is answered."""
    link, r_sa = _nat_t_link()
    i_sa = link.initiator.sas()[0]
    esp = link.initiator_config.esp_policies["default"]
    offer = wire.SaPayload([wire.Proposal(1, wire.ProtocolId.IPSEC_ESP,
                                          [p.to_transform(i + 1, wire.EncapsulationMode.TUNNEL)
                                           for i, p in enumerate(esp.proposals)], spi=b"\x01\x02\x03\x04")])
    forged = messages.seal(i_sa, QM, [wire.HashPayload(bytes(32)), offer, wire.NoncePayload(b"n" * 16)], 0x5EED)
    before = _endpoint(r_sa)
    link.responder.receive_datagram(MARKER + forged, ATTACKER, NAT_T_LOCAL, link.now)
    link.responder.datagrams_to_send()
    assert _endpoint(r_sa) == before
    assert not link.of("responder", ev.Phase2Started)[1:]
    where = _quick_mode_from_the_peer(link)
    assert where and all(w == (INITIATOR, RESPONDER, False) for w in where)
    assert len(link.of("initiator", ev.Phase2Established)) == 2


def test_a_new_authenticated_message_from_a_new_port_still_floats_the_sa() -> None:
    link, r_sa = _nat_t_link()
    handle = link.initiator.sas()[0].handle
    link.initiator.initiate_quick_mode(handle, link.now)
    (qm1, _remote, _local), = link.initiator.datagrams_to_send()
    link.responder.receive_datagram(MARKER + qm1, ATTACKER, NAT_T_LOCAL, link.now)   # the peer's NAT moved it
    assert _endpoint(r_sa) == (ATTACKER, NAT_T_LOCAL, True, True)
    (qm2, remote, local), = link.responder.datagrams_to_send()
    assert (remote, local, qm2[:4]) == (ATTACKER, NAT_T_LOCAL, MARKER)
    link.initiator.receive_datagram(qm2, local, remote, link.now)
    (qm3, _remote, _local), = link.initiator.datagrams_to_send()
    link.responder.receive_datagram(qm3, ATTACKER, NAT_T_LOCAL, link.now)
    assert len(link.of("responder", ev.Phase2Established)) == 2
    assert not link.of("responder", ev.ReplayDropped)


def test_replayed_quick_mode_1_is_counted_as_a_replay_not_an_invalid_exchange_type() -> None:
    link = Link()
    link.connect()
    qm1 = _sent(link, "initiator", QM)[0]
    r_sa = link.responder.sas()[0]
    link.responder.receive_datagram(qm1, INITIATOR, RESPONDER, link.now)   # its exchange just finished
    assert link.responder.datagrams_to_send() == []
    (replay,) = link.of("responder", ev.ReplayDropped)
    assert (replay.message_id, replay.reason) == (int.from_bytes(qm1[20:24], "big"), "message_id")
    monitor = _monitor(link.events["responder"])
    assert monitor.extended["replays:message_id"] == 1
    assert monitor.extended["invalid_packets:invalid_message_id"] == 1
    assert monitor.extended["invalid_packets:invalid_exchange_type"] == 0
    assert len(r_sa.ipsec_sas) == 1 and r_sa.quick_modes[replay.message_id].state is Phase2State.ESTABLISHED


# --- RFC 2408 section 5.2: generic payload headers ------------------------------------------------


def _mm1(extra: wire.Payload, reserved: int) -> bytes:
    offer = make_config().ike_policies["default"].offer()
    data = bytearray(wire.Message(b"\x42" * 8, bytes(8), MM, [offer, extra]).encode())
    data[28 + len(offer.raw) + 1] = reserved
    return bytes(data)


@pytest.mark.parametrize("extra, reserved, notify", [
    (wire.UnknownPayload(50, b"junk"), 7, wire.NotifyType.PAYLOAD_MALFORMED),
    (wire.UnknownPayload(50, b"junk"), 0, wire.NotifyType.INVALID_PAYLOAD_TYPE),
    (wire.UnknownPayload(200, b"junk"), 1, wire.NotifyType.PAYLOAD_MALFORMED),
    (wire.VendorIdPayload(wire.VID_DPD), 0x80, wire.NotifyType.PAYLOAD_MALFORMED),
])
def test_main_mode_1_with_a_bad_generic_header_is_rejected_not_answered(extra: wire.Payload, reserved: int,
                                                                        notify: int) -> None:
    engine = Engine(make_config(), random=seeded_random(3))
    engine.receive_datagram(_mm1(extra, reserved), INITIATOR, RESPONDER, 1000.0)
    assert engine.datagrams_to_send() == []
    assert engine.sas() == []
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    (invalid,) = [e for e in events if isinstance(e, ev.InvalidPacketReceived)]
    assert invalid.notify_type == notify
    assert not [e for e in events if isinstance(e, ev.Phase1Started)]
    assert _monitor(events).counters[Statistic.INVALID_PACKETS_RECEIVED] == 1


def test_main_mode_1_with_a_private_use_payload_and_zero_reserved_is_answered() -> None:
    engine = Engine(make_config(), random=seeded_random(3))
    engine.receive_datagram(_mm1(wire.UnknownPayload(200, b"vendor"), 0), INITIATOR, RESPONDER, 1000.0)
    (mm2, remote, _local), = engine.datagrams_to_send()
    assert wire.parse(mm2).exchange_type == MM and remote == INITIATOR


def test_a_decrypted_chain_with_a_non_zero_reserved_octet_is_dropped() -> None:
    link = Link()
    link.connect()
    i_sa = link.initiator.sas()[0]
    notify = wire.NotifyPayload(wire.NotifyType.R_U_THERE, protocol_id=wire.ProtocolId.ISAKMP,
                                spi=i_sa.initiator_cookie + i_sa.responder_cookie, data=b"\0\0\0\1")
    digest = keymat.informational_hash(i_sa.hash_name, i_sa.skeyid.skeyid_a, 0x77, wire.encode_payloads([notify]))
    chain = bytearray(wire.encode_payloads([wire.HashPayload(digest), notify]))
    chain[1] = 9          # the HASH payload's RESERVED octet, which the HASH does not cover
    ciphertext = i_sa.cipher.encrypt(0x77, bytes(chain))
    data = wire.Message(i_sa.initiator_cookie, i_sa.responder_cookie, INFO, message_id=0x77,
                        flags=wire.Flag.ENCRYPTION, next_payload=wire.PayloadType.HASH, body=ciphertext).encode()
    link.responder.receive_datagram(data, INITIATOR, RESPONDER, link.now)
    assert link.responder.datagrams_to_send() == []
    (invalid,) = link.of("responder", ev.InvalidPacketReceived)
    assert invalid.notify_type == wire.NotifyType.PAYLOAD_MALFORMED


# --- Aggressive Mode: a repeated AM3 is not answered -------------------------------------------


def test_repeated_aggressive_mode_3_does_not_ping_pong_message_2() -> None:
    config = make_config(aggressive=True)
    link = Link(config, config)
    link.connect()
    _established(link)
    (am3,) = [d for d in _sent(link, "initiator", AM) if d[19] & wire.Flag.ENCRYPTION]
    sent_before = len(link.sent)
    link.responder.receive_datagram(am3, INITIATOR, RESPONDER, link.now)
    link.pump(rounds=200)
    assert [d[18] for _s, d in link.sent[sent_before:]] == []
    assert not link.of("responder", ev.Phase1Failed) and not link.of("initiator", ev.Phase1Failed)


def test_aggressive_mode_with_a_late_message_3_settles_after_one_repeat() -> None:
    """AM3 arrives after the responder retransmitted AM2: the initiator answers that repeat
    with AM3 again, and the responder, already established, lets it be."""
    config = make_config(aggressive=True)
    link = Link(config, config)
    link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now, quick_mode=False)
    for side, datagram in link.collect():      # AM1
        link.deliver(side, datagram)
    for side, datagram in link.collect():      # AM2
        link.deliver(side, datagram)
    ((_side, am3),) = link.collect()           # AM3, held back
    link.advance(link.responder_config.timing.retransmit_timeout + 0.1)   # AM2 again, AM3 again
    link.deliver("initiator", am3)
    link.pump(rounds=200)
    aggressive = [s for s, d in link.sent if d[18] == AM]
    assert aggressive.count("responder") == 2 and aggressive.count("initiator") == 3
    assert len(link.of("responder", ev.Phase1Established)) == 1


# --- keys are zeroed when their SA ends --------------------------------------------------------


def _zero(buffer: Any) -> bool:
    return isinstance(buffer, bytearray) and len(buffer) > 0 and not any(buffer)


def test_keys_are_zeroed_when_the_isakmp_sa_is_deleted() -> None:
    link = Link()
    link.connect()
    held: dict[str, tuple[Any, list[Any]]] = {}
    for side, driver in (("initiator", link.initiator_driver), ("responder", link.responder_driver)):
        (sa,) = link.engine(side).sas()
        assert sa.skeyid.skeyid == b"" and sa.skeyid.skeyid_e == b""   # dropped once established
        keys = [sa.skeyid.skeyid_d, sa.skeyid.skeyid_a, sa.crypto.export_state()[1]]
        keys += [k for out in driver.outbound.values() for k in (out.encryption_key, out.integrity_key)]
        keys += [k for into in driver.inbound.values() if into for k in (into.encryption_key, into.integrity_key)]
        assert len(keys) == 7 and all(isinstance(k, bytearray) and any(k) for k in keys)
        held[side] = (sa, keys)
    link.initiator.delete(held["initiator"][0].handle, link.now)   # Delete payloads to the responder
    link.pump()
    for side, (sa, keys) in held.items():
        assert link.engine(side).sas() == []
        assert all(_zero(k) for k in keys), side
        assert sa.skeyid is None and sa.crypto is None


def test_ipsec_keys_are_zeroed_when_the_peer_deletes_the_ipsec_sa() -> None:
    link = Link()
    link.connect()
    r_sa = link.responder.sas()[0]
    (ipsec,) = r_sa.ipsec_sas
    keys = [k for direction in ipsec.keys for k in (direction.encryption_key, direction.integrity_key)]
    i_sa = link.initiator.sas()[0]
    link.initiator.remove_ipsec(i_sa, i_sa.ipsec_sas[0], "test", notify_peer=True)
    link.pump()
    assert not r_sa.ipsec_sas and all(_zero(k) for k in keys)
    assert r_sa.crypto is not None and any(r_sa.skeyid.skeyid_a)   # the ISAKMP SA lives on
    link.initiator.initiate_quick_mode(i_sa.handle, link.now)
    link.pump()
    assert len(r_sa.ipsec_sas) == 1


def test_the_pfs_secret_is_zeroed_when_a_quick_mode_times_out() -> None:
    config = make_config(esp="aes128-sha256-modp2048")
    link = Link(config, config)
    link.connect()
    i_sa = link.initiator.sas()[0]
    link.initiator.initiate_quick_mode(i_sa.handle, link.now)
    (qm1, remote, local), = link.initiator.datagrams_to_send()
    link.responder.receive_datagram(qm1, local, remote, link.now)     # QM2 is never delivered
    link.responder.datagrams_to_send()
    r_sa = link.responder.sas()[0]
    (pending,) = [q for q in r_sa.quick_modes.values() if q.state is Phase2State.R_EXPECT_QM3]
    secret = pending.g_qm_xy
    assert isinstance(secret, bytearray) and any(secret)
    link.silent.add("responder")
    link.advance(config.timing.negotiation_timeout + 1)
    assert _zero(secret)


# --- limits -------------------------------------------------------------------------------------


class Net:
    """One responder engine and any number of peers, datagrams routed by address."""

    def __init__(self, responder_config: Config, now: float = 1000.0) -> None:
        self.now = now
        self.responder = Engine(responder_config, driver=MemoryDriver(), random=seeded_random(7))
        self.engines: dict[str, Engine] = {RESPONDER[0]: self.responder}
        self.events: dict[str, list[ev.Event]] = {}

    def peer(self, address: str, config: Config | None = None) -> Engine:
        engine = Engine(config or make_config(), driver=MemoryDriver(), random=seeded_random(len(self.engines) + 11))
        self.engines[address] = engine
        return engine

    def pump(self, rounds: int = 60, drop: Callable[[bytes, Any], bool] | None = None) -> None:
        for _ in range(rounds):
            moved = False
            for engine in list(self.engines.values()):
                for data, remote, local in engine.datagrams_to_send():
                    moved = True
                    target = self.engines.get(remote[0])
                    if target is not None and not (drop and drop(data, remote)):
                        target.receive_datagram(data, local, remote, self.now)
            if not moved:
                break
            self.now += 0.01
        self.drain()

    def drain(self) -> None:
        for address, engine in self.engines.items():
            while (event := engine.next_event()) is not None:
                self.events.setdefault(address, []).append(event)

    def of(self, address: str, kind: type) -> list[Any]:
        self.drain()
        return [e for e in self.events.get(address, []) if isinstance(e, kind)]

    def connect(self, address: str, engine: Engine | None = None, *, quick_mode: bool = True) -> int:
        engine = engine or self.engines.get(address) or self.peer(address)
        handle = engine.initiate(RESPONDER, local=(address, 500), now=self.now, quick_mode=quick_mode)
        self.pump()
        return handle

    def established(self, address: str) -> list[Any]:
        return [sa for sa in self.engines[address].sas() if sa.state is Phase1State.ESTABLISHED]


def test_3000_quick_modes_in_flight_on_one_sa_are_held_at_the_limit_and_others_are_served() -> None:
    limit = Limits().quick_modes_in_flight
    net = Net(make_config())
    net.connect("127.0.0.2", quick_mode=False)
    attacker = net.engines["127.0.0.2"]
    (a_sa,) = net.established("127.0.0.2")
    for _ in range(3000):
        attacker.initiate_quick_mode(a_sa.handle, net.now)
    qm1s = attacker.datagrams_to_send()
    assert len(qm1s) == 3000
    for data, remote, local in qm1s:
        net.responder.receive_datagram(data, local, remote, net.now)
    replies = net.responder.datagrams_to_send()
    (r_sa,) = [sa for sa in net.responder.sas() if sa.remote[0] == "127.0.0.2"]
    in_flight = [q for q in r_sa.quick_modes.values() if q.state is Phase2State.R_EXPECT_QM3]
    assert len(in_flight) == limit
    assert len(_notifies(replies)) == 3000 - limit and len(replies) == 3000
    refused = net.of(RESPONDER[0], ev.LimitReached)
    assert len(refused) == 3000 - limit and {e.limit for e in refused} == {"quick_modes_in_flight"}
    assert all(e.handle == r_sa.handle and e.remote[0] == "127.0.0.2" for e in refused)
    failed = net.of(RESPONDER[0], ev.Phase2Failed)
    assert len(failed) == 3000 - limit and {f.notify_type for f in failed} == {wire.NotifyType.NO_PROPOSAL_CHOSEN}
    monitor = _monitor(net.events[RESPONDER[0]])
    assert monitor.extended["limits:quick_modes_in_flight"] == 3000 - limit
    assert monitor.extended["notifies:no_proposal_chosen:out"] == 3000 - limit
    # the notifies are protected NO-PROPOSAL-CHOSEN the attacker can read
    for data, remote, local in replies:
        attacker.receive_datagram(data, local, remote, net.now)
    assert len(net.of("127.0.0.2", ev.NotifyReceived)) == 3000 - limit
    # everyone else is served meanwhile, and the QMs in flight finish
    net.connect("127.0.0.3")
    assert len(net.established("127.0.0.3")) == 1 and len(net.of("127.0.0.3", ev.Phase2Established)) == 1
    net.pump()
    assert len(r_sa.ipsec_sas) == limit
    # with the exchanges done there is room again on the attacked SA
    attacker.initiate_quick_mode(a_sa.handle, net.now)
    net.pump()
    assert len(r_sa.ipsec_sas) == limit + 1


def test_ipsec_sas_per_isakmp_sa_are_limited_by_default_and_freed_by_deletes() -> None:
    limit = Limits().ipsec_sas_per_isakmp_sa
    net = Net(make_config())
    net.connect("127.0.0.2", quick_mode=False)
    peer = net.engines["127.0.0.2"]
    (p_sa,) = net.established("127.0.0.2")
    (r_sa,) = net.responder.sas()
    started = 0
    while started < limit + 40:
        for _ in range(min(40, limit + 40 - started)):   # below the limit of Quick Modes in flight
            peer.initiate_quick_mode(p_sa.handle, net.now)
            started += 1
        net.pump()
    assert len(r_sa.ipsec_sas) == limit
    refused = net.of(RESPONDER[0], ev.LimitReached)
    assert len(refused) == 40 and {e.limit for e in refused} == {"ipsec_sas_per_isakmp_sa"}
    assert _monitor(net.events[RESPONDER[0]]).extended["limits:ipsec_sas_per_isakmp_sa"] == 40
    peer.remove_ipsec(p_sa, p_sa.ipsec_sas[0], "done", notify_peer=True)
    net.pump()
    assert len(r_sa.ipsec_sas) == limit - 1
    peer.initiate_quick_mode(p_sa.handle, net.now)
    net.pump()
    assert len(r_sa.ipsec_sas) == limit
    net.connect("127.0.0.3")
    assert len(net.of("127.0.0.3", ev.Phase2Established)) == 1


def test_a_refused_quick_mode_ends_at_the_initiator_when_the_notify_names_its_spi() -> None:
    """The responder's protected NO-PROPOSAL-CHOSEN carries the refused offer's ESP SPI
    (RFC 2408 3.14): the initiator ends exactly that Quick Mode at once instead of
    retransmitting it until its timeout (and having the repeats counted as replays)."""
    net = Net(_with_limits(make_config(), quick_modes_in_flight=1))
    net.connect("127.0.0.2", quick_mode=False)
    peer = net.engines["127.0.0.2"]
    (p_sa,) = net.established("127.0.0.2")
    started = net.now
    first = peer.initiate_quick_mode(p_sa.handle, net.now)
    second = peer.initiate_quick_mode(p_sa.handle, net.now)   # over the limit while the first is in flight
    net.pump()
    failed = net.of("127.0.0.2", ev.Phase2Failed)
    done = net.of("127.0.0.2", ev.Phase2Established)
    assert [e.message_id for e in done] == [first]
    assert [(e.message_id, e.reason) for e in failed] == [(second, "peer sent NO-PROPOSAL-CHOSEN")]
    assert failed[0].time - started < make_config().timing.retransmit_timeout   # at once, no retransmission
    assert _monitor(net.events[RESPONDER[0]]).extended.get("replays_dropped", 0) == 0


class _KernelWithoutEsp(MemoryDriver):
    """A driver whose Key Addition fails as a kernel without ESP answers it."""

    def add_outbound(self, sa: Any) -> None:
        from ikecore.driver import DriverError
        raise DriverError("XFRM_MSG_NEWSA: EPROTONOSUPPORT (Requested type not found)")


def test_an_initiator_that_cannot_install_the_sa_ends_the_responders_quick_mode_too() -> None:
    """After QM2 the initiator's driver refuses the SA: its NO-PROPOSAL-CHOSEN names its
    offer's SPI, and the responder ends that Quick Mode at once instead of retransmitting
    QM2 until its timeout (each repeat counted by the initiator as a replay)."""
    net = Net(make_config())
    peer = Engine(make_config(), driver=_KernelWithoutEsp(), random=seeded_random(23))
    net.engines["127.0.0.2"] = peer
    net.connect("127.0.0.2", peer, quick_mode=False)
    (p_sa,) = net.established("127.0.0.2")
    started = net.now
    message_id = peer.initiate_quick_mode(p_sa.handle, net.now)
    net.pump()
    (mine,) = net.of("127.0.0.2", ev.Phase2Failed)
    assert mine.message_id == message_id and "Requested type not found" in mine.reason
    (theirs,) = net.of(RESPONDER[0], ev.Phase2Failed)
    assert (theirs.message_id, theirs.reason) == (message_id, "peer sent NO-PROPOSAL-CHOSEN")
    assert theirs.time - started < make_config().timing.retransmit_timeout   # at once
    (r_sa,) = net.responder.sas()
    assert r_sa.quick_modes == {}
    net.now += 3 * make_config().timing.retransmit_timeout
    for engine in net.engines.values():
        engine.handle_timer(net.now)   # no QM2 retransmission is due any more
    net.pump()
    assert _monitor(net.events["127.0.0.2"]).extended.get("replays_dropped", 0) == 0


def test_isakmp_sas_per_peer_are_limited_with_no_proposal_chosen() -> None:
    net = Net(_with_limits(make_config(), isakmp_sas_per_peer=2))
    crowded = net.peer("127.0.0.2")
    for _ in range(3):
        net.connect("127.0.0.2", crowded)
    assert len(net.established("127.0.0.2")) == 2
    (refused,) = net.of(RESPONDER[0], ev.LimitReached)
    assert (refused.limit, refused.remote[0], refused.handle) == ("isakmp_sas_per_peer", "127.0.0.2", None)
    (failed,) = net.of("127.0.0.2", ev.Phase1Failed)
    assert "NO-PROPOSAL-CHOSEN" in failed.reason                      # the peer learns at once
    assert len([sa for sa in net.responder.sas() if sa.remote[0] == "127.0.0.2"]) == 2
    net.connect("127.0.0.3")                                            # another peer is served
    assert len(net.established("127.0.0.3")) == 1
    assert _monitor(net.events[RESPONDER[0]]).extended["limits:isakmp_sas_per_peer"] == 1
    crowded.delete(net.established("127.0.0.2")[0].handle, net.now)
    net.pump()
    net.connect("127.0.0.2", crowded)
    assert len(net.established("127.0.0.2")) == 2


def test_isakmp_sas_in_total_are_limited_and_a_delete_makes_room() -> None:
    net = Net(_with_limits(make_config(), isakmp_sas=3))
    for last in range(2, 6):
        net.connect(f"127.0.0.{last}")
    assert [len(net.established(f"127.0.0.{last}")) for last in range(2, 6)] == [1, 1, 1, 0]
    (refused,) = net.of(RESPONDER[0], ev.LimitReached)
    assert (refused.limit, refused.remote[0]) == ("isakmp_sas", "127.0.0.5")
    assert len(net.responder.sas()) == 3
    net.engines["127.0.0.2"].delete(net.established("127.0.0.2")[0].handle, net.now)
    net.pump()
    net.connect("127.0.0.5")
    assert len(net.established("127.0.0.5")) == 1


def test_limits_hold_for_a_stateless_message_3_too() -> None:
    """Above the cookie threshold message 2 is stateless; the SA would be made at message 3:
    that is where the limit refuses it."""
    config = dataclasses.replace(make_config(), limits=Limits(isakmp_sas=2), flood=FloodLimits(cookie_threshold=1))
    net = Net(config)
    net.peer("127.0.0.9").initiate(RESPONDER, local=("127.0.0.9", 500), now=net.now)
    net.pump(drop=lambda data, remote: remote[0] == "127.0.0.9")   # a half-open SA: stateless from now on
    assert net.responder.admission.stateless() and len(net.responder.sas()) == 1
    late = net.peer("127.0.0.2")
    late.initiate(RESPONDER, local=("127.0.0.2", 500), now=net.now)
    (mm1, remote, local), = late.datagrams_to_send()
    net.responder.receive_datagram(mm1, local, remote, net.now)        # room yet: a stateless MM2
    (mm2, remote, local), = net.responder.datagrams_to_send()
    assert net.of(RESPONDER[0], ev.StatelessCookieSent) and len(net.responder.sas()) == 1
    late.receive_datagram(mm2, local, remote, net.now)
    (mm3, remote, local), = late.datagrams_to_send()                   # held back while another peer
    net.connect("127.0.0.3")                                           # takes the last place
    assert len(net.established("127.0.0.3")) == 1
    net.responder.receive_datagram(mm3, local, remote, net.now)
    (notify, to, _local), = net.responder.datagrams_to_send()
    assert to == ("127.0.0.2", 500) and wire.parse(notify).exchange_type == INFO
    (payload,) = wire.parse(notify).payloads
    assert payload.notify_type == wire.NotifyType.NO_PROPOSAL_CHOSEN
    (refused,) = net.of(RESPONDER[0], ev.LimitReached)
    assert (refused.limit, refused.remote[0]) == ("isakmp_sas", "127.0.0.2")
    assert len(net.responder.sas()) == 2 and not [e for e in net.of(RESPONDER[0], ev.StatelessCookieVerified)
                                                  if e.remote[0] == "127.0.0.2"]


def test_limits_config_keys_defaults_and_errors() -> None:
    limits = config_from_dict({"limits": {"quick_modes_in_flight": 8, "isakmp_sas": 0}}).limits
    assert limits == Limits(quick_modes_in_flight=8, ipsec_sas_per_isakmp_sa=512, isakmp_sas_per_peer=10000,
                            isakmp_sas=0)
    assert config_from_dict({}).limits == Limits() == make_config().limits
    for table, key in (({"isakmp_sas": -1}, "limits.isakmp_sas"), ({"isakmp_sas_per_peer": "many"},
                       "limits.isakmp_sas_per_peer"), ({"quick_modes": 3}, "limits.quick_modes")):
        with pytest.raises(ConfigError, match=key):
            config_from_dict({"limits": table})
    assert SaLimits(Limits(isakmp_sas=5), workers=2).isakmp_sas == 3    # each worker's share
    assert SaLimits(Limits(isakmp_sas=0), workers=4).isakmp_sas == 0    # 0: no limit


def test_no_limit_means_no_refusal() -> None:
    net = Net(_with_limits(make_config(), isakmp_sas_per_peer=0, isakmp_sas=0, quick_modes_in_flight=0,
                           ipsec_sas_per_isakmp_sa=0))
    crowded = net.peer("127.0.0.2")
    for _ in range(3):
        net.connect("127.0.0.2", crowded)
    assert len(net.established("127.0.0.2")) == 3 and not net.of(RESPONDER[0], ev.LimitReached)
