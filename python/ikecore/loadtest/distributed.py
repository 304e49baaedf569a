"""Load tests across machines on Locust: ``ikecore loadtest --master`` and ``--worker``.

Design note
-----------
Locust's own distributed runner carries the run: the master is a Locust ``MasterRunner``
(``Environment.create_master_runner``), each load machine a ``WorkerRunner``; their
connection, heartbeats, statistics, web UI and CSV files are Locust's. ikecore adds only
custom messages on that channel (``register_message``/``send_message``):

* ``ikecore_share`` (master to worker i): share i of W of the spec (``shares``), without
  certificates; the worker adds its own ``--psk``/``--cert`` flags (the master's ``--psk``
  travels only when given, for a worker that has no key of its own).
* ``ikecore_progress`` (worker to master, once a second): running counts, for the
  master's progress bar and for the totals of a worker lost mid-run.
* ``ikecore_report`` (worker to master, at the end): the worker's final ikecore report
  with its raw samples; the master merges them (``merge_outcomes``) into the report a
  local run prints. ``ikecore_stop`` (master to workers) ends a run early (Ctrl-C).

Each worker runs ikecore's batched generator (``LoadTest`` driven by ``run_udp``, one
socket for all its peers, no greenlet per peer) in a process forked before Locust was
imported (``worker_process``): it keeps the plain sockets, poll and DH threads of a local
run, and sends its new latency samples and failures to the Locust side in batches five
times a second. The Locust side turns every Main Mode, Quick Mode and whole SA into a
Locust request event (request type ``IKE``, names ``main_mode``, ``quick_mode``, ``sa``;
the failure reason as the exception) and relays the counts and the report to the master.

gevent's monkey-patching comes with ``import locust``: only this module imports Locust,
and only the ``--master`` and ``--worker`` commands import this module.
"""

from __future__ import annotations

import dataclasses
import resource
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, TextIO

import gevent  # type: ignore[import-untyped]
from gevent.event import Event  # type: ignore[import-untyped]
from gevent.socket import wait_read  # type: ignore[import-untyped]
from locust import User, constant, task
from locust.env import Environment
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC, PERCENTILES_TO_REPORT, StatsCSVFileWriter, stats_history

from ikecore.errors import ConfigError
from ikecore.loadtest.generator import LoadSpec
from ikecore.loadtest.progress import ProgressBar
from ikecore.loadtest.report import Report
from ikecore.loadtest.shares import merge_outcomes, share_wire, shares

__all__ = ["IkeGenerator", "IkeFailure", "run_master", "run_worker"]

REQUEST_TYPE = "IKE"
STOP_GRACE = 15.0


class IkeFailure(Exception):
    """A failed negotiation as Locust sees it: the reason is the message."""

    def __repr__(self) -> str:
        return str(self)


class IkeGenerator(User):
    """One Locust user per worker: it stands for the worker's generator (which runs from
    the ``ikecore_share`` message, not from Locust's spawning), so it only idles."""

    wait_time = constant(1.0)

    @task
    def idle(self) -> None:
        pass


# --- the worker ----------------------------------------------------------------------------


def _fire(environment: Environment, samples: dict[str, list[float]],
          failures: list[tuple[str, float, float, str]]) -> None:
    """One batch from the generator process as Locust request events."""
    fire = environment.events.request.fire
    for phase, name in (("main_mode", "main_mode"), ("quick_mode", "quick_mode"), ("total", "sa")):
        for seconds in samples.get(phase, ()):
            fire(request_type=REQUEST_TYPE, name=name, response_time=seconds * 1000.0, response_length=0,
                 exception=None, context={})
    for phase, phase_seconds, total_seconds, reason in failures:
        failure = IkeFailure(reason)
        fire(request_type=REQUEST_TYPE, name=phase, response_time=phase_seconds * 1000.0, response_length=0,
             exception=failure, context={})
        fire(request_type=REQUEST_TYPE, name="sa", response_time=total_seconds * 1000.0, response_length=0,
             exception=failure, context={})


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _send_stats(environment: Environment, runner: WorkerRunner) -> None:
    """What Locust's stats reporter sends every few seconds, now."""
    data: dict[str, Any] = {}
    environment.events.report_to_master.fire(client_id=runner.client_id, data=data)
    runner.send_message("stats", data)


def _connect_worker(environment: Environment, master: tuple[str, int]) -> WorkerRunner:
    """Locust's worker runner, connected to ``master``. Locust tries for minutes and
    swallows ^C meanwhile: here SIGINT or SIGTERM ends the wait (exit 130 or 143, no
    traceback), and a master that never answers is a one-line error naming --master-host."""
    waiting = gevent.getcurrent()

    def give_up(signum: int) -> None:
        waiting.throw(SystemExit(128 + signum))

    handlers = [gevent.signal_handler(sig, give_up, sig) for sig in (signal.SIGINT, signal.SIGTERM)]
    try:
        runner = environment.create_worker_runner(master[0], master[1])
    except ConnectionError:
        raise ConfigError("--master-host", f"no master answered at {master[0]}:{master[1]}; start "
                          "ikecore loadtest --master there first") from None
    finally:
        for handler in handlers:
            handler.cancel()
    assert isinstance(runner, WorkerRunner)
    return runner


def run_worker(master: tuple[str, int], generator: Any, conn: Connection, *, err: TextIO = sys.stderr) -> int:
    """``ikecore loadtest --worker``: serve the master at ``master`` until it says quit,
    relaying between Locust and the ``generator`` process (``worker_process.start``)."""
    environment = Environment(user_classes=[IkeGenerator])
    runner = _connect_worker(environment, master)
    stop = Event()
    started = Event()

    def relay(share: dict[str, Any]) -> None:
        index = int(share["index"])
        err.write(f"worker {runner.client_id}: share {index + 1} of {share['workers']}, {share['peers']} peers "
                  f"from {share['first_address']}\n")
        conn.send(("share", share))
        cpu_start = _cpu()
        stop_sent = False
        while True:
            if stop.is_set() and not stop_sent:
                conn.send(("stop",))
                stop_sent = True
            try:
                wait_read(conn.fileno(), timeout=1.0)
            except TimeoutError:
                continue
            except OSError:
                break
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("error", "the generator process ended without a report")
            if message[0] == "events":
                _fire(environment, message[1], message[2])
                runner.send_message("ikecore_progress", message[3])
                continue
            _send_stats(environment, runner)  # the last events reach the master before the report
            if message[0] == "done":
                outcome = message[1]
                # the report's generator CPU counts this relay too: the whole worker's cost
                outcome["report"]["cpu_seconds"] += _cpu() - cpu_start
                runner.send_message("ikecore_report", outcome)
                report = outcome["report"]
                err.write(f"worker {runner.client_id}: {report['established']} established, "
                          f"{report['failed']} failed\n")
            else:
                runner.send_message("ikecore_report", {"index": index, "error": str(message[1])})
                err.write(f"ikecore loadtest --worker: {message[1]}\n")
            break

    def on_share(environment: Environment, msg: Any, **_kw: Any) -> None:
        if started.is_set():
            err.write(f"worker {runner.client_id}: already ran a share; start a new worker for a new run\n")
            return
        started.set()
        gevent.spawn(relay, msg.data)

    def on_stop(**_kw: Any) -> None:
        stop.set()

    runner.register_message("ikecore_share", on_share)
    runner.register_message("ikecore_stop", on_stop)
    environment.events.test_stopping.add_listener(on_stop)

    def interrupted() -> None:
        stop.set()
        environment.events.quitting.fire(environment=environment, reverse=True)
        runner.quit()

    gevent.signal_handler(signal.SIGINT, interrupted)
    gevent.signal_handler(signal.SIGTERM, interrupted)
    err.write(f"worker {runner.client_id} connected to the master at {master[0]}:{master[1]}\n")
    try:
        runner.greenlet.join()
    finally:
        if generator.is_alive():
            try:
                conn.send(("stop",))
            except OSError:
                pass
            generator.join(5)
            if generator.is_alive():
                generator.kill()
        conn.close()
    return 0


# --- the master ----------------------------------------------------------------------------


class _Counts:
    """The counts a ProgressBar reads, summed over the workers' progress messages."""

    def __init__(self, progress: dict[int, dict[str, Any]]) -> None:
        rows = list(progress.values())
        self.established = sum(int(r["established"]) for r in rows)
        self.failed = sum(int(r["failed"]) for r in rows)
        self.in_flight = sum(int(r["in_flight"]) for r in rows)
        self.retransmissions = sum(int(r["retransmissions"]) for r in rows)
        self._elapsed = max((float(r["elapsed"]) for r in rows), default=0.0)

    def elapsed(self, now: float) -> float:
        return self._elapsed


def run_master(spec: LoadSpec, workers: int, bind: tuple[str, int], *, web: tuple[str, int] | None = None,
               csv_prefix: str | None = None, progress_out: TextIO | None = None,
               err: TextIO = sys.stderr, signals: list[int] | None = None) -> Report:
    """``ikecore loadtest --master``: wait for ``workers`` Locust workers, hand out the
    shares, follow the run and return the merged report (partial after Ctrl-C, marked
    interrupted; the signal that stopped it is appended to ``signals``)."""
    started = time.monotonic()
    stopped_by: list[int] = [] if signals is None else signals
    environment = Environment(user_classes=[IkeGenerator], host=f"{spec.target[0]}:{spec.target[1]}")
    try:
        runner = environment.create_master_runner(bind[0] or "*", bind[1])
    except SystemExit:
        raise ConfigError("--master-bind", f"cannot listen on {bind[0]}:{bind[1]} (in use?)") from None
    assert isinstance(runner, MasterRunner)
    outcomes: dict[int, dict[str, Any]] = {}
    errors: dict[int, str] = {}
    progress: dict[int, dict[str, Any]] = {}
    interrupted = Event()

    def on_report(environment: Environment, msg: Any, **_kw: Any) -> None:
        index = int(msg.data["index"])
        if "error" in msg.data:
            errors[index] = str(msg.data["error"])
        else:
            outcomes[index] = msg.data

    def on_progress(environment: Environment, msg: Any, **_kw: Any) -> None:
        progress[int(msg.data["index"])] = msg.data

    runner.register_message("ikecore_report", on_report)
    runner.register_message("ikecore_progress", on_progress)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    def stop(number: int) -> None:
        stopped_by.append(number)
        interrupted.set()

    handlers = [gevent.signal_handler(s, stop, s) for s in (signal.SIGINT, signal.SIGTERM)]
    writer: StatsCSVFileWriter | None = None
    background = [gevent.spawn(stats_history, runner)]
    if csv_prefix:
        try:
            writer = StatsCSVFileWriter(environment, PERCENTILES_TO_REPORT, csv_prefix, False)
        except OSError as exc:
            raise ConfigError("--csv", f"cannot write {csv_prefix}_*.csv: {exc.strerror}") from None
        background.append(gevent.spawn(writer.stats_writer))
    argv = sys.argv
    if web is not None:
        # Locust's web UI reads its own flags from sys.argv on every page: show it none of ours
        sys.argv = argv[:1]
        environment.create_web_ui(web[0], web[1], stats_csv_writer=writer)
        err.write(f"Locust web UI on http://{web[0] or '0.0.0.0'}:{web[1]}\n")
    parts = shares(spec, workers)
    assigned: dict[int, str] = {}
    try:
        deadline = time.monotonic() + spec.max_seconds
        err.write(f"waiting for {workers} workers on {bind[0] or '*'}:{bind[1]}\n")
        while runner.worker_count < workers and not interrupted.is_set():
            if time.monotonic() > deadline:
                raise ConfigError("--expect-workers", f"only {runner.worker_count} of {workers} workers "
                                  f"connected within --max-seconds {spec.max_seconds:g}")
            gevent.sleep(0.1)
        if not interrupted.is_set():
            ready = sorted((c.id for c in runner.clients.values() if c.state != STATE_MISSING),
                           key=runner.get_worker_index)
            for index, part in enumerate(parts):
                assigned[index] = ready[index]
                runner.send_message("ikecore_share", share_wire(part, index, len(parts)), client_id=ready[index])
            runner.start(user_count=len(parts), spawn_rate=len(parts))
        _follow(runner, spec, assigned, outcomes, errors, progress, interrupted, progress_out, err)
    finally:
        runner.quit()
        if writer is not None:
            gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.1)  # one more pass of the CSV writer
        for greenlet in background:
            greenlet.kill(block=False)
        if writer is not None:
            writer.close_files()
        if environment.web_ui is not None:
            environment.web_ui.stop()
        sys.argv = argv
        for handler in handlers:
            handler.cancel()
        for number, handler_before in previous.items():
            signal.signal(number, handler_before)
    lost = {i: (f"{assigned[i]} ({errors[i]})" if i in errors else assigned.get(i, f"share {i}"))
            for i in range(len(parts)) if i not in outcomes}
    report = merge_outcomes(spec, parts, outcomes, progress, lost)
    if stopped_by:
        report = dataclasses.replace(report, interrupted_after=time.monotonic() - started)
    return report


def _follow(runner: MasterRunner, spec: LoadSpec, assigned: dict[int, str], outcomes: dict[int, dict[str, Any]],
            errors: dict[int, str], progress: dict[int, dict[str, Any]], interrupted: Event,
            progress_out: TextIO | None, err: TextIO) -> None:
    """Wait until every share reported or was lost (bounded by ``max_seconds``)."""
    bar = ProgressBar(progress_out, spec.peers) if progress_out is not None else None
    deadline = time.monotonic() + spec.max_seconds + 30.0
    stop_by: float | None = None
    lost: set[int] = set()
    while assigned:
        now = time.monotonic()
        for index, client in assigned.items():
            if index in outcomes or index in lost:
                continue
            if index in errors:
                lost.add(index)
                err.write(f"worker {client} failed: {errors[index]}\n")
            elif client not in runner.clients or runner.clients[client].state == STATE_MISSING:
                lost.add(index)
                err.write(f"worker {client} lost mid-run: its unfinished peers count as unfinished\n")
        if len(outcomes) + len(lost) >= len(assigned):
            break
        if interrupted.is_set() and stop_by is None:
            err.write("interrupted: stopping the workers, keeping the partial report\n")
            runner.send_message("ikecore_stop", {})
            stop_by = now + STOP_GRACE
        if now > deadline or (stop_by is not None and now > stop_by):
            break
        if bar is not None and progress:
            bar.update(_Counts(progress), now)
        gevent.sleep(0.1)
    if bar is not None:
        bar.update(_Counts(progress), time.monotonic(), force=True)
        bar.close()
