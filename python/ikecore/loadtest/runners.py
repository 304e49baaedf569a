"""Runners: drive a ``LoadTest`` in memory, over real UDP, or in several processes.

``run_in_memory`` joins the generator to a responder ``Engine`` with a fake clock
(tests). ``run_udp`` sends real datagrams from one socket with ``IP_PKTINFO`` choosing
each peer's source address (127.x.y.z or a local routed range; 10,000 peers need one descriptor), and answers
each received datagram at once. ``run_processes`` forks generator processes, each with
its own socket, DH threads and a consecutive share of the peers and of the rate or
concurrency, and merges their reports into one (rate over the union of their busy spans).

Interruption: ``StopSignals`` turns SIGINT and SIGTERM into a flag that ``run_udp`` and
``run_processes`` ask (``should_stop``), so a stopped run still returns the report of
what was measured. Each generator process of ``run_processes`` sets its own flag on
either signal (from a terminal's ^C, which reaches the whole process group, or from its
parent, which forwards the signal when only it was told), ends its loop and sends its
report so far; the parent merges what arrived within ``STOP_GRACE`` seconds.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import resource
import select
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ikecore.engine.core import Engine
from ikecore.gateway.dh_pool import DhPool, KeypairReserve
from ikecore.gateway.frontdoor import IP_PKTINFO, pktinfo_destination, source_pktinfo
from ikecore.errors import ConfigError
from ikecore.loadtest.generator import LoadSpec, LoadTest, peer_address
from ikecore.loadtest.progress import Counts, Progress, ProgressBar
from ikecore.loadtest.report import Report, percentiles, rate_by_tenth

__all__ = ["StopSignals", "check_peer_addresses", "run_in_memory", "run_processes", "run_udp", "split_spec"]

MAX_DATAGRAMS_PER_READ = 256
#: With ``should_stop``, ``run_udp`` waits at most this long between two looks at it.
STOP_POLL_SECONDS = 0.1
#: Seconds the parent of generator processes waits for their reports once stopped.
STOP_GRACE = 3.0


class StopSignals:
    """SIGINT and SIGTERM set a flag instead of ending the process (a context manager;
    the previous handlers come back on exit). Called, it says whether a signal came.
    ``second_raises``: a second signal raises KeyboardInterrupt (a user who will not
    wait for the partial report), unless it comes within ``REPEAT_SECONDS`` of the first:
    one stop often arrives twice (``timeout`` signals its child and then the child's process
    group; Ctrl-C reaches the whole group). Outside the main thread it does nothing."""

    #: a signal this soon after the first is the same stop delivered twice
    REPEAT_SECONDS = 1.0

    def __init__(self, *, second_raises: bool = True) -> None:
        self.received: list[int] = []
        self.second_raises = second_raises
        self._previous: dict[int, Any] = {}
        self._first_at = 0.0

    def __call__(self) -> bool:
        return bool(self.received)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if not self.received:
            self._first_at = now
        elif now - self._first_at < self.REPEAT_SECONDS:
            return  # the same stop again
        self.received.append(signum)
        if self.second_raises and len(self.received) > 1:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def run_in_memory(load: LoadTest, responder: Engine, *, now: float = 1000.0,
                  max_steps: int = 2_000_000) -> tuple[Report, float]:
    """Join ``load`` to ``responder`` with a fake clock; returns the report and the end time.

    Datagrams arrive instantly; when nothing moves, the clock jumps to the next deadline.
    Bounded by ``max_steps`` and by the spec's ``max_seconds`` of fake time.
    """
    begin = now
    load.start(now)
    for _ in range(max_steps):
        moved = False
        for data, remote, local in load.datagrams_to_send():
            responder.receive_datagram(data, local, remote, now)
            moved = True
        for data, remote, local in responder.datagrams_to_send():
            load.receive_datagram(data, local, remote, now)
            moved = True
        while responder.next_event() is not None:
            pass
        if moved:
            continue
        if load.finished or load.finished_by_duration(now) or now - begin > load.spec.max_seconds:
            break
        deadlines = [d for d in (load.get_timer(), responder.get_timer()) if d is not None]
        if not deadlines:
            break
        now = max(now, min(deadlines))
        responder.handle_timer(now)
        load.handle_timer(now)
    return load.report(now), now


def check_peer_addresses(spec: LoadSpec) -> None:
    """Raise ConfigError (``--first-address``, or ``--peers`` for the last one) unless this
    machine can send from the first and the last peer address: a range nobody made local
    fails as a wrong flag before any peer starts, not as a run of timeouts. Called where
    the peers' socket is opened (a Locust master, which sends nothing, does not)."""
    first, last = spec.first_address, peer_address(spec.first_address, spec.peers - 1)
    for flag, address in (("--first-address", first), ("--peers", last)):
        if not is_local_address(address):
            raise ConfigError(flag, not_local_message(address, first, last))


def is_local_address(address: str) -> bool:
    """Whether this machine (this network namespace) can send from ``address``: a UDP
    socket binds to it (EADDRNOTAVAIL says no; another error is left to the run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
    return True


def not_local_message(address: str, first: str, last: str) -> str:
    """Why ``address`` cannot be a peer's, and the two commands that make ``first``..``last``
    usable: the smallest /8, /16 or /24 holding both, made local and routed to the gateway."""
    if ipaddress.IPv4Address(address).is_loopback:
        return f"{address} is not an address of this machine: bring the loopback interface up (ip link set lo up)"
    low, high = int(ipaddress.IPv4Address(first)), int(ipaddress.IPv4Address(last))
    prefix = next(p for p in (24, 16, 8, 0) if low >> (32 - p) == high >> (32 - p))
    network = ipaddress.IPv4Network((low, prefix), strict=False)
    return (f"{address} is not an address of this machine: make the range local "
            f"(ip route add local {network} dev lo) and route it to the gateway")


def run_udp(load: LoadTest, *, progress: Progress | None = None, bind: str = "0.0.0.0",
            should_stop: Callable[[], bool] | None = None) -> Report:
    """Run ``load`` over real UDP: one socket, each peer's source address set per datagram.

    The socket binds ``bind:load.local_port`` (0: ephemeral, then every peer uses that
    port). Bounded by the spec's ``max_seconds``; ``should_stop`` (asked once a loop, and
    at least every progress interval) ends the run early with the report so far.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((bind, load.local_port))
        load.local_port = sock.getsockname()[1]
        sock.setblocking(False)
        # the express lane reads and sends in Rust, unless datagram faults are injected here
        lane = load.lane if load.lane is not None and not load.spec.faults.any_datagram_fault else None
        if lane is not None:
            lane.attach(sock.fileno(), load.local_port)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        cpu_start = _cpu()
        clock = time.monotonic
        now = clock()
        hard_stop = now + load.spec.max_seconds
        load.start(now)
        ancillary_size = socket.CMSG_SPACE(12)
        while True:
            _send_all(sock, load)
            now = clock()
            if (load.finished or load.finished_by_duration(now) or now >= hard_stop
                    or (should_stop is not None and should_stop())):
                break
            deadline = load.get_timer()
            wait = hard_stop - now if deadline is None else max(0.0, min(deadline, hard_stop) - now)
            if should_stop is not None:
                wait = min(wait, STOP_POLL_SECONDS)
            if progress is not None:
                progress.update(load, now)
                wait = min(wait, progress.interval)
            if poller.poll(wait * 1000.0):
                if lane is not None:
                    lane.pump(clock())
                    load.received(clock())
                else:
                    for _ in range(MAX_DATAGRAMS_PER_READ):
                        try:
                            data, ancdata, _flags, remote = sock.recvmsg(65535, ancillary_size)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            load.fault_counts["receive_errors"] += 1
                            break
                        local = pktinfo_destination(ancdata)
                        if local is not None:
                            load.receive_datagram(data, (remote[0], remote[1]), (local, load.local_port), clock())
                        # answer at once: holding replies back for a batch leaves the gateway idle
                        # meanwhile (the two sides fall into lockstep, each half busy)
                        _send_all(sock, load)
            now = clock()
            deadline = load.get_timer()
            if deadline is not None and deadline <= now:
                load.handle_timer(now)
        now = clock()
        if progress is not None:
            progress.update(load, now, force=True)
            progress.close()
        return load.report(now, _cpu() - cpu_start)
    finally:
        sock.close()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _send_all(sock: socket.socket, load: LoadTest) -> None:
    for data, remote, local in load.datagrams_to_send():
        try:
            sock.sendmsg([data], source_pktinfo(local[0]), 0, remote)
        except BlockingIOError:
            # the send buffer is full: wait briefly (bounded) and try once more
            select.select([], [sock], [], 0.05)
            try:
                sock.sendmsg([data], source_pktinfo(local[0]), 0, remote)
            except OSError:
                load.fault_counts["send_errors"] += 1
        except OSError:
            load.fault_counts["send_errors"] += 1


# --- several generator processes ---------------------------------------------------------


class _PipeProgress:
    """Stands in for a ProgressBar inside a worker: sends counts to the parent."""

    def __init__(self, conn: Connection, interval: float = 0.25) -> None:
        self.conn = conn
        self.interval = interval
        self._last = 0.0

    def update(self, load: Counts, now: float, force: bool = False) -> None:
        if force or now - self._last >= self.interval:
            self._last = now
            self.conn.send(("progress", load.established, load.failed, load.in_flight, load.retransmissions,
                            load.elapsed(now)))

    def close(self) -> None:
        pass


def _worker(conn: Connection, spec: LoadSpec, dh_threads: int, local_port: int, index: int) -> None:
    """Generator process ``index``: its share of the peers; on SIGINT or SIGTERM it stops
    and sends the report so far. Its log records carry ``worker=index``."""
    stop = StopSignals(second_raises=False)
    stop.__enter__()
    _tag_worker(index)
    pool = DhPool(dh_threads) if dh_threads else None
    try:
        load = LoadTest(spec, keypair=KeypairReserve(pool) if pool is not None else None, local_port=local_port)
        report = run_udp(load, progress=_PipeProgress(conn), should_stop=stop)
        conn.send(("done", report, load.latency, load.begin, load.last_done, load.done_times))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone: nobody to report to
    finally:
        if pool is not None:
            pool.close()
        conn.close()


def _tag_worker(index: int) -> None:
    """Every log record of this process carries ``worker=index`` (``ikecore.cli.logs``)."""
    base = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        record.worker = index
        return record

    logging.setLogRecordFactory(factory)


def split_spec(spec: LoadSpec, workers: int) -> list[LoadSpec]:
    """Consecutive peer ranges; rate and concurrency shared out; one seed each."""
    from dataclasses import replace

    specs, first = [], 0
    for index in range(workers):
        count = spec.peers // workers + (1 if index < spec.peers % workers else 0)
        if count == 0:
            continue
        specs.append(replace(
            spec, peers=count, first_address=peer_address(spec.first_address, first),
            rate=spec.rate / workers if spec.rate is not None else None,
            concurrency=max(1, spec.closed_loop // workers) if spec.rate is None else None,
            seed=None if spec.seed is None else spec.seed * 1000 + index))
        first += count
    return specs


def run_processes(spec: LoadSpec, workers: int, *, dh_threads: int = 1, local_port: int = 0,
                  progress: ProgressBar | None = None, should_stop: Callable[[], bool] | None = None) -> Report:
    """Run the load test in ``workers`` forked processes, each with its own socket, a
    share of the peers (consecutive addresses) and of the rate or concurrency; one
    merged report (rate over the union of the workers' busy spans). Once
    ``should_stop()`` is true, SIGINT goes to every process still running and the
    report merges what they sent within ``STOP_GRACE`` seconds."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    parts = split_spec(spec, workers)
    pipes, processes = [], []
    for index, part in enumerate(parts):
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, part, dh_threads,
                                                        local_port + index if local_port else 0, index), daemon=True)
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)
    status: dict[int, tuple[int, int, int, int, float]] = {}
    results: dict[int, tuple[Any, ...]] = {}
    deadline = time.monotonic() + spec.max_seconds + 60
    view = _ProgressView(spec)
    forwarded = 0.0
    try:
        while len(results) < len(pipes) and time.monotonic() < deadline:
            if should_stop is not None and should_stop() and time.monotonic() - forwarded >= 0.5:
                # (again every half second: a process still starting may not have had its handler yet)
                if not forwarded:
                    deadline = min(deadline, time.monotonic() + STOP_GRACE)
                forwarded = time.monotonic()
                for i, process in enumerate(processes):
                    if i not in results and process.pid is not None:
                        try:
                            os.kill(process.pid, signal.SIGINT)
                        except ProcessLookupError:
                            pass
            ready = [i for i, p in enumerate(pipes) if i not in results and p.poll(0.05)]
            for i in ready:
                try:
                    message = pipes[i].recv()
                except EOFError:
                    results[i] = ("lost",)
                    continue
                if message[0] == "progress":
                    status[i] = message[1:]
                else:
                    results[i] = message
            if progress is not None and status:
                view.set(status)
                progress.update(view, time.monotonic())
    finally:
        for process in processes:
            process.join(1 if should_stop is not None and should_stop() else 5)
            if process.is_alive():
                process.kill()
                process.join(1)
    if progress is not None:
        view.set(status)
        progress.update(view, time.monotonic(), force=True)
        progress.close()
    return _merge(spec, [results.get(i, ("lost",)) for i in range(len(pipes))])


class _ProgressView:
    """The counts a ProgressBar reads (``progress.Counts``), summed over workers."""

    def __init__(self, spec: LoadSpec) -> None:
        self.established = self.failed = self.in_flight = self.retransmissions = 0
        self._elapsed = 0.0

    def set(self, status: dict[int, tuple[int, int, int, int, float]]) -> None:
        rows = list(status.values())
        self.established = sum(r[0] for r in rows)
        self.failed = sum(r[1] for r in rows)
        self.in_flight = sum(r[2] for r in rows)
        self.retransmissions = sum(r[3] for r in rows)
        self._elapsed = max((r[4] for r in rows), default=0.0)

    def elapsed(self, now: float) -> float:
        return self._elapsed


def _merge(spec: LoadSpec, results: list[tuple[Any, ...]]) -> Report:
    done = [r for r in results if r[0] == "done"]
    reports: list[Report] = [r[1] for r in done]
    latency: dict[str, list[float]] = {"main_mode": [], "quick_mode": [], "total": []}
    for r in done:
        for phase, samples in r[2].items():
            latency[phase].extend(samples)
    begins = [r[3] for r in done if r[3] is not None]
    done_times = [t for r in done for t in r[5]]
    ends = [r[4] for r in done if r[4] is not None]
    seconds = max(ends) - min(begins) if begins and ends else 0.0
    failures: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    for report in reports:
        failures.update(report.failures)
        faults.update(report.faults)
    lost = len(results) - len(done)
    if lost:
        failures["generator process lost"] += lost
    established = sum(r.established for r in reports)
    started = sum(r.started for r in reports)
    return Report(
        peers=spec.peers, started=started, established=established, failed=sum(r.failed for r in reports),
        unfinished=spec.peers - established - sum(r.failed for r in reports) if lost else
        sum(r.unfinished for r in reports), seconds=seconds,
        sas_per_second=established / seconds if seconds > 0 else 0.0,
        quick_modes=sum(r.quick_modes for r in reports), retransmissions=sum(r.retransmissions for r in reports),
        failures=dict(failures.most_common()),
        latency_ms={phase: percentiles(samples) for phase, samples in latency.items()},
        faults=dict(faults), wrong_psk_peers=sum(r.wrong_psk_peers for r in reports),
        cpu_seconds=sum(r.cpu_seconds for r in reports),
        rate_by_tenth=rate_by_tenth(min(begins), done_times) if begins else [],
        target=f"{spec.target[0]}:{spec.target[1]}", ike=spec.ike, esp=spec.esp)
