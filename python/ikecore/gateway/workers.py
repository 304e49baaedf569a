"""Worker processes: run one function in N forked processes.

Used by ``ikecore serve --workers N``: every worker binds the same ports with
SO_REUSEPORT, the kernel spreads peers over them by source address and port (so all
messages of one ISAKMP SA reach the same worker), and each worker owns its engine, SAs
and DH threads. Nothing is shared, so N workers use N cores without a lock.

The parent forwards SIGINT and SIGTERM to the workers and waits for all of them (bounded:
after a forwarded signal it waits at most ``grace`` seconds, then kills by PID).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

__all__ = ["run"]


def run(count: int, target: Callable[[], int], *, grace: float = 30.0) -> int:
    """Run ``target`` in ``count`` forked workers; the worst exit status wins."""
    if count < 1:
        from ikecore.errors import ConfigError

        raise ConfigError("--workers", "must be at least 1")
    sys.stdout.flush()
    sys.stderr.flush()
    children: list[int] = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # worker
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            status = 1
            try:
                status = int(target() or 0)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        children.append(pid)
    stop_at: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        stop_at.append(time.monotonic() + grace)
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    worst = 0
    try:
        remaining = set(children)
        while remaining:
            for child in list(remaining):
                pid, status = os.waitpid(child, os.WNOHANG)
                if pid:
                    remaining.discard(child)
                    worst = max(worst, os.waitstatus_to_exitcode(status) & 0xFF)
            if remaining and stop_at and time.monotonic() > stop_at[0]:
                for child in remaining:
                    os.kill(child, signal.SIGKILL)
            time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return worst
