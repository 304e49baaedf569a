"""Benchmark: what scrapers of ``/metrics`` cost a gateway under load.

The same load test (``ikecore loadtest``: Main Mode + one Quick Mode per peer, PSK,
``aes128-sha256-modp2048`` / ESP ``aes128-sha256``, ``--concurrency 100``) against a fresh
``ikecore serve --metrics`` each run, without scrapers and with 4 scrapers polling
``/metrics`` as fast as they can (each a thread of this process, a new connection per
scrape), alternating in one run. Lines:

* ``setup_rate_4_scrapers_sas_per_s``: ikecore = SAs/s with the 4 scrapers, anchor = SAs/s
  without (the best run of each); ratio = with / without; the target is >= 0.90 (scrapers
  cost at most 10% of the setup rate);
* ``..._per_sa_N``: the same with per-SA series on for every SA (``--metrics-per-sa N``),
  the worst case the cache must bound;
* ``..._workers_2``: the same against ``--workers 2`` (the parent merges the workers'
  expositions);
* ``gateway_cpu_ms_per_sa_4_scrapers...``: the gateway's processor time per SA (all its
  processes and threads, from ``/proc``), with the scrapers against without (the lowest
  of each); ratio = without / with. On a machine others share the setup rate follows
  their load; the processor time per SA does not, and says what the scrapers cost the
  gateway.

Each pair of lines is followed by the runs, the p99 Main Mode latency and how many
scrapes the scrapers got answered. Run: ``.venv/bin/python bench/bench_scrapers.py [peers] [rounds]``
(default 10,000 peers, as many SAs as the gateway then holds, and 2 rounds).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

PEERS = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
SCRAPERS = 4
PSK = "bench-scrapers-secret"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_handshakes import cpu_seconds, free_port  # noqa: E402


class Served:
    """``ikecore serve --metrics 127.0.0.1:0`` on a free port, with extra flags."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ikecore", "serve", "--listen", f"127.0.0.1:{self.port}", "--psk", PSK, "--quiet",
             "--metrics", "127.0.0.1:0", "--duration", "1800", *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        while not (any("listening on" in line for line in lines) and any("metrics at" in line for line in lines)):
            line = self.process.stderr.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError("ikecore serve did not start: " + "".join(lines))
            lines.append(line)
        found = re.search(r"metrics at (http://\S+/metrics)", "".join(lines))
        if found is None:
            raise RuntimeError("no metrics line: " + "".join(lines))
        self.url = found.group(1)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Scrapers:
    """``count`` threads fetching ``url`` back to back until ``stop()``."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.answered = 0
        self.failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=30) as reply:
                    reply.read()
                ok = True
            except OSError:
                ok = False
            with self._lock:
                if ok:
                    self.answered += 1
                else:
                    self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def one_run(scraped: bool, flags: tuple[str, ...]) -> dict[str, Any]:
    gateway = Served(*flags)
    scrapers = Scrapers(gateway.url, SCRAPERS) if scraped else None
    try:
        started = time.perf_counter()
        cpu0 = cpu_seconds(gateway.process.pid)
        done = subprocess.run([sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{gateway.port}", "--psk", PSK,
                               "--peers", str(PEERS), "--concurrency", "100", "--timeout", "60",
                               "--max-seconds", "900", "--no-progress", "--json"],
                              capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(gateway.process.pid) - cpu0
        if done.returncode != 0:
            raise RuntimeError(f"loadtest failed: {done.stderr[-2000:]}")
        report = json.loads(done.stdout)
    finally:
        if scrapers is not None:
            scrapers.stop()
        gateway.close()
    return {"rate": float(report["sas_per_second"]), "established": int(report["established"]),
            "cpu_ms": 1000 * cpu / max(1, int(report["established"])),
            "p99": float(report["latency_ms"].get("main_mode", {}).get("p99", 0.0)),
            "scrapes": scrapers.answered if scrapers else 0, "scrape_failures": scrapers.failed if scrapers else 0,
            "seconds": seconds}


def _line(name: str, ours: float, anchor: float, ratio: float, note: str, digits: int = 0) -> None:
    print(f"{name:<52} {ours:>10,.{digits}f} {anchor:>10,.{digits}f} {ratio:>7.2f}  {note}", flush=True)


def case(name: str, flags: tuple[str, ...]) -> None:
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(ROUNDS):
        for scraped in (False, True):
            runs[scraped].append(one_run(scraped, flags))
    best = {scraped: max(r["rate"] for r in runs[scraped]) for scraped in runs}
    least = {scraped: min(r["cpu_ms"] for r in runs[scraped]) for scraped in runs}
    _line(f"setup_rate_4_scrapers{name}_sas_per_s", best[True], best[False], best[True] / best[False],
          f"(anchor = the same load without scrapers; {PEERS} peers, best of {ROUNDS})")
    _line(f"gateway_cpu_ms_per_sa_4_scrapers{name}", least[True], least[False], least[False] / least[True],
          "(anchor = without scrapers; ratio = without / with)", digits=3)
    for scraped in (False, True):
        text = ", ".join(f"{r['rate']:.0f} SAs/s ({r['established']} est., {r['cpu_ms']:.3f} ms/SA, "
                         f"p99 {r['p99']:.0f} ms"
                         + (f", {r['scrapes']} scrapes = {r['scrapes'] / r['seconds']:.0f}/s"
                            f"{', ' + str(r['scrape_failures']) + ' failed' if r['scrape_failures'] else ''}"
                            if scraped else "") + ")" for r in runs[scraped])
        print(f"  {'with 4 scrapers' if scraped else 'no scrapers    '}: {text}", flush=True)


def main() -> None:
    print(f"{'name':<52} {'ikecore':>10} {'anchor':>10} {'ratio':>7}", flush=True)
    case("", ())
    case(f"_per_sa_{PEERS}", ("--metrics-per-sa", str(PEERS)))
    case("_workers_2", ("--workers", "2"))


if __name__ == "__main__":
    main()
