"""One ``/metrics`` for a gateway of several worker processes.

Design note. With ``ikecore serve --workers N --metrics ADDR:PORT`` the parent serves
``/metrics``; each worker answers the ``metrics`` operation of its control socket with
its own families (``ikecore.monitor.exporters.control_op``) and the parent asks them all
through the fan-out (``gather``) when it builds an exposition, at most once per cache
interval (``MetricsServer``): scrapers never reach the workers.

``FleetMerger`` makes one gateway of the answers, series by series (a series: a sample
name and its labels):

* counters and histograms are summed, and stay monotonic when a worker dies and is
  started again: the parent keeps each worker's last values, carries them while the worker
  is down and, when the worker comes back (a new start time), adds its previous life's
  totals to the sum, so ``rate()`` sees no reset. ``ikecore_udp_receive_drops`` is read
  from the sockets, which outlive a worker: not carried;
* gauges are summed over the workers that answered (a worker that is down holds nothing);
* series that are not additive: ``ikecore_start_time_seconds`` is the earliest (the
  parent's start: the summed counters count from then), ``ikecore_per_sa_series_limit``
  the cap itself, families named ``*_info`` once;
* per-SA series (on with ``--metrics-per-sa N``) are the union of the workers' series,
  cut to N ISAKMP SAs for the whole gateway (each worker's share as even as its SAs
  allow, with their IPsec SAs); what is cut is added to ``ikecore_per_sa_series_dropped``.

The parent adds ``ikecore_workers`` (the number of workers), ``ikecore_worker_up`` and
``ikecore_worker_restarts_total`` per worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ikecore.gateway.faults import FaultLog
from ikecore.monitor.exporters import (
    PER_SA_FAMILIES,
    MetricsOptions,
    MetricsServer,
    decode_families,
    start_metrics_server,
)

__all__ = ["FleetMerger", "FleetMetrics", "start"]

_MONOTONIC = {"counter", "histogram"}
_EARLIEST = {"ikecore_start_time_seconds"}
_ONCE = {"ikecore_per_sa_series_limit"}
_NOT_CARRIED = {"ikecore_udp_receive_drops"}  # kernel socket counters: they outlive a worker
_DROPPED = "ikecore_per_sa_series_dropped"

Key = tuple[str, str, tuple[tuple[str, str], ...]]  # family, sample name, labels


class _Life:
    """What the parent remembers of one worker: its start time and its monotonic series."""

    __slots__ = ("started", "values")

    def __init__(self, started: float, values: dict[Key, float]) -> None:
        self.started = started
        self.values = values


class FleetMerger:
    """Merges the workers' ``metrics`` answers into one gateway's families.

    Args:
        per_sa: ISAKMP SAs with per-SA series for the whole gateway (0: none).
        started: Unix time the parent started.
        faults: where the rate-limited "cap reached" line goes.
    """

    def __init__(self, per_sa: int = 0, *, started: float | None = None, faults: FaultLog | None = None) -> None:
        self.per_sa = per_sa
        self.started = time.time() if started is None else started
        self.faults = faults or FaultLog()
        self.lives: dict[int, _Life] = {}
        self.retired: dict[Key, float] = {}   # totals of workers' previous lives
        self.meta: dict[str, tuple[str, str]] = {}  # family -> (type, help)
        self.restarts_seen = 0

    def merge(self, answers: Iterable[tuple[int, dict[str, Any] | None]],
              status: list[dict[str, Any]] | None = None) -> list[Metric]:
        """One gateway's families from ``(worker, answer or None)`` pairs."""
        order: dict[str, None] = {}
        gauges: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        per_sa: list[dict[str, list[tuple[str, dict[str, str], float]]]] = []
        up: dict[int, bool] = {}
        dropped = 0.0
        for worker, answer in answers:
            families = self._families(answer)
            up[worker] = families is not None
            if families is None:
                continue
            assert answer is not None
            values: dict[Key, float] = {}
            mine: dict[str, list[tuple[str, dict[str, str], float]]] = {}
            for family in families:
                order.setdefault(family.name, None)
                self.meta.setdefault(family.name, (family.type, family.documentation))
                if family.name in PER_SA_FAMILIES:
                    mine[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
                    continue
                if family.name == _DROPPED:
                    dropped += sum(s.value for s in family.samples)
                    continue
                if family.type in _MONOTONIC:
                    for s in family.samples:
                        values[(family.name, s.name, tuple(s.labels.items()))] = s.value
                    continue
                series = gauges.setdefault(family.name, {})
                for s in family.samples:
                    key = (s.name, tuple(s.labels.items()))
                    series[key] = _combine(family.name, series.get(key), s.value)
            per_sa.append(mine)
            self._remember(worker, float(answer.get("started") or 0.0), values)
        totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for source in (self.retired, *(life.values for life in self.lives.values())):
            for (name, sample, labels), value in source.items():
                order.setdefault(name, None)
                series = totals.setdefault(name, {})
                series[(sample, labels)] = series.get((sample, labels), 0.0) + value
        out: list[Metric] = []
        for name in order:
            kind, doc = self.meta[name]
            if name in PER_SA_FAMILIES or name == _DROPPED:
                continue
            merged = totals.get(name) if kind in _MONOTONIC else gauges.get(name)
            if not merged:
                continue
            if name in _EARLIEST:
                merged = {key: min(value, self.started) for key, value in merged.items()}
            family = Metric(name, doc, kind)
            for (sample, labels), value in merged.items():
                family.add_sample(sample, dict(labels), value)
            out.append(family)
        if self.per_sa > 0 or any(per_sa):
            kept, cut = self._cap(per_sa)
            out.extend(kept)
            dropped += cut
        out.append(GaugeMetricFamily(_DROPPED, "established ISAKMP SAs left without per-SA series by the cap "
                                     "at this scrape", value=dropped))
        out.extend(self._workers(up, status))
        return out

    @staticmethod
    def _families(answer: dict[str, Any] | None) -> list[Metric] | None:
        if not isinstance(answer, dict) or not answer.get("ok"):
            return None
        try:
            return decode_families(answer.get("families") or [])
        except (TypeError, ValueError, AttributeError):
            return None

    def _remember(self, worker: int, started: float, values: dict[Key, float]) -> None:
        life = self.lives.get(worker)
        if life is not None and life.started != started:  # a new process: keep the last one's totals
            self.restarts_seen += 1
            for key, value in life.values.items():
                if key[0] not in _NOT_CARRIED:
                    self.retired[key] = self.retired.get(key, 0.0) + value
        self.lives[worker] = _Life(started, values)

    def _cap(self, per_sa: list[dict[str, list[tuple[str, dict[str, str], float]]]]) -> tuple[list[Metric], int]:
        """The per-SA families of every worker, cut to ``per_sa`` ISAKMP SAs in all; and how
        many SAs were cut."""
        established = [mine.get(PER_SA_FAMILIES[0], []) for mine in per_sa]
        shares = _shares([len(samples) for samples in established], self.per_sa)
        kept: set[tuple[str, str]] = set()
        for samples, share in zip(established, shares):
            kept.update(_cookies(labels) for _name, labels, _value in samples[:share])
        cut = sum(len(samples) for samples in established) - len(kept)
        if cut > 0:
            self.faults.report("per_sa_series_capped",
                               f"{len(kept) + cut} established SAs in the workers, per-SA series for {len(kept)} "
                               f"(--metrics-per-sa {self.per_sa}); ikecore_per_sa_series_dropped counts the others",
                               time.monotonic())
        families = []
        for name in PER_SA_FAMILIES:
            kind, doc = self.meta.get(name, ("gauge", name))
            family = Metric(name, doc, kind)
            for mine in per_sa:
                for sample, labels, value in mine.get(name, ()):
                    if _cookies(labels) in kept:
                        family.add_sample(sample, labels, value)
            families.append(family)
        return families, cut

    def _workers(self, up: dict[int, bool], status: list[dict[str, Any]] | None) -> list[Metric]:
        count = GaugeMetricFamily("ikecore_workers", "worker processes of this gateway", value=len(up))
        alive = GaugeMetricFamily("ikecore_worker_up", "1 when the worker answered the last collection, else 0",
                                  labels=["worker"])
        for worker in sorted(up):
            alive.add_metric([str(worker)], 1.0 if up[worker] else 0.0)
        families: list[Metric] = [count, alive]
        if status:
            restarts = CounterMetricFamily("ikecore_worker_restarts", "times the parent started the worker again",
                                           labels=["worker"])
            for row in status:
                restarts.add_metric([str(row.get("worker"))], float(row.get("restarts") or 0))
            families.append(restarts)
        return families


def _combine(name: str, old: float | None, value: float) -> float:
    if old is None:
        return value
    if name in _EARLIEST:
        return min(old, value)
    if name in _ONCE or name.endswith("_info"):
        return max(old, value)
    return old + value


def _cookies(labels: dict[str, str]) -> tuple[str, str]:
    return labels.get("initiator_cookie", ""), labels.get("responder_cookie", "")


def _shares(counts: list[int], cap: int) -> list[int]:
    """How many of each worker's SAs get series: ``cap`` in all, as evenly as the counts allow."""
    shares = [0] * len(counts)
    left = cap
    pending = sorted(range(len(counts)), key=lambda i: counts[i])
    for rank, index in enumerate(pending):
        fair = left // (len(pending) - rank)
        shares[index] = min(counts[index], fair)
        left -= shares[index]
    return shares


class FleetMetrics:
    """The parent's ``/metrics``: ``close()`` stops it; ``address`` is where it listens."""

    def __init__(self, server: MetricsServer | None, address: tuple[str, int] | None, merger: FleetMerger) -> None:
        self.server = server
        self.address = address
        self.merger = merger

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def start(fanout: Any, args: Any, config: Any = None) -> FleetMetrics:
    """Serve ``/metrics`` at ``args.metrics`` for the gateway behind ``fanout`` (which
    offers ``async gather(payload) -> [(worker, answer or None)]`` and, optionally,
    ``supervisor.status()``). ``config``: the gateway's Config (``[metrics]``), read from
    ``args.config`` when not given. Raises ConfigError."""
    if config is None and getattr(args, "config", None):
        from ikecore.config import load_config

        config = load_config(args.config)
    options = MetricsOptions.from_args(args, config)
    merger = FleetMerger(options.per_sa)
    if not getattr(args, "metrics", None):
        return FleetMetrics(None, None, merger)
    supervisor = getattr(fanout, "supervisor", None)
    gather: Callable[[dict[str, Any]], Awaitable[list[tuple[int, dict[str, Any] | None]]]] = fanout.gather

    async def families() -> list[Metric]:
        answers = await gather({"op": "metrics"})
        status = supervisor.status() if supervisor is not None and hasattr(supervisor, "status") else None
        # Decoding and summing tens of thousands of per-SA samples: off the parent's loop.
        return await asyncio.get_running_loop().run_in_executor(None, merger.merge, answers, status)

    server, address = await start_metrics_server(families, args.metrics, options)
    return FleetMetrics(server, address, merger)
