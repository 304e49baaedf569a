"""Locust benchmark: the distributed load generator against a local two-process one.

The same peers (Main Mode + one Quick Mode, PSK, AES-128/SHA2-256/MODP-2048, 127.x
addresses on loopback) run against a fresh ``ikecore serve`` twice per round, in this
run, alternating:

* local: ``ikecore loadtest --workers 2`` (two forked generator processes);
* distributed: ``ikecore loadtest --master --expect-workers 2`` with two
  ``ikecore loadtest --worker`` processes on this machine (Locust's master and workers).

Both compute DH inline (``--dh-threads 0``: on 2 cores shared with the gateway a DH
thread only adds hand-offs). Two loads: a fixed offered rate (open loop, ``--rate``; the cost of
one SA, the headline) and as fast as it goes (closed loop, ``--concurrency``; the rate).
Printed lines::

    name  ikecore  anchor  ratio

* generator CPU ms per SA: ``ikecore`` = distributed, ``anchor`` = local; the CPU the
  generators spent during the run (the report's ``cpu_seconds``: every generator process
  and, distributed, each worker's Locust process relaying to the master) plus, for the
  distributed run, the master's CPU over the same span; target ratio at most 1.10;
* whole-process CPU ms per SA: every process from start to exit (Python and Locust
  start-up included), for context;
* SAs per second, closed loop: ``ikecore`` = distributed, ``anchor`` = local; target
  ratio at least 0.90.

    .venv/bin/python bench/bench_locust.py [--peers 3000] [--rate 300] [--concurrency 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_handshakes import ESP, IKE, PSK, IkecoreGateway, cpu_seconds, free_port  # noqa: E402
from bench_workers import cpu_model  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _common(target: str, peers: int, load: list[str], first: str) -> list[str]:
    return [sys.executable, "-m", "ikecore", "loadtest", target, "--peers", str(peers), "--ike", IKE, "--esp", ESP,
            *load, "--json", "--no-progress", "--max-seconds", "600", "--first-address", first]


def local_run(target: str, peers: int, load: list[str], first: str) -> dict[str, Any]:
    before = _children_cpu()
    out = subprocess.run([*_common(target, peers, load, first), "--workers", "2", "--dh-threads", "0"],
                         env=os.environ | {"IKECORE_PSK": PSK}, capture_output=True, text=True, timeout=660,
                         check=False)
    result: dict[str, Any] = json.loads(out.stdout)
    result["process_cpu"] = _children_cpu() - before
    result["run_cpu"] = float(result["cpu_seconds"])
    return result


def distributed_run(target: str, peers: int, load: list[str], first: str) -> dict[str, Any]:
    bind = _tcp_port()
    before = _children_cpu()
    master = subprocess.Popen([*_common(target, peers, load, first), "--master", "--expect-workers", "2",
                               "--master-bind", f"127.0.0.1:{bind}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [subprocess.Popen([sys.executable, "-m", "ikecore", "loadtest", "--worker", "--master-host",
                                 f"127.0.0.1:{bind}", "--dh-threads", "0"], env=os.environ | {"IKECORE_PSK": PSK},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert master.stderr is not None
    master.stderr.readline()  # "waiting for 2 workers": the master is up
    master_start = master_last = cpu_seconds(master.pid)
    deadline = time.monotonic() + 660
    while master.poll() is None and time.monotonic() < deadline:
        master_last = max(master_last, cpu_seconds(master.pid))  # /proc, while it lives
        time.sleep(0.05)
    out, err = master.communicate(timeout=60)
    for worker in workers:
        worker.wait(60)
    result: dict[str, Any] = json.loads(out) if out.strip() else {"established": 0, "error": err[-2000:]}
    result["process_cpu"] = _children_cpu() - before
    # the master's CPU while it waited for workers and followed the run (its start-up excluded)
    result["run_cpu"] = float(result.get("cpu_seconds", 0.0)) + (master_last - master_start)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args, _unknown = parser.parse_known_args()
    ok = True
    block = 0
    for name, load in ((f"open loop {args.rate:g} SAs/s", ["--rate", str(args.rate)]),
                       (f"closed loop {args.concurrency}", ["--concurrency", str(args.concurrency)])):
        runs: dict[str, list[dict[str, Any]]] = {"local": [], "distributed": []}
        for _ in range(max(1, args.rounds)):
            for kind, run in (("local", local_run), ("distributed", distributed_run)):
                port = free_port()
                gateway = IkecoreGateway(f"127.0.0.1:{port}", dh_threads=0)
                block += 16
                try:
                    result = run(f"127.0.0.1:{port}", args.peers, load, f"127.{30 + block // 256}.{block % 256}.1")
                finally:
                    gateway.stop()
                ok &= int(result.get("established", 0)) == args.peers
                runs[kind].append(result)

        def per_sa(kind: str, key: str) -> float:
            return statistics.median(1000.0 * r[key] / max(1, r["established"]) for r in runs[kind])

        def rate(kind: str) -> float:
            return statistics.median(float(r["sas_per_second"]) for r in runs[kind])

        for label, key in (("generator CPU ms/SA", "run_cpu"), ("whole-process CPU ms/SA", "process_cpu")):
            ours, anchor = per_sa("distributed", key), per_sa("local", key)
            print(f"{label + ', ' + name + ', distributed vs local':<64} {ours:8.3f} {anchor:8.3f} "
                  f"{ours / anchor:6.3f}", flush=True)
        ours, anchor = rate("distributed"), rate("local")
        print(f"{'SAs/s, ' + name + ', distributed vs local':<64} {ours:8.0f} {anchor:8.0f} {ours / anchor:6.3f}",
              flush=True)
        for kind in ("local", "distributed"):
            rounds = "; ".join(f"{r['sas_per_second']:.0f} SAs/s, run CPU {r['run_cpu']:.2f} s, "
                               f"process CPU {r['process_cpu']:.2f} s" for r in runs[kind])
            print(f"  {kind}: {rounds}", flush=True)
    print(f"  {args.peers} peers per run, {args.rounds} rounds; {cpu_model()}, "
          f"{len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.1f} at the end")
    if not ok:
        print("  FAILED: some runs did not establish every peer")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
