"""Half-open flood against a responder engine while legitimate peers negotiate.

Sans-IO and bounded: one responder ``Engine`` (the gateway), one initiator ``Engine``
playing ``peers`` legitimate peers (each from its own 127.1.x.y address), and spoofed
Main Mode message 1 datagrams from random 127.x.y.z addresses at ``rate`` per second of
engine time. Time is a fake clock stepped in 1 ms ticks, so the rate is exact and the
run is reproducible; the wall-clock cost is reported next to it.

Long run (documented in bench/README.md)::

    .venv/bin/python tests/floodsim.py --rate 50000 --seconds 10 --peers 1000

``make test`` runs a small version (tests/test_flood.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from ikecore import events as ev  # noqa: E402
from ikecore import wire  # noqa: E402
from ikecore.config import Config, Timing, config_from_flags  # noqa: E402
from ikecore.engine.core import Engine  # noqa: E402
from ikecore.engine.admission import FloodLimits  # noqa: E402
from ikecore.monitor.counters import Monitor  # noqa: E402

GATEWAY = ("127.0.0.1", 500)
# The stated bound: Python heap of the whole simulation (gateway, 1,000 peers' engine,
# the flood generator) as traced by tracemalloc, with the default FloodLimits.
MEMORY_BOUND = 128 * 2**20


@dataclass
class FloodResult:
    flood_sent: int = 0
    peers: int = 0
    established: int = 0
    quick_modes: int = 0
    wall_seconds: float = 0.0
    sim_seconds: float = 0.0
    peak_half_open: int = 0
    peak_traced_bytes: int = 0
    responder_stats: dict[str, int] = field(default_factory=dict)
    extended: dict[str, int] = field(default_factory=dict)
    flood_accounting: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def gateway_config(limits: FloodLimits, ike: str = "aes128-sha256-ecp256") -> Config:
    timing = Timing(retransmit_timeout=1.0, retransmit_tries=4, negotiation_timeout=10.0)
    base = config_from_flags(psk="flood-test-secret", ike=ike, esp="aes128-sha256", listen=(), timing=timing)
    return Config(listen=(), ike_policies=base.ike_policies, esp_policies=base.esp_policies,
                  filters=base.filters, timing=timing, flood=limits)


def spoofed_mm1(rng: random.Random, offer: Any, vary_offer: bool) -> bytes:
    payload = offer
    if vary_offer:  # a different (still acceptable) offer each time: a lifetime nobody else uses
        from ikecore import policy

        proposal = policy.IkeProposal(wire.EncryptionAlgorithm.AES_CBC, 128, wire.HashAlgorithm.SHA2_256, 19,
                                      lifetime=rng.randrange(3600, 86400))
        payload = policy.IkePolicy("x", (proposal,)).offer()
    cookie = rng.randbytes(8)
    return wire.Message(cookie, bytes(8), wire.ExchangeType.IDENTITY_PROTECTION, [payload]).encode()


def spoofed_source(rng: random.Random) -> tuple[str, int]:
    # 127.2.0.0 - 127.255.255.255: never one of the legitimate peers (127.1.x.y)
    return (f"127.{rng.randrange(2, 256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", rng.choice((500, 4500)))


def run_flood(*, rate: int, seconds: float, peers: int, limits: FloodLimits | None = None,
              seed: int = 7, vary_offer: bool = False, trace_memory: bool = True,
              wall_limit: float = 600.0) -> FloodResult:
    """Run the flood; every loop is bounded by the count and by ``wall_limit`` seconds."""
    limits = limits or FloodLimits()
    rng = random.Random(seed)
    config = gateway_config(limits)
    responder = Engine(config, random=rng.randbytes)
    initiator = Engine(gateway_config(FloodLimits()), random=random.Random(seed + 1).randbytes)
    monitor = Monitor()
    offer = config.ike_policies["default"].offer()
    result = FloodResult(peers=peers)
    flood_sources: set[tuple[str, int]] = set()
    legit_handles: dict[int, int] = {}
    tick = 0.001
    now = 1000.0
    per_tick = rate * tick
    total_flood = int(rate * seconds)
    ticks = int(seconds / tick) + int(20 / tick)      # flood window plus 20 s for stragglers
    peer_start = [1000.0 + seconds * i / max(peers, 1) for i in range(peers)]
    next_peer = 0
    credit = 0.0
    if trace_memory:
        gc.collect()
        tracemalloc.start()
    started = time.perf_counter()
    accounting: Counter[str] = Counter()
    for _ in range(ticks):
        if time.perf_counter() - started > wall_limit:
            break
        # legitimate peers start spread over the flood window
        while next_peer < peers and peer_start[next_peer] <= now:
            local = (f"127.1.{next_peer // 250}.{next_peer % 250 + 1}", 500)
            handle = initiator.initiate(GATEWAY, local=local, now=now)
            legit_handles[handle] = next_peer
            next_peer += 1
        # the flood
        credit += per_tick
        while credit >= 1 and result.flood_sent < total_flood:
            credit -= 1
            source = spoofed_source(rng)
            flood_sources.add(source)
            responder.receive_datagram(spoofed_mm1(rng, offer, vary_offer), source, GATEWAY, now)
            result.flood_sent += 1
        # deliver legitimate traffic both ways; replies to spoofed sources go nowhere
        for _round in range(8):
            moved = False
            for data, remote, local in initiator.datagrams_to_send():
                if data[8:16] == bytes(8) and data[18] == wire.ExchangeType.IDENTITY_PROTECTION:
                    accounting["legit_mm1_sent"] += 1
                responder.receive_datagram(data, local, remote, now)
                moved = True
            for data, remote, local in responder.datagrams_to_send():
                if remote in flood_sources and not remote[0].startswith("127.1."):
                    accounting["replies_to_flood"] += 1
                    continue
                initiator.receive_datagram(data, local, remote, now)
                moved = True
            if not moved:
                break
        for engine in (initiator, responder):
            timer = engine.get_timer()
            if timer is not None and timer <= now:
                engine.handle_timer(now)
        while (event := responder.next_event()) is not None:
            monitor.observe(event)
            if isinstance(event, ev.DatagramReceived) and event.message_number == 1 \
                    and event.exchange_type == wire.ExchangeType.IDENTITY_PROTECTION:
                accounting["mm1_received"] += 1
            elif isinstance(event, ev.StatelessCookieSent):
                accounting["mm1_stateless_reply"] += 1
            elif isinstance(event, ev.StatelessCookieVerified):
                accounting["mm3_stateless_verified"] += 1
            elif isinstance(event, ev.Phase1Started):
                accounting["responder_sa_created"] += 1
            elif isinstance(event, ev.HalfOpenRefused):
                accounting["refused"] += 1
            elif isinstance(event, ev.HalfOpenDropped):
                accounting["oldest_dropped"] += 1
            elif isinstance(event, ev.Phase1Failed) and event.handle == 0:
                accounting["mm1_rejected"] += 1
        while (event := initiator.next_event()) is not None:
            if isinstance(event, ev.Phase1Established) and event.handle in legit_handles:
                result.established += 1
            elif isinstance(event, ev.Phase2Established) and event.handle in legit_handles:
                result.quick_modes += 1
        result.peak_half_open = max(result.peak_half_open, responder.flood_stats()["half_open"])
        now += tick
        if result.flood_sent >= total_flood and next_peer >= peers and result.quick_modes >= peers:
            break
    result.wall_seconds = time.perf_counter() - started
    result.sim_seconds = now - 1000.0
    if trace_memory:
        result.peak_traced_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    result.responder_stats = monitor.statistics(responder)
    result.extended = dict(monitor.extended)
    # Every message 1 received (flood and legitimate) got exactly one outcome: a stateless
    # message 2, a half-open SA, a refusal, or a rejection (no proposal chosen).
    stateful = accounting["responder_sa_created"] - accounting["mm3_stateless_verified"]
    accounting["mm1_outcomes"] = (accounting["mm1_stateless_reply"] + stateful + accounting["refused"]
                                  + accounting["mm1_rejected"])
    accounting["flood_received"] = accounting["mm1_received"] - accounting["legit_mm1_sent"]
    result.flood_accounting = dict(accounting)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=50000, help="spoofed message 1 per second (engine time)")
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration (engine time)")
    parser.add_argument("--peers", type=int, default=1000, help="legitimate peers")
    parser.add_argument("--vary-offer", action="store_true", help="a different SA offer in every flood datagram")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    result = run_flood(rate=args.rate, seconds=args.seconds, peers=args.peers, seed=args.seed,
                       vary_offer=args.vary_offer)
    print(json.dumps(result.summary(), indent=1, sort_keys=True))
    acc = result.flood_accounting
    limits = FloodLimits()
    ok = (result.quick_modes >= 0.99 * result.peers and result.peak_half_open <= limits.max_half_open
          and result.peak_traced_bytes < MEMORY_BOUND and acc["flood_received"] == result.flood_sent
          and acc["mm1_outcomes"] == acc["mm1_received"])
    print(f"legitimate peers established: {result.established}/{result.peers} (Quick Mode {result.quick_modes}); "
          f"flood {result.flood_sent} datagrams in {result.sim_seconds:.1f} s engine time, "
          f"{result.wall_seconds:.1f} s wall; peak half-open {result.peak_half_open}; "
          f"peak traced memory {result.peak_traced_bytes / 2**20:.1f} MiB (bound {MEMORY_BOUND // 2**20} MiB); "
          f"flood accounted {acc['flood_received']}/{result.flood_sent}; {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
