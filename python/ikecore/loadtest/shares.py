"""Shares of a distributed load test: what each worker runs and how their outcomes merge.

Design note
-----------
A distributed run (``ikecore loadtest --master`` and ``--worker``, driven by Locust's own
runners in ``ikecore.loadtest.distributed``) splits one ``LoadSpec`` into consecutive
shares, as ``run_processes`` does on one machine: share ``i`` of ``W`` gets its own range
of peers and source addresses, its part of the rate or concurrency and its own seed.
This module owns the plain-data forms that travel in Locust's messages, with no Locust
import (it is tested without gevent):

* ``share_wire``/``spec_from_share``: a share as a dict of plain values. Certificates
  never travel, nor does the pre-shared key unless the master was given one: each
  worker's own flags go back into the spec it rebuilds (its own key first, then the
  master's, then the default).
* ``outcome_wire``: a worker's final report with its raw latency samples and its
  completion times on the wall clock (machines share no monotonic clock).
* ``merge_outcomes``: one ``Report`` from the workers' outcomes, in the same form as a
  local run. A worker lost mid-run is named in ``lost_workers``; its last reported
  counts stay in the totals and the rest of its share counts as unfinished (the rate
  and the latencies are those of the workers that reported).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, replace
from typing import Any

from ikecore.credentials import Credentials
from ikecore.loadtest.generator import Faults, LoadSpec, LoadTest
from ikecore.loadtest.report import Report, percentiles, rate_by_tenth
from ikecore.loadtest.runners import split_spec

__all__ = ["merge_outcomes", "outcome_wire", "progress_wire", "share_wire", "shares", "spec_from_share"]

_SPEC_FIELDS = ("peers", "ike", "esp", "quick_modes", "rate", "concurrency", "ramp", "duration", "timeout",
                "retransmit_timeout", "retransmit_tries", "max_seconds", "first_address", "seed", "nat_t",
                "natt_port", "express")


def shares(spec: LoadSpec, workers: int) -> list[LoadSpec]:
    """``spec`` split into ``workers`` consecutive shares (fewer when peers are fewer)."""
    return split_spec(spec, workers)


def share_wire(share: LoadSpec, index: int, workers: int) -> dict[str, Any]:
    """One share as plain data for a Locust message: no certificate, and the pre-shared key
    only when the master was given one (for workers without a key of their own)."""
    wire: dict[str, Any] = {name: getattr(share, name) for name in _SPEC_FIELDS}
    wire.update(index=index, workers=workers, target=[share.target[0], share.target[1]],
                faults=asdict(share.faults))
    if share.psk:
        wire["psk"] = share.psk
    return wire


def spec_from_share(wire: dict[str, Any], psk: str, credentials: Credentials | None) -> LoadSpec:
    """The worker's ``LoadSpec``: the share from the master plus the worker's own secrets
    (its own key, else the master's, else the default ``secret``)."""
    values = {name: wire[name] for name in _SPEC_FIELDS}
    psk = psk or str(wire.get("psk") or "") or "secret"
    return LoadSpec(target=(str(wire["target"][0]), int(wire["target"][1])), psk=psk, credentials=credentials,
                    faults=Faults(**wire["faults"]), **values)


def progress_wire(load: LoadTest, index: int, now: float) -> dict[str, Any]:
    """A worker's running counts (the master's progress bar, and a lost worker's totals)."""
    return {"index": index, "started": load.started, "established": load.established, "failed": load.failed,
            "in_flight": load.in_flight, "retransmissions": load.retransmissions, "elapsed": load.elapsed(now),
            "failures": dict(load.failures)}


def outcome_wire(load: LoadTest, report: Report, index: int, now: float) -> dict[str, Any]:
    """A worker's final outcome; monotonic times moved onto the wall clock."""
    shift = time.time() - now
    return {"index": index, "report": asdict(report), "latency": load.latency,
            "begin": None if load.begin is None else load.begin + shift,
            "last_done": None if load.last_done is None else load.last_done + shift,
            "done_times": [t + shift for t in load.done_times]}


def merge_outcomes(spec: LoadSpec, parts: list[LoadSpec], outcomes: dict[int, dict[str, Any]],
                   progress: dict[int, dict[str, Any]], lost: dict[int, str]) -> Report:
    """One report over every share: ``outcomes`` by share index, the last ``progress``
    of each, and ``lost`` (share index to worker name) for the workers that never reported."""
    reports = [Report(**outcomes[i]["report"]) for i in sorted(outcomes)]
    latency: dict[str, list[float]] = {"main_mode": [], "quick_mode": [], "total": []}
    for i in outcomes:
        for phase, samples in outcomes[i]["latency"].items():
            latency.setdefault(phase, []).extend(samples)
    begins = [o["begin"] for o in outcomes.values() if o["begin"] is not None]
    ends = [o["last_done"] for o in outcomes.values() if o["last_done"] is not None]
    done_times = [t for o in outcomes.values() for t in o["done_times"]]
    failures: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    for report in reports:
        failures.update(report.failures)
        faults.update(report.faults)
    started = sum(r.started for r in reports)
    established = reported = sum(r.established for r in reports)
    failed = sum(r.failed for r in reports)
    unfinished = sum(r.unfinished for r in reports)
    lost_workers: list[dict[str, Any]] = []
    for index in range(len(parts)):
        if index in outcomes:
            continue
        last = progress.get(index, {})
        gone_established, gone_failed = int(last.get("established", 0)), int(last.get("failed", 0))
        started += int(last.get("started", 0))
        established += gone_established
        failed += gone_failed
        failures.update(last.get("failures", {}))
        left = parts[index].peers - gone_established - gone_failed
        unfinished += left
        lost_workers.append({"worker": lost.get(index, f"share {index}"), "share": index,
                             "peers": parts[index].peers, "unfinished": left})
    seconds = max(ends) - min(begins) if begins and ends else 0.0
    return replace(
        Report(peers=spec.peers, started=started, established=established, failed=failed, unfinished=unfinished,
               seconds=seconds, sas_per_second=reported / seconds if seconds > 0 else 0.0,
               quick_modes=sum(r.quick_modes for r in reports),
               retransmissions=sum(r.retransmissions for r in reports), failures=dict(failures.most_common()),
               latency_ms={phase: percentiles(samples) for phase, samples in latency.items()},
               faults=dict(faults), wrong_psk_peers=sum(r.wrong_psk_peers for r in reports),
               cpu_seconds=sum(r.cpu_seconds for r in reports),
               rate_by_tenth=rate_by_tenth(min(begins), done_times) if begins else [],
               target=f"{spec.target[0]}:{spec.target[1]}", ike=spec.ike, esp=spec.esp),
        lost_workers=lost_workers)
