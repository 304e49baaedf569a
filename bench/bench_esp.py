"""ESP benchmark: ikecore's userland driver against strongSwan's kernel-libipsec, one run.

Both tunnels are the README's recipe (namespaces a and b joined by a veth, MTU 1500,
outer 192.0.2.1/.2, inner 10.1.0.1 and 10.2.0.1), the same suite (IKE
``aes128-sha256-modp2048``, ESP ``aes128-sha256``, PSK), and carry one iperf3 TCP stream
from a to b for ``--seconds`` (default 5), the best of ``--rounds`` alternating runs:

* ``ikecore <-> ikecore``: ``ikecore serve --driver userland`` in b, ``ikecore connect
  ... --driver userland --keep`` in a (raw ESP, IP protocol 50);
* the same with ``--nat-t force`` on both ends (UDP-encapsulated ESP, as the anchor's),
  once;
* ``charon <-> charon`` (the anchor): Debian's charon with kernel-libipsec on both sides
  (UDP-encapsulated ESP: kernel-libipsec always acts as if behind a NAT).

Printed: Gbit/s of each and the ratio (targets: >= 3x and >= 1 Gbit/s), gigabits per CPU
second of the two tunnel processes (user + system time: steadier on a busy machine); the same veth
without a tunnel (the kernel alone, for context); ``openssl speed``
of AES-128-CBC and SHA-256 on one core (1408-byte blocks, about one ESP packet) and the
combined one-core ceiling ``1 / (1/aes + 1/sha)`` for context. Then the setup rate
(SAs/s) of ``ikecore serve --driver userland`` against ``--driver memory``, each the
best of ``--rounds`` alternating ``ikecore loadtest --peers N`` runs on the loopback of
one namespace (target: within 10%), and the gateway's CPU milliseconds per SA with each.

    .venv/bin/python bench/bench_esp.py [--seconds 5] [--peers 1000] [--rounds 2]

Needs root (namespaces, TUN), iperf3, and for the anchor strongswan-charon,
strongswan-swanctl and libcharon-extra-plugins; a missing piece prints ``skipped`` and why.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from interop import libipsec, netns  # noqa: E402
from tunnel import PSK, IkecoreEnd, ikecore_command  # noqa: E402


def line(name: str, ours: float | str, theirs: float | str = "", ratio: float | str = "") -> str:
    def cell(value: float | str) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    return f"{name:<46} {cell(ours):>10} {cell(theirs):>10} {cell(ratio):>6}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pair: netns.NetnsPair, pids: list[int], seconds: float) -> tuple[float, float]:
    """One iperf3 stream a -> b: (Gbit/s, CPU seconds the tunnel processes spent on it)."""
    netns.ping(pair.ns_a, pair.inner_a, pair.inner_b, 1)
    before = sum(cpu_seconds(pid) for pid in pids)
    result = netns.iperf3(pair.ns_b, pair.inner_b, pair.ns_a, pair.inner_a, seconds=seconds)
    return result["bits_per_second"] / 1e9, sum(cpu_seconds(pid) for pid in pids) - before


def ikecore_tunnel(seconds: float, extra: tuple[str, ...] = ()) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="ikecore-bench-esp.") as tmp, \
            netns.recipe_pair() as pair, IkecoreEnd.serve(pair, Path(tmp), extra=extra) as b, \
            IkecoreEnd.connect(pair, Path(tmp), extra=extra) as a:
        a.wait_tunnel()
        b.wait_tunnel()
        return measure(pair, [a.process.pid, b.process.pid], seconds)


def charon_tunnel(seconds: float) -> tuple[float, float]:
    with netns.recipe_pair() as pair, libipsec.start(pair, "b", initiator=False, log_keys=False) as b, \
            libipsec.start(pair, "a", initiator=True, log_keys=False) as a:
        out = a.initiate(timeout=20)
        if out.returncode != 0:
            raise RuntimeError(f"charon initiate failed: {out.stdout[-1000:]}")
        return measure(pair, [a.pid, b.pid], seconds)


def openssl_gbits(*algorithm: str, size: int = 1408) -> float:
    """One core's throughput of ``openssl speed -evp ALG`` on ``size``-byte blocks, Gbit/s."""
    out = subprocess.run(["openssl", "speed", "-seconds", "2", "-bytes", str(size), "-mr", *algorithm],
                         capture_output=True, text=True, timeout=60, check=False)
    for row in out.stdout.splitlines():
        if row.startswith("+F:"):
            return float(row.split(":")[3]) * 8 / 1e9
    raise RuntimeError(f"openssl speed {' '.join(algorithm)} printed no figures: {out.stderr[-300:]}")


def setup_rate(ns: str, driver: str, peers: int) -> dict[str, Any]:
    """``ikecore loadtest --peers N`` against ``ikecore serve --driver DRIVER`` in ``ns``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # a free port (the namespace has its own, but any works)
    with tempfile.TemporaryDirectory(prefix="ikecore-bench-esp.") as tmp:
        log = Path(tmp) / "serve.log"
        serve = netns.spawn(ns, [*ikecore_command(), "serve", "--listen", f"127.0.0.1:{port}", "--psk", PSK,
                                 "--driver", driver, "--quiet", "--duration", "600"], log=log)
        try:
            deadline = time.monotonic() + 30
            while "listening on" not in log.read_text(errors="replace"):
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve --driver {driver} did not start: "
                                       f"{log.read_text(errors='replace')[-1000:]}")
                time.sleep(0.05)
            cpu0 = cpu_seconds(serve.pid)
            out = subprocess.run(["ip", "netns", "exec", ns, *ikecore_command(), "loadtest", f"127.0.0.1:{port}",
                                  "--peers", str(peers), "--psk", PSK, "--json", "--no-progress",
                                  "--max-seconds", "300"],
                                 capture_output=True, text=True, timeout=400, check=False)
            try:
                report: dict[str, Any] = json.loads(out.stdout)
            except json.JSONDecodeError:
                raise RuntimeError(f"loadtest failed: {out.stderr[-1000:]}") from None
            if serve.poll() is not None:
                raise RuntimeError(f"serve --driver {driver} died: {log.read_text(errors='replace')[-1000:]}")
            time.sleep(0.3)  # the last Quick Mode messages reach the gateway
            established = max(1, int(report.get("established", 0)))
            report["gateway_cpu_ms_per_sa"] = (cpu_seconds(serve.pid) - cpu0) * 1000 / established
            return report
        finally:
            netns.stop(serve)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="iperf3 time per tunnel")
    parser.add_argument("--peers", type=int, default=1000, help="SAs per setup-rate run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating runs per side (throughput) and per driver (setup rate)")
    args = parser.parse_args()
    print(line("name", "ikecore", "anchor", "ratio"))
    missing = netns.available() or netns.tool_missing("iperf3", "ping", "openssl")
    if missing:
        print(line("esp_tcp_gbits", "skipped", missing))
        return 0
    failures = 0

    # alternating runs (the machine is shared): the best of each
    ours_runs: list[tuple[float, float]] = []
    theirs_runs: list[tuple[float, float]] = []
    reason = libipsec.available()
    for _ in range(max(1, args.rounds)):
        try:
            ours_runs.append(ikecore_tunnel(args.seconds))
        except (RuntimeError, AssertionError) as exc:
            failures += 1
            print(f"# ikecore tunnel failed: {str(exc)[-800:]}", flush=True)
        if reason is None:
            theirs_runs.append(charon_tunnel(args.seconds))
    ours, ours_cpu = max(ours_runs) if ours_runs else (None, 0.0)
    theirs, theirs_cpu = max(theirs_runs) if theirs_runs else (None, 0.0)
    ratio = ours / theirs if ours is not None and theirs else ""
    print(line("esp_tcp_gbits_userland_vs_libipsec", ours if ours is not None else "failed",
               theirs if theirs is not None else f"skipped ({reason})", ratio), flush=True)
    if ours is not None:
        print(f"# targets: ratio >= 3 ({'met' if ratio != '' and float(ratio) >= 3 else 'NOT met'}), "
              f">= 1 Gbit/s ({'met' if ours >= 1 else 'NOT met'}); runs ikecore "
              f"{[round(x, 3) for x, _ in ours_runs]}, charon {[round(x, 3) for x, _ in theirs_runs]}",
              flush=True)
    if ours is not None and theirs is not None and ours_cpu > 0 and theirs_cpu > 0:
        # less sensitive to a busy machine: gigabits moved per CPU second of the two tunnel processes
        mine, anchor = ours * args.seconds / ours_cpu, theirs * args.seconds / theirs_cpu
        print(line("esp_gbit_per_cpu_second_userland_vs_libipsec", mine, anchor, mine / anchor), flush=True)

    # the path without a tunnel: the kernel alone over the same veth (context, not a target)
    with netns.recipe_pair() as pair:
        plain = netns.iperf3(pair.ns_b, pair.addr_b, pair.ns_a, pair.addr_a, seconds=min(args.seconds, 3.0))
    print(line("veth_plain_tcp_gbits_no_tunnel", plain["bits_per_second"] / 1e9), flush=True)

    # the same encapsulation as kernel-libipsec's (UDP 4500, RFC 3948), once
    try:
        encap, _ = ikecore_tunnel(args.seconds, ("--nat-t", "force"))
        print(line("esp_tcp_gbits_userland_udpencap_vs_libipsec", encap,
                   theirs if theirs is not None else "", encap / theirs if theirs else ""), flush=True)
    except (RuntimeError, AssertionError) as exc:
        failures += 1
        print(f"# ikecore tunnel (--nat-t force) failed: {str(exc)[-800:]}", flush=True)

    aes = openssl_gbits("-evp", "aes-128-cbc")
    sha = openssl_gbits("-evp", "sha256")
    ceiling = 1 / (1 / aes + 1 / sha)
    print(line("openssl_one_core_aes128cbc_gbits", aes), flush=True)
    print(line("openssl_one_core_sha256_gbits", sha), flush=True)
    print(line("one_core_aes_plus_sha_ceiling_gbits", ceiling,
               "", ours / ceiling if ours is not None else ""), flush=True)

    rates: dict[str, list[float]] = {"memory": [], "userland": []}
    cpu_per_sa: dict[str, list[float]] = {"memory": [], "userland": []}
    with netns.recipe_pair() as pair:
        for _ in range(max(1, args.rounds)):
            for driver in ("memory", "userland"):
                try:
                    report = setup_rate(pair.ns_b, driver, args.peers)
                except RuntimeError as exc:
                    failures += 1
                    print(f"# setup rate --driver {driver} failed: {str(exc)[-800:]}", flush=True)
                    continue
                established = int(report.get("established", 0))
                if established != args.peers:
                    print(f"# --driver {driver}: {established} of {args.peers} established, "
                          f"failures {report.get('failures')}", flush=True)
                rates[driver].append(float(report["sas_per_second"]))
                cpu_per_sa[driver].append(float(report["gateway_cpu_ms_per_sa"]))
    if rates["memory"] and rates["userland"]:
        best_user, best_mem = max(rates["userland"]), max(rates["memory"])
        print(line("setup_sas_per_s_userland_vs_memory", best_user, best_mem, best_user / best_mem),
              flush=True)
        print(f"# target: within 10% ({'met' if best_user >= 0.9 * best_mem else 'NOT met'}); "
              f"runs memory {rates['memory']}, userland {rates['userland']}", flush=True)
        # steadier on a busy machine: the gateway's CPU per SA (lower is better)
        print(line("setup_gateway_cpu_ms_per_sa_userland_vs_memory", min(cpu_per_sa["userland"]),
                   min(cpu_per_sa["memory"]), min(cpu_per_sa["userland"]) / min(cpu_per_sa["memory"])),
              flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
