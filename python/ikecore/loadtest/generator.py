"""The IKEv1 load generator: many simulated peers against one gateway.

Design note
-----------
``LoadTest`` is sans-IO like the engine it drives: callers feed it datagrams and the
clock, it returns datagrams to send and the next deadline (the runners in
``ikecore.loadtest.runners`` join it to a responder engine in memory or to real UDP).
It owns two initiator ``Engine`` objects (the right pre-shared key, and a wrong one for
the share of peers the fault injection says), a peer schedule and the measurements.
Each simulated peer is one ISAKMP SA initiated from its own address: consecutive from
``first_address``, loopback (127.x.y.z) by default or any range this machine holds as
local (an "AnyIP" route, ``ip route add local 10.8.0.0/16 dev lo``, routed to the
gateway on another host). With a pre-shared key its identity is that address; with certificates
(``LoadSpec.credentials``) every peer signs with the one certificate given and names
its subject (ID_DER_ASN1_DN), as strongSwan's load tester does with a static certificate.

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
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ikecore import events as ev
from ikecore.config import Config, Timing, config_from_flags
from ikecore.credentials import Credentials
from ikecore.dh import KeyPair
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
from ikecore.events import Address
from ikecore.gateway.dh_pool import KeypairReserve
from ikecore.loadtest.express import ExpressEngine, lane_for
from ikecore.loadtest.report import Report, percentiles, rate_by_tenth

__all__ = ["Faults", "LoadSpec", "LoadTest", "PeerState", "peer_address"]

MAX_STARTS_PER_STEP = 512
WRONG_PSK_SUFFIX = "-not-the-right-key"
#: peers send from unicast addresses: 224.0.0.0 and above are multicast or reserved
LAST_UNICAST = ipaddress.IPv4Address("223.255.255.254")
_LAST_UNICAST = int(LAST_UNICAST)


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
    #: NAT traversal of every peer: "auto" (detect), "force" (float to the NAT-T port and
    #: encapsulate whether or not a NAT is seen) or "off".
    nat_t: str = "auto"
    #: the gateway's NAT-T port to float to (None: 4500 when the target is on 500, else the target's port)
    natt_port: int | None = None
    #: RSA signatures instead of the pre-shared key.
    credentials: Credentials | None = field(default=None, repr=False, compare=False)
    #: run the peers in the express lane when it can (``ikecore.loadtest.express``); False:
    #: always in engines (``--no-express``).
    express: bool = True

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
        if self.nat_t not in ("auto", "force", "off"):
            raise ConfigError("--nat-t", f"{self.nat_t!r} is not auto, force or off")
        if self.natt_port is not None and not 1 <= self.natt_port <= 65535:
            raise ConfigError("--natt-port", "must be a UDP port (1 to 65535)")
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
        if first.is_multicast or first.is_unspecified or first.is_reserved:
            raise ConfigError("--first-address", f"{first} is not a unicast address a peer can send from")
        peer_address(self.first_address, self.peers - 1)  # still in the same kind of range

    @property
    def closed_loop(self) -> int:
        if self.rate is None:
            return self.concurrency if self.concurrency is not None else 100
        return 0


def peer_address(first: str, index: int) -> str:
    """The address of peer ``index``: consecutive from ``first``, skipping .0 and .255; a
    range that starts in 127.0.0.0/8 stays in it."""
    base, first_loopback = _first_address(first)
    block, low = base >> 8, base & 0xFF
    if low in (0, 255):
        raise ConfigError("--first-address", "must not end in .0 or .255")
    position = block * 254 + (low - 1) + index
    value = (position // 254) * 256 + position % 254 + 1
    if value > _LAST_UNICAST:
        raise ConfigError("--peers", f"peer {index} would lie beyond {LAST_UNICAST}, the last unicast address")
    # dotted quad without an address object: a load test makes one per peer
    address = "%d.%d.%d.%d" % (value >> 24, value >> 16 & 0xFF, value >> 8 & 0xFF, value & 0xFF)
    if first_loopback and value >> 24 != 127:
        raise ConfigError("--peers", f"peer {index} would be {address}, outside 127.0.0.0/8")
    return address


@functools.lru_cache(maxsize=64)  # peer_address reads the same first address for every peer
def _first_address(first: str) -> tuple[int, bool]:
    address = ipaddress.IPv4Address(first)
    return int(address), address.is_loopback


@dataclass(slots=True)
class _Peer:
    index: int
    address: str
    wrong_psk: bool
    engine: Engine | ExpressEngine | None = None
    handle: int = 0
    state: PeerState = PeerState.WAITING
    started: float = 0.0
    phase1_at: float = 0.0
    quick_modes_done: int = 0
    quick_mode_started: float = 0.0
    reason: str = ""


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
        keypair: DH key-pair factory handed to both engines (e.g. an
            ``ikecore.gateway.dh_pool.KeypairReserve``).
        random_bytes: byte source for the engines (tests inject a seeded one).
        express: run the peers in the express lane when it can (``loadtest.express``);
            False: always in engines.
    """

    def __init__(self, spec: LoadSpec, *, keypair: Callable[[int], KeyPair] | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom, local_port: int = 0,
                 express: bool = True) -> None:
        self.spec = spec
        self.local_port = local_port
        timing = Timing(retransmit_timeout=spec.retransmit_timeout, retransmit_tries=spec.retransmit_tries,
                        negotiation_timeout=spec.timeout)
        lane = lane_for(self._config(spec.psk, timing), spec.target, quick_modes=spec.quick_modes,
                        natt_port=spec.natt_port, keypair=None if isinstance(keypair, KeypairReserve) else keypair,
                        random_bytes=random_bytes,
                        other_psks=((spec.psk + WRONG_PSK_SUFFIX).encode(),)) if express and spec.express else None
        #: the express lane running every peer (both keys), or None: two engines
        self.lane = lane
        self.right: Engine | ExpressEngine = lane or Engine(self._config(spec.psk, timing), keypair=keypair,
                                                            random=random_bytes)
        self.wrong: Engine | ExpressEngine = lane or Engine(self._config(spec.psk + WRONG_PSK_SUFFIX, timing),
                                                            keypair=keypair, random=random_bytes)
        self._engines: tuple[Engine | ExpressEngine, ...] = (lane,) if lane else (self.right, self.wrong)
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
                                 remote=self.spec.target[0], timing=timing, credentials=self.spec.credentials,
                                 nat_traversal=self.spec.nat_t)

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
        if engine is self.lane:
            peer.handle = self.lane.initiate(self.spec.target, local=(peer.address, self.local_port), now=now,
                                             psk=1 if peer.wrong_psk else 0)
        else:
            peer.handle = engine.initiate(self.spec.target, local=(peer.address, self.local_port), now=now,
                                          quick_mode=self.spec.quick_modes > 0, natt_port=self.spec.natt_port)
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

    def received(self, now: float) -> None:
        """The express lane read and answered datagrams itself (``ExpressEngine.pump``):
        take its outcomes and start the peers the schedule allows now."""
        self._drain(now)
        if self.spec.rate is None and self._in_flight < self.spec.closed_loop:
            self.step(now)

    def handle_timer(self, now: float) -> None:
        """Fire engine timers, release delayed datagrams, start scheduled peers."""
        for engine in self._engines:
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
        candidates = [*(engine.get_timer() for engine in self._engines), self._next_start_time()]
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
        for engine in self._engines:
            for data, remote, local in engine.datagrams_to_send():
                for item in self._inject(data):
                    if faults.delay and self._rng.random() < faults.delay:
                        self.fault_counts["delayed"] += 1
                        self._delayed.append((now + faults.delay_seconds, item, remote, local))
                    else:
                        self._outgoing.append((item, remote, local))
            while (event := engine.next_event()) is not None:
                self._observe(engine, event, now)

    def _observe(self, engine: Engine | ExpressEngine, event: ev.Event, now: float) -> None:
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

    @property
    def begin(self) -> float | None:
        """When the clock started (None before ``start``)."""
        return self._begin

    @property
    def last_done(self) -> float | None:
        """When the last peer ended (None while none has)."""
        return self._last_done

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
            latency_ms={phase: percentiles(samples) for phase, samples in self.latency.items()},
            faults=dict(self.fault_counts), wrong_psk_peers=sum(1 for p in self.peers if p.wrong_psk),
            cpu_seconds=cpu_seconds, rate_by_tenth=rate_by_tenth(self._begin or 0.0, self.done_times),
            target=f"{self.spec.target[0]}:{self.spec.target[1]}", ike=self.spec.ike, esp=self.spec.esp)
