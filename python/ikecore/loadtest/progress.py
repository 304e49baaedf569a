"""Live progress of a load test: one self-rewriting status line on a terminal.

``ProgressBar`` shows done/total, the live rate (SAs per second over the last two
seconds), failures, peers in flight and retransmissions. It reads only the few counts of
``Counts``, which a ``LoadTest`` has and the multi-process runner sums over its workers.
Into a log (not a terminal) it writes one plain line a second instead, or, given a
``logger``, one log record a second (``event=progress`` with the counts as fields), so a
log read as JSON lines stays JSON lines.
"""

from __future__ import annotations

import logging
from typing import Protocol, TextIO

__all__ = ["Counts", "Progress", "ProgressBar"]


class Counts(Protocol):
    """The counts a progress display reads (a ``LoadTest``, or a sum over workers)."""

    @property
    def established(self) -> int: ...

    @property
    def failed(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def retransmissions(self) -> int: ...

    def elapsed(self, now: float) -> float: ...


class ProgressBar:
    """One self-rewriting status line: done/total, live rate, failures, in flight."""

    def __init__(self, out: TextIO, total: int, width: int = 30, interval: float = 0.25,
                 logger: logging.Logger | None = None) -> None:
        self.out = out
        self.logger = logger
        self.total = total
        self.width = width
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.interval = interval if self.tty else max(interval, 1.0)  # a log gets one line a second
        self._last = 0.0
        self._samples: list[tuple[float, int]] = []

    def update(self, load: Counts, now: float, force: bool = False) -> None:
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
        if not self.tty and self.logger is not None:
            self.logger.info("%d/%d done, %.0f SAs/s, failed %d, in flight %d, retransmits %d, %.1f s", done,
                             self.total, live, load.failed, load.in_flight, load.retransmissions, load.elapsed(now),
                             extra={"event": "progress", "fields": {
                                 "done": done, "total": self.total, "sas_per_second": round(live, 1),
                                 "failed": load.failed, "in_flight": load.in_flight,
                                 "retransmissions": load.retransmissions,
                                 "seconds": round(load.elapsed(now), 3)}})
            return
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

    def update(self, load: Counts, now: float, force: bool = False) -> None: ...

    def close(self) -> None: ...
