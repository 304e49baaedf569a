"""The outcome of a load test: the report, its percentiles, and its text and JSON forms.

``Report`` is what a run returns (``LoadTest.report``, or the merge of several generator
processes); ``format_report`` is the human-readable final report, ``report_json`` the
``--json`` object. Latencies are kept as raw samples during the run and reduced here to
count, p50, p90, p99 and max in milliseconds (nearest rank).

A run stopped by the user (Ctrl-C, SIGTERM) still returns its report, of what was
measured until then: ``interrupted_after`` says after how many seconds (JSON
``"interrupted": true``; the text report's first line says ``interrupted after N.N s``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "format_report", "percentiles", "rate_by_tenth", "report_json"]


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
    #: workers of a distributed run lost mid-run: worker name, share, peers, unfinished
    lost_workers: list[dict[str, Any]] = field(default_factory=list)
    #: seconds into the run when a signal stopped it (the counts are what was measured until then)
    interrupted_after: float | None = None

    def as_dict(self) -> dict[str, Any]:
        lost = {"lost_workers": list(self.lost_workers)} if self.lost_workers else {}
        stopped = {"interrupted_after": round(self.interrupted_after, 3)} if self.interrupted_after is not None \
            else {}
        return lost | stopped | {
            "interrupted": self.interrupted_after is not None,
            "target": self.target, "ike": self.ike, "esp": self.esp, "peers": self.peers,
            "started": self.started, "established": self.established, "failed": self.failed,
            "unfinished": self.unfinished, "seconds": round(self.seconds, 4),
            "sas_per_second": round(self.sas_per_second, 1), "quick_modes": self.quick_modes,
            "retransmissions": self.retransmissions, "failures": dict(self.failures),
            "latency_ms": self.latency_ms, "faults": dict(self.faults),
            "wrong_psk_peers": self.wrong_psk_peers, "cpu_seconds": round(self.cpu_seconds, 3),
            "rate_by_tenth": [round(r, 1) for r in self.rate_by_tenth],
        }


def percentiles(samples: list[float]) -> dict[str, float]:
    """Count, p50, p90, p99 and max of ``samples`` (seconds), in milliseconds."""
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


def format_report(report: Report) -> str:
    """The human-readable final report."""
    lines = [
        f"load test against {report.target}: {report.ike} / ESP {report.esp}" + (
            f" (interrupted after {report.interrupted_after:.1f} s: what was measured until then)"
            if report.interrupted_after is not None else ""),
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
    for lost in report.lost_workers:
        lines.append(f"  worker lost: {lost['worker']} (share {lost['share']}, {lost['peers']} peers, "
                     f"{lost['unfinished']} unfinished)")
    if report.wrong_psk_peers:
        lines.append(f"  peers given a wrong pre-shared key: {report.wrong_psk_peers}")
    if report.faults:
        lines.append("  injected: " + ", ".join(f"{k} {v}" for k, v in sorted(report.faults.items())))
    return "\n".join(lines)


def report_json(report: Report) -> str:
    return json.dumps(report.as_dict(), sort_keys=True)
