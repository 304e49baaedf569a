"""Flood resistance (ikecore.engine.admission): half-open limits, stateless cookies, accounting."""

from __future__ import annotations

import random

import pytest

from floodsim import gateway_config, run_flood, spoofed_mm1
from helpers import INITIATOR, RESPONDER, Link, make_config
from ikecore import events as ev
from ikecore import wire
from ikecore.config import Config, ConfigError, config_from_dict
from ikecore.engine.core import Engine
from ikecore.engine.admission import AdmissionControl, FloodLimits
from ikecore.monitor.counters import Monitor, Statistic


def _with_limits(config: Config, limits: FloodLimits) -> Config:
    return Config(listen=config.listen, ike_policies=config.ike_policies, esp_policies=config.esp_policies,
                  filters=config.filters, timing=config.timing, flood=limits)


def _mm1(rng: random.Random, config: Config) -> bytes:
    return spoofed_mm1(rng, config.ike_policies["default"].offer(), False)


def _events(engine: Engine, kind: type) -> list[ev.Event]:
    out = []
    while (event := engine.next_event()) is not None:
        if isinstance(event, kind):
            out.append(event)
    return out


def test_stateless_cookie_path_establishes_and_keeps_no_state_before_message_3() -> None:
    limits = FloodLimits(cookie_threshold=1)
    link = Link(responder_config=_with_limits(make_config(), limits))
    rng = random.Random(3)
    # one spoofed half-open SA passes the threshold
    link.responder.receive_datagram(_mm1(rng, link.responder_config), ("127.9.9.9", 500), RESPONDER, link.now)
    assert link.responder.flood_stats()["half_open"] == 1
    link.responder.datagrams_to_send()
    handle = link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now)
    # deliver MM1 only: the responder answers but creates nothing
    (mm1, remote, local), = link.initiator.datagrams_to_send()
    link.responder.receive_datagram(mm1, local, remote, link.now)
    assert len(link.responder.sas()) == 1
    (mm2, _r, _l), = link.responder.datagrams_to_send()
    # a retransmitted message 1 gets the identical message 2 (deterministic)
    link.responder.receive_datagram(mm1, local, remote, link.now)
    assert link.responder.datagrams_to_send()[0][0] == mm2
    link.initiator.receive_datagram(mm2, RESPONDER, INITIATOR, link.now)
    link.pump()
    assert link.of("initiator", ev.Phase2Established)
    assert link.initiator.sa(handle).state.value == "ESTABLISHED"
    assert len(link.of("responder", ev.StatelessCookieSent)) == 2
    assert len(link.of("responder", ev.StatelessCookieVerified)) == 1
    established = link.of("responder", ev.Phase1Established)[0]
    assert established.responder_cookie == mm2[8:16]


def test_stateless_cookie_is_bound_to_the_source_address() -> None:
    limits = FloodLimits(cookie_threshold=1)
    config = _with_limits(make_config(), limits)
    link = Link(responder_config=config)
    link.responder.receive_datagram(_mm1(random.Random(1), config), ("127.9.9.9", 500), RESPONDER, link.now)
    link.responder.datagrams_to_send()
    link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now)
    (mm1, remote, local), = link.initiator.datagrams_to_send()
    link.responder.receive_datagram(mm1, local, remote, link.now)
    (mm2, _r, _l), = link.responder.datagrams_to_send()
    link.initiator.receive_datagram(mm2, RESPONDER, INITIATOR, link.now)
    (mm3, _r, _l), = link.initiator.datagrams_to_send()
    _events(link.responder, ev.Event)
    # MM3 from another address (or port): the cookie does not verify, no SA, no DH
    link.responder.receive_datagram(mm3, ("127.0.0.3", 500), RESPONDER, link.now)
    link.responder.receive_datagram(mm3, (INITIATOR[0], 4500), RESPONDER, link.now)
    assert len(link.responder.sas()) == 1
    assert len(_events(link.responder, ev.InvalidCookieReceived)) == 2
    # a forged cookie (one bit flipped) does not verify either
    forged = mm3[:15] + bytes([mm3[15] ^ 1]) + mm3[16:]
    link.responder.receive_datagram(forged, INITIATOR, RESPONDER, link.now)
    assert len(_events(link.responder, ev.InvalidCookieReceived)) == 1
    # the real source does
    link.responder.receive_datagram(mm3, INITIATOR, RESPONDER, link.now)
    assert len(link.responder.sas()) == 2
    assert _events(link.responder, ev.StatelessCookieVerified)


def test_cookie_from_the_previous_epoch_verifies_and_older_does_not() -> None:
    gate = AdmissionControl(FloodLimits(cookie_epoch=10.0), random.Random(5).randbytes)
    offer = b"offer-bytes" * 4
    cookie = gate.make_cookie(b"I" * 8, b"src", b"dst", offer, now=5.0)
    assert cookie is not None
    assert gate.verify_cookie(b"I" * 8, cookie, b"src", b"dst", now=15.0) == (True, offer)
    assert gate.verify_cookie(b"I" * 8, cookie, b"src", b"dst", now=25.0)[0] is False
    assert gate.make_cookie(b"I" * 8, b"src", b"dst", b"x" * 5000, now=25.0) is None


def test_per_source_limit_refuses_and_total_limit_drops_oldest_first() -> None:
    limits = FloodLimits(max_half_open=3, max_half_open_per_source=2, cookie_threshold=1000)
    config = _with_limits(make_config(), limits)
    engine = Engine(config, random=random.Random(2).randbytes)
    rng = random.Random(9)
    for _ in range(5):
        engine.receive_datagram(_mm1(rng, config), ("127.5.5.5", 500), RESPONDER, 1.0)
    assert engine.flood_stats()["half_open"] == 2
    assert len(_events(engine, ev.HalfOpenRefused)) == 3
    first = sorted(sa.handle for sa in engine.sas())
    for i in range(3):
        engine.receive_datagram(_mm1(rng, config), (f"127.6.0.{i + 1}", 500), RESPONDER, 2.0 + i)
    dropped = [e.handle for e in _events(engine, ev.HalfOpenDropped)]
    assert dropped == first                              # the oldest, in age order
    assert engine.flood_stats()["half_open"] == 3
    assert sorted(sa.remote[0] for sa in engine.sas()) == ["127.6.0.1", "127.6.0.2", "127.6.0.3"]


def test_flood_limits_from_toml_and_bad_values() -> None:
    config = config_from_dict({"flood": {"max_half_open": 100, "cookie_threshold": 10}})
    assert config.flood == FloodLimits(max_half_open=100, cookie_threshold=10)
    with pytest.raises(ConfigError, match="flood"):
        config_from_dict({"flood": {"max_half_open": 0}})
    with pytest.raises(ConfigError, match="flood.bogus"):
        config_from_dict({"flood": {"bogus": 1}})


def test_monitor_counts_flood_events() -> None:
    monitor = Monitor()
    for event in (ev.StatelessCookieSent(time=0, remote=("1.2.3.4", 500)),
                  ev.HalfOpenRefused(time=0, remote=("1.2.3.4", 500), reason="x"),
                  ev.HalfOpenDropped(time=0, handle=1, remote=("1.2.3.4", 500))):
        monitor.observe(event)
    assert monitor.extended["flood:stateless_cookies_sent"] == 1
    assert monitor.extended["flood:half_open_refused"] == 1
    assert monitor.extended["flood:half_open_dropped"] == 1


@pytest.mark.parametrize("vary_offer", [False, True])
def test_small_flood_legitimate_peers_establish_memory_bounded_every_datagram_accounted(vary_offer: bool) -> None:
    """The make-test version of the documented 50,000/s x 1,000 peers run (bench/README.md, Long runs)."""
    limits = FloodLimits(max_half_open=400, cookie_threshold=200, offer_cache_size=256)
    result = run_flood(rate=10000, seconds=1.0, peers=60, limits=limits, vary_offer=vary_offer, wall_limit=120)
    acc = result.flood_accounting
    assert result.flood_sent == 10000
    assert result.quick_modes >= 0.99 * result.peers
    assert result.peak_half_open <= limits.max_half_open
    assert acc["flood_received"] == result.flood_sent            # every flood datagram was seen ...
    assert acc["mm1_outcomes"] == acc["mm1_received"]            # ... and got exactly one outcome
    assert acc["replies_to_flood"] <= result.flood_sent         # no amplification
    assert acc["mm1_stateless_reply"] > 0
    assert result.responder_stats["ike_main_mode"] >= result.established
    assert result.peak_traced_bytes < 64 * 2**20


def test_config_default_limits_are_safe() -> None:
    limits = gateway_config(FloodLimits()).flood
    assert limits.cookie_threshold < limits.max_half_open
    assert limits.max_half_open_per_source < limits.cookie_threshold


def test_aggressive_mode_is_refused_above_the_cookie_threshold_no_dh_for_unproven() -> None:
    """AM1 is answered with a DH value: above the threshold it is refused, not computed."""
    limits = FloodLimits(cookie_threshold=1)
    computed: list[int] = []
    link = Link(initiator_config=make_config(aggressive=True),
                responder_config=_with_limits(make_config(aggressive=True), limits))
    real_keypair = link.responder._keypair
    link.responder._keypair = lambda group: (computed.append(group), real_keypair(group))[1]
    link.responder.receive_datagram(_mm1(random.Random(4), link.responder_config), ("127.9.9.9", 500),
                                    RESPONDER, link.now)
    link.responder.datagrams_to_send()
    link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now)
    (am1, remote, local), = link.initiator.datagrams_to_send()
    assert am1[18] == wire.ExchangeType.AGGRESSIVE
    link.responder.receive_datagram(am1, local, remote, link.now)
    assert link.responder.datagrams_to_send() == [] and computed == []
    refused = _events(link.responder, ev.HalfOpenRefused)
    assert refused and "Aggressive Mode" in refused[0].reason


def test_flood_over_loopback_udp_gateway_keeps_serving() -> None:
    """Real sockets: 3,000 message 1 datagrams from 300 127.x addresses at a gateway while
    20 peers negotiate through it; all establish and every datagram is accounted for."""
    import asyncio
    import socket

    from ikecore.gateway.transport import Gateway

    limits = FloodLimits(cookie_threshold=100, max_half_open=1000)
    rng = random.Random(99)

    async def scenario() -> tuple[int, Monitor, int, int]:
        monitor = Monitor()
        gateway = Gateway(Engine(_with_limits(make_config(), limits)), monitor=monitor, receive_queue=100000)
        ((_, port),) = await gateway.listen([("127.0.0.1", 0)])
        peers = Gateway(Engine(make_config()))
        flooders = []
        for i in range(300):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.{10 + i // 250}.{i % 250}.{1 + i % 7}", 0))
            sock.setblocking(False)
            flooders.append(sock)
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _round in range(10):
                for sock in flooders:
                    sock.sendto(_mm1(rng, gateway.engine.config), ("127.0.0.1", port))
                    sent += 1
                await asyncio.sleep(0.02)

        async def legit(i: int) -> bool:
            await asyncio.sleep(0.01 * i)
            result = await peers.connect(("127.0.0.1", port), local=(f"127.3.0.{i + 1}", 0), timeout=20,
                                         check=False)
            return result.ok

        results = await asyncio.gather(flood(), *(legit(i) for i in range(20)))
        await asyncio.sleep(0.2)
        gateway.poll_faults()
        half_open = gateway.engine.flood_stats()["half_open"]
        gateway.close()      # first: no retransmission to a closed flooder socket (ICMP error)
        peers.close()
        for sock in flooders:
            sock.close()
        return sum(1 for ok in results[1:] if ok), monitor, sent, half_open

    established, monitor, sent, half_open = asyncio.run(scenario())
    x = monitor.extended
    assert established == 20
    assert half_open <= limits.max_half_open
    received = sum(v for k, v in x.items() if k.startswith("messages:identity_protection:1:in"))
    # every flood datagram was processed, or dropped by the kernel or our queue and counted
    drops = x["kernel_receive_drops"] + x["receive_queue_full"]
    assert received + drops >= sent + 20
    assert monitor.counters[Statistic.RECEIVE_FAILURES] == drops
    assert x["flood:stateless_cookies_sent"] > 0
