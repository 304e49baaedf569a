"""Worker benchmark: gateway CPU per SA with ``serve --workers 2`` against ``--workers 1``.

The same load test (``ikecore loadtest``, Main Mode + one Quick Mode, PSK,
AES-128/SHA2-256/MODP-2048, peers from 127.x addresses on loopback) runs against
``ikecore serve --workers 1`` and against ``ikecore serve --workers 2`` in this run,
alternating, ``--rounds`` times each. The gateway's CPU is the user + system time of
every gateway process from /proc (the parent and its workers, all threads), from the
moment it printed "listening on" to the end of the load test; divided by the SAs
established.

Two loads: the same offered rate (open loop, ``--rate`` new peers per second, below
what either gateway sustains: the headline, the cost of one SA), and as fast as the
gateway goes (closed loop, ``--concurrency`` peers in flight). Under the second a
gateway that has a core to itself batches more datagrams per wake-up than two workers
that share the cores with the load generator, so it reads lower per SA without any
per-SA work being saved. Printed lines::

    name  ikecore  anchor  ratio

with ``ikecore`` = milliseconds of gateway CPU per SA with 2 workers, ``anchor`` = the
same with 1 worker (median of the rounds), ``ratio`` = ikecore / anchor (target for the
same rate: at most 1.10, steering by cookie and supervising cost nothing per SA), then
each round, the setup rates and the CPU model.

    .venv/bin/python bench/bench_workers.py [--peers 2000] [--rate 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_handshakes import ESP, IKE, PSK, IkecoreGateway, free_port  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def loadtest(target: str, peers: int, load: list[str]) -> dict[str, Any]:
    argv = [sys.executable, "-m", "ikecore", "loadtest", target, "--peers", str(peers), "--psk", PSK, "--ike", IKE,
            "--esp", ESP, *load, "--json", "--no-progress", "--max-seconds", "600", "--dh-threads", "0"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=660, check=False)
    try:
        result: dict[str, Any] = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"ikecore loadtest failed: {out.stderr[-2000:]}") from None
    return result


def one_run(workers: int, peers: int, load: list[str]) -> dict[str, Any]:
    port = free_port()
    gateway = IkecoreGateway(f"127.0.0.1:{port}", workers=workers, dh_threads=0)
    try:
        result = loadtest(f"127.0.0.1:{port}", peers, load)
        time.sleep(0.3)  # the last Quick Mode 3 messages reach the gateway
        cpu = gateway.cpu()
    finally:
        gateway.stop()
    established = int(result.get("established", 0))
    return {"workers": workers, "established": established, "cpu": cpu,
            "ms_per_sa": 1000.0 * cpu / established if established else float("inf"),
            "rate": float(result.get("sas_per_second", 0.0))}


def compare(name: str, peers: int, load: list[str], rounds: int) -> bool:
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(max(1, rounds)):
        for workers in (1, 2):
            runs[workers].append(one_run(workers, peers, load))
    one = statistics.median(r["ms_per_sa"] for r in runs[1])
    two = statistics.median(r["ms_per_sa"] for r in runs[2])
    print(f"{name:<52} {two:8.3f} {one:8.3f} {two / one:6.3f}", flush=True)
    for workers in (1, 2):
        rounds_text = ", ".join(f"{r['ms_per_sa']:.3f}" for r in runs[workers])
        rates = ", ".join(f"{r['rate']:.0f}" for r in runs[workers])
        print(f"  --workers {workers}: ms per SA by round {rounds_text}; SAs/s {rates}", flush=True)
    return all(r["established"] == peers for rs in runs.values() for r in rs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=300.0, help="open loop: new peers per second")
    parser.add_argument("--concurrency", type=int, default=100, help="closed loop: peers in flight")
    parser.add_argument("--rounds", type=int, default=3)
    args, _unknown = parser.parse_known_args()
    ok = compare(f"gateway CPU ms/SA at {args.rate:g} SAs/s, --workers 2 vs 1", args.peers,
                 ["--rate", str(args.rate)], args.rounds)
    ok &= compare(f"gateway CPU ms/SA, closed loop {args.concurrency}, --workers 2 vs 1", args.peers,
                  ["--concurrency", str(args.concurrency)], args.rounds)
    print(f"  {args.peers} peers per run, {args.rounds} rounds; {cpu_model()}, "
          f"{len(os.sched_getaffinity(0))} cores; load average {os.getloadavg()[0]:.1f} at the end")
    if not ok:
        print("  FAILED: some runs did not establish every peer")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
