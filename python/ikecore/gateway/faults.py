"""Local faults: log each kind once, then at most once per interval.

A gateway under stress fails in bulk -- a full socket buffer drops thousands of
datagrams, a full disk fails every store write. The statistics count every one (the
monitor); the log must not drown: ``FaultLog.report(kind, detail, now)`` logs the first
fault of a kind at WARNING, then suppresses that kind for ``interval`` seconds and
logs one summary line with how many were suppressed when the next one arrives after
the interval. Negotiation never waits on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["FaultLog"]

LOG = logging.getLogger("ikecore.gateway.faults")


@dataclass
class _Kind:
    last_logged: float
    suppressed: int = 0
    total: int = 0


class FaultLog:
    """Rate-limited logging of local faults, by kind.

    Args:
        interval: seconds between two log lines of the same kind.
        logger: where lines go (default ``ikecore.gateway.faults``).
    """

    def __init__(self, interval: float = 60.0, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.logger = logger or LOG
        self._kinds: dict[str, _Kind] = {}

    def report(self, kind: str, detail: str, now: float) -> bool:
        """Count one fault; True when it was logged (not suppressed)."""
        entry = self._kinds.get(kind)
        if entry is None:
            self._kinds[kind] = _Kind(last_logged=now, total=1)
            self.logger.warning("%s: %s", kind, detail)
            return True
        entry.total += 1
        if now - entry.last_logged < self.interval:
            entry.suppressed += 1
            return False
        self.logger.warning("%s: %s (%d more since the last report, %d in all)", kind, detail,
                            entry.suppressed, entry.total)
        entry.last_logged = now
        entry.suppressed = 0
        return True

    def totals(self) -> dict[str, int]:
        """Faults reported so far, by kind (logged or not)."""
        return {kind: entry.total for kind, entry in self._kinds.items()}


def udp_drops(ports: set[int], paths: tuple[str, ...] = ("/proc/net/udp", "/proc/net/udp6")) -> int | None:
    """Datagrams the kernel dropped for UDP sockets bound to ``ports`` (their receive
    queue was full), from the ``drops`` column of Linux ``/proc/net/udp``; None where
    that file does not exist. Counts since each socket was opened."""
    total, found = 0, False
    for path in paths:
        try:
            with open(path) as table:
                lines = table.read().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            try:
                if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                    total += int(fields[-1])
            except (IndexError, ValueError):
                continue
    return total if found else None
