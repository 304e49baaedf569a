"""Prometheus/OpenMetrics exporter built on the official ``prometheus_client``.

``IkecoreCollector`` turns a gateway's ``Monitor`` and ``Engine`` into metric families at
scrape time: the 23 statistics (counters as ``ikecore_<statistic>_total``, gauges as
``ikecore_<statistic>``; Total Acquire and Total Get SPI as ``ikecore_acquire_total`` and
``ikecore_get_spi_total``), the extended counters with labels (messages by exchange, number
and direction; retransmissions; notifies by type; DPD; deletes; failures by phase and
reason; invalid packets; driver failures), the negotiation-time histograms per phase and,
per SA, timestamps rather than ages (``..._established_timestamp_seconds``,
``..._expiry_timestamp_seconds``), as Prometheus' naming guidance asks.

``MetricsServer`` answers ``GET /metrics`` on the gateway's own event loop (so a scrape
reads a consistent snapshot without locks), formats the text on a worker thread (so the
loop keeps turning) and honours ``Accept:`` for OpenMetrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ikecore.monitor import listing as sa_listing
from ikecore.monitor.counters import Monitor, Statistic

__all__ = ["IkecoreCollector", "MetricsServer", "GAUGE_STATISTICS", "make_registry", "udp_receive_queues"]

#: Statistics of the IP Security Monitor document that are gauges (the others only grow).
GAUGE_STATISTICS = frozenset({
    Statistic.ACTIVE_ACQUIRE, Statistic.ACTIVE_RECEIVE, Statistic.ACQUIRE_HEAP_SIZE,
    Statistic.RECEIVE_HEAP_SIZE, Statistic.ISADB_LIST_SIZE, Statistic.CONNECTION_LIST_SIZE,
})

_DOCUMENT_HELP = "IP Security Monitor Main Mode statistic"

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
}


class IkecoreCollector:
    """A ``prometheus_client`` collector reading one gateway at scrape time.

    Args:
        monitor: the gateway's Monitor.
        engine: its Engine (for the per-SA timestamps); None leaves them out.
        clock: the engine's clock (``loop.time``); times are converted to Unix time.
        wall: Unix time.
        per_sa_limit: at most this many SAs get per-SA series (protects Prometheus).
        sockets: the gateway's UDP sockets (``Gateway.sockets``), for the kernel's receive
            queue bytes and drops (Linux ``SO_MEMINFO``).
    """

    def __init__(self, monitor: Monitor, engine: Any = None, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, per_sa_limit: int = 10000,
                 sockets: Callable[[], list[Any]] | None = None) -> None:
        self.monitor = monitor
        self.sockets = sockets
        self.engine = engine
        self.clock = clock
        self.wall = wall
        self.per_sa_limit = per_sa_limit
        self.started = wall()

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
        for key, value in sorted(self.monitor.extended.items()):
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
        if self.engine is not None:
            yield from self._per_sa()

    def _per_sa(self) -> Iterator[Metric]:
        now, wall = self.clock(), self.wall()
        labels = ["me", "peer", "peer_id", "initiator_cookie", "responder_cookie"]
        established = GaugeMetricFamily("ikecore_isakmp_sa_established_timestamp_seconds",
                                        "Unix time the ISAKMP SA was established", labels=labels)
        expiry = GaugeMetricFamily("ikecore_isakmp_sa_expiry_timestamp_seconds",
                                   "Unix time the ISAKMP SA's lifetime ends", labels=labels)
        ipsec_expiry = GaugeMetricFamily("ikecore_ipsec_sa_expiry_timestamp_seconds",
                                         "Unix time the IPsec SA pair's lifetime ends",
                                         labels=["me", "peer", "spi_in", "spi_out"])
        sas = [sa for sa in self.engine.sas()[:self.per_sa_limit] if sa.established is not None]
        # The label values come column by column, as the monitor's listing builds them.
        for sa, *values in zip(sas, *sa_listing.columns_of(sas, labels, now, wall)):
            established.add_metric(values, wall - (now - sa.established))
            if sa.expires is not None:
                expiry.add_metric(values, wall - (now - sa.expires))
            for ipsec in list(sa.ipsec_sas):
                ipsec_expiry.add_metric([values[0], values[1], ipsec.spi_in.hex(), ipsec.spi_out.hex()],
                                        wall - (now - ipsec.expires))
        yield established
        yield expiry
        yield ipsec_expiry


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


class MetricsServer:
    """A tiny HTTP/1.0 endpoint serving ``registry`` at ``/metrics`` on the running loop."""

    def __init__(self, registry: CollectorRegistry, *, path: str = "/metrics") -> None:
        self.registry = registry
        self.path = path
        self.scrapes = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=16384)
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, *_ = lines[0].split(" ") + ["", ""]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"use GET\n"
            elif target.split("?")[0] != self.path:
                status, ctype, body = "404 Not Found", "text/plain", f"metrics are at {self.path}\n".encode()
            else:
                encoder, ctype = choose_encoder(headers.get("accept", ""))
                # Read the gateway on its loop (one consistent snapshot, a few tens of ms
                # with 10,000 per-SA series), then format the text on a worker thread: the
                # loop keeps turning meanwhile (the formatting is most of a scrape's time).
                families = _Collected(list(self.registry.collect()))
                body = await asyncio.get_running_loop().run_in_executor(None, encoder, families)
                status = "200 OK"
                self.scrapes += 1
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError,
                OSError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
