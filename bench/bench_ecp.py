"""ECP-256 and the default commands: ikecore against strongSwan's load tester, one run.

Every case is Main Mode + one Quick Mode, PSK, 1,000 peers, with the commands a user
types and no tuning flag (``ikecore serve --listen ... --psk ... --ike ... --esp ...`` in
one process, ``ikecore loadtest TARGET --peers 1000 ...`` in another; their defaults pick
the DH threads and the logging, ``ikecore.gateway.tuning``):

* ``ecp256``: IKE ``aes128-sha256-ecp256``, ESP ``aes128-sha256``, ikecore -> ikecore
  against two charons of the private load-tester build (``bench_handshakes.py`` says how
  they run) with the same suite. Target: 6x strongSwan's rate.
* ``modp2048``: the same with ``aes128-sha256-modp2048``. Targets: 4x strongSwan's rate;
  CPU per SA of both ikecore processes together at most 1/4 of both charons'.
* ``--cross``: strongSwan's load tester against the default ``ikecore serve`` (MODP-2048):
  the gateway's CPU per SA against that of the ikecore-to-ikecore responder.

The cases alternate (``--repeats``, best rate kept, lowest CPU per SA per side) so that
a neighbour's load hurts both alike. Printed lines: ``name  ikecore  anchor  ratio``.
Without root, namespaces or the private strongSwan build the anchor prints ``-``.

    .venv/bin/python bench/bench_ecp.py [--peers 1000] [--repeats 3] [--cross]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_handshakes as hs  # noqa: E402

ECP = ("aes128-sha256-ecp256", "aes128-sha256")
MODP = ("aes128-sha256-modp2048", "aes128-sha256")


def default_loadtest(target: str, peers: int, ike: str, esp: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "ikecore", "loadtest", target, "--peers", str(peers), "--psk", hs.PSK,
            "--ike", ike, "--esp", esp, "--json", "--no-progress", "--max-seconds", "600"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=660, check=False)
    try:
        return dict(json.loads(out.stdout))
    except json.JSONDecodeError:
        raise RuntimeError(f"ikecore loadtest failed: {out.stderr[-2000:]}") from None


def default_pair(peers: int, ike: str, esp: str) -> dict[str, Any]:
    port = hs.free_port()
    gateway = hs.IkecoreGateway(f"127.0.0.1:{port}", ike=ike, esp=esp, tuned=False)
    try:
        result = default_loadtest(f"127.0.0.1:{port}", peers, ike, esp)
        time.sleep(0.3)  # the last QM3s reach the gateway
        result["gateway_cpu_seconds"] = gateway.cpu()
        return result
    finally:
        gateway.stop()


def compare(label: str, suite: tuple[str, str], peers: int, repeats: int, strongswan: bool) -> tuple[int, float]:
    """One suite, alternating runs; prints its lines. Returns (failures, ikecore responder
    CPU ms per SA)."""
    ike, esp = suite
    failures = 0
    ours_runs, theirs_runs = [], []
    for _ in range(repeats):
        ours_runs.append(default_pair(peers, ike, esp))
        failures += ours_runs[-1]["failed"] + ours_runs[-1]["unfinished"]
        if strongswan:
            theirs_runs.append(hs.strongswan_pair(peers, ike=ike, esp=esp))
            failures += theirs_runs[-1]["failed"]
    ours = max(ours_runs, key=lambda r: r["sas_per_second"])
    initiator = min(r["cpu_seconds"] / max(1, r["established"]) for r in ours_runs)
    responder = min(r["gateway_cpu_seconds"] / max(1, r["established"]) for r in ours_runs)
    theirs = max(theirs_runs, key=lambda r: r["sas_per_second"]) if theirs_runs else None
    their_i = min(r["initiator_cpu_seconds"] / max(1, r["established"]) for r in theirs_runs) if theirs else None
    their_r = min(r["responder_cpu_seconds"] / max(1, r["established"]) for r in theirs_runs) if theirs else None
    hs.note(f"{label} ({ike}, ESP {esp}), runs (SAs/s): ikecore "
            + ", ".join(f"{r['sas_per_second']:.0f}" for r in ours_runs)
            + ("; strongSwan " + ", ".join(f"{r['sas_per_second']:.0f}" for r in theirs_runs) if theirs else ""))
    hs.line(f"{label}_default_commands_{peers}_sas_per_s", ours["sas_per_second"],
            theirs["sas_per_second"] if theirs else None)
    hs.line(f"{label}_cpu_ms_per_sa_initiator", 1000 * initiator, 1000 * their_i if their_i else None, ".3f")
    hs.line(f"{label}_cpu_ms_per_sa_responder", 1000 * responder, 1000 * their_r if their_r else None, ".3f")
    both = initiator + responder
    if their_i and their_r:
        # SAs per CPU second of both sides: the target (CPU per SA <= 1/4 of charon's) is a ratio >= 4
        hs.line(f"{label}_sas_per_cpu_second_both_sides", 1 / both, 1 / (their_i + their_r))
    else:
        hs.line(f"{label}_sas_per_cpu_second_both_sides", 1 / both, None)
    hs.note(f"ikecore -> ikecore: {ours['established']}/{peers} established, failed {ours['failed']}, "
            f"retransmissions {ours['retransmissions']}, CPU both sides {1000 * both:.3f} ms/SA")
    if theirs:
        hs.note(f"strongSwan -> strongSwan: {theirs['established']}/{peers} established, "
                f"retransmissions {theirs['retransmissions']}")
    return failures, 1000 * responder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per suite (best kept)")
    parser.add_argument("--cross", action="store_true",
                        help="add strongSwan's load tester against the default ikecore serve (MODP-2048)")
    parser.add_argument("--no-strongswan", action="store_true")
    parser.add_argument("--long", action="store_true", help="(make bench passes it on; same as --cross)")
    args = parser.parse_args()
    reason = "--no-strongswan" if args.no_strongswan else hs.strongswan_reason()
    with open("/proc/cpuinfo") as info:
        model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    print(f"{'name':<40} {'ikecore':>10} {'anchor':>10} {'ratio':>6}")
    hs.note(f"CPU {model}, {os.cpu_count()} cores; ikecore commands without tuning flags")
    failures = 0
    found, _ = compare("ecp256", ECP, args.peers, args.repeats, reason is None)
    failures += found
    found, responder_ms = compare("modp2048", MODP, args.peers, args.repeats, reason is None)
    failures += found
    if reason is not None:
        hs.note(f"strongSwan cases skipped: {reason}")
    elif args.cross or args.long:
        cross = hs.strongswan_to_ikecore(args.peers, ike=MODP[0], esp=MODP[1], tuned=False)
        failures += cross["failed"]
        gateway_ms = 1000 * cross["responder_cpu_seconds"] / max(1, cross["established"])
        # ratio = this gateway's CPU per SA over the ikecore-to-ikecore responder's (target <= 1)
        hs.line("strongswan_to_serve_gateway_cpu_ms_per_sa", gateway_ms, responder_ms, ".3f")
        hs.note(f"strongSwan -> ikecore serve: {cross['established']}/{args.peers} established, "
                f"{cross['sas_per_second']:.0f} SAs/s; anchor = the ikecore -> ikecore responder's CPU per SA")
    if failures:
        hs.note(f"FAILURES: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
