"""Benchmark: one monitor over a gateway of two worker processes.

1. ``fleet_json_100k``: 100,000 ISAKMP SAs (each with its IPsec SA) spread over 2 worker
   processes, each serving its control socket (``ikecore.monitor.control.ControlServer``),
   and the parent's fan-out socket (``ikecore.monitor.fanout.FanoutServer``) in this
   process. Timed: whole ``ikecore monitor main-mode security-associations --format json``
   commands through the parent's socket (interpreter start included; every column of
   every SA), target < 1 s; and ``--where peer=ADDR``, target < 0.1 s. Also the same two
   requests without the interpreter's start (one request from this process, answered and
   parsed), and ``--where peer=ADDR`` against one worker of 50,000 SAs in the worker's own
   process (``Views.query_json``: the filter itself). The SA records are copies (fresh
   handles, cookies steered to their worker, peer addresses) of SAs really negotiated in
   each worker process: negotiating 100,000 would only time the DH. No anchor.
2. ``fleet_setup_rate_polled``: SAs per second of ``ikecore serve --workers 2 --control S``
   negotiating with ``ikecore loadtest`` while a monitor polls the statistics every 100 ms
   and the SA list every second through the parent's socket, against the same run
   without the pollers (alternating runs, median). ratio = polled / plain; the target is
   >= 0.98 (the pollers cost at most 2%); and the gateway's CPU per SA (parent and
   workers, ``/proc``) with and without the pollers. Steadier on a shared machine:
   ``fleet_poller_cpu_share_of_setup``, the gateway's CPU spent answering the pollers (one
   gateway holding the SAs, idle with and without them) against the CPU it spends per
   second setting SAs up at full rate; target <= 0.02.

Output lines: ``name  ikecore  anchor  ratio``.
Run: .venv/bin/python bench/bench_fleet_monitor.py [--sas 100000] [--peers 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PSK = "bench-fleet-secret"


def _line(name: str, ours: float, anchor: float | None, ratio: float | None, note: str = "") -> None:
    a = f"{anchor:.4g}" if anchor is not None else "n/a"
    r = f"{ratio:.2f}" if ratio is not None else "-"
    print(f"{name:<34} {ours:>10.4g} {a:>10} {r:>7}  {note}".rstrip(), flush=True)


def _address(index: int) -> str:
    return f"10.{index // 62500}.{index // 250 % 250}.{1 + index % 250}"


# --- a worker process holding many SAs --------------------------------------------------------


def worker_main(index: int, count: int, sas: int, first: int, control: str) -> None:
    """Worker ``index`` of ``count``: negotiate a few SAs in memory, copy them into ``sas``
    SA records with peers ``_address(first ...)``, serve a control socket until stdin closes."""
    sys.path.insert(0, str(ROOT))
    from ikecore import steering
    from ikecore.engine.core import Engine
    from ikecore.gateway.gc_tuning import tune_gc
    from ikecore.monitor.control import ControlServer
    from ikecore.monitor.counters import Monitor
    from ikecore.monitor.hostinfo import HostConfig
    from ikecore.monitor.views import Views

    from tests.helpers import RESPONDER, Link

    tune_gc()
    link = Link()
    for i in range(8):
        link.initiator.initiate(RESPONDER, local=(f"127.0.0.{10 + i}", 500), now=link.now)
    link.pump(rounds=200)
    templates = [sa for sa in link.responder.sas() if sa.state.value == "ESTABLISHED" and sa.ipsec_sas]
    engine = Engine(link.responder.config, worker=(index, count))
    rng = os.urandom
    for i in range(sas):
        template = templates[i % len(templates)]
        handle = i + 1
        clone = dataclasses.replace(template, handle=handle,
                                    initiator_cookie=steering.steer_cookie(rng(8), index, count),
                                    responder_cookie=rng(8), remote=(_address(first + i), 500), quick_modes={},
                                    ipsec_sas=[dataclasses.replace(x, handle=handle, spi_in=rng(4), spi_out=rng(4))
                                               for x in template.ipsec_sas])
        engine._sas[handle] = clone
    views = Views(engine, Monitor(), clock=lambda: link.now, host=HostConfig())
    started = time.perf_counter()
    views.query_json("main-mode", "security-associations", all_columns=True, where=[f"peer={_address(first + 7)}"])
    filter_seconds = time.perf_counter() - started

    async def serve() -> None:
        server = ControlServer(views)
        await server.start(control)
        print(f"ready {filter_seconds:.6f}", flush=True)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), done.set)  # the bench closes our stdin to stop us
        await done.wait()
        server.close()

    asyncio.run(serve())


# --- the parent's fan-out socket in this process ----------------------------------------------


@dataclasses.dataclass
class _Worker:
    index: int
    control: str
    pid: int | None
    state: str = "up"
    restarts: int = 0
    last_exit: str = ""


class _Supervisor:
    def __init__(self, workers: list[_Worker]) -> None:
        self.workers = workers

    def status(self) -> list[dict[str, Any]]:
        return [{"worker": w.index, "pid": w.pid, "state": w.state, "restarts": w.restarts,
                 "last_exit": w.last_exit} for w in self.workers]


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, make: Callable[[], Any], timeout: float = 600.0) -> Any:
        async def run() -> Any:
            result = make()
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _timed(argv: list[str], repeats: int = 5) -> tuple[float, int]:
    samples, size = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=True, stdin=subprocess.DEVNULL, timeout=300)
        samples.append(time.perf_counter() - started)
        size = len(done.stdout)
    return statistics.median(samples), size


def _median(fn: Callable[[], Any], repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def fleet_listing(work: Path, total: int) -> None:
    from ikecore.monitor.cli import start_fleet_services
    from ikecore.monitor.control import ControlClient

    per_worker = total // 2
    private = work / "workers"
    private.mkdir(mode=0o700)
    processes = []
    workers = []
    for k in range(2):
        control = str(private / f"w{k}.sock")
        process = subprocess.Popen([sys.executable, __file__, "--worker", str(k), "--sas", str(per_worker),
                                    "--first", str(k * per_worker), "--control", control],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        processes.append(process)
        workers.append(_Worker(k, control, process.pid))
    parent = LoopThread()
    services = None
    try:
        filters = []
        for process in processes:
            ready = process.stdout.readline() if process.stdout else ""
            if not ready.startswith("ready"):
                raise SystemExit(f"a worker did not start: {ready!r}")
            filters.append(float(ready.split()[1]))
        path = str(work / "fleet.sock")
        services = parent.call(lambda: start_fleet_services(_Supervisor(workers),
                                                            argparse.Namespace(control=path, metrics=None)))
        monitor = [sys.executable, "-m", "ikecore", "monitor", "main-mode", "security-associations", "--control",
                   path, "--format", "json"]
        whole, size = _timed(monitor)
        rows = json.loads(subprocess.run(monitor, capture_output=True, check=True, timeout=300).stdout)
        assert len(rows) == 2 * per_worker and {r["worker"] for r in rows} == {0, 1}, len(rows)
        _line(f"fleet_json_{total // 1000}k_cli_seconds", whole, 1.0, 1.0 / whole,
              f"(target < 1 s; {size // 1024} KiB JSON, every column, 2 workers; anchor: the target)")
        target = _address(per_worker + per_worker // 2 + 7)  # a peer of worker 1
        one, _size = _timed(monitor + ["--where", f"peer={target}"])
        found = json.loads(subprocess.run(monitor + ["--where", f"peer={target}"], capture_output=True, check=True,
                                          timeout=60).stdout)
        assert [r["peer"] for r in found] == [target], found
        _line(f"fleet_where_peer_{total // 1000}k_cli_seconds", one, 0.1, 0.1 / one,
              "(target < 0.1 s; whole command; anchor: the target)")
        with ControlClient(path, timeout=60) as client:
            request = _median(lambda: client.request({"op": "view", "mode": "main-mode",
                                                      "view": "security-associations", "all_columns": True}))
            where = _median(lambda: client.request({"op": "view", "mode": "main-mode",
                                                    "view": "security-associations", "all_columns": True,
                                                    "where": [f"peer={target}"]}), 20)
            start = _median(lambda: subprocess.run([sys.executable, "-c", "import ikecore.monitor.cli"],
                                                   check=True, timeout=60))
        _line(f"fleet_json_{total // 1000}k_request_seconds", request, None, None,
              "(one request from this process: answered by both workers, merged, parsed)")
        _line(f"fleet_where_peer_{total // 1000}k_request_s", where, None, None, "(the same, --where peer=ADDR)")
        _line("monitor_interpreter_start_seconds", start, None, None, "(python -c 'import ikecore.monitor.cli')")
        _line(f"where_peer_{per_worker // 1000}k_in_worker_seconds", max(filters), 0.1, 0.1 / max(filters),
              "(Views.query_json --where peer=ADDR in a worker, first listing; anchor: the target)")
    finally:
        if services is not None:
            parent.call(services.close)
        parent.close()
        for process in processes:
            if process.stdin:
                process.stdin.close()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


# --- setup rate of serve --workers 2 with and without pollers ---------------------------------

POLLER = r"""
import sys, time
from ikecore.monitor.control import ControlClient
path, stop = sys.argv[1], time.monotonic() + float(sys.argv[2])
polls = lists = 0
next_list = time.monotonic()
try:
    with ControlClient(path, timeout=30) as client:  # one connection, as a monitoring agent keeps it
        while time.monotonic() < stop:
            client.request({"op": "view", "mode": "main-mode", "view": "statistics"})
            polls += 1
            if time.monotonic() >= next_list:
                client.request_line({"op": "view", "mode": "main-mode", "view": "security-associations"})
                lists += 1
                next_list += 1.0
            time.sleep(0.1)
except KeyboardInterrupt:
    pass
print(polls, lists)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_socket(path: str, timeout: float) -> None:
    from ikecore.monitor.control import ControlError, request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = request(path, {"op": "ping"}, timeout=5)
            if all(w.get("state") == "up" for w in answer.get("workers", [])):
                return
        except (ControlError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"the gateway did not come up on {path}")


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (``/proc/PID/stat``)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def poller_share(work: Path, peers: int) -> None:
    """The gateway's CPU spent answering the pollers, against the CPU it spends per second
    setting SAs up at full rate: measured on one ``serve --workers 2`` that holds ``peers``
    SAs, idle for 4 s without and then 8 s with the pollers (the difference is theirs)."""
    port = _free_port()
    control = str(work / "share.sock")
    gateway = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--psk", PSK, "--listen",
                                f"127.0.0.1:{port}", "--workers", "2", "--control", control, "--quiet",
                                "--dh-threads", "0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    poller = None
    try:
        _wait_socket(control, 60)
        from ikecore.monitor.control import request

        pids = [gateway.pid] + [w["pid"] for w in request(control, {"op": "ping"})["workers"]]
        cpu, started = _cpu_seconds(pids), time.monotonic()
        done = subprocess.run([sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{port}", "--psk", PSK,
                               "--peers", str(peers), "--concurrency", "100", "--no-progress", "--json",
                               "--first-address", "127.4.0.1", "--dh-threads", "0"],
                              capture_output=True, text=True, timeout=600)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        setup_cpu_per_s = (_cpu_seconds(pids) - cpu) / (time.monotonic() - started)
        held = len(request(control, {"op": "view", "mode": "main-mode", "view": "security-associations",
                                     "columns": "peer"})["rows"])
        time.sleep(1.0)
        cpu = _cpu_seconds(pids)
        time.sleep(4.0)
        idle_per_s = (_cpu_seconds(pids) - cpu) / 4.0
        poller = subprocess.Popen([sys.executable, "-c", POLLER, control, "600"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        cpu = _cpu_seconds(pids)
        time.sleep(8.0)
        polled_per_s = (_cpu_seconds(pids) - cpu) / 8.0
        poller.send_signal(signal.SIGINT)
        out, _err = poller.communicate(timeout=30)
        share = max(0.0, polled_per_s - idle_per_s) / setup_cpu_per_s
        _line("fleet_poller_cpu_share_of_setup", share, 0.02, 0.02 / share if share else None,
              f"(pollers: {1000 * (polled_per_s - idle_per_s):.1f} ms CPU/s over {held} SAs; setting up "
              f"{report['sas_per_second']:.0f} SAs/s: {1000 * setup_cpu_per_s:.0f} ms CPU/s; polls/lists "
              f"{out.split()[0] if out else '?'}/{out.split()[1] if out else '?'}; target <= 0.02)")
    finally:
        if poller is not None and poller.poll() is None:
            poller.kill()
            poller.wait(10)
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait(10)


def _one_rate(work: Path, peers: int, polled: bool, tag: str) -> tuple[float, float, str]:
    port = _free_port()
    control = str(work / f"rate-{tag}.sock")
    gateway = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", "--psk", PSK, "--listen",
                                f"127.0.0.1:{port}", "--workers", "2", "--control", control, "--quiet",
                                "--dh-threads", "0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    poller = None
    try:
        _wait_socket(control, 60)
        from ikecore.monitor.control import request

        pids = [gateway.pid] + [w["pid"] for w in request(control, {"op": "ping"})["workers"]]
        if polled:
            poller = subprocess.Popen([sys.executable, "-c", POLLER, control, "600"], stdout=subprocess.PIPE,
                                      text=True)
            time.sleep(0.5)
        cpu = _cpu_seconds(pids)
        done = subprocess.run([sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{port}", "--psk", PSK,
                               "--peers", str(peers), "--concurrency", "100", "--no-progress", "--json",
                               "--first-address", "127.3.0.1", "--dh-threads", "0"],
                              capture_output=True, text=True, timeout=600)
        cpu = _cpu_seconds(pids) - cpu
        report = json.loads(done.stdout.strip().splitlines()[-1])
        rate = float(report["sas_per_second"])
        polls = ""
        if poller is not None:
            poller.send_signal(signal.SIGINT)
            out, _err = poller.communicate(timeout=30)
            polls = f", {out.strip() or '?'} polls/lists" if out else ""
        return rate, cpu * 1000 / max(1, int(report["established"])), f"{report['established']}/{peers}{polls}"
    finally:
        if poller is not None and poller.poll() is None:
            poller.kill()
            poller.wait(10)
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait(10)


def setup_rate_polled(work: Path, peers: int, rounds: int) -> None:
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    notes = []
    _one_rate(work, peers // 4, False, "warm")  # page cache, the interpreter's files: not measured
    for round_ in range(rounds):
        for polled in (False, True) if round_ % 2 == 0 else (True, False):
            rate, ms_per_sa, note = _one_rate(work, peers, polled, f"{round_}{int(polled)}")
            rates[polled].append(rate)
            cpu[polled].append(ms_per_sa)
            notes.append(f"{'polled' if polled else 'plain'} {rate:.0f}/s {ms_per_sa:.3f} ms/SA ({note})")
    plain, polled_rate = statistics.median(rates[False]), statistics.median(rates[True])
    print("  runs: " + "; ".join(notes), flush=True)
    _line("fleet_setup_rate_polled_sas_per_s", polled_rate, plain, polled_rate / plain,
          "(serve --workers 2; statistics every 100 ms + SA list every 1 s; anchor: no poller; target >= 0.98)")
    plain_cpu, polled_cpu = statistics.median(cpu[False]), statistics.median(cpu[True])
    _line("fleet_gateway_cpu_ms_per_sa_polled", polled_cpu, plain_cpu, plain_cpu / polled_cpu,
          "(parent + workers CPU per SA; anchor: no poller; ratio = plain / polled, target >= 0.98)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=int)
    parser.add_argument("--sas", type=int, default=100_000)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--control")
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-rate", action="store_true")
    args = parser.parse_args()
    if args.worker is not None:
        worker_main(args.worker, 2, args.sas, args.first, args.control)
        return
    sys.path.insert(0, str(ROOT))
    print(f"{'name':<34} {'ikecore':>10} {'anchor':>10} {'ratio':>7}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ikecore-bench-fleet-") as tmp:
        fleet_listing(Path(tmp), args.sas)
        if not args.skip_rate:
            poller_share(Path(tmp), args.peers)
            setup_rate_polled(Path(tmp), args.peers, args.rounds)


if __name__ == "__main__":
    main()
