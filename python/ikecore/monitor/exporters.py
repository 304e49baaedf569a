"""Prometheus/OpenMetrics exporter built on the official ``prometheus_client``.

``IkecoreCollector`` turns a gateway's ``Monitor`` and ``Engine`` into metric families at
scrape time: the 23 statistics (counters as ``ikecore_<statistic>_total``, gauges as
``ikecore_<statistic>``; Total Acquire and Total Get SPI as ``ikecore_acquire_total`` and
``ikecore_get_spi_total``), the extended counters with labels (messages by exchange, number
and direction; retransmissions; notifies by type; DPD; deletes; failures by phase and
reason; invalid packets; driver failures), the negotiation-time histograms per phase and,
per SA, timestamps rather than ages (``..._established_timestamp_seconds``,
``..._expiry_timestamp_seconds``), as Prometheus' naming guidance asks.

Per-SA series are off by default: their labels (cookies, addresses, identities, SPIs)
name every peer, and one series per SA is what a Prometheus server least likes. They are
turned on with an explicit cap (``serve --metrics-per-sa N``, ``[metrics] per_sa``); past
the cap the SAs left out are counted (``ikecore_per_sa_series_dropped``) and said in a
rate-limited log line, never silently cut.

``MetricsServer`` answers ``GET /metrics`` with a bounded cost whatever the scrapers do:

* the exposition is built at most once per ``cache_seconds`` (one second by default) and
  served from that cache to every scraper meanwhile; scrapers arriving during a build
  wait for that build (one build, never one per scraper). A build that takes long (many
  per-SA series) spaces the next one out: builds take at most a tenth of the time. A build reads the gateway on
  its event loop (one consistent snapshot without locks) and formats the text on a
  worker thread, so the loop keeps turning;
* at most ``max_connections`` connections at a time: the server accepts no more until
  one closes (the kernel's backlog holds the others; nothing is spent on them); at most
  ``max_requests`` new connections and ``max_requests`` answers a second, and at most
  ``max_bytes`` bytes a second (more wait their turn);
* with a web configuration file (``ikecore.monitor.web_config``): TLS and basic
  authentication as Prometheus' exporter toolkit reads them.

The same families travel the control socket as JSON (``control_op``: the ``metrics``
operation of a worker's control socket), for the parent of a gateway of several workers
to merge them into one ``/metrics`` (``ikecore.monitor.fleet_metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ikecore.errors import ConfigError
from ikecore.gateway.faults import FaultLog
from ikecore.monitor import listing as sa_listing
from ikecore.monitor.counters import Monitor, Statistic
from ikecore.monitor.formats import hex_text
from ikecore.monitor.web_config import WebConfig, load_web_config

__all__ = ["IkecoreCollector", "MetricsServer", "MetricsOptions", "GAUGE_STATISTICS", "PER_SA_FAMILIES",
           "make_registry", "udp_receive_queues", "control_op", "encode_families", "decode_families",
           "start_metrics_server"]

#: Statistics of the IP Security Monitor document that are gauges (the others only grow).
GAUGE_STATISTICS = frozenset({
    Statistic.ACTIVE_ACQUIRE, Statistic.ACTIVE_RECEIVE, Statistic.ACQUIRE_HEAP_SIZE,
    Statistic.RECEIVE_HEAP_SIZE, Statistic.ISADB_LIST_SIZE, Statistic.CONNECTION_LIST_SIZE,
})

#: The per-SA families (one series per SA; off unless a cap is given).
PER_SA_FAMILIES = ("ikecore_isakmp_sa_established_timestamp_seconds", "ikecore_isakmp_sa_expiry_timestamp_seconds",
                   "ikecore_ipsec_sa_expiry_timestamp_seconds")

_DOCUMENT_HELP = "IP Security Monitor Main Mode statistic"

#: The ESP counters of an IPsec SA pair (``UserlandDriver.counters``).
_ESP_COUNTERS = ("bytes_in", "bytes_out", "packets_in", "packets_out", "replay_drops", "icv_failures",
                 "padding_errors")

# extended counter key prefix -> (metric name, help, label names)
_EXTENDED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "messages": ("ikecore_messages", "IKE messages by exchange, message number and direction",
                 ("exchange", "number", "direction")),
    "retransmissions": ("ikecore_retransmissions", "retransmissions sent (out) and duplicates answered (in)",
                        ("exchange", "direction")),
    "notifies": ("ikecore_notifies", "Notify payloads by type and direction", ("type", "direction")),
    "dpd": ("ikecore_dpd_messages", "Dead Peer Detection notifies (RFC 3706)", ("kind", "direction")),
    "deletes": ("ikecore_deletes", "Delete payloads by protocol and direction", ("protocol", "direction")),
    "failures": ("ikecore_negotiation_failures_by_reason", "failed negotiations by phase and reason",
                 ("phase", "reason")),
    "invalid_packets": ("ikecore_invalid_packets_by_reason", "invalid packets by the Notify they earn",
                        ("reason",)),
    "driver_failures": ("ikecore_driver_failures", "IPsec driver failures by operation", ("operation",)),
    "authentication_failures": ("ikecore_authentication_failures_by_kind", "authentication failures by kind",
                                ("kind",)),
    "phase1_started": ("ikecore_phase1_started", "Main Mode negotiations started by role", ("role",)),
    "phase1_established": ("ikecore_phase1_established", "Main Mode negotiations established by role",
                           ("role",)),
    "phase2_started": ("ikecore_phase2_started", "Quick Mode negotiations started by role", ("role",)),
    "phase2_established": ("ikecore_phase2_established", "Quick Mode negotiations established by role",
                           ("role",)),
    "sa_deleted": ("ikecore_sas_deleted", "SAs removed from the SA database by phase", ("phase",)),
    "dead_peers": ("ikecore_dead_peers", "peers declared dead by DPD (RFC 3706)", ()),
    "nat_keepalives": ("ikecore_nat_keepalives", "NAT keepalives sent (RFC 3948)", ("direction",)),
    "flood": ("ikecore_flood_events", "half-open flood defences: stateless cookies sent and verified, "
              "half-open SAs refused and dropped", ("event",)),
    "replays": ("ikecore_replays", "replayed or duplicated messages dropped, by reason", ("reason",)),
    "limits": ("ikecore_limit_refusals", "requests refused by a [limits] key", ("limit",)),
    "store_failures": ("ikecore_store_failures", "SA store operations that failed", ("operation",)),
    "rekeys": ("ikecore_rekeys", "rekeys started, by phase", ("phase",)),
    "receive_queue_full": ("ikecore_receive_queue_full", "datagrams dropped because the gateway's receive queue "
                           "was full", ()),
}

#: Series served as 0 before their first event, so that ``rate()`` and ``increase()`` see
#: the first one (Prometheus cannot tell a new series' first value from a jump).
_ZEROS = ("flood:stateless_cookies_sent", "flood:stateless_cookies_verified", "flood:half_open_refused",
          "flood:half_open_dropped", "receive_queue_full")


@dataclass(frozen=True)
class MetricsOptions:
    """How ``/metrics`` is served (``serve --metrics-*`` flags, ``[metrics]`` config keys).

    per_sa: SAs that get per-SA series, at most (0: none, the default).
    cache_seconds: an exposition is built at most once per this many seconds.
    max_connections: scrape connections served at once.
    web_config: Prometheus exporter-toolkit web configuration file (TLS, basic auth).
    """

    per_sa: int = 0
    cache_seconds: float = 1.0
    max_connections: int = 8
    web_config: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.per_sa, int) or self.per_sa < 0:
            raise ConfigError("--metrics-per-sa", "must be a whole number of SAs, 0 (no per-SA series) or more")
        if not 0 <= self.cache_seconds <= 3600:
            raise ConfigError("--metrics-cache", "must be 0 to 3600 seconds (1 is a good value)")
        if not isinstance(self.max_connections, int) or not 1 <= self.max_connections <= 1024:
            raise ConfigError("--metrics-connections", "must be 1 to 1024")

    @classmethod
    def from_args(cls, args: Any, config: Any = None) -> MetricsOptions:
        """Flags (``args.metrics_per_sa`` ...) over config keys (``config.metrics``) over defaults."""
        table = getattr(config, "metrics", None)
        chosen: dict[str, Any] = {}
        for name, flag in (("per_sa", "metrics_per_sa"), ("cache_seconds", "metrics_cache"),
                           ("max_connections", "metrics_connections"), ("web_config", "metrics_web_config")):
            value = getattr(args, flag, None)
            if value is None and table is not None:
                value = getattr(table, name, None)
            if value is not None:
                chosen[name] = value
        return cls(**chosen)


class IkecoreCollector:
    """A ``prometheus_client`` collector reading one gateway at scrape time.

    Args:
        monitor: the gateway's Monitor.
        engine: its Engine (for the per-SA timestamps); None leaves them out.
        clock: the engine's clock (``loop.time``); times are converted to Unix time.
        wall: Unix time.
        per_sa_limit: at most this many established ISAKMP SAs get per-SA series (with
            their IPsec SAs); 0, the default, serves none.
        sockets: the gateway's UDP sockets (``Gateway.sockets``), for the kernel's receive
            queue bytes and drops (Linux ``SO_MEMINFO``).
        faults: where the rate-limited "cap reached" line goes (``Gateway.faults``).
    """

    def __init__(self, monitor: Monitor, engine: Any = None, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, per_sa_limit: int = 0,
                 sockets: Callable[[], list[Any]] | None = None, faults: FaultLog | None = None) -> None:
        self.monitor = monitor
        self.sockets = sockets
        self.engine = engine
        self.clock = clock
        self.wall = wall
        self.per_sa_limit = per_sa_limit
        self.faults = faults or FaultLog()
        self.started = wall()
        self.dropped = 0  # established SAs left without per-SA series at the last collection

    def describe(self) -> list[Metric]:
        return []  # dynamic label sets: no registration-time description

    def collect(self) -> Iterator[Metric]:
        stats = self.monitor.statistics(self.engine)  # the engine adds queued acquires
        for stat in Statistic:
            name = f"ikecore_{stat.key.removeprefix('total_')}"  # Total Acquire -> ikecore_acquire_total
            doc = f"{_DOCUMENT_HELP}: {stat.value}"
            family: Metric
            if stat in GAUGE_STATISTICS:
                family = GaugeMetricFamily(name, doc, value=stats[stat.key])
            else:
                family = CounterMetricFamily(name, doc, value=stats[stat.key])
            yield family
        families: dict[str, CounterMetricFamily] = {}
        extended = dict.fromkeys(_ZEROS, 0)
        extended.update(self.monitor.extended)
        for key, value in sorted(extended.items()):
            prefix, *labels = key.split(":")
            spec = _EXTENDED.get(prefix)
            if spec is None or len(labels) != len(spec[2]):
                continue
            counter = families.get(prefix)
            if counter is None:
                counter = families[prefix] = CounterMetricFamily(spec[0], spec[1], labels=list(spec[2]))
            counter.add_metric(labels, value)
        yield from families.values()
        hist = HistogramMetricFamily("ikecore_negotiation_duration_seconds",
                                     "time from first to last message of a negotiation", labels=["phase"])
        for phase, h in (("main_mode", self.monitor.phase1_time), ("quick_mode", self.monitor.phase2_time)):
            hist.add_metric([phase], [(le, float(count)) for le, count in h.cumulative()], h.total)
        yield hist
        yield GaugeMetricFamily("ikecore_ipsec_sas", "IPsec SA pairs installed", value=self.monitor.ipsec_sa_count)
        yield GaugeMetricFamily("ikecore_start_time_seconds", "Unix time the exporter started", value=self.started)
        if self.sockets is not None:
            queued, drops = udp_receive_queues(self.sockets())
            yield GaugeMetricFamily("ikecore_udp_receive_queue_bytes",
                                    "bytes waiting in the gateway's UDP receive buffers (kernel)", value=queued)
            yield CounterMetricFamily("ikecore_udp_receive_drops",
                                      "datagrams the kernel dropped because a receive buffer was full", value=drops)
        flood = getattr(self.engine, "flood_stats", None)
        if flood is not None:
            limits = self.engine.config.flood
            yield GaugeMetricFamily("ikecore_half_open_sas", "responder ISAKMP SAs past message 1, not yet "
                                    "authenticated (half-open)", value=flood()["half_open"])
            yield GaugeMetricFamily("ikecore_half_open_limit", "half-open SAs held at most; the oldest are dropped "
                                    "past it ([flood] max_half_open)", value=limits.max_half_open)
            yield GaugeMetricFamily("ikecore_half_open_cookie_threshold", "half-open SAs from which message 2 is "
                                    "stateless ([flood] cookie_threshold)", value=limits.cookie_threshold)
        yield from self._esp_data_plane()
        if self.engine is not None and self.per_sa_limit > 0:
            yield from self._per_sa()
        yield GaugeMetricFamily("ikecore_per_sa_series_limit",
                                "established ISAKMP SAs that may have per-SA series (0: per-SA series off)",
                                value=self.per_sa_limit)
        yield GaugeMetricFamily("ikecore_per_sa_series_dropped",
                                "established ISAKMP SAs left without per-SA series by the cap at this scrape",
                                value=self.dropped)

    def _esp_data_plane(self) -> Iterator[Metric]:
        """A packet-moving driver's counters (the userland driver): ESP bytes and packets each
        way and the drops, summed over the IPsec SAs, and the data plane's own drops."""
        driver = getattr(self.engine, "driver", None)
        stats = getattr(driver, "stats", None)
        counters = getattr(driver, "counters", None)
        if stats is None or counters is None:
            return
        totals = dict.fromkeys(_ESP_COUNTERS, 0)
        for sa in self.engine.sas():
            for ipsec in list(sa.ipsec_sas):
                for key, value in (counters(ipsec.spi_in, ipsec.spi_out) or {}).items():
                    if key in totals:
                        totals[key] += value
        traffic = CounterMetricFamily("ikecore_esp_bytes", "inner bytes the IPsec SAs carried (ESP)",
                                      labels=["direction"])
        packets = CounterMetricFamily("ikecore_esp_packets", "packets the IPsec SAs carried (ESP)",
                                      labels=["direction"])
        for direction in ("in", "out"):
            traffic.add_metric([direction], totals[f"bytes_{direction}"])
            packets.add_metric([direction], totals[f"packets_{direction}"])
        drops = CounterMetricFamily("ikecore_esp_drops", "ESP packets dropped, by reason (per SA: replay, icv, "
                                    "padding; data plane: unknown_spi, no_sa, malformed, send_errors, tun_errors, "
                                    "sequence_exhausted)", labels=["reason"])
        for reason, key in (("replay", "replay_drops"), ("icv", "icv_failures"), ("padding", "padding_errors")):
            drops.add_metric([reason], totals[key])
        for reason, value in sorted(stats().items()):
            drops.add_metric([reason], value)
        yield traffic
        yield packets
        yield drops

    def _per_sa(self) -> Iterator[Metric]:
        now, wall = self.clock(), self.wall()
        labels = ["me", "peer", "peer_id", "initiator_cookie", "responder_cookie"]
        established = GaugeMetricFamily(PER_SA_FAMILIES[0], "Unix time the ISAKMP SA was established", labels=labels)
        expiry = GaugeMetricFamily(PER_SA_FAMILIES[1], "Unix time the ISAKMP SA's lifetime ends", labels=labels)
        ipsec_expiry = GaugeMetricFamily(PER_SA_FAMILIES[2], "Unix time the IPsec SA pair's lifetime ends",
                                         labels=["me", "peer", "spi_in", "spi_out", "initiator_cookie",
                                                 "responder_cookie"])
        every = [sa for sa in self.engine.sas() if sa.established is not None]
        sas = every[:self.per_sa_limit]
        self.dropped = len(every) - len(sas)
        if self.dropped:
            self.faults.report("per_sa_series_capped",
                               f"{len(every)} established SAs, per-SA series for {len(sas)} "
                               f"(--metrics-per-sa {self.per_sa_limit}); ikecore_per_sa_series_dropped counts "
                               f"the others", time.monotonic())
        # The label values come column by column, as the monitor's listing builds them: the
        # same names and values as the views' columns (cookies and SPIs in hex, ``formats``).
        for sa, *values in zip(sas, *sa_listing.columns_of(sas, labels, now, wall)):
            established.add_metric(values, wall - (now - sa.established))
            if sa.expires is not None:
                expiry.add_metric(values, wall - (now - sa.expires))
            for ipsec in list(sa.ipsec_sas):
                ipsec_expiry.add_metric([values[0], values[1], hex_text(ipsec.spi_in), hex_text(ipsec.spi_out),
                                         values[3], values[4]], wall - (now - ipsec.expires))
        yield established
        yield expiry
        yield ipsec_expiry
        yield from self._per_sa_esp(sas)

    def _per_sa_esp(self, sas: list[Any]) -> Iterator[Metric]:
        """Each IPsec SA pair's ESP counters, when the driver keeps them (userland)."""
        counters = getattr(getattr(self.engine, "driver", None), "counters", None)
        if counters is None:
            return
        labels = ["me", "peer", "spi_in", "spi_out"]
        families = {key: CounterMetricFamily(f"ikecore_ipsec_sa_esp_{key}", f"ESP {key.replace('_', ' ')} of the "
                                             "IPsec SA pair", labels=labels) for key in _ESP_COUNTERS}
        for sa in sas:
            for ipsec in list(sa.ipsec_sas):
                values = counters(ipsec.spi_in, ipsec.spi_out)
                if values is None:
                    continue
                names = [sa.local[0], sa.remote[0], hex_text(ipsec.spi_in), hex_text(ipsec.spi_out)]
                for key, family in families.items():
                    family.add_metric(names, values.get(key, 0))
        yield from families.values()


def encode_families(families: Iterable[Metric]) -> list[list[Any]]:
    """Metric families as JSON-able lists: ``[name, type, help, [[sample, labels, value], ...]]``."""
    return [[f.name, f.type, f.documentation, [[s.name, s.labels, s.value] for s in f.samples]] for f in families]


def decode_families(data: Any) -> list[Metric]:
    """The inverse of ``encode_families``; raises ValueError on anything else."""
    families = []
    for name, kind, doc, samples in data:
        family = Metric(str(name), str(doc), str(kind))
        for sample, labels, value in samples:
            family.add_sample(str(sample), {str(k): str(v) for k, v in labels.items()}, float(value))
        families.append(family)
    return families


def control_op(collector: IkecoreCollector) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The ``metrics`` operation of a control socket: ``{"op": "metrics"}`` -> ``{"ok": true,
    "started": Unix time, "families": encode_families(...)}``, read on the gateway's loop."""
    def answer(_request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "started": collector.started, "families": encode_families(collector.collect())}
    return answer


SO_MEMINFO = 55           # Linux: getsockopt(SOL_SOCKET, SO_MEMINFO) -> u32[SK_MEMINFO_VARS]
_MEMINFO_RMEM_ALLOC, _MEMINFO_DROPS, _MEMINFO_VARS = 0, 8, 9


def udp_receive_queues(sockets: list[Any]) -> tuple[int, int]:
    """(bytes queued, datagrams dropped) summed over ``sockets``; (0, 0) where unsupported."""
    queued = drops = 0
    for sock in sockets:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * _MEMINFO_VARS)
        except (OSError, AttributeError):
            continue
        values = struct.unpack(f"={len(raw) // 4}I", raw[:len(raw) // 4 * 4])
        if len(values) > _MEMINFO_DROPS:
            queued += values[_MEMINFO_RMEM_ALLOC]
            drops += values[_MEMINFO_DROPS]
    return queued, drops


def make_registry(collector: IkecoreCollector) -> CollectorRegistry:
    """A registry holding only ikecore's collector (no process/platform defaults)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry



class _Collected:
    """Metric families already collected, offered to an encoder as a registry."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


#: What a MetricsServer serves: a registry (``collect()``, read on the event loop) or a
#: coroutine function returning the families (the parent of a gateway's workers).
Source = Any

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


class MetricsServer:
    """An HTTP/1.1 endpoint serving ``source`` at ``/metrics`` on the running loop, with a
    bounded cost (see the module's docstring).

    Args:
        source: a registry or a coroutine function returning metric families.
        cache_seconds: an exposition is built at most once per this many seconds (per format),
            and at most once per ``BUILD_SPACING`` times the last build's duration.
        max_connections: connections served at once; more wait in the kernel's backlog.
        max_requests: requests answered per second, at most; more wait their turn.
        max_bytes: bytes of exposition sent per second, at most (per-SA series make big
            answers): an answer of B bytes holds the next one back B / max_bytes seconds.
        web: TLS and basic-auth users (``ikecore.monitor.web_config.load_web_config``).
    """

    HEAD_SECONDS = 10.0               # a request's head (and a TLS handshake) must come within this
    IDLE_SECONDS = 30.0               # a kept-alive connection idle this long is closed
    REQUESTS_PER_CONNECTION = 10_000  # then the connection is closed (the client opens another)
    BUILD_SPACING = 10.0              # builds start at least this many times their duration apart

    def __init__(self, source: Source, *, path: str = "/metrics", cache_seconds: float = 1.0,
                 max_connections: int = 8, max_requests: float = 20.0, max_bytes: float = 4 << 20,
                 web: WebConfig | None = None) -> None:
        self.source = source
        self.path = path
        self.cache_seconds = cache_seconds
        self.max_connections = max_connections
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.web = web
        self.auth = web.auth() if web is not None else None
        self.scrapes = 0        # answers that carried metrics
        self.builds = 0         # expositions built (collected and formatted)
        self.collections = 0    # snapshots read from the source
        self.unauthorized = 0   # requests answered 401
        self.accepted = 0       # connections accepted
        self.connections = 0    # connections open now
        self.peak_connections = 0
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._snapshot: tuple[float, list[Metric]] | None = None
        self._bodies: dict[str, tuple[float, bytes]] = {}
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self.build_seconds = 0.0  # processor time of the last build (collection and formatting)
        self._collect_seconds = 0.0
        self._answers = _Pace(max_requests)
        self._accepts = _Pace(max_requests)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        family, kind, proto, _name, address = (await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
            listener.listen(64)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._slots = asyncio.Semaphore(self.max_connections)
        self._accepting = loop.create_task(self._accept(listener))
        sockname = listener.getsockname()
        return str(sockname[0]), int(sockname[1])

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        for task in list(self._tasks):
            task.cancel()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- connections ---------------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        assert self._slots is not None
        while True:
            await self._slots.acquire()  # at the cap: accept nothing (the backlog holds the rest)
            try:
                # new connections are paced as answers are (a TLS handshake costs more than an answer)
                await self._accepts.wait()
                conn, _peer = await loop.sock_accept(listener)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except OSError:  # out of descriptors, or a connection reset before accept
                self._slots.release()
                await asyncio.sleep(0.1)
                continue
            self.accepted += 1
            task = loop.create_task(self._connection(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.connections += 1
        self.peak_connections = max(self.peak_connections, self.connections)
        writer: asyncio.StreamWriter | None = None
        try:
            conn.setblocking(False)
            reader = asyncio.StreamReader(limit=16384)
            protocol = asyncio.StreamReaderProtocol(reader)
            tls = self.web.tls if self.web is not None else None
            transport, _ = await asyncio.wait_for(loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=tls, ssl_handshake_timeout=self.HEAD_SECONDS if tls else None),
                self.HEAD_SECONDS)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self._serve(reader, writer)
        except (asyncio.TimeoutError, ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self.connections -= 1
            assert self._slots is not None
            self._slots.release()
            if writer is not None:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, asyncio.CancelledError,
                                         asyncio.TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 5)
            else:
                conn.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for served in range(self.REQUESTS_PER_CONNECTION):
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                              self.IDLE_SECONDS if served else self.HEAD_SECONDS)
            except asyncio.IncompleteReadError:
                return  # the client closed
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await self._respond(writer, "GET", 400, "text/plain", b"a request line is METHOD PATH HTTP/1.1\n",
                                    keep=False)
                return
            method, target, version = parts
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close" and not has_body
            await self._pace()
            if method not in ("GET", "HEAD"):
                await self._respond(writer, "GET", 405, "text/plain", b"use GET\n", keep=False,
                                    extra="Allow: GET, HEAD\r\n")
                return
            if self.auth is not None and not await self.auth.check(headers.get("authorization")):
                self.unauthorized += 1
                await self._respond(writer, method, 401, "text/plain", b"unauthorized\n", keep=False,
                                    extra='WWW-Authenticate: Basic realm="ikecore", charset="UTF-8"\r\n')
                return
            if target.split("?")[0] != self.path:
                await self._respond(writer, method, 404, "text/plain", f"metrics are at {self.path}\n".encode(),
                                    keep=keep)
            else:
                try:
                    body, ctype = await self.exposition(headers.get("accept", ""))
                except Exception as exc:  # a source that fails (a worker's answer) is said, not fatal
                    await self._respond(writer, method, 500, "text/plain", f"metrics unavailable: {exc}\n".encode(),
                                        keep=False)
                    return
                self.scrapes += 1
                if method != "HEAD":
                    self._answers.hold(len(body) / self.max_bytes)
                await self._respond(writer, method, 200, ctype, body, keep=keep)
            if not keep:
                return

    async def _respond(self, writer: asyncio.StreamWriter, method: str, status: int, ctype: str, body: bytes, *,
                       keep: bool, extra: str = "") -> None:
        writer.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\n{extra}Connection: {'keep-alive' if keep else 'close'}\r\n"
                     f"\r\n".encode("latin-1"))
        if method != "HEAD":
            writer.write(body)
        await writer.drain()

    async def _pace(self) -> None:
        """At most ``max_requests`` answers a second, whatever the number of connections."""
        await self._answers.wait()

    # -- the exposition ------------------------------------------------------------------

    async def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body for an ``Accept`` header and its content type: from the cache while it is
        younger than ``cache_seconds``, else from the one build under way or a new one."""
        encoder, ctype = choose_encoder(accept)
        cached = self._bodies.get(ctype)
        if cached is not None and asyncio.get_running_loop().time() - cached[0] < self._fresh_for():
            return cached[1], ctype
        body: bytes = await self._once(f"body:{ctype}", lambda: self._build(encoder, ctype))
        return body, ctype

    async def _once(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``make()`` once for every caller waiting on ``key`` at the same time."""
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(make())

            def done(future: asyncio.Future[Any]) -> None:
                self._pending.pop(key, None)
                if not future.cancelled():
                    future.exception()  # retrieved: the waiters have it
            pending.add_done_callback(done)
        return await asyncio.shield(pending)

    def _fresh_for(self) -> float:
        """How long a build serves: ``cache_seconds``, longer when builds are slow."""
        return max(self.cache_seconds, self.BUILD_SPACING * self.build_seconds)

    async def _build(self, encoder: Callable[[Any], bytes], ctype: str) -> bytes:
        built_at, families = await self._families()

        def encode() -> tuple[bytes, float]:
            started = time.thread_time()
            return encoder(_Collected(families)), time.thread_time() - started
        # Formatting is most of a build's time: on a worker thread, the loop keeps turning.
        body, seconds = await asyncio.get_running_loop().run_in_executor(None, encode)
        self._bodies[ctype] = (built_at, body)
        self.builds += 1
        self.build_seconds = self._collect_seconds + seconds  # processor time, not waits
        return body

    async def _families(self) -> tuple[float, list[Metric]]:
        loop = asyncio.get_running_loop()
        if self._snapshot is not None and loop.time() - self._snapshot[0] < self._fresh_for():
            return self._snapshot
        snapshot: tuple[float, list[Metric]] = await self._once("families", self._collect)
        return snapshot

    async def _collect(self) -> tuple[float, list[Metric]]:
        started = asyncio.get_running_loop().time()
        collect = getattr(self.source, "collect", None)
        if collect is not None:
            # A registry is read on the loop, between two datagrams: one consistent snapshot.
            cpu = time.thread_time()
            families = list(collect())
            self._collect_seconds = time.thread_time() - cpu
        else:
            families = list(await self.source())
        self._snapshot = (started, families)
        self.collections += 1
        return self._snapshot


class _Pace:
    """At most ``per_second`` turns a second: ``await wait()`` takes the next free turn."""

    def __init__(self, per_second: float) -> None:
        self.gap = 1.0 / per_second
        self.next = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        turn = max(now, self.next)
        self.next = turn + self.gap  # taken before sleeping: callers meanwhile queue behind it
        if turn > now:
            await asyncio.sleep(turn - now)

    def hold(self, seconds: float) -> None:
        """Push the next turn back by ``seconds`` (the cost of what was just done)."""
        self.next += seconds


async def start_metrics_server(source: Source, endpoint: str, options: MetricsOptions,
                               *, announce: str = "ikecore serve") -> tuple[MetricsServer, tuple[str, int]]:
    """Read the web configuration, listen on ``endpoint`` (``--metrics ADDR:PORT``) and say
    where on stderr; returns the server and its bound address. Raises ConfigError."""
    from ikecore.config import parse_endpoint

    host, port = parse_endpoint(endpoint, 9500, "--metrics")
    web = load_web_config(options.web_config) if options.web_config else None
    server = MetricsServer(source, cache_seconds=options.cache_seconds, max_connections=options.max_connections,
                           web=web)
    try:
        address = await server.start(host, port)
    except OSError as exc:
        raise ConfigError("--metrics", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    scheme = "https" if web is not None and web.tls is not None else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{address[1]}/metrics"
    logging.getLogger("ikecore.monitor").info("metrics at %s", url, extra={"event": "metrics", "fields": {"url": url}})
    return server, address
