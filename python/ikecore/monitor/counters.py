"""The monitor: the IP Security Monitor's statistics and views.

Counters are an enum updated in one place, ``Monitor.observe(event)``, from the engine's
events (never incremented inside handlers); the transport adds Send/Receive Failures. The
gauges follow the same events, so ``statistics()`` is constant time:

* ISADB List Size: ISAKMP SAs started and not yet failed or deleted;
* Connection List Size: Quick Mode exchanges in progress plus installed IPsec SA pairs;
* Active Acquire: our own negotiations (Main/Aggressive and Quick Mode) in progress;
  Acquire Heap Size: the gateway's ``connect`` calls waiting (the same set without one);
* Active Receive: 0 (a datagram is handled as soon as the loop takes it from the queue);
  Receive Heap Size: datagrams waiting in the gateway's bounded receive queue (set by the
  transport); the kernel's queue in front of the sockets is exported as bytes and drops
  (``ikecore.monitor.exporters``), and its drops count as Receive Failures;
* Soft Associations: soft SAs made for acquires whose filter falls back to clear text
  (``fallback_to_clear``) when the peer never answered Main Mode (``SoftSaCreated``).

Beyond the IP Security Monitor document, ``extended`` counts ``prefix:label...`` keys:
messages by exchange, number and direction, retransmissions, notifies by type, DPD,
deletes, failures by phase and reason, invalid packets, driver failures, replays by
reason (``replays:message_id``, ``replays:endpoint``), requests refused by a configured
limit (``limits:<key of [limits]>``);
``phase1_time``/``phase2_time`` are fixed-bucket histograms of negotiation times. The views (``ikecore.monitor.views``) read all of it.
"""

from __future__ import annotations

import bisect
import enum
import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

from ikecore import events as ev
from ikecore import wire

__all__ = ["Statistic", "Monitor", "Histogram", "failure_reason", "DURATION_BUCKETS", "MAIN_MODE_SA_COLUMNS",
           "QUICK_MODE_SA_COLUMNS", "display_name"]


class Statistic(enum.Enum):
    """The 23 Main Mode statistics of the IP Security Monitor, in the IP Security Monitor document's order."""

    ACTIVE_ACQUIRE = "Active Acquire"
    ACTIVE_RECEIVE = "Active Receive"
    ACQUIRE_FAILURES = "Acquire Failures"
    RECEIVE_FAILURES = "Receive Failures"
    SEND_FAILURES = "Send Failures"
    ACQUIRE_HEAP_SIZE = "Acquire Heap Size"
    RECEIVE_HEAP_SIZE = "Receive Heap Size"
    AUTHENTICATION_FAILURES = "Authentication Failures"
    NEGOTIATION_FAILURES = "Negotiation Failures"
    INVALID_COOKIES_RECEIVED = "Invalid Cookies Received"
    TOTAL_ACQUIRE = "Total Acquire"
    TOTAL_GET_SPI = "Total Get SPI"
    KEY_ADDITIONS = "Key Additions"
    KEY_UPDATES = "Key Updates"
    GET_SPI_FAILURES = "Get SPI Failures"
    KEY_ADDITION_FAILURES = "Key Addition Failures"
    KEY_UPDATE_FAILURES = "Key Update Failures"
    ISADB_LIST_SIZE = "ISADB List Size"
    CONNECTION_LIST_SIZE = "Connection List Size"
    IKE_MAIN_MODE = "IKE Main Mode"
    IKE_QUICK_MODE = "IKE Quick Mode"
    SOFT_ASSOCIATIONS = "Soft Associations"
    INVALID_PACKETS_RECEIVED = "Invalid Packets Received"

    @property
    def key(self) -> str:
        return self.name.lower()


MAIN_MODE_SA_COLUMNS = ["me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity",
                        "diffie_hellman"]
QUICK_MODE_SA_COLUMNS = ["me", "peer", "encryption", "integrity", "diffie_hellman", "spi_in", "spi_out"]

_DISPLAY = {
    "me": "Me", "my_id": "My ID", "peer": "Peer", "peer_id": "Peer ID", "authentication": "Authentication",
    "encryption": "Encryption", "integrity": "Integrity", "diffie_hellman": "Diffie-Hellman",
    "initiator_cookie": "Initiator Cookie", "responder_cookie": "Responder Cookie", "state": "State",
    "role": "Role", "created": "Created", "lifetime_left": "Lifetime Left", "quick_modes": "Quick Modes",
    "spi_in": "SPI In", "spi_out": "SPI Out", "mode": "Mode", "local_ts": "Local Selector",
    "remote_ts": "Remote Selector", "local_port": "Local Port", "peer_port": "Peer Port",
}


def display_name(key: str) -> str:
    """The IP Security Monitor document's column header for a snake_case key."""
    return _DISPLAY.get(key) or next((s.value for s in Statistic if s.key == key), key)


#: Upper bounds (seconds) of the negotiation-time histogram buckets (the last is +Inf).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Fixed-bucket histogram of durations: constant memory, Prometheus-shaped."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last bucket: above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs ending with ``+Inf``, as Prometheus wants them."""
        out, running = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"buckets": dict(self.cumulative()), "sum": self.total, "count": self.count}


class Monitor:
    """Counts engine events; the transport adds socket failures and queue gauges.

    Every counter changes in ``observe`` (from an engine event) or in ``send_failed`` /
    ``receive_failed`` (from the transport). The gauges of the IP Security Monitor document are kept up to date
    from the same events (sets keyed by SA handle and Message ID), so ``statistics`` runs
    in constant time whatever the number of SAs. ``gauges`` lets the transport add the
    gauges only it can see (for example Acquire Heap Size: its pending ``connect`` calls).
    """

    def __init__(self) -> None:
        self.counters: Counter[Statistic] = Counter()
        self.extended: Counter[str] = Counter()
        self.phase1_time = Histogram()
        self.phase2_time = Histogram()
        self.active_receive = 0
        self.receive_heap_size = 0
        self.gauges: dict[Statistic, Callable[[], int]] = {}
        self._acquiring: set[tuple[int, int]] = set()      # our negotiations in progress
        self._qm_pending: dict[int, set[int]] = {}         # handle -> Message IDs in progress
        # handle of each live ISAKMP SA (the ISADB) -> its IPsec SA pairs: one table, not a
        # set of handles beside it (about 40 bytes per SA of a gateway holding 100,000)
        self._qm_established: dict[int, int] = {}
        self._qm_pending_total = 0
        self._qm_established_total = 0

    def observe(self, event: ev.Event) -> None:
        """Update the counters from one engine event (the only place they change)."""
        kind = type(event)
        if kind is ev.DatagramReceived or kind is ev.DatagramSent:  # most events: first, one lookup
            self.extended[_message_key(kind is ev.DatagramSent, event.exchange_type,  # type: ignore[attr-defined]
                                       event.message_number)] += 1  # type: ignore[attr-defined]
            return
        c, x = self.counters, self.extended
        if isinstance(event, ev.Phase1Started):
            self._qm_established.setdefault(event.handle, 0)
            x[f"phase1_started:{event.role}"] += 1
            if event.role == "initiator":
                self._acquiring.add((event.handle, 0))
        elif isinstance(event, ev.Phase1Established):
            c[Statistic.IKE_MAIN_MODE] += 1
            x[f"phase1_established:{event.role}"] += 1
            self._acquiring.discard((event.handle, 0))
            self.phase1_time.observe(event.duration)
        elif isinstance(event, ev.Phase2Started):
            pending = self._qm_pending.setdefault(event.handle, set())
            if event.message_id not in pending:
                pending.add(event.message_id)
                self._qm_pending_total += 1
            x[f"phase2_started:{event.role}"] += 1
            if event.role == "initiator":
                self._acquiring.add((event.handle, event.message_id))
        elif isinstance(event, ev.Phase2Established):
            c[Statistic.IKE_QUICK_MODE] += 1
            x[f"phase2_established:{event.role}"] += 1
            self._qm_done(event.handle, event.message_id)
            if event.handle in self._qm_established:
                self._qm_established[event.handle] += 1
                self._qm_established_total += 1
            self.phase2_time.observe(event.duration)
        elif isinstance(event, ev.Phase1Failed):
            c[Statistic.NEGOTIATION_FAILURES] += 1
            x[f"failures:phase1:{failure_reason(event.reason, event.notify_type)}"] += 1
            if event.role == "initiator":
                c[Statistic.ACQUIRE_FAILURES] += 1
            self._phase1_gone(event.handle)
        elif isinstance(event, ev.Phase2Failed):
            c[Statistic.NEGOTIATION_FAILURES] += 1
            x[f"failures:phase2:{failure_reason(event.reason, event.notify_type)}"] += 1
            if event.role == "initiator":
                c[Statistic.ACQUIRE_FAILURES] += 1
            self._qm_done(event.handle, event.message_id)
        elif isinstance(event, ev.AuthenticationFailed):
            c[Statistic.AUTHENTICATION_FAILURES] += 1
            x["authentication_failures:" + _authentication_failure_kind(event.reason)] += 1
        elif isinstance(event, ev.InvalidCookieReceived):
            c[Statistic.INVALID_COOKIES_RECEIVED] += 1
        elif isinstance(event, ev.InvalidPacketReceived):
            c[Statistic.INVALID_PACKETS_RECEIVED] += 1
            x[f"invalid_packets:{_notify_name(event.notify_type) if event.notify_type else 'dropped'}"] += 1
        elif isinstance(event, ev.SpiAllocated):
            c[Statistic.TOTAL_GET_SPI] += 1
            c[Statistic.TOTAL_ACQUIRE] += 1
            if event.spi is None:
                c[Statistic.GET_SPI_FAILURES] += 1
        elif isinstance(event, ev.KeyAdded):
            c[Statistic.KEY_ADDITIONS] += 1
            c[Statistic.TOTAL_ACQUIRE] += 1
        elif isinstance(event, ev.KeyUpdated):
            c[Statistic.KEY_UPDATES] += 1
            c[Statistic.TOTAL_ACQUIRE] += 1
        elif isinstance(event, ev.DriverFailed):
            x[f"driver_failures:{event.operation}"] += 1
            if event.operation == "add_outbound":
                c[Statistic.KEY_ADDITION_FAILURES] += 1
                c[Statistic.TOTAL_ACQUIRE] += 1
            elif event.operation == "update_inbound":
                c[Statistic.KEY_UPDATE_FAILURES] += 1
                c[Statistic.TOTAL_ACQUIRE] += 1
        elif isinstance(event, ev.RetransmitSent):
            x[f"retransmissions:{_exchange_name(event.exchange_type)}:out"] += 1
        elif isinstance(event, ev.DuplicateReceived):
            x[f"retransmissions:{_exchange_name(event.exchange_type)}:in"] += 1
        elif isinstance(event, ev.NotifyReceived):
            x[f"notifies:{_notify_name(event.notify_type)}:in"] += 1
            if event.notify_type in _DPD:
                x[f"dpd:{_DPD[event.notify_type]}:in"] += 1
        elif isinstance(event, ev.NotifySent):
            x[f"notifies:{_notify_name(event.notify_type)}:out"] += 1
            if event.notify_type in _DPD:
                x[f"dpd:{_DPD[event.notify_type]}:out"] += 1
        elif isinstance(event, ev.DeleteReceived):
            x[f"deletes:{_protocol_name(event.protocol_id)}:in"] += 1
        elif isinstance(event, ev.DeleteSent):
            x[f"deletes:{_protocol_name(event.protocol_id)}:out"] += 1
        elif isinstance(event, ev.SaDeleted):
            x[f"sa_deleted:phase{event.phase}"] += 1
            if event.phase == 1:
                self._phase1_gone(event.handle)
            elif self._qm_established.get(event.handle, 0) > 0:
                self._qm_established[event.handle] -= 1
                self._qm_established_total -= 1
        elif isinstance(event, ev.AcquireFailed):
            if event.cause != "negotiation":  # a failed negotiation was counted above already
                c[Statistic.ACQUIRE_FAILURES] += 1
        elif isinstance(event, ev.SoftSaCreated):
            c[Statistic.SOFT_ASSOCIATIONS] += 1
        elif isinstance(event, ev.AcquireStarted):
            x["acquires"] += 1
        elif isinstance(event, ev.Rekeyed):
            x[f"rekeys:phase{event.phase}"] += 1
        elif isinstance(event, ev.RekeyCollision):
            x["rekey_collisions"] += 1
        elif isinstance(event, ev.ResponderLifetime):
            x["responder_lifetime:" + ("sent" if event.sent else "honoured")] += 1
        elif isinstance(event, ev.DeadPeerDetected):
            x["dead_peers"] += 1
        elif isinstance(event, ev.NatKeepaliveSent):
            x["nat_keepalives:out"] += 1

        elif isinstance(event, ev.StoreFailed):
            x[f"store_failures:{event.operation}"] += 1
        elif isinstance(event, (ev.StatelessCookieSent, ev.StatelessCookieVerified, ev.HalfOpenRefused,
                                ev.HalfOpenDropped, ev.ReplayDropped)):
            x[_FLOOD_COUNTERS[type(event)]] += 1
            if isinstance(event, ev.ReplayDropped):
                x[f"replays:{event.reason}"] += 1
        elif isinstance(event, ev.LimitReached):
            x[f"limits:{event.limit}"] += 1
        elif isinstance(event, ev.SasRestored):
            for handle, ipsec in event.sas:   # back from the SA store: in the ISADB again
                self._qm_established[handle] = self._qm_established.get(handle, 0) + ipsec
                self._qm_established_total += ipsec

    @property
    def ipsec_sa_count(self) -> int:
        """IPsec SA pairs installed and not deleted."""
        return self._qm_established_total

    @property
    def quick_modes_in_progress(self) -> int:
        """Quick Mode exchanges started and not yet ended."""
        return self._qm_pending_total

    def _qm_done(self, handle: int, message_id: int) -> None:
        pending = self._qm_pending.get(handle)
        if pending is not None and message_id in pending:
            pending.discard(message_id)
            self._qm_pending_total -= 1
            if not pending:
                del self._qm_pending[handle]
        self._acquiring.discard((handle, message_id))

    def _phase1_gone(self, handle: int) -> None:
        pending = self._qm_pending.pop(handle, set())
        self._qm_pending_total -= len(pending)
        for message_id in pending:
            self._acquiring.discard((handle, message_id))
        self._acquiring.discard((handle, 0))
        self._qm_established_total -= self._qm_established.pop(handle, 0)

    def send_failed(self) -> None:
        self.counters[Statistic.SEND_FAILURES] += 1

    def receive_failed(self) -> None:
        self.counters[Statistic.RECEIVE_FAILURES] += 1

    def invalid_packet(self, label: str) -> None:
        """A datagram the transport dropped as invalid before the engine saw it."""
        self.counters[Statistic.INVALID_PACKETS_RECEIVED] += 1
        self.extended[f"invalid_packets:{label}"] += 1

    def statistics(self, engine: Any = None) -> dict[str, int]:
        """All 23 statistics (snake_case keys, the IP Security Monitor document's order) as of now, in constant time.

        ``engine`` is accepted for callers of the first version and not needed: the gauges
        follow the events.
        """
        values: dict[Statistic, int] = dict(self.counters)
        values[Statistic.ISADB_LIST_SIZE] = len(self._qm_established)
        values[Statistic.CONNECTION_LIST_SIZE] = self._qm_pending_total + self._qm_established_total
        values[Statistic.ACTIVE_ACQUIRE] = len(self._acquiring)
        values[Statistic.ACQUIRE_HEAP_SIZE] = len(self._acquiring)
        # Acquires (Engine.acquire) queued behind another acquire's Main Mode have no
        # negotiation of their own yet: the engine's acquire heap knows them.
        queued = engine.acquire_counts()[1] if engine is not None and hasattr(engine, "acquire_counts") else 0
        values[Statistic.ACTIVE_ACQUIRE] += queued
        values[Statistic.ACQUIRE_HEAP_SIZE] += queued
        values[Statistic.ACTIVE_RECEIVE] = self.active_receive
        values[Statistic.RECEIVE_HEAP_SIZE] = self.receive_heap_size
        for stat, read in self.gauges.items():
            values[stat] = int(read())
        return {stat.key: int(values.get(stat, 0)) for stat in Statistic}


_FLOOD_COUNTERS: dict[type, str] = {
    ev.StatelessCookieSent: "flood:stateless_cookies_sent",
    ev.StatelessCookieVerified: "flood:stateless_cookies_verified",
    ev.HalfOpenRefused: "flood:half_open_refused",
    ev.HalfOpenDropped: "flood:half_open_dropped",
    ev.ReplayDropped: "replays_dropped",
}


@functools.lru_cache(maxsize=1024)  # few distinct keys; building the text was a tenth of observe()
def _message_key(sent: bool, exchange_type: int, message_number: int) -> str:
    return f"messages:{_exchange_name(exchange_type)}:{message_number}:{'out' if sent else 'in'}"


def _authentication_failure_kind(reason: str) -> str:
    """hash (pre-shared keys differ), decryption (so do the keys derived from them),
    signature (SIG does not verify) or certificate (missing, unreadable, not trusted)."""
    if "HASH" in reason:
        return "hash"
    if "decrypt" in reason:
        return "decryption"
    return "signature" if "SIG" in reason else "certificate"


def _exchange_name(exchange_type: int) -> str:
    try:
        return wire.ExchangeType(exchange_type).name.lower()
    except ValueError:
        return str(exchange_type)


def _notify_name(notify_type: int) -> str:
    try:
        return wire.NotifyType(notify_type).name.lower()
    except ValueError:
        return str(notify_type)


def _protocol_name(protocol_id: int) -> str:
    try:
        return wire.ProtocolId(protocol_id).name.lower()
    except ValueError:
        return str(protocol_id)


_DPD: dict[int, str] = {wire.NotifyType.R_U_THERE: "r_u_there", wire.NotifyType.R_U_THERE_ACK: "r_u_there_ack"}


def failure_reason(reason: str, notify_type: int | None) -> str:
    """A bounded label for a failure: the Notify it carried, else a class of the reason text."""
    if notify_type:
        return _notify_name(notify_type)
    text = reason.lower()
    for needle, label in (("retransmission limit", "no_response"), ("timed out", "timeout"),
                          ("no filter", "no_filter"), ("peer sent", "peer_notify"),
                          ("driver", "driver"), ("proposal", "no_proposal_chosen")):
        if needle in text:
            return label
    return "other"
