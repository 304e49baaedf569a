"""Fast defaults: the settings ``serve`` and ``loadtest`` pick for the machine they run on.

A flag the user gives always wins; this module only fills in what was left out, so the
plain commands (``ikecore serve --listen ... --psk ...``, ``ikecore loadtest TARGET
--peers 1000``) run as fast as the tuned ones of the benchmarks.

DH threads (``--dh-threads``): the Rust DH releases the GIL, so a thread computing key
pairs ahead pays only when a core is idle for it. Measured on 2 cores with gateway and
generator on one machine, a DH thread per process cost about 25% more CPU per SA
(hand-offs between threads) and gained nothing, since no core was free. So:

* no DH thread when the process's group is elliptic (ECP 19-21): a key pair costs less
  than handing it to a thread and back;
* no DH thread when this command's processes leave fewer than two cores free (one core
  is left for the peer, the kernel and everything else);
* else one DH thread per process.

Cores are those this process may run on (``sched_getaffinity``), not the machine's.

Event logs (``serve --log-rate N``): a gateway logging every negotiation's events at info
spent a quarter of its CPU formatting and writing them at 1,000 SAs per second.
:class:`LogBudget` lets at most N info (and debug) event lines a second through and
counts the rest (before the line is built: a held-back event costs one call); warnings,
errors and the ``phase1_established`` line of every ISAKMP SA always pass. The first
record after a second in which some were held back is preceded by one line saying how
many (``events_not_logged``). N = 0 logs everything.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from ikecore import policy
from ikecore.errors import ConfigError

__all__ = ["ELLIPTIC_GROUPS", "KEPT", "LOG_RATE", "LogBudget", "cores", "dh_threads"]

#: ``serve --log-rate`` default: info records a second per process.
LOG_RATE = 100
#: Events (classes of ``ikecore.events``) always logged whatever the rate: one line per
#: ISAKMP SA set up.
KEPT = frozenset({"Phase1Established"})

#: ECP groups (RFC 5903): a key pair and a shared secret cost about a tenth of MODP-2048's.
ELLIPTIC_GROUPS = frozenset({19, 20, 21})


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _groups(ike: str | None) -> set[int]:
    if not ike:
        return set()
    try:
        return {p.group for p in policy.parse_ike_proposals(ike)}
    except Exception:  # noqa: BLE001 - a bad --ike is the command's to report, later
        return set()


def dh_threads(given: int | None, processes: int, ike: str | None = None, *, available: int | None = None) -> int:
    """``--dh-threads``: ``given`` when the user gave it, else the fastest for this machine.

    ``processes`` is the number of processes of this command (``--workers``), ``ike`` its
    IKE proposals (``--ike``; None when they come from a configuration file, taken as
    MODP), ``available`` the cores (default: :func:`cores`).
    """
    if given is not None:
        return given
    groups = _groups(ike)
    if groups and groups <= ELLIPTIC_GROUPS:
        return 0
    free = (cores() if available is None else available) - max(1, processes)
    return 1 if free >= 2 else 0


class LogBudget:
    """At most ``per_second`` event log lines below WARNING a second (0: all): the gateway's
    event logger asks :meth:`admit` before it builds a line, so a held-back event costs
    one call. Raises ConfigError for a negative rate (``--log-rate``)."""

    def __init__(self, per_second: int | None = None, *, report: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_second is None:
            per_second = LOG_RATE
        if per_second < 0:
            raise ConfigError("--log-rate", "must be 0 (every event) or more")
        self.per_second = per_second
        self.report = report if report is not None else logging.getLogger("ikecore.serve")
        self.clock = clock
        self.window = clock()
        self.passed = 0
        self.held = 0
        self.held_total = 0

    def admit(self, name: str, level: int) -> bool:
        """Whether to log the event of class ``name`` at ``level`` now."""
        if level >= logging.WARNING or not self.per_second or name in KEPT:
            return True
        now = self.clock()
        if now - self.window >= 1.0:
            held, span = self.held, now - self.window
            self.window, self.passed, self.held = now, 0, 0
            if held:
                self.report.info("%d events not logged in %.1f s (more than %d a second; --log-rate 0 logs all)",
                                 held, span, self.per_second,
                                 extra={"event": "events_not_logged",
                                        "fields": {"count": held, "per_second": self.per_second}})
        if self.passed < self.per_second:
            self.passed += 1
            return True
        self.held += 1
        self.held_total += 1
        return False
