"""The generator process of a Locust worker: forked before Locust is imported.

Design note
-----------
Importing Locust monkey-patches a process with gevent, whose sockets and poll cost the
generator's tight loop about a third more CPU per SA at a steady rate (every wake-up goes
through gevent's hub). So ``ikecore loadtest --worker`` forks this process first, while
the interpreter is still plain, and only then imports Locust: the generator keeps the
local path's sockets, poll and DH threads, and the Locust side only relays.

Over one pipe (``multiprocessing`` connection) the parent sends ``("share", wire)`` and
maybe ``("stop",)``; the child answers every ``BATCH_INTERVAL`` with
``("events", samples, failures, progress)`` (the new latency samples per phase and the
new failures since the last batch, and the running counts), then ``("done", outcome)``
or ``("error", text)``. The child ends when its share is done, when the parent says stop,
or when the parent is gone. It ignores SIGINT: a terminal's ^C reaches the whole process
group, and the parent, which handles it, tells the child to stop.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from ikecore.credentials import Credentials
from ikecore.errors import ConfigError
from ikecore.gateway.dh_pool import DhPool, KeypairReserve
from ikecore.loadtest.generator import LoadTest, PeerState, _Peer
from ikecore.loadtest.runners import check_peer_addresses, run_udp
from ikecore.loadtest.shares import outcome_wire, progress_wire, spec_from_share

__all__ = ["BATCH_INTERVAL", "RecordedLoadTest", "start"]

BATCH_INTERVAL = 0.2


class RecordedLoadTest(LoadTest):
    """A ``LoadTest`` that also logs each failure's phase, phase time, SA time and reason."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failure_log: list[tuple[str, float, float, str]] = []

    def _fail(self, peer: _Peer, reason: str, now: float) -> None:
        quick = peer.state is PeerState.QUICK_MODE
        super()._fail(peer, reason, now)
        phase_start = peer.quick_mode_started if quick else peer.started
        self.failure_log.append(("quick_mode" if quick else "main_mode", now - phase_start, now - peer.started,
                                 peer.reason))


class _Batches:
    """The progress hook of ``run_udp``: new samples and failures to the parent in batches."""

    interval = BATCH_INTERVAL

    def __init__(self, conn: Connection, index: int) -> None:
        self.conn = conn
        self.index = index
        self._seen = {"main_mode": 0, "quick_mode": 0, "total": 0}
        self._failures_seen = 0
        self._last = 0.0
        self.stopped = False
        self._parent = os.getppid()

    def update(self, load: Any, now: float, force: bool = False) -> None:
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self.send(load, now)
        if self.conn.poll():
            self.stopped = self.stopped or self.conn.recv()[0] == "stop"
        if os.getppid() != self._parent:
            self.stopped = True

    def send(self, load: RecordedLoadTest, now: float) -> None:
        samples = {}
        for phase, done in self._seen.items():
            samples[phase] = load.latency[phase][done:]
            self._seen[phase] = len(load.latency[phase])
        failures = load.failure_log[self._failures_seen:]
        self._failures_seen = len(load.failure_log)
        self.conn.send(("events", samples, failures, progress_wire(load, self.index, now)))

    def close(self) -> None:
        pass


def _child(conn: Connection, psk: str, credentials: Credentials | None, local_port: int, dh_threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's to handle (module docstring)
    try:
        message = conn.recv()
    except (EOFError, OSError):
        return
    if message[0] != "share":
        return
    share = message[1]
    index = int(share["index"])
    pool = DhPool(dh_threads) if dh_threads else None
    try:
        try:
            spec = spec_from_share(share, psk, credentials)
            check_peer_addresses(spec)  # this worker sends from them
            load = RecordedLoadTest(spec, keypair=KeypairReserve(pool) if pool is not None else None,
                                    local_port=local_port)
        except ConfigError as exc:
            conn.send(("error", str(exc)))
            return
        batches = _Batches(conn, index)
        gc.freeze()  # the peer table lives for the whole run
        try:
            report = run_udp(load, progress=batches, should_stop=lambda: batches.stopped)
        except OSError as exc:
            conn.send(("error", f"--local-port: cannot open the UDP socket: {exc.strerror}"))
            return
        now = time.monotonic()
        batches.send(load, now)
        conn.send(("done", outcome_wire(load, report, index, now)))
    except (BrokenPipeError, EOFError):
        pass
    finally:
        if pool is not None:
            pool.close()
        conn.close()


def start(psk: str, credentials: Credentials | None, *, local_port: int = 0,
          dh_threads: int = 1) -> tuple[Any, Connection]:
    """Fork the generator process (call before importing Locust); returns it and the
    parent's end of its pipe."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(child, psk, credentials, local_port, dh_threads),
                              name="ikecore-generator", daemon=True)
    process.start()
    child.close()
    return process, parent
