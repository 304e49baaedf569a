"""The IKEv1 load generator (layer L5): many simulated peers against one gateway.

Design note
-----------
``LoadTest`` is sans-IO like the engine it drives: callers feed it datagrams and the
clock, it returns datagrams to send and the next deadline. It owns two initiator
``Engine`` objects (the right pre-shared key, and a wrong one for the share of peers the
fault injection says), a peer schedule and the measurements. Each simulated peer is one
ISAKMP SA initiated from its own loopback address (127.x.y.z). With a pre-shared key its
identity is that address; with certificates (``LoadSpec.credentials``) every peer signs
with the one certificate given and names its subject (ID_DER_ASN1_DN), as strongSwan's
load tester does with a static certificate.

Peer life cycle (one row per peer; ``state`` is a small table, not scattered flags)::

    WAITING --start--> MAIN_MODE --Phase1Established--> QUICK_MODE --last Phase2Established--> DONE
                          |                                 |
                          +--Phase1Failed-------------------+--Phase1Failed/Phase2Failed--> FAILED

With ``quick_modes=0`` a peer is DONE at Phase1Established. Failures are grouped by
reason: the Notify the gateway sent (``AUTHENTICATION-FAILED``, ``NO-PROPOSAL-CHOSEN``,
...) or ``timeout`` when the gateway stopped answering.

Schedule: open loop (``rate`` new peers per second, whatever happens to earlier ones)
or closed loop (``concurrency`` peers negotiating at any time). ``ramp`` seconds raise
the rate (or the concurrency) linearly from zero. ``duration`` stops starting new peers;
``max_seconds`` bounds the whole run. Every loop in this module is bounded by the peer
count, a per-step cap or a deadline.

Fault injection (``Faults``) acts on the generator's own datagrams, both directions: a
share is dropped, duplicated, corrupted (one byte flipped after the ISAKMP header) or
delayed; the engine's retransmissions must recover the first three and the last.

Runners: ``run_in_memory`` joins the generator to a responder ``Engine`` with a fake
clock (tests), ``run_udp`` sends real datagrams from one socket with ``IP_PKTINFO``
choosing each peer's 127.x.y.z source address (so 10,000 peers need one descriptor).
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import os
import random
import resource
import select
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from ikecore import events as ev
from ikecore.config import Config, Timing, config_from_flags
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
from ikecore.events import Address
from ikecore.gateway.frontdoor import IP_PKTINFO, pktinfo_destination, source_pktinfo

__all__ = ["Faults", "LoadSpec", "LoadTest", "Report", "peer_address", "run_in_memory", "run_udp",
           "format_report", "ProgressBar"]

MAX_STARTS_PER_STEP = 512
MAX_DATAGRAMS_PER_READ = 256
WRONG_PSK_SUFFIX = "-not-the-right-key"


class PeerState(enum.Enum):
    WAITING = "waiting"
    MAIN_MODE = "main_mode"
    QUICK_MODE = "quick_mode"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Faults:
    """Shares (0..1) of datagrams to drop, duplicate, corrupt or delay, and of peers that
    use a wrong pre-shared key. ``delay_seconds`` is how long a delayed datagram waits."""

    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    delay_seconds: float = 0.05
    wrong_psk: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "corrupt", "delay", "wrong_psk"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')}", f"must be a share between 0 and 1, got {value}")
        if self.delay_seconds < 0:
            raise ConfigError("--delay-seconds", "must not be negative")

    @property
    def any_datagram_fault(self) -> bool:
        return bool(self.drop or self.duplicate or self.corrupt or self.delay)


@dataclass(frozen=True)
class LoadSpec:
    """What to run: target, peers, proposals, schedule, bounds, faults."""

    target: Address
    peers: int
    psk: str
    ike: str = "aes128-sha256-modp2048"
    esp: str = "aes128-sha256"
    quick_modes: int = 1
    rate: float | None = None
    concurrency: int | None = None
    ramp: float = 0.0
    duration: float | None = None
    timeout: float = 30.0
    retransmit_timeout: float = 1.0
    retransmit_tries: int = 4
    max_seconds: float = 600.0
    first_address: str = "127.1.0.1"
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    #: ``ikecore.protocol.auth.Credentials``: RSA signatures instead of the pre-shared key.
    credentials: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.credentials is not None and self.faults.wrong_psk:
            raise ConfigError("--wrong-psk", "applies to pre-shared keys; leave it out with --cert")
        if not 1 <= self.peers <= 1_000_000:
            raise ConfigError("--peers", "must be between 1 and 1,000,000")
        if self.rate is not None and self.concurrency is not None:
            raise ConfigError("--rate", "give --rate (open loop) or --concurrency (closed loop), not both")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("--rate", "must be a positive number of peers per second")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("--concurrency", "must be at least 1")
        if not 0 <= self.quick_modes <= 64:
            raise ConfigError("--quick-modes", "must be between 0 and 64")
        for name in ("ramp", "timeout", "retransmit_timeout", "max_seconds"):
            if getattr(self, name) < 0 or (name != "ramp" and getattr(self, name) == 0):
                raise ConfigError(f"--{name.replace('_', '-')}", "must be a positive number of seconds")
        if self.duration is not None and self.duration <= 0:
            raise ConfigError("--duration", "must be a positive number of seconds")
        try:
            first = ipaddress.IPv4Address(self.first_address)
        except ValueError:
            raise ConfigError("--first-address", f"{self.first_address!r} is not an IPv4 address") from None
        if not first.is_loopback:
            raise ConfigError("--first-address", "simulated peers use loopback addresses (127.x.y.z)")
        peer_address(self.first_address, self.peers - 1)  # the last one must still be loopback

    @property
    def closed_loop(self) -> int:
        if self.rate is None:
            return self.concurrency if self.concurrency is not None else 100
        return 0


def peer_address(first: str, index: int) -> str:
    """The address of peer ``index``: consecutive from ``first``, skipping .0 and .255."""
    base = int(ipaddress.IPv4Address(first))
    block, low = base >> 8, base & 0xFF
    if low in (0, 255):
        raise ConfigError("--first-address", "must not end in .0 or .255")
    position = block * 254 + (low - 1) + index
    value = (position // 254) * 256 + position % 254 + 1
    address = ipaddress.IPv4Address(value)
    if not address.is_loopback:
        raise ConfigError("--peers", f"peer {index} would be {address}, outside 127.0.0.0/8")
    return str(address)


@dataclass(slots=True)
class _Peer:
    index: int
    address: str
    wrong_psk: bool
    engine: Engine | None = None
    handle: int = 0
    state: PeerState = PeerState.WAITING
    started: float = 0.0
    phase1_at: float = 0.0
    quick_modes_done: int = 0
    quick_mode_started: float = 0.0
    reason: str = ""


@dataclass
class Report:
    """The outcome of a run; ``as_dict`` is the ``--json`` object."""

    peers: int
    started: int
    established: int
    failed: int
    unfinished: int
    seconds: float
    sas_per_second: float
    quick_modes: int
    retransmissions: int
    failures: dict[str, int]
    latency_ms: dict[str, dict[str, float]]
    faults: dict[str, int]
    wrong_psk_peers: int
    cpu_seconds: float = 0.0
    rate_by_tenth: list[float] = field(default_factory=list)
    target: str = ""
    ike: str = ""
    esp: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "ike": self.ike, "esp": self.esp, "peers": self.peers,
            "started": self.started, "established": self.established, "failed": self.failed,
            "unfinished": self.unfinished, "seconds": round(self.seconds, 4),
            "sas_per_second": round(self.sas_per_second, 1), "quick_modes": self.quick_modes,
            "retransmissions": self.retransmissions, "failures": dict(self.failures),
            "latency_ms": self.latency_ms, "faults": dict(self.faults),
            "wrong_psk_peers": self.wrong_psk_peers, "cpu_seconds": round(self.cpu_seconds, 3),
            "rate_by_tenth": [round(r, 1) for r in self.rate_by_tenth],
        }


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000, 3)

    return {"count": len(ordered), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(ordered[-1] * 1000, 3)}


def rate_by_tenth(begin: float, done_times: list[float]) -> list[float]:
    """SAs per second in each tenth of the completions, in order (from ``begin``): a
    generator or gateway that slows as SAs accumulate shows a falling series."""
    times = sorted(done_times)
    if len(times) < 10:
        return []
    rates, previous = [], begin
    for tenth in range(10):
        group = times[len(times) * tenth // 10:len(times) * (tenth + 1) // 10]
        span = group[-1] - previous
        rates.append(len(group) / span if span > 0 else 0.0)
        previous = group[-1]
    return rates


def _reason(text: str) -> str:
    """Group failure texts: the Notify name the peer sent, ``timeout``, or the text."""
    if text.startswith("peer sent "):
        return text[len("peer sent "):]
    if "timed out" in text or "retransmission limit" in text or "does not answer" in text:
        return "timeout"
    return text.split(" (")[0].split(";")[0]


class LoadTest:
    """Sans-IO load generator: see the module's design note.

    Args:
        spec: what to run.
        keypair: DH key-pair factory handed to both engines (e.g. a ``KeypairReserve``).
        random_bytes: byte source for the engines (tests inject a seeded one).
    """

    def __init__(self, spec: LoadSpec, *, keypair: Callable[[int], Any] | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom, local_port: int = 0) -> None:
        self.spec = spec
        self.local_port = local_port
        timing = Timing(retransmit_timeout=spec.retransmit_timeout, retransmit_tries=spec.retransmit_tries,
                        negotiation_timeout=spec.timeout)
        self.right = Engine(self._config(spec.psk, timing), keypair=keypair, random=random_bytes)
        self.wrong = Engine(self._config(spec.psk + WRONG_PSK_SUFFIX, timing), keypair=keypair,
                            random=random_bytes)
        self._rng = random.Random(spec.seed)
        wrong_count = round(spec.peers * spec.faults.wrong_psk)
        wrong = set(self._rng.sample(range(spec.peers), wrong_count)) if wrong_count else set()
        self.peers = [_Peer(i, peer_address(spec.first_address, i), i in wrong) for i in range(spec.peers)]
        self._by_handle: dict[tuple[int, int], _Peer] = {}
        self._by_address: dict[str, _Peer] = {p.address: p for p in self.peers}
        self._next = 0
        self._in_flight = 0
        self._begin: float | None = None
        self._last_done: float | None = None
        self._delayed: list[tuple[float, bytes, Address, Address]] = []
        self._outgoing: list[tuple[bytes, Address, Address]] = []
        self.latency: dict[str, list[float]] = {"main_mode": [], "quick_mode": [], "total": []}
        self.retransmissions = 0
        self.fault_counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.established = 0
        self.failed = 0
        self.quick_modes_done = 0
        self.done_times: list[float] = []

    def _config(self, psk: str, timing: Timing) -> Config:
        signatures = self.spec.credentials is not None
        return config_from_flags(psk="" if signatures else psk, ike=self.spec.ike, esp=self.spec.esp, listen=(),
                                 remote=self.spec.target[0], timing=timing, credentials=self.spec.credentials)

    # --- schedule -------------------------------------------------------------------------

    def _allowed_starts(self, elapsed: float) -> int:
        """How many peers the schedule allows to have started after ``elapsed`` seconds."""
        spec = self.spec
        if spec.duration is not None and elapsed > spec.duration:
            return self._next
        if spec.rate is None:
            limit = spec.closed_loop
            if spec.ramp > 0 and elapsed < spec.ramp:
                limit = max(1, int(limit * elapsed / spec.ramp))
            return self._next + max(0, limit - self._in_flight)
        if spec.ramp > 0:
            if elapsed < spec.ramp:
                return int(spec.rate * elapsed * elapsed / (2 * spec.ramp) + 1e-9) + 1
            return int(spec.rate * (elapsed - spec.ramp / 2) + 1e-9) + 1
        return int(spec.rate * elapsed + 1e-9) + 1

    def _next_start_time(self) -> float | None:
        """When the open-loop schedule next allows a start (None: closed loop or done)."""
        spec = self.spec
        if self._begin is None or self._next >= len(self.peers) or spec.rate is None:
            return None
        n = self._next  # the (n+1)-th start happens when allowed(t) > n
        if spec.ramp > 0 and n < spec.rate * spec.ramp / 2:
            t = math.sqrt(2 * spec.ramp * n / spec.rate)
        else:
            t = n / spec.rate + (spec.ramp / 2 if spec.ramp > 0 else 0.0)
        if spec.duration is not None and t > spec.duration:
            return None
        return self._begin + t

    def start(self, now: float) -> None:
        """Start the clock; the first peers begin at once."""
        if self._begin is None:
            self._begin = now
        self.step(now)

    def step(self, now: float) -> None:
        """Start the peers the schedule allows now (at most MAX_STARTS_PER_STEP)."""
        if self._begin is None:
            return
        allowed = min(len(self.peers), self._allowed_starts(now - self._begin))
        for _ in range(MAX_STARTS_PER_STEP):
            if self._next >= allowed:
                break
            peer = self.peers[self._next]
            self._next += 1
            self._start_peer(peer, now)
        self._drain(now)

    def _start_peer(self, peer: _Peer, now: float) -> None:
        engine = self.wrong if peer.wrong_psk else self.right
        peer.engine = engine
        peer.started = now
        peer.state = PeerState.MAIN_MODE
        self._in_flight += 1
        peer.handle = engine.initiate(self.spec.target, local=(peer.address, self.local_port), now=now,
                                      quick_mode=self.spec.quick_modes > 0)
        self._by_handle[(id(engine), peer.handle)] = peer

    # --- I/O surface ----------------------------------------------------------------------

    def receive_datagram(self, data: bytes, remote: Address, local: Address, now: float) -> None:
        """A datagram from the gateway to the peer at ``local``; never raises."""
        peer = self._by_address.get(local[0])
        if peer is None or peer.engine is None:
            self.fault_counts["stray_datagrams"] += 1
            return
        for data in self._inject(data):
            peer.engine.receive_datagram(data, remote, local, now)
        self._drain(now)
        if self.spec.rate is None and self._in_flight < self.spec.closed_loop:
            self.step(now)

    def handle_timer(self, now: float) -> None:
        """Fire engine timers, release delayed datagrams, start scheduled peers."""
        for engine in (self.right, self.wrong):
            deadline = engine.get_timer()
            if deadline is not None and deadline <= now:
                engine.handle_timer(now)
        if self._delayed:
            due = [d for d in self._delayed if d[0] <= now]
            self._delayed = [d for d in self._delayed if d[0] > now]
            for _at, data, remote, local in due:
                self._outgoing.append((data, remote, local))
        self.step(now)

    def get_timer(self) -> float | None:
        """The earliest time ``handle_timer`` must run, or None when nothing waits."""
        candidates = [self.right.get_timer(), self.wrong.get_timer(), self._next_start_time()]
        if self._delayed:
            candidates.append(min(d[0] for d in self._delayed))
        found = [c for c in candidates if c is not None]
        return min(found) if found else None

    def datagrams_to_send(self) -> list[tuple[bytes, Address, Address]]:
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def finished(self) -> bool:
        """Every peer has started and ended."""
        return self._in_flight == 0 and self._next >= len(self.peers)

    def finished_by_duration(self, now: float) -> bool:
        """The duration is over and no peer is still negotiating."""
        return (self._in_flight == 0 and self._begin is not None and self.spec.duration is not None
                and now - self._begin > self.spec.duration)

    # --- internals ------------------------------------------------------------------------

    def _inject(self, data: bytes) -> list[bytes]:
        faults = self.spec.faults
        if not faults.any_datagram_fault:
            return [data]
        roll = self._rng.random
        if faults.drop and roll() < faults.drop:
            self.fault_counts["dropped"] += 1
            return []
        if faults.corrupt and roll() < faults.corrupt:
            self.fault_counts["corrupted"] += 1
            position = self._rng.randrange(min(len(data) - 1, 32), len(data)) if len(data) > 33 else len(data) - 1
            data = data[:position] + bytes([data[position] ^ 0x5A]) + data[position + 1:]
        if faults.duplicate and roll() < faults.duplicate:
            self.fault_counts["duplicated"] += 1
            return [data, data]
        return [data]

    def _drain(self, now: float) -> None:
        faults = self.spec.faults
        for engine in (self.right, self.wrong):
            for data, remote, local in engine.datagrams_to_send():
                for item in self._inject(data):
                    if faults.delay and self._rng.random() < faults.delay:
                        self.fault_counts["delayed"] += 1
                        self._delayed.append((now + faults.delay_seconds, item, remote, local))
                    else:
                        self._outgoing.append((item, remote, local))
            while (event := engine.next_event()) is not None:
                self._observe(engine, event, now)

    def _observe(self, engine: Engine, event: ev.Event, now: float) -> None:
        if isinstance(event, ev.RetransmitSent):
            self.retransmissions += 1
            return
        handle = getattr(event, "handle", None)
        if handle is None:
            return
        peer = self._by_handle.get((id(engine), handle))
        if peer is None or peer.state in (PeerState.DONE, PeerState.FAILED):
            return
        if isinstance(event, ev.Phase1Established):
            peer.phase1_at = now
            self.latency["main_mode"].append(now - peer.started)
            if self.spec.quick_modes == 0:
                self._done(peer, now)
            else:
                peer.state = PeerState.QUICK_MODE
                peer.quick_mode_started = now
        elif isinstance(event, ev.Phase2Established):
            self.latency["quick_mode"].append(now - peer.quick_mode_started)
            self.quick_modes_done += 1
            peer.quick_modes_done += 1
            if peer.quick_modes_done >= self.spec.quick_modes:
                self._done(peer, now)
            else:
                peer.quick_mode_started = now
                engine.initiate_quick_mode(peer.handle, now)
        elif isinstance(event, (ev.Phase1Failed, ev.Phase2Failed)):
            self._fail(peer, event.reason, now)
        elif isinstance(event, ev.SaDeleted) and event.phase == 1:
            self._fail(peer, event.reason, now)

    def _done(self, peer: _Peer, now: float) -> None:
        peer.state = PeerState.DONE
        self._in_flight -= 1
        self.established += 1
        self.latency["total"].append(now - peer.started)
        self.done_times.append(now)
        self._last_done = now

    def _fail(self, peer: _Peer, reason: str, now: float) -> None:
        peer.state = PeerState.FAILED
        peer.reason = _reason(reason)
        self._in_flight -= 1
        self.failed += 1
        self.failures[peer.reason] += 1
        self._last_done = now

    # --- results --------------------------------------------------------------------------

    @property
    def started(self) -> int:
        return self._next

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def elapsed(self, now: float) -> float:
        return 0.0 if self._begin is None else now - self._begin

    def report(self, now: float, cpu_seconds: float = 0.0) -> Report:
        end = self._last_done if self._last_done is not None else now
        seconds = max(0.0, end - self._begin) if self._begin is not None else 0.0
        return Report(
            peers=len(self.peers), started=self._next, established=self.established, failed=self.failed,
            unfinished=self._next - self.established - self.failed, seconds=seconds,
            sas_per_second=self.established / seconds if seconds > 0 else 0.0,
            quick_modes=self.quick_modes_done, retransmissions=self.retransmissions,
            failures=dict(self.failures.most_common()),
            latency_ms={phase: _percentiles(samples) for phase, samples in self.latency.items()},
            faults=dict(self.fault_counts), wrong_psk_peers=sum(1 for p in self.peers if p.wrong_psk),
            cpu_seconds=cpu_seconds, rate_by_tenth=rate_by_tenth(self._begin or 0.0, self.done_times),
            target=f"{self.spec.target[0]}:{self.spec.target[1]}", ike=self.spec.ike, esp=self.spec.esp)


# --- runners ----------------------------------------------------------------------------


def run_in_memory(load: LoadTest, responder: Engine, *, now: float = 1000.0,
                  max_steps: int = 2_000_000) -> tuple[Report, float]:
    """Join ``load`` to ``responder`` with a fake clock; returns the report and the end time.

    Datagrams arrive instantly; when nothing moves, the clock jumps to the next deadline.
    Bounded by ``max_steps`` and by the spec's ``max_seconds`` of fake time.
    """
    begin = now
    load.start(now)
    for _ in range(max_steps):
        moved = False
        for data, remote, local in load.datagrams_to_send():
            responder.receive_datagram(data, local, remote, now)
            moved = True
        for data, remote, local in responder.datagrams_to_send():
            load.receive_datagram(data, local, remote, now)
            moved = True
        while responder.next_event() is not None:
            pass
        if moved:
            continue
        if load.finished or load.finished_by_duration(now) or now - begin > load.spec.max_seconds:
            break
        deadlines = [d for d in (load.get_timer(), responder.get_timer()) if d is not None]
        if not deadlines:
            break
        now = max(now, min(deadlines))
        responder.handle_timer(now)
        load.handle_timer(now)
    return load.report(now), now


class ProgressBar:
    """One self-rewriting status line: done/total, live rate, failures, in flight."""

    def __init__(self, out: TextIO, total: int, width: int = 30, interval: float = 0.25) -> None:
        self.out = out
        self.total = total
        self.width = width
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.interval = interval if self.tty else max(interval, 1.0)  # a log gets one line a second
        self._last = 0.0
        self._samples: list[tuple[float, int]] = []

    def update(self, load: LoadTest, now: float, force: bool = False) -> None:
        if not force and now - self._last < self.interval:
            return
        self._last = now
        done = load.established + load.failed
        self._samples.append((now, load.established))
        self._samples = [s for s in self._samples if now - s[0] <= 2.0]
        first = self._samples[0]
        live = (load.established - first[1]) / (now - first[0]) if now > first[0] else 0.0
        filled = int(self.width * done / self.total) if self.total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        start, end = ("\r", "") if self.tty else ("", "\n")
        self.out.write(f"{start}[{bar}] {done}/{self.total}  {live:7.0f} SAs/s  "
                       f"failed {load.failed}  in flight {load.in_flight}  "
                       f"retransmits {load.retransmissions}  {load.elapsed(now):6.1f} s {end}")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
        self.out.flush()


class Progress(Protocol):
    """What ``run_udp`` reports progress to (a ProgressBar, or a worker's pipe)."""

    interval: float

    def update(self, load: LoadTest, now: float, force: bool = False) -> None: ...

    def close(self) -> None: ...


def run_udp(load: LoadTest, *, progress: Progress | None = None, bind: str = "0.0.0.0") -> Report:
    """Run ``load`` over real UDP: one socket, each peer's source address set per datagram.

    The socket binds ``bind:load.local_port`` (0: ephemeral, then every peer uses that
    port). Bounded by the spec's ``max_seconds``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((bind, load.local_port))
        load.local_port = sock.getsockname()[1]
        sock.setblocking(False)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        cpu_start = _cpu()
        clock = time.monotonic
        now = clock()
        hard_stop = now + load.spec.max_seconds
        load.start(now)
        ancillary_size = socket.CMSG_SPACE(12)
        while True:
            _send_all(sock, load)
            now = clock()
            if load.finished or load.finished_by_duration(now) or now >= hard_stop:
                break
            deadline = load.get_timer()
            wait = hard_stop - now if deadline is None else max(0.0, min(deadline, hard_stop) - now)
            if progress is not None:
                progress.update(load, now)
                wait = min(wait, progress.interval)
            if poller.poll(wait * 1000.0):
                for _ in range(MAX_DATAGRAMS_PER_READ):
                    try:
                        data, ancdata, _flags, remote = sock.recvmsg(65535, ancillary_size)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        load.fault_counts["receive_errors"] += 1
                        break
                    local = pktinfo_destination(ancdata)
                    if local is not None:
                        load.receive_datagram(data, (remote[0], remote[1]), (local, load.local_port), clock())
                    # answer at once: holding replies back for a batch leaves the gateway idle
                    # meanwhile (the two sides fall into lockstep, each half busy)
                    _send_all(sock, load)
            now = clock()
            deadline = load.get_timer()
            if deadline is not None and deadline <= now:
                load.handle_timer(now)
        now = clock()
        if progress is not None:
            progress.update(load, now, force=True)
            progress.close()
        return load.report(now, _cpu() - cpu_start)
    finally:
        sock.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _send_all(sock: socket.socket, load: LoadTest) -> None:
    for data, remote, local in load.datagrams_to_send():
        try:
            sock.sendmsg([data], source_pktinfo(local[0]), 0, remote)
        except BlockingIOError:
            # the send buffer is full: wait briefly (bounded) and try once more
            select.select([], [sock], [], 0.05)
            try:
                sock.sendmsg([data], source_pktinfo(local[0]), 0, remote)
            except OSError:
                load.fault_counts["send_errors"] += 1
        except OSError:
            load.fault_counts["send_errors"] += 1


# --- several generator processes ---------------------------------------------------------


class _PipeProgress:
    """Stands in for a ProgressBar inside a worker: sends counts to the parent."""

    def __init__(self, conn: Any, interval: float = 0.25) -> None:
        self.conn = conn
        self.interval = interval
        self._last = 0.0

    def update(self, load: LoadTest, now: float, force: bool = False) -> None:
        if force or now - self._last >= self.interval:
            self._last = now
            self.conn.send(("progress", load.established, load.failed, load.in_flight, load.retransmissions,
                            load.elapsed(now)))

    def close(self) -> None:
        pass


def _worker(conn: Any, spec: LoadSpec, dh_threads: int, local_port: int) -> None:
    from ikecore import dh

    pool = dh.DhPool(dh_threads) if dh_threads else None
    try:
        load = LoadTest(spec, keypair=dh.KeypairReserve(pool) if pool is not None else None, local_port=local_port)
        report = run_udp(load, progress=_PipeProgress(conn))
        conn.send(("done", report, load.latency, load._begin, load._last_done, load.done_times))
    finally:
        if pool is not None:
            pool.close()
        conn.close()


def _split(spec: LoadSpec, workers: int) -> list[LoadSpec]:
    """Consecutive peer ranges; rate and concurrency shared out; one seed each."""
    from dataclasses import replace

    specs, first = [], 0
    for index in range(workers):
        count = spec.peers // workers + (1 if index < spec.peers % workers else 0)
        if count == 0:
            continue
        specs.append(replace(
            spec, peers=count, first_address=peer_address(spec.first_address, first),
            rate=spec.rate / workers if spec.rate is not None else None,
            concurrency=max(1, spec.closed_loop // workers) if spec.rate is None else None,
            seed=None if spec.seed is None else spec.seed * 1000 + index))
        first += count
    return specs


def run_processes(spec: LoadSpec, workers: int, *, dh_threads: int = 1, local_port: int = 0,
                  progress: ProgressBar | None = None) -> Report:
    """Run the load test in ``workers`` forked processes, each with its own socket, a
    share of the peers (consecutive addresses) and of the rate or concurrency; one
    merged report (rate over the union of the workers' busy spans)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    parts = _split(spec, workers)
    pipes, processes = [], []
    for index, part in enumerate(parts):
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, part, dh_threads,
                                                        local_port + index if local_port else 0), daemon=True)
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)
    status: dict[int, tuple[int, int, int, int, float]] = {}
    results: dict[int, tuple[Any, ...]] = {}
    deadline = time.monotonic() + spec.max_seconds + 60
    view = _ProgressView(spec)
    try:
        while len(results) < len(pipes) and time.monotonic() < deadline:
            ready = [i for i, p in enumerate(pipes) if i not in results and p.poll(0.05)]
            for i in ready:
                try:
                    message = pipes[i].recv()
                except EOFError:
                    results[i] = ("lost",)
                    continue
                if message[0] == "progress":
                    status[i] = message[1:]
                else:
                    results[i] = message
            if progress is not None and status:
                view.set(status)
                progress.update(view, time.monotonic())  # type: ignore[arg-type]
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.kill()
    if progress is not None:
        view.set(status)
        progress.update(view, time.monotonic(), force=True)  # type: ignore[arg-type]
        progress.close()
    return _merge(spec, [results.get(i, ("lost",)) for i in range(len(pipes))])


class _ProgressView:
    """The few LoadTest attributes ProgressBar reads, summed over workers."""

    def __init__(self, spec: LoadSpec) -> None:
        self.established = self.failed = self.in_flight = self.retransmissions = 0
        self._elapsed = 0.0

    def set(self, status: dict[int, tuple[int, int, int, int, float]]) -> None:
        rows = list(status.values())
        self.established = sum(r[0] for r in rows)
        self.failed = sum(r[1] for r in rows)
        self.in_flight = sum(r[2] for r in rows)
        self.retransmissions = sum(r[3] for r in rows)
        self._elapsed = max((r[4] for r in rows), default=0.0)

    def elapsed(self, now: float) -> float:
        return self._elapsed


def _merge(spec: LoadSpec, results: list[tuple[Any, ...]]) -> Report:
    done = [r for r in results if r[0] == "done"]
    reports: list[Report] = [r[1] for r in done]
    latency: dict[str, list[float]] = {"main_mode": [], "quick_mode": [], "total": []}
    for r in done:
        for phase, samples in r[2].items():
            latency[phase].extend(samples)
    begins = [r[3] for r in done if r[3] is not None]
    done_times = [t for r in done for t in r[5]]
    ends = [r[4] for r in done if r[4] is not None]
    seconds = max(ends) - min(begins) if begins and ends else 0.0
    failures: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    for report in reports:
        failures.update(report.failures)
        faults.update(report.faults)
    lost = len(results) - len(done)
    if lost:
        failures["generator process lost"] += lost
    established = sum(r.established for r in reports)
    started = sum(r.started for r in reports)
    return Report(
        peers=spec.peers, started=started, established=established, failed=sum(r.failed for r in reports),
        unfinished=spec.peers - established - sum(r.failed for r in reports) if lost else
        sum(r.unfinished for r in reports), seconds=seconds,
        sas_per_second=established / seconds if seconds > 0 else 0.0,
        quick_modes=sum(r.quick_modes for r in reports), retransmissions=sum(r.retransmissions for r in reports),
        failures=dict(failures.most_common()),
        latency_ms={phase: _percentiles(samples) for phase, samples in latency.items()},
        faults=dict(faults), wrong_psk_peers=sum(r.wrong_psk_peers for r in reports),
        cpu_seconds=sum(r.cpu_seconds for r in reports),
        rate_by_tenth=rate_by_tenth(min(begins), done_times) if begins else [],
        target=f"{spec.target[0]}:{spec.target[1]}", ike=spec.ike, esp=spec.esp)


# --- formatting ---------------------------------------------------------------------------


def format_report(report: Report) -> str:
    """The human-readable final report."""
    lines = [
        f"load test against {report.target}: {report.ike} / ESP {report.esp}",
        f"  peers {report.peers}, started {report.started}, established {report.established}, "
        f"failed {report.failed}, unfinished {report.unfinished}",
        f"  {report.sas_per_second:.1f} SAs per second over {report.seconds:.2f} s "
        f"({report.quick_modes} Quick Modes); retransmissions {report.retransmissions}; "
        f"generator CPU {report.cpu_seconds:.2f} s",
        "  latency (ms)      count      p50      p90      p99      max",
    ]
    for phase, stats in report.latency_ms.items():
        if stats.get("count"):
            lines.append(f"    {phase:<14} {stats['count']:>7} {stats['p50']:>8.1f} {stats['p90']:>8.1f} "
                         f"{stats['p99']:>8.1f} {stats['max']:>8.1f}")
    if report.rate_by_tenth:
        lines.append("  SAs/s by tenth of the run: " + " ".join(f"{r:.0f}" for r in report.rate_by_tenth))
    if report.failures:
        lines.append("  failures by reason:")
        lines += [f"    {count:>7}  {reason}" for reason, count in report.failures.items()]
    if report.wrong_psk_peers:
        lines.append(f"  peers given a wrong pre-shared key: {report.wrong_psk_peers}")
    if report.faults:
        lines.append("  injected: " + ", ".join(f"{k} {v}" for k, v in sorted(report.faults.items())))
    return "\n".join(lines)


def report_json(report: Report) -> str:
    return json.dumps(report.as_dict(), sort_keys=True)


# --- command line -------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register ``ikecore loadtest`` on the CLI's sub-parsers."""
    parser = sub.add_parser("loadtest", help="simulate many IKEv1 peers against a gateway")
    parser.add_argument("target", metavar="ADDR[:PORT]")
    parser.add_argument("--peers", type=int, required=True, help="simulated peers (one ISAKMP SA each)")
    parser.add_argument("--psk", default="secret", help="pre-shared key")
    parser.add_argument("--cert", metavar="FILE",
                        help="X.509 certificate every peer signs with (RSA; with --key and --ca, instead of --psk)")
    parser.add_argument("--key", metavar="FILE", help="the certificate's RSA private key (PEM or DER)")
    parser.add_argument("--ca", metavar="FILE", action="append",
                        help="CA certificate that validates the gateway's certificate (repeatable)")
    parser.add_argument("--ike", default="aes128-sha256-modp2048", help="IKE proposals")
    parser.add_argument("--esp", default="aes128-sha256", help="ESP proposals")
    parser.add_argument("--quick-modes", type=int, default=1, help="Quick Modes per peer (0: Main Mode only)")
    parser.add_argument("--no-quick-mode", action="store_true", help="same as --quick-modes 0")
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--rate", type=float, help="open loop: new peers per second")
    loop.add_argument("--concurrency", type=int, help="closed loop: peers negotiating at once [100]")
    parser.add_argument("--ramp", type=float, default=0.0, metavar="SECONDS",
                        help="raise the rate or concurrency linearly over this long")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop starting peers after this")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard bound on the whole run")
    parser.add_argument("--timeout", type=float, default=30.0, help="negotiation timeout per peer")
    parser.add_argument("--retransmit-timeout", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--first-address", default="127.1.0.1", help="first peer address (127.x.y.z)")
    parser.add_argument("--local-port", type=int, default=0, help="UDP port of every peer (default ephemeral)")
    parser.add_argument("--workers", type=int, default=1,
                        help="generator processes, each with a share of the peers and its own socket")
    parser.add_argument("--dh-threads", type=int, default=1,
                        help="threads pre-computing DH key pairs (0: compute them inline)")
    for name, text in (("drop", "drop"), ("duplicate", "duplicate"), ("corrupt", "corrupt one byte of"),
                       ("delay", "delay")):
        parser.add_argument(f"--{name}", type=float, default=0.0, metavar="SHARE",
                            help=f"{text} this share (0..1) of datagrams, both directions")
    parser.add_argument("--delay-seconds", type=float, default=0.05, help="how long a delayed datagram waits")
    parser.add_argument("--wrong-psk", type=float, default=0.0, metavar="SHARE",
                        help="this share of peers uses a wrong pre-shared key")
    parser.add_argument("--seed", type=int, help="seed for fault injection and the wrong-PSK choice")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def tune_gc() -> Callable[[], None]:
    """For a process that handles many SAs (load generator, gateway): what exists at
    start lives for the whole run, and every datagram allocates short-lived objects, so
    freeze the former and collect the young generation less often (about 5% of the CPU).
    Returns a function that restores the previous settings."""
    import gc

    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)

    def restore() -> None:
        gc.set_threshold(*previous)
        gc.unfreeze()

    return restore


def spec_from_args(args: Any) -> LoadSpec:
    from ikecore.protocol.auth import credentials_from_flags
    from ikecore.config import parse_endpoint

    faults = Faults(drop=args.drop, duplicate=args.duplicate, corrupt=args.corrupt, delay=args.delay,
                    delay_seconds=args.delay_seconds, wrong_psk=args.wrong_psk)
    return LoadSpec(target=parse_endpoint(args.target, 500, "target"), peers=args.peers, psk=args.psk,
                    ike=args.ike, esp=args.esp, quick_modes=0 if args.no_quick_mode else args.quick_modes,
                    rate=args.rate, concurrency=args.concurrency, ramp=args.ramp, duration=args.duration,
                    timeout=args.timeout, retransmit_timeout=args.retransmit_timeout,
                    max_seconds=args.max_seconds, first_address=args.first_address, faults=faults,
                    seed=args.seed, credentials=credentials_from_flags(args.cert, args.key, args.ca))


def command(args: Any, out: TextIO) -> int:
    """``ikecore loadtest``: exit 0 when every peer established, 1 otherwise."""
    restore_gc = tune_gc()
    try:
        return _command(args, out)
    finally:
        restore_gc()


def _command(args: Any, out: TextIO) -> int:
    from ikecore import dh


    spec = spec_from_args(args)
    if args.dh_threads < 0:
        raise ConfigError("--dh-threads", "must be 0 or more")
    if not 1 <= args.workers <= 64:
        raise ConfigError("--workers", "must be between 1 and 64")
    if args.workers > 1:
        progress = None if args.no_progress else ProgressBar(sys.stderr, spec.peers)
        report = run_processes(spec, args.workers, dh_threads=args.dh_threads, local_port=args.local_port,
                               progress=progress)
        out.write((report_json(report) if args.json else format_report(report)) + "\n")
        return 0 if report.established == spec.peers else 1
    pool = dh.DhPool(args.dh_threads) if args.dh_threads else None
    try:
        keypair = dh.KeypairReserve(pool) if pool is not None else None
        load = LoadTest(spec, keypair=keypair, local_port=args.local_port)
        progress = None if args.no_progress else ProgressBar(sys.stderr, spec.peers)
        try:
            report = run_udp(load, progress=progress)
        except OSError as exc:
            raise ConfigError("--local-port", f"cannot open the UDP socket: {exc.strerror}") from None
    finally:
        if pool is not None:
            pool.close()
    out.write((report_json(report) if args.json else format_report(report)) + "\n")
    return 0 if report.established == spec.peers else 1
