"""The express lanes (rust/express): whole negotiations in Rust, against independent truth.

* The load generator's lane (``ikecore.loadtest.express``) runs the same load as the engine
  does (wrong keys, lost, repeated and corrupted datagrams, a responder that sees a NAT)
  against the engine as responder: the same outcomes, failure for failure.
* The gateway's lane (``ikecore.engine.express``) over real loopback UDP: the SAs it hands
  the engine are the SAs the engine makes itself for the same load (the monitor's rows and
  statistics), a wrong key, a NAT and a silent peer end as the engine ends them, and a real
  charon initiator gets its SA (tests/test_interop_strongswan.py runs charon in both roles
  without the lane).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from ikecore.config import Timing, config_from_flags
from ikecore.engine.core import Engine
from ikecore.gateway.frontdoor import available
from ikecore.gateway.transport import Gateway
from ikecore.loadtest.express import ExpressEngine
from ikecore.loadtest.generator import Faults, LoadSpec, LoadTest
from ikecore.loadtest.runners import run_in_memory, run_udp
from ikecore.monitor import listing
from ikecore.monitor.counters import Monitor
from ikecore.sa import Phase1State

PSK = "express-lane-secret"
ECP = "aes128-sha256-ecp256"

#: statistics that must agree between the two gateways (Total Get SPI differs by design: the
#: lane's SPIs are allocated ahead, a pool at a time)
COMPARED = ("ike_main_mode", "ike_quick_mode", "key_additions", "key_updates", "negotiation_failures",
            "authentication_failures", "invalid_packets_received", "invalid_cookies_received", "isadb_list_size",
            "connection_list_size", "receive_failures", "send_failures")


def _spec(target: tuple[str, int], peers: int, **kwargs: Any) -> LoadSpec:
    return LoadSpec(target=target, peers=peers, psk=PSK, ike=ECP, concurrency=kwargs.pop("concurrency", 20),
                    max_seconds=kwargs.pop("max_seconds", 60), **kwargs)


# --- the load generator's lane against the engine (in memory) ----------------------------------


def _in_memory(express: bool, spec: LoadSpec, **responder: Any) -> tuple[Any, LoadTest, Engine]:
    config = config_from_flags(psk=PSK, ike=ECP, listen=(), **responder)
    engine = Engine(config)
    load = LoadTest(spec, express=express)
    assert isinstance(load.right, ExpressEngine) is express
    report, _end = run_in_memory(load, engine)
    return report, load, engine


def test_the_generator_lane_ends_every_peer_as_the_engine_does() -> None:
    spec = _spec(("127.0.0.1", 500), 60, seed=7, timeout=8.0, retransmit_timeout=0.5, faults=Faults(wrong_psk=0.15))
    lane, _load, lane_responder = _in_memory(True, spec)
    engine, _load, engine_responder = _in_memory(False, spec)
    assert lane.established == engine.established == 51
    assert lane.failures == engine.failures == {"AUTHENTICATION-FAILED": 9}
    assert lane.unfinished == engine.unfinished == 0
    # the responder holds the same SAs either way: one ISAKMP SA with one IPsec SA per peer
    for responder in (lane_responder, engine_responder):
        held = [sa for sa in responder.sas() if sa.state is Phase1State.ESTABLISHED]
        assert len(held) == 51 and all(len(sa.ipsec_sas) == 1 for sa in held)


def test_the_generator_lane_recovers_lost_and_repeated_datagrams() -> None:
    spec = _spec(("127.0.0.1", 500), 60, seed=7, timeout=8.0, retransmit_timeout=0.5,
                 faults=Faults(drop=0.05, duplicate=0.05))
    lane, lane_load, _responder = _in_memory(True, spec)
    assert lane.established == 60 and lane.failed == 0
    assert lane.retransmissions > 0 and lane_load.fault_counts["dropped"] > 0
    assert lane_load.fault_counts["duplicated"] > 0


def test_the_generator_lane_ends_every_corrupted_negotiation() -> None:
    # a corrupted message fails its negotiation or is dropped and sent again: never a hang,
    # never an exception, and only the failures the engine has too
    spec = _spec(("127.0.0.1", 500), 60, seed=7, timeout=8.0, retransmit_timeout=0.5, faults=Faults(corrupt=0.03))
    lane, lane_load, _responder = _in_memory(True, spec)
    engine, _load, _responder = _in_memory(False, spec)
    assert lane.unfinished == engine.unfinished == 0 and lane_load.fault_counts["corrupted"] > 0
    assert abs(lane.established - engine.established) <= 3
    kinds = ("AUTHENTICATION-FAILED", "HASH_R does not verify", "Quick Mode HASH(2) does not verify",
             "responder chose", "invalid key exchange value", "INVALID-", "PAYLOAD-MALFORMED", "timeout")
    assert all(reason.startswith(kinds) for reason in lane.failures), lane.failures


def test_the_generator_lane_floats_when_the_responder_sees_a_nat() -> None:
    # the responder forces NAT-T (a random hash of its own address): the lane floats to the
    # NAT-T port, adds the marker and asks for UDP-encapsulated ESP, as the engine does
    seen = {}
    for express in (True, False):
        report, _load, responder = _in_memory(express, _spec(("127.0.0.1", 500), 10), nat_traversal="force")
        assert report.established == 10
        seen[express] = sorted((sa.nat, sa.encapsulated, sa.local, sa.remote,
                                tuple(ipsec.keys[0].udp_encapsulation for ipsec in sa.ipsec_sas))
                               for sa in responder.sas())
    assert seen[True] == seen[False]
    assert all(encapsulated and local[1] == 4500 and udp == (True,) for _nat, encapsulated, local, _r, udp in seen[True])


def test_the_generator_lane_is_not_used_for_what_it_does_not_run() -> None:
    target = ("127.0.0.1", 500)
    assert isinstance(LoadTest(_spec(target, 2)).right, ExpressEngine)
    for spec in (_spec(target, 2, quick_modes=2), _spec(target, 2, nat_t="force"),
                 replace(_spec(target, 2), esp="aes128-sha256-modp2048"), replace(_spec(target, 2), ike=f"{ECP},{ECP}")):
        assert isinstance(LoadTest(spec).right, Engine), spec
    assert isinstance(LoadTest(_spec(target, 2), random_bytes=lambda n: bytes(n)).right, Engine)


# --- the gateway's lane over real UDP ------------------------------------------------------------

needs_fast_path = pytest.mark.skipif(not available(), reason="build without the Rust receive path")


class _Served:
    """A Gateway (express or not) on 127.0.0.1 in a thread of its own, with its monitor."""

    def __init__(self, express: bool, *, thread: bool = False, esp_lifetime: int | None = None, **flags: Any) -> None:
        timing = flags.pop("timing", None)
        self.config = config_from_flags(psk=PSK, ike=ECP, listen=(), timing=timing, **flags)
        if esp_lifetime is not None:  # shorter than the peers offer: QM2 carries RESPONDER-LIFETIME
            policies = {name: replace(p, proposals=tuple(replace(q, lifetime=esp_lifetime) for q in p.proposals))
                        for name, p in self.config.esp_policies.items()}
            self.config = replace(self.config, esp_policies=policies)
        self.engine = Engine(self.config)
        self.monitor = Monitor()
        self.express = express
        self.thread = thread
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        gateway = Gateway(self.engine, monitor=self.monitor, express=self.express, express_thread=self.thread)
        self.gateway = gateway
        async with gateway:
            self.port = (await gateway.open(("127.0.0.1", 0)))[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> _Served:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def settle(self, seconds: float = 0.3) -> None:
        time.sleep(seconds)


def _rows(served: _Served) -> list[tuple[tuple[str, str], ...]]:
    """The Main Mode rows without what differs from run to run (times, cookies, ports)."""
    varying = ("time", "left", "age", "seconds", "cookie", "handle", "created", "expires", "port", "heard")
    now = time.monotonic()
    return sorted(tuple(sorted((k, str(v)) for k, v in listing.main_mode_row(sa, now).items()
                               if not any(word in k for word in varying)))
                  for sa in served.engine.sas())


def _load(port: int, peers: int, **kwargs: Any) -> Any:
    spec = _spec(("127.0.0.1", port), peers, **kwargs)
    return run_udp(LoadTest(spec, express=False))


@needs_fast_path
@pytest.mark.parametrize("thread", [False, True], ids=["inline", "thread"])
def test_the_gateway_lane_holds_what_the_engine_holds_for_the_same_load(thread: bool) -> None:
    results = {}
    for express in (True, False):
        with _Served(express, thread=thread) as served:
            report = _load(served.port, 80, seed=3)
            served.settle()
            assert report.established == 80, report
            lane = served.engine.express
            if express:
                assert lane is not None and lane.adopted >= 70  # the first offer goes through the engine
                assert served.monitor.extended["express:taken"] == lane.adopted
            else:
                assert lane is None
            stats = served.monitor.statistics()
            results[express] = ({k: stats[k] for k in COMPARED}, _rows(served),
                                sorted(served.monitor.extended[k] for k in served.monitor.extended
                                       if k.startswith("messages:")))
    assert results[True][0] == results[False][0]
    assert results[True][0]["ike_main_mode"] == 80 and results[True][0]["ike_quick_mode"] == 80
    assert results[True][1] == results[False][1]
    assert results[True][2] == results[False][2]  # every message counted once either way


@needs_fast_path
def test_the_gateway_lane_answers_with_the_engines_responder_lifetime() -> None:
    # the gateway's ESP lifetime (1800 s) is shorter than the peers offer (3600 s): the engine
    # adds RESPONDER-LIFETIME to QM2, and so does the lane for the offers like it
    seen = {}
    for express in (True, False):
        with _Served(express, esp_lifetime=1800) as served:
            report = _load(served.port, 40, seed=5)
            served.settle()
            assert report.established == 40
            lifetimes = {ipsec.proposal.lifetime for sa in served.engine.sas() for ipsec in sa.ipsec_sas}
            seen[express] = (served.monitor.extended["responder_lifetime:sent"], lifetimes,
                             served.monitor.statistics()["ike_quick_mode"])
            if express:
                assert served.engine.express is not None and served.engine.express.adopted >= 30
    assert seen[True] == seen[False] == (40, {1800}, 40)


@needs_fast_path
def test_the_gateway_lane_hands_a_wrong_key_to_the_engine() -> None:
    results = {}
    for express in (True, False):
        with _Served(express) as served:
            report = _load(served.port, 40, seed=11, faults=Faults(wrong_psk=0.25), timeout=5.0)
            served.settle()
            stats = served.monitor.statistics()
            results[express] = (report.established, report.failures, stats["authentication_failures"],
                                stats["negotiation_failures"])
    assert results[True] == results[False] == (30, {"AUTHENTICATION-FAILED": 10}, 10, 10)


@needs_fast_path
def test_the_gateway_lane_leaves_a_nat_to_the_engine() -> None:
    with _Served(True) as served:
        report = _load(served.port, 12, nat_t="force")
        served.settle()
        assert report.established == 12
        sas = served.engine.sas()
        assert len(sas) == 12 and all(sa.encapsulated and sa.nat != "none" for sa in sas)
        assert served.engine.express is not None and served.engine.express.adopted == 0


@needs_fast_path
def test_the_gateway_lane_times_a_silent_peer_out_as_the_engine_does() -> None:
    timing = Timing(negotiation_timeout=1.0)
    with _Served(True, timing=timing) as served:
        _load(served.port, 3)  # the offer is known: the lane takes message 3 from now on
        peer = Engine(config_from_flags(psk=PSK, ike=ECP, listen=(), remote="127.0.0.1"))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(2)
        local, target = sock.getsockname(), ("127.0.0.1", served.port)
        try:
            peer.initiate(target, local=local, now=0.0)
            for _ in range(2):  # MM1 -> MM2, MM3 -> MM4, then silence
                for data, _remote, _local in peer.datagrams_to_send():
                    sock.sendto(data, target)
                reply, _ = sock.recvfrom(4096)
                peer.receive_datagram(reply, target, local, 0.0)
            assert peer.sas()[0].state is Phase1State.I_EXPECT_MM6  # MM4 taken, MM5 never sent
            assert served.engine.express is not None and served.engine.express.rust.held == 1
            time.sleep(2.5)
            stats = served.monitor.statistics()
            assert served.engine.express.rust.held == 0
            assert stats["negotiation_failures"] == 1
            assert served.monitor.extended["failures:phase1:timeout"] == 1
            assert [sa.remote[0] for sa in served.engine.sas()].count("127.0.0.2") == 0
        finally:
            sock.close()


@pytest.mark.interop("charon")
@needs_fast_path
def test_a_charon_initiator_gets_its_sa_through_the_gateway_lane() -> None:
    from interop import charon

    with _Served(True) as served:
        _load(served.port, 2)  # the engine answers the generator's offer; charon's is new to it
        port, natt_port = charon.free_udp_ports(2)
        with charon.Charon.start(addr="127.0.0.3", port=port, natt_port=natt_port, psk=PSK, ike=ECP,
                                 remote="127.0.0.1", remote_port=served.port) as peer:
            first = peer.initiate()
            assert first.returncode == 0, first.stdout + first.stderr
            peer.terminate(ike=True)
            second = peer.initiate()  # charon's offer is known now: message 3 onwards in the lane
            assert second.returncode == 0, second.stdout + second.stderr
            served.settle()
            lane = served.engine.express
            assert lane is not None and lane.adopted >= 3
            mine = [sa for sa in served.engine.sas() if sa.remote[0] == "127.0.0.3"
                    and sa.state is Phase1State.ESTABLISHED]
            assert mine and all(sa.ipsec_sas for sa in mine)
            assert any(s.get("child-sas") for s in peer.list_sas())


def test_both_commands_run_with_and_without_the_lanes(tmp_path: Any) -> None:
    import json
    import subprocess
    import sys

    from interop.charon import free_udp_ports

    for flag in ([], ["--no-express"]):
        port = free_udp_ports(1, host="127.0.0.1")[0]
        gateway = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{port}",
                                    "--psk", PSK, "--ike", ECP, "--quiet", *flag],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(1.0)
            out = subprocess.run([sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{port}", "--peers", "50",
                                  "--psk", PSK, "--ike", ECP, "--json", "--no-progress", "--max-seconds", "30", *flag],
                                 capture_output=True, text=True, timeout=60, check=False)
            report = json.loads(out.stdout)
            assert out.returncode == 0 and report["established"] == 50, out.stderr
        finally:
            gateway.terminate()
            gateway.wait(10)
