"""Benchmark: the monitor at scale.

1. ``mm_json_100k``: list 100,000 Main Mode SAs as JSON in the gateway
   (``Views.query_json`` of every column: ``ikecore.monitor.listing``, nothing cached per SA):
   seconds, peak traced memory (MB) and the memory kept per SA afterwards; the first
   listing also through the control socket, with the longest time the event loop was
   held meanwhile, and the longest hold of every other view. ``mm_rows_100k`` is the
   in-process dict rows (tables, CSV) then orjson. The SA records are copies (fresh
   handles, cookies and peer addresses) of SAs really negotiated in step 2: negotiating
   100,000 would only time the DH. No anchor.
2. ``mm_list_5k``: an ikecore initiator negotiates 5,000 SAs (Main Mode + Quick Mode) with
   a strongSwan charon responder (the fake-kernel load-tester build of tests/interop), each
   from its own loopback address. Both now hold the same 5,000 SAs. ikecore: the wall time
   of ``ikecore monitor main-mode security-associations --format json`` against the
   gateway's control socket; anchor: ``swanctl --list-sas --raw`` against charon. Both are
   whole command runs (process start included). ratio = anchor / ikecore (x faster).
   ``mm_list_5k_request_seconds`` is the same listing without the Python interpreter's start
   (one control request from this process: served, sent and parsed) against the same anchor.
   Without charon (a laptop) the 5,000 SAs are negotiated with an ikecore responder and
   the anchor column says n/a.
3. ``negotiation_rate_polled``: SAs per second of a gateway negotiating with ikecore
   peers while a monitor process polls its statistics and SA list every 100 ms, against
   the same run without the poller (alternating runs, median). ratio = polled / plain;
   the target is >= 0.95.

Output lines: ``name  ikecore  anchor  ratio``.
Run: .venv/bin/python bench/bench_monitor.py [sas-for-step-2]
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ikecore.config import Timing, config_from_flags
from ikecore.engine.core import Engine
from ikecore.monitor.counters import Monitor, Statistic
from ikecore.monitor.cli import start_services
from ikecore.gateway.transport import Gateway
from ikecore.monitor.hostinfo import HostConfig
from ikecore.gateway.gc_tuning import tune_gc
from ikecore.monitor.views import VIEWS, Views, dumps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

SAS = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
BIG = 100_000
PSK = "bench-monitor-secret"
IKE, ESP = "aes128-sha256-ecp256", "aes128-sha256"
TIMING = Timing(retransmit_timeout=4.0, retransmit_tries=4, negotiation_timeout=60.0)


class LoopThread:
    """An event loop on its own thread; ``call`` runs a function or coroutine on it."""

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


def _address(index: int) -> str:
    return f"127.{10 + index // 62500}.{index // 250 % 250}.{1 + index % 250}"


async def _negotiate(gateway: Gateway, target: tuple[str, int], count: int, concurrency: int = 64,
                     first: int = 0) -> tuple[int, float]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int) -> bool:
        async with semaphore:
            local = await gateway.open((_address(index), 0))
            return (await gateway.connect(target, local=local, timeout=90, check=False)).ok
    started = time.perf_counter()
    results = await asyncio.gather(*(one(first + i) for i in range(count)))
    return sum(results), time.perf_counter() - started


def _timed_cli(argv: list[str], env: dict[str, str] | None = None, repeats: int = 3) -> tuple[float, int]:
    samples, size = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
        samples.append(time.perf_counter() - started)
        size = len(done.stdout)
    return statistics.median(samples), size


def _line(name: str, ours: float, anchor: float | None, ratio: float | None, note: str = "") -> None:
    a = f"{anchor:.4g}" if anchor is not None else "n/a"
    r = f"{ratio:.2f}" if ratio is not None else "-"
    print(f"{name:<34} {ours:>10.4g} {a:>10} {r:>7}  {note}".rstrip(), flush=True)


def list_5k(work: Path) -> tuple[Any, list[Any]]:
    """Step 2; returns the configuration and copies of the negotiated SAs."""
    from interop.charon import Charon, available, free_udp_ports

    initiator = LoopThread()
    engine = Engine(config_from_flags(psk=PSK, ike=IKE, esp=ESP, listen=(), timing=TIMING))
    gateway = Gateway(engine, monitor=Monitor())
    control = str(work / "bench.sock")
    services = initiator.call(lambda: start_services(gateway, control, None))
    reason = available("fake")
    charon_ctx: Any = None
    responder: LoopThread | None = None
    try:
        if reason is None:
            port, natt = free_udp_ports(2)
            charon_ctx = Charon.start(addr="127.0.0.2", port=port, natt_port=natt, psk=PSK, ike=IKE, esp=ESP,
                                      extra_conf="  ikesa_table_size = 8192\n  ikesa_table_segments = 16\n"
                                                 "  dos_protection = no\n  threads = 8\n", log_level=0)
            charon = charon_ctx.__enter__()
            target = ("127.0.0.2", port)
        else:
            responder = LoopThread()
            r_engine = Engine(config_from_flags(psk=PSK, ike=IKE, esp=ESP, listen=(("127.0.0.2", 0),), timing=TIMING))
            r_gateway = Gateway(r_engine, monitor=Monitor())
            (target,) = responder.call(lambda: r_gateway.listen([("127.0.0.2", 0)]))
        ok, seconds = initiator.call(lambda: _negotiate(gateway, target, SAS))
        print(f"# {ok}/{SAS} SAs negotiated with {'charon' if reason is None else 'an ikecore responder'} "
              f"in {seconds:.1f} s", flush=True)
        ours, size = _timed_cli([sys.executable, "-m", "ikecore", "monitor", "main-mode", "security-associations",
                                 "--control", control, "--format", "json"])
        if reason is None:
            listed = len(charon.list_sas())
            env = dict(os.environ, STRONGSWAN_CONF=str(charon.directory / "strongswan.conf"))
            anchor, anchor_size = _timed_cli([charon._swanctl, "--list-sas", "--raw"], env=env)
            _line(f"mm_list_{SAS // 1000}k_cli_seconds", ours, anchor, anchor / ours,
                  f"(ikecore {size // 1024} KiB JSON; swanctl {anchor_size // 1024} KiB, {listed} IKE_SAs)")
        else:
            _line(f"mm_list_{SAS // 1000}k_cli_seconds", ours, None, None, f"(no charon: {reason})")
        from ikecore.monitor.control import request

        request_only = _median(lambda: request(control, {"op": "view", "mode": "main-mode",
                                                        "view": "security-associations", "all_columns": True}))
        if reason is None:
            _line(f"mm_list_{SAS // 1000}k_request_seconds", request_only, anchor, anchor / request_only,
                  "(ikecore: one control request answered and parsed in this process, no interpreter start)")
        views = services.views
        t = _median(lambda: initiator.call(lambda: views.query_json(
            "main-mode", "security-associations", all_columns=True)))
        _line(f"mm_json_{SAS // 1000}k_inprocess_seconds", t, None, None)
        templates = initiator.call(lambda: [dataclasses.replace(sa, ipsec_sas=list(sa.ipsec_sas))
                                            for sa in engine.sas() if sa.state.value == "ESTABLISHED"])
    finally:
        if charon_ctx is not None:
            charon_ctx.__exit__(None, None, None)
        initiator.call(services.close)
        initiator.call(gateway.close)
        initiator.close()
        if responder is not None:
            responder.close()
    return engine.config, templates


def _median(fn: Callable[[], Any], repeats: int = 3) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def json_100k(config: Any, real: list[Any]) -> None:
    """Step 1: 100,000 SA records copied from the negotiated ones."""
    if not real:
        print("# no established SA to copy", flush=True)
        return
    engine = Engine(config)
    rng = os.urandom
    for i in range(BIG):
        template = real[i % len(real)]
        handle = i + 1
        clone = dataclasses.replace(template, handle=handle, initiator_cookie=rng(8), responder_cookie=rng(8),
                                    remote=(_address(i), 500), quick_modes={},
                                    ipsec_sas=[dataclasses.replace(x, handle=handle) for x in template.ipsec_sas])
        engine._sas[handle] = clone
    views = Views(engine, Monitor())

    def listing() -> bytes:
        return views.query_json("main-mode", "security-associations", all_columns=True)[1]
    gc.collect()
    cpu = time.process_time()
    cold = _median(listing, 1)  # the first listing of these SAs
    cold_cpu = time.process_time() - cpu
    seconds = _median(listing)
    text = listing()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    listing()
    _current, peak = tracemalloc.get_traced_memory()
    gc.collect()
    kept = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    _line("mm_json_100k_first_seconds", cold, None, None, "(first listing, Views.query_json: every column)")
    _line("mm_json_100k_first_cpu_seconds", cold_cpu, None, None, "(the same, CPU time of this process)")
    _line("mm_json_100k_seconds", seconds, None, None, f"({len(text) // 1024} KiB JSON, {BIG} SAs)")
    _line("mm_json_100k_peak_mb", peak / 1e6, None, None, "(tracemalloc peak while listing)")
    _line("mm_json_100k_kept_bytes_per_sa", max(kept, 0) / BIG, None, None,
          "(memory the views keep after a listing, per SA)")
    default = _median(lambda: views.query_json("main-mode", "security-associations")[1])
    _line("mm_json_100k_document_columns_seconds", default, None, None)
    rows = _median(lambda: dumps(views.query("main-mode", "security-associations", all_columns=True)["rows"]))
    _line("mm_rows_100k_seconds", rows, None, None, "(Views.query: every row a dict, then JSON)")
    stats = _median(lambda: views.query("main-mode", "statistics"), 50)
    _line("statistics_read_100k_seconds", stats, None, None, "(constant time)")
    total, hold = asyncio.run(_cold_control_listing(engine))
    _line("mm_json_100k_first_via_control_s", total, None, None, "(first listing through the control socket)")
    _line("mm_json_100k_first_longest_hold_s", hold, None, None, "(longest the event loop was held meanwhile)")
    worst, which = 0.0, ""
    for mode, names in VIEWS.items():
        for view in names:
            _total, held = asyncio.run(_cold_control_listing(engine, mode, view))
            if held > worst:
                worst, which = held, f"{mode} {view}"
    _line("views_100k_longest_hold_s", worst, None, None, f"(every view through the control socket; {which})")


async def _cold_control_listing(engine: Engine, mode: str = "main-mode",
                                view: str = "security-associations") -> tuple[float, float]:
    """A first listing through the control socket (fresh views), and the longest gap
    between two turns of the event loop while it was served (what a negotiation waits)."""
    from ikecore.monitor.control import ControlServer

    with tempfile.TemporaryDirectory(prefix="ikecore-bench-cold-") as tmp:
        server = ControlServer(Views(engine, Monitor(), host=HostConfig()))
        await server.start(f"{tmp}/cold.sock")
        loop = asyncio.get_running_loop()
        gaps = [0.0]
        last = [loop.time()]
        running = [True]

        def tick() -> None:
            now = loop.time()
            gaps[0] = max(gaps[0], now - last[0])
            last[0] = now
            if running[0]:
                loop.call_soon(tick)
        reader, writer = await asyncio.open_unix_connection(f"{tmp}/cold.sock", limit=1 << 30)
        started = time.perf_counter()
        loop.call_soon(tick)
        writer.write(orjson.dumps({"op": "view", "mode": mode, "view": view, "all_columns": True}) + b"\n")
        await reader.readline()
        total = time.perf_counter() - started
        running[0] = False
        writer.close()
        server.close()
    return total, gaps[0]


POLLER = r"""
import sys, time
from ikecore.monitor.control import ControlClient
path, stop = sys.argv[1], time.monotonic() + float(sys.argv[2])
polls = 0
with ControlClient(path) as client:  # one connection, as a monitoring agent keeps it
    while time.monotonic() < stop:
        client.request({"op": "view", "mode": "main-mode", "view": "statistics"})
        client.request({"op": "view", "mode": "main-mode", "view": "security-associations"})
        polls += 1
        time.sleep(0.1)
print(polls)
"""


def rate_with_poller(work: Path, peers: int = 2000, rounds: int = 5) -> None:
    """Step 3: alternate plain and polled runs of ``peers`` negotiations each.

    Besides the wall-clock rate (noisy on a shared machine) it reports the CPU seconds
    this process (gateway and peers) spent per SA, and the time the gateway spent
    answering the poller, as a share of the run. The process runs with the garbage
    collector settings ``ikecore serve`` uses (``ikecore.gateway.gc_tuning.tune_gc``), like a
    real gateway.
    """
    restore_gc = tune_gc()
    try:
        _rate_runs(work, peers, rounds)
    finally:
        restore_gc()


def _rate_runs(work: Path, peers: int, rounds: int) -> None:
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    serving: list[float] = []
    for round_ in range(rounds):
        for polled in (False, True) if round_ % 2 == 0 else (True, False):
            loop = LoopThread()
            engine = Engine(config_from_flags(psk=PSK, ike=IKE, esp=ESP, listen=(), timing=TIMING))
            gateway = Gateway(engine, monitor=Monitor())
            path = str(work / f"rate{round_}{int(polled)}.sock")
            services = loop.call(lambda: start_services(gateway, path, None))
            (server,) = loop.call(lambda: gateway.listen([("127.0.0.1", 0)]))
            peers_gw = Gateway(Engine(config_from_flags(psk=PSK, ike=IKE, esp=ESP, listen=(), timing=TIMING)),
                               monitor=Monitor())
            poller = None
            if polled:
                poller = subprocess.Popen([sys.executable, "-c", POLLER, path, "120"], stdout=subprocess.PIPE,
                                          text=True)
                time.sleep(0.5)  # the poller's interpreter is up and polling
            busy_before = services.control.busy_seconds
            before = os.times()
            ok, seconds = loop.call(lambda: _negotiate(peers_gw, server, peers, first=round_ * 2 * peers
                                                       + int(polled) * peers))
            after = os.times()
            rates[polled].append(ok / seconds)
            cpu[polled].append((after.user - before.user + after.system - before.system) / max(ok, 1))
            if polled:
                serving.append((services.control.busy_seconds - busy_before) / seconds)
            if poller is not None:
                poller.terminate()
                poller.wait(10)
            stats = loop.call(lambda: gateway.monitor.statistics())
            assert stats[Statistic.IKE_MAIN_MODE.key] == ok, stats
            loop.call(services.close)
            loop.call(peers_gw.close)
            loop.call(gateway.close)
            loop.close()
    plain, polled_rate = statistics.median(rates[False]), statistics.median(rates[True])
    _line("negotiation_rate_polled_sas_per_s", polled_rate, plain, polled_rate / plain,
          f"(anchor = same runs without a poller; {peers} peers x {rounds} runs each; "
          f"runs: {', '.join(f'{r:.0f}' for r in rates[True])} vs {', '.join(f'{r:.0f}' for r in rates[False])})")
    plain_cpu, polled_cpu = statistics.median(cpu[False]), statistics.median(cpu[True])
    _line("negotiation_cpu_ms_per_sa_polled", polled_cpu * 1e3, plain_cpu * 1e3, plain_cpu / polled_cpu,
          "(this process' CPU per SA; ratio = plain / polled)")
    _line("poller_share_of_gateway_time", statistics.median(serving), None, None,
          "(time answering the 100 ms poller / run time)")


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * SAS + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 2 * SAS + 256:
        raise SystemExit(f"need {2 * SAS + 256} file descriptors, the limit is {want}")
    print(f"{'name':<34} {'ikecore':>10} {'anchor':>10} {'ratio':>7}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ikecore-bench-") as tmp:
        work = Path(tmp)
        config, templates = list_5k(work)
        json_100k(config, templates)
        rate_with_poller(work)


if __name__ == "__main__":
    main()
