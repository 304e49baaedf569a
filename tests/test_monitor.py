"""The monitor: every statistic moved by the event that defines it (the IP Security Monitor document's meanings), and
only by it; the extended counters from real negotiations; the gauges under load."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ikecore import events as ev
from ikecore import wire
from ikecore.protocol import informational
from ikecore.driver import DriverError, MemoryDriver
from ikecore.monitor.counters import DURATION_BUCKETS, Histogram, Monitor, Statistic, failure_reason
from tests.helpers import INITIATOR, RESPONDER, Link, make_config

S = Statistic
T = 1.0
ADDR = ("192.0.2.1", 500)


def _observed(side: str, link: Link) -> Monitor:
    link.drain_events()
    monitor = Monitor()
    for event in link.events[side]:
        monitor.observe(event)
    return monitor


def _changed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


# Each event alone, on a fresh monitor, and the statistics it must move (the IP Security Monitor document's meanings).
SINGLE_EVENTS: list[tuple[ev.Event, dict[str, int]]] = [
    (ev.Phase1Established(time=T, handle=1, role="responder", local=ADDR, remote=ADDR, initiator_cookie=b"i" * 8,
                          responder_cookie=b"r" * 8, proposal="aes128-sha256-modp2048", duration=0.1),
     {"ike_main_mode": 1}),
    (ev.Phase2Established(time=T, handle=1, message_id=5, role="responder", spi_in=b"1234", spi_out=b"5678",
                          proposal="aes128-sha256", duration=0.1), {"ike_quick_mode": 1}),
    (ev.Phase1Failed(time=T, handle=1, role="responder", remote=ADDR, reason="x"), {"negotiation_failures": 1}),
    (ev.Phase1Failed(time=T, handle=1, role="initiator", remote=ADDR, reason="x"),
     {"negotiation_failures": 1, "acquire_failures": 1}),
    (ev.Phase2Failed(time=T, handle=1, message_id=5, role="responder", reason="x"), {"negotiation_failures": 1}),
    (ev.AuthenticationFailed(time=T, handle=1, remote=ADDR, reason="HASH_R mismatch"),
     {"authentication_failures": 1}),
    (ev.InvalidCookieReceived(time=T, remote=ADDR), {"invalid_cookies_received": 1}),
    (ev.InvalidPacketReceived(time=T, remote=ADDR, reason="short", notify_type=16),
     {"invalid_packets_received": 1}),
    (ev.SpiAllocated(time=T, spi=b"abcd"), {"total_get_spi": 1, "total_acquire": 1}),
    (ev.SpiAllocated(time=T, spi=None), {"total_get_spi": 1, "total_acquire": 1, "get_spi_failures": 1}),
    (ev.KeyAdded(time=T, spi=b"abcd"), {"key_additions": 1, "total_acquire": 1}),
    (ev.KeyUpdated(time=T, spi=b"abcd"), {"key_updates": 1, "total_acquire": 1}),
    (ev.DriverFailed(time=T, operation="add_outbound", reason="x"), {"key_addition_failures": 1, "total_acquire": 1}),
    (ev.DriverFailed(time=T, operation="update_inbound", reason="x"), {"key_update_failures": 1, "total_acquire": 1}),
    (ev.DriverFailed(time=T, operation="delete", reason="x"), {}),
    (ev.Phase1Started(time=T, handle=1, role="responder", remote=ADDR), {"isadb_list_size": 1}),
    (ev.Phase1Started(time=T, handle=1, role="initiator", remote=ADDR),
     {"isadb_list_size": 1, "active_acquire": 1, "acquire_heap_size": 1}),
    (ev.Phase2Started(time=T, handle=1, message_id=5, role="responder"), {"connection_list_size": 1}),
    (ev.DatagramReceived(time=T, exchange_type=2, message_number=1, length=100), {}),
    (ev.DatagramSent(time=T, exchange_type=2, message_number=2, length=100), {}),
    (ev.RetransmitSent(time=T, handle=1, exchange_type=2, attempt=1), {}),
    (ev.DuplicateReceived(time=T, handle=1, exchange_type=2), {}),
    (ev.NotifyReceived(time=T, handle=1, remote=ADDR, notify_type=36136, protected=True), {}),
    (ev.NotifySent(time=T, handle=1, remote=ADDR, notify_type=14, protected=False), {}),
    (ev.DeleteReceived(time=T, handle=1, protocol_id=1, spis=(b"x" * 16,)), {}),
    (ev.DeleteSent(time=T, handle=1, protocol_id=3, spis=(b"abcd",)), {}),
    (ev.SaDeleted(time=T, handle=1, phase=1, spi=None, reason="x"), {}),
]


@pytest.mark.parametrize("event,expected", SINGLE_EVENTS,
                         ids=lambda v: type(v).__name__ if isinstance(v, ev.Event) else "")
def test_each_event_moves_exactly_its_statistics(event: ev.Event, expected: dict[str, int]) -> None:
    monitor = Monitor()
    before = monitor.statistics()
    monitor.observe(event)
    assert _changed(before, monitor.statistics()) == expected


def test_every_counter_statistic_has_an_event_that_moves_it() -> None:
    moved = {key for _e, expected in SINGLE_EVENTS for key in expected}
    transport_only = {"send_failures", "receive_failures", "active_receive", "receive_heap_size"}
    never = {"soft_associations"}  # ikecore never falls back to cleartext (a soft SA)
    assert moved | transport_only | never == {s.key for s in Statistic}
    monitor = Monitor()
    monitor.send_failed()
    monitor.receive_failed()
    assert _changed(Monitor().statistics(), monitor.statistics()) == {"send_failures": 1, "receive_failures": 1}


def test_gauges_return_to_zero_when_negotiations_end() -> None:
    monitor = Monitor()
    for event in (ev.Phase1Started(time=T, handle=7, role="initiator", remote=ADDR),
                  ev.Phase2Started(time=T, handle=7, message_id=9, role="initiator"),
                  ev.Phase2Started(time=T, handle=7, message_id=10, role="initiator")):
        monitor.observe(event)
    stats = monitor.statistics()
    assert (stats["isadb_list_size"], stats["connection_list_size"], stats["active_acquire"]) == (1, 2, 3)
    monitor.observe(ev.Phase2Failed(time=T, handle=7, message_id=9, role="initiator", reason="x"))
    assert monitor.statistics()["connection_list_size"] == 1
    # Deleting the ISAKMP SA forgets its Quick Modes in progress too.
    monitor.observe(ev.SaDeleted(time=T, handle=7, phase=1, spi=None, reason="x"))
    stats = monitor.statistics()
    assert (stats["isadb_list_size"], stats["connection_list_size"], stats["active_acquire"]) == (0, 0, 0)


def test_a_successful_negotiation_counts_on_both_sides_and_messages_by_number() -> None:
    link = Link()
    link.connect()
    for side in ("initiator", "responder"):
        stats = _observed(side, link).statistics()
        assert stats["ike_main_mode"] == 1 and stats["ike_quick_mode"] == 1
        assert stats["total_get_spi"] == 1 and stats["key_additions"] == 1 and stats["key_updates"] == 1
        assert stats["total_acquire"] == 3
        assert stats["isadb_list_size"] == 1 == len(link.engine(side).sas())
        assert stats["connection_list_size"] == 1
        assert stats["negotiation_failures"] == 0 and stats["active_acquire"] == 0
    x = _observed("responder", link).extended
    mm, qm = "identity_protection", "quick_mode"
    assert [x[f"messages:{mm}:{n}:{'in' if n % 2 else 'out'}"] for n in range(1, 7)] == [1] * 6
    assert [x[f"messages:{qm}:{n}:{'in' if n % 2 else 'out'}"] for n in range(1, 4)] == [1] * 3
    y = _observed("initiator", link).extended
    assert [y[f"messages:{mm}:{n}:{'out' if n % 2 else 'in'}"] for n in range(1, 7)] == [1] * 6
    assert y[f"messages:{qm}:1:out"] == y[f"messages:{qm}:2:in"] == y[f"messages:{qm}:3:out"] == 1
    monitor = _observed("initiator", link)
    assert monitor.phase1_time.count == 1 and monitor.phase2_time.count == 1


def test_wrong_psk_moves_authentication_and_negotiation_failures() -> None:
    link = Link(make_config(psk="right"), make_config(psk="wrong"))
    link.connect()
    responder = _observed("responder", link)
    stats = responder.statistics()
    assert stats["authentication_failures"] == 1 and stats["negotiation_failures"] == 1
    assert stats["ike_main_mode"] == 0 and stats["isadb_list_size"] == 0
    assert responder.extended["authentication_failures:decryption"] == 1  # keys from another PSK
    assert responder.extended["notifies:authentication_failed:out"] == 1
    initiator = _observed("initiator", link)
    assert initiator.statistics()["acquire_failures"] == 1
    assert initiator.extended["notifies:authentication_failed:in"] == 1
    assert initiator.extended["failures:phase1:peer_notify"] == 1


def test_no_proposal_is_a_negotiation_failure_with_its_reason() -> None:
    link = Link(make_config(ike="3des-sha1-modp1024"), make_config(ike="aes256-sha384-ecp384"))
    link.connect()
    responder = _observed("responder", link)
    assert responder.statistics()["negotiation_failures"] == 1
    assert responder.statistics()["authentication_failures"] == 0
    assert responder.extended["failures:phase1:no_proposal_chosen"] == 1
    assert responder.extended["notifies:no_proposal_chosen:out"] == 1


def test_invalid_cookie_and_malformed_packet_counters() -> None:
    link = Link()
    link.connect()
    forged = wire.Message(b"\x01" * 8, b"\x02" * 8, wire.ExchangeType.IDENTITY_PROTECTION,
                          [wire.NoncePayload(b"x" * 16)]).encode()
    link.responder.receive_datagram(forged, INITIATOR, RESPONDER, link.now)
    link.responder.receive_datagram(b"\x00" * 5, INITIATOR, RESPONDER, link.now)
    stats = _observed("responder", link).statistics()
    assert stats["invalid_cookies_received"] == 1
    assert stats["invalid_packets_received"] == 1
    assert stats["ike_main_mode"] == 1


class _FailingDriver(MemoryDriver):
    def __init__(self, fail: str) -> None:
        super().__init__()
        self.fail = fail

    def get_spi(self, source: str, destination: str, protocol_id: int) -> bytes:
        if self.fail == "get_spi":
            raise DriverError("SPI space exhausted")
        return super().get_spi(source, destination, protocol_id)

    def add_outbound(self, sa: Any) -> None:
        if self.fail == "add_outbound":
            raise DriverError("no room")
        super().add_outbound(sa)

    def update_inbound(self, sa: Any) -> None:
        if self.fail == "update_inbound":
            raise DriverError("no room")
        super().update_inbound(sa)


@pytest.mark.parametrize("fail,stat", [("get_spi", "get_spi_failures"), ("add_outbound", "key_addition_failures"),
                                       ("update_inbound", "key_update_failures")])
def test_driver_failures(fail: str, stat: str) -> None:
    link = Link()
    link.responder.driver = _FailingDriver(fail)
    link.connect()
    stats = _observed("responder", link).statistics()
    # Each attempt (the initiator retransmits QM1 after the failure) fails the same way.
    assert stats[stat] >= 1 and stats["negotiation_failures"] == stats[stat]
    assert stats["ike_quick_mode"] == 0
    assert stats["ike_main_mode"] == 1
    others = {"get_spi_failures", "key_addition_failures", "key_update_failures"} - {stat}
    assert all(stats[o] == 0 for o in others)


def test_retransmissions_duplicates_deletes_and_dpd() -> None:
    link = Link()
    link.connect(drop=lambda side, index, data: index == 2)  # lose MM2 once
    link.pump()
    (sa,) = link.initiator.sas()
    # DPD: the initiator asks R-U-THERE, the responder answers R-U-THERE-ACK.
    probe = informational.notify(wire.NotifyType.R_U_THERE, spi=sa.initiator_cookie + sa.responder_cookie,
                                 data=(7).to_bytes(4, "big"))
    link.initiator._send(sa, informational.build_protected(sa, [probe], link.initiator._message_id(sa)),
                         wire.ExchangeType.INFORMATIONAL, 1)
    link.pump()
    link.initiator.delete(sa.handle, link.now)
    link.pump()
    initiator, responder = _observed("initiator", link), _observed("responder", link)
    assert initiator.extended["retransmissions:identity_protection:out"] >= 1
    assert responder.extended["retransmissions:identity_protection:in"] >= 1
    assert responder.extended["dpd:r_u_there:in"] == 1 and responder.extended["dpd:r_u_there_ack:out"] == 1
    assert initiator.extended["dpd:r_u_there_ack:in"] == 1
    assert initiator.extended["deletes:ipsec_esp:out"] == 1 and initiator.extended["deletes:isakmp:out"] == 1
    assert responder.extended["deletes:ipsec_esp:in"] == 1 and responder.extended["deletes:isakmp:in"] == 1
    for monitor in (initiator, responder):
        stats = monitor.statistics()
        assert stats["isadb_list_size"] == 0 and stats["connection_list_size"] == 0


def test_gauges_match_the_engine_under_load() -> None:
    """Many peers, lost datagrams, timeouts and deletes: the O(1) gauges equal a full count."""
    link = Link(make_config(), make_config())
    rng = random.Random(5)
    handles = []
    for i in range(40):
        local = (f"127.0.3.{i + 1}", 500)
        handles.append(link.initiator.initiate(RESPONDER, local=local, now=link.now))
    link.pump(drop=lambda side, index, data: rng.random() < 0.15, rounds=200)
    for handle in handles[:10]:
        if link.initiator.sa(handle) is not None:
            link.initiator.delete(handle, link.now)
    link.pump(rounds=20)
    for side in ("initiator", "responder"):
        engine, stats = link.engine(side), _observed(side, link).statistics()
        sas = engine.sas()
        assert stats["isadb_list_size"] == len(sas)
        assert stats["connection_list_size"] == sum(
            len(sa.ipsec_sas) + sum(1 for qm in sa.quick_modes.values() if qm.state.value != "ESTABLISHED")
            for sa in sas)
    link.advance(120.0)  # every pending negotiation times out
    for side in ("initiator", "responder"):
        stats = _observed(side, link).statistics()
        assert stats["isadb_list_size"] == len(link.engine(side).sas())
        assert stats["active_acquire"] == 0


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram()
    for value in (0.001, 0.02, 0.02, 3.0, 100.0):
        hist.observe(value)
    cumulative = dict(hist.cumulative())
    assert cumulative["0.005"] == 1 and cumulative["0.025"] == 3 and cumulative["5.0"] == 4
    assert cumulative["+Inf"] == 5 == hist.count and len(cumulative) == len(DURATION_BUCKETS) + 1
    assert hist.total == pytest.approx(103.041)


def test_failure_reasons_are_a_bounded_vocabulary() -> None:
    assert failure_reason("whatever", wire.NotifyType.NO_PROPOSAL_CHOSEN) == "no_proposal_chosen"
    assert failure_reason("retransmission limit reached; peer does not answer", None) == "no_response"
    assert failure_reason("negotiation timed out", None) == "timeout"
    assert failure_reason("peer sent INVALID-ID-INFORMATION", None) == "peer_notify"
    assert failure_reason("something new", None) == "other"


def test_aggressive_mode_and_dead_peers_keep_the_gauges_true() -> None:
    from ikecore.config import Timing

    timing = Timing(retransmit_timeout=1.0, retransmit_tries=3, negotiation_timeout=30.0,
                    dpd_delay=10.0, dpd_timeout=30.0)
    link = Link(make_config(aggressive=True, timing=timing), make_config(aggressive=True, timing=timing))
    link.connect()
    initiator, responder = _observed("initiator", link), _observed("responder", link)
    assert responder.extended["messages:aggressive:1:in"] == 1
    assert responder.extended["messages:aggressive:2:out"] == 1
    assert responder.extended["messages:aggressive:3:in"] == 1
    for monitor in (initiator, responder):
        stats = monitor.statistics()
        assert stats["ike_main_mode"] == 1 and stats["isadb_list_size"] == 1 and stats["connection_list_size"] == 1
    link.silent.add("responder")
    link.advance(60.0)
    initiator = _observed("initiator", link)
    assert initiator.extended["dead_peers"] == 1
    assert initiator.extended["dpd:r_u_there:out"] >= 30
    stats = initiator.statistics()
    assert stats["isadb_list_size"] == 0 == len(link.initiator.sas()) and stats["connection_list_size"] == 0
