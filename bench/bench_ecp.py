"""ECP-256 and the default commands: ikecore against strongSwan's load tester, one run.

Every case is Main Mode + one Quick Mode, PSK, 1,000 peers, with the commands a user
types and no tuning flag (``ikecore serve --listen ... --psk ... --ike ... --esp ...`` in
one process, ``ikecore loadtest TARGET --peers 1000 ...`` in another; their defaults pick
the DH threads and the logging, ``ikecore.gateway.tuning``):

* ``ecp256``: IKE ``aes128-sha256-ecp256``, ESP ``aes128-sha256``, ikecore -> ikecore
  against two charons of the private load-tester build (``bench_handshakes.py`` says how
  they run) with the same suite. Target: 6x strongSwan's rate. Both ikecore commands run
  their express lanes by default (``rust/express``); a note line gives the same pair with
  ``--no-express`` on both (the engines alone), alternating with the others.
* ``modp2048``: the same with ``aes128-sha256-modp2048``. Targets: 4x strongSwan's rate;
  CPU per SA of both ikecore processes together at most 1/4 of both charons'.
* ``--cross``: the default ``ikecore serve`` (MODP-2048) as the responder of charon's load
  tester, against the same gateway as the responder of the default ``ikecore loadtest``
  run open loop at the rate charon reached in the same round (``--rate R``), over the same
  network path: both initiators in one namespace of a veth pair, the gateway in the other
  at port 500 (``bench_handshakes.strongswan_to_ikecore`` and ``ikecore_to_serve_netns``;
  ikecore's peers come from a range made local there and routed back). Line
  ``strongswan_to_serve_gateway_cpu_ms_per_sa``: the lowest gateway CPU per SA with charon
  over the lowest with ikecore's generator (target: ratio <= 1). Like for like, because
  both the path and the rate move the figure more than the initiator does: a datagram
  across the veth costs the gateway more than one on loopback, and at a few hundred SAs a
  second each datagram wakes the gateway (and its reply wakes the sleeping peer), which
  costs more per SA than a closed loop at full speed. The closed-loop runs over the same
  path and on loopback stay as notes. Both gateways lift the per-address half-open limit
  (``PER_SOURCE``) as the charon responder of the strongSwan pair does: charon's peers
  all share one address.
* ``--tenk``: 10x ``--peers`` (10,000) peers with the default commands on loopback,
  alternating with 1,000-peer runs; line ``modp2048_default_commands_10000_sas_per_s``
  with the best 1,000-peer rate of those runs as the anchor (target: ratio >= 0.9, the
  10,000th SA costs what the first did).
* ``--long`` (``make bench`` passes it on with ``bench/run.py --long``): ``--cross`` and
  ``--tenk``.

The cases alternate (``--repeats``, best rate kept, lowest CPU per SA per side) so that
a neighbour's load hurts both alike. Printed lines: ``name  ikecore  anchor  ratio``.
Without root, namespaces or the private strongSwan build the anchor prints ``-``.

    .venv/bin/python bench/bench_ecp.py [--peers 1000] [--repeats 3] [--cross] [--tenk] [--long]
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

#: ``[flood] max_half_open_per_source`` of the gateway in ``--cross`` (the default is 32):
#: charon's load tester sends from one address with up to 100 negotiations open, and the
#: charon responder of the strongSwan pair runs with ``dos_protection = no``, which lifts strongSwan's
#: own per-address limit (``block_threshold``, 5). Over the limit message 1 goes
#: unanswered and charon waits 4 s to send it again, which measures the limit, not the gateway.
PER_SOURCE = 4096

ECP = ("aes128-sha256-ecp256", "aes128-sha256")
MODP = ("aes128-sha256-modp2048", "aes128-sha256")


def default_loadtest(target: str, peers: int, ike: str, esp: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    argv = [sys.executable, "-m", "ikecore", "loadtest", target, "--peers", str(peers), "--psk", hs.PSK,
            "--ike", ike, "--esp", esp, "--json", "--no-progress", "--max-seconds", "600", *extra]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=660, check=False)
    try:
        return dict(json.loads(out.stdout))
    except json.JSONDecodeError:
        raise RuntimeError(f"ikecore loadtest failed: {out.stderr[-2000:]}") from None


def default_pair(peers: int, ike: str, esp: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The default commands on loopback (``extra``: a flag both take, e.g. ``--no-express``)."""
    port = hs.free_port()
    gateway = hs.IkecoreGateway(f"127.0.0.1:{port}", ike=ike, esp=esp, tuned=False, extra=extra)
    try:
        result = default_loadtest(f"127.0.0.1:{port}", peers, ike, esp, extra)
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
    ours_runs, theirs_runs, engine_runs = [], [], []
    for _ in range(repeats):
        ours_runs.append(default_pair(peers, ike, esp))
        engine_runs.append(default_pair(peers, ike, esp, ("--no-express",)))
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
    engines = max(engine_runs, key=lambda r: r["sas_per_second"])
    engines_cpu = min((r["cpu_seconds"] + r["gateway_cpu_seconds"]) / max(1, r["established"]) for r in engine_runs)
    hs.note("the same without the express lanes (--no-express on both): "
            + ", ".join(f"{r['sas_per_second']:.0f}" for r in engine_runs)
            + f" SAs/s, CPU both sides {1000 * engines_cpu:.3f} ms/SA; best {engines['sas_per_second']:.0f}")
    if theirs:
        hs.note(f"strongSwan -> strongSwan: {theirs['established']}/{peers} established, "
                f"retransmissions {theirs['retransmissions']}")
    return failures, 1000 * responder


def cross(peers: int, repeats: int, loopback_responder_ms: float) -> int:
    """charon's load tester and ikecore's against the default ``ikecore serve`` over one
    veth path, alternating; prints the gateway CPU line and its notes. Returns failures."""
    ike, esp = MODP
    failures = 0
    charon_runs, paced_runs, closed_runs = [], [], []
    for _ in range(repeats):
        charon_runs.append(hs.strongswan_to_ikecore(peers, ike=ike, esp=esp, tuned=False,
                                                    half_open_per_source=PER_SOURCE))
        failures += charon_runs[-1]["failed"]
        # open loop at the rate charon reached in this round: like for like
        rate = max(1.0, charon_runs[-1]["sas_per_second"])
        paced_runs.append(hs.ikecore_to_serve_netns(peers, ike=ike, esp=esp, rate=rate,
                                                    half_open_per_source=PER_SOURCE))
        paced_runs[-1]["paced_at"] = rate
        closed_runs.append(hs.ikecore_to_serve_netns(peers, ike=ike, esp=esp, half_open_per_source=PER_SOURCE))
        for run in (paced_runs[-1], closed_runs[-1]):
            failures += run["failed"] + run["unfinished"]

    def per_sa(run: dict[str, Any]) -> float:
        return 1000 * run["responder_cpu_seconds"] / max(1, run["established"])

    def rates(runs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['sas_per_second']:.0f}" for r in runs)

    def by_run(runs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{per_sa(r):.3f}" for r in runs)

    def datagrams(runs: list[dict[str, Any]]) -> str:
        # UDP datagrams in/out of the gateway's namespace per SA: 5/4 for Main Mode + Quick Mode;
        # more in means retransmitted requests
        return ", ".join(f"{r['gateway_datagrams_in'] / max(1, r['established']):.2f}/"
                         f"{r['gateway_datagrams_out'] / max(1, r['established']):.2f}" for r in runs)

    # ratio = the gateway's CPU per SA with charon over that with ikecore's generator at the
    # same rate over the same path (target <= 1)
    hs.line("strongswan_to_serve_gateway_cpu_ms_per_sa", min(map(per_sa, charon_runs)),
            min(map(per_sa, paced_runs)), ".3f")
    paced_at = ", ".join(f"{r['paced_at']:.0f}" for r in paced_runs)
    hs.note(f"veth path, gateway CPU ms/SA by run: charon {by_run(charon_runs)} at SAs/s {rates(charon_runs)}; "
            f"ikecore loadtest --rate {paced_at}: {by_run(paced_runs)} at SAs/s {rates(paced_runs)}")
    hs.note(f"gateway datagrams in/out per SA: charon {datagrams(charon_runs)}; ikecore {datagrams(paced_runs)}")
    hs.note(f"ikecore loadtest closed loop over the same path: gateway CPU ms/SA {by_run(closed_runs)} at SAs/s "
            f"{rates(closed_runs)}; on loopback (modp2048 above): responder {loopback_responder_ms:.3f} ms/SA")
    return failures


def tenk(peers: int, repeats: int) -> int:
    """10x ``peers`` with the default commands on loopback, alternating with ``peers``-peer
    runs; the line's anchor is the best small rate of this alternation. Returns failures."""
    ike, esp = MODP
    failures = 0
    small_runs, big_runs = [], []
    for _ in range(repeats):
        small_runs.append(default_pair(peers, ike, esp))
        big_runs.append(default_pair(10 * peers, ike, esp))
        for run in (small_runs[-1], big_runs[-1]):
            failures += run["failed"] + run["unfinished"]
    big = max(big_runs, key=lambda r: r["sas_per_second"])
    hs.note(f"modp2048 default commands, runs (SAs/s): {10 * peers} peers "
            + ", ".join(f"{r['sas_per_second']:.0f}" for r in big_runs)
            + f"; {peers} peers " + ", ".join(f"{r['sas_per_second']:.0f}" for r in small_runs))
    # anchor = the best 1,000-peer rate of the same alternation (target: ratio >= 0.9)
    hs.line(f"modp2048_default_commands_{10 * peers}_sas_per_s", big["sas_per_second"],
            max(r["sas_per_second"] for r in small_runs))
    tenths = big["rate_by_tenth"]
    if tenths:
        hs.note(f"SAs/s by tenth of the best {10 * peers}-peer run: " + " ".join(f"{r:.0f}" for r in tenths))
    hs.note(f"{10 * peers} peers: {big['established']} established, failed {big['failed']}, retransmissions "
            f"{big['retransmissions']}, gateway CPU {1000 * big['gateway_cpu_seconds'] / max(1, big['established']):.3f}"
            f" ms/SA")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per suite (best kept)")
    parser.add_argument("--cross", action="store_true",
                        help="add strongSwan's load tester against the default ikecore serve (MODP-2048)")
    parser.add_argument("--no-strongswan", action="store_true")
    parser.add_argument("--tenk", action="store_true",
                        help="add 10x --peers peers with the default commands against the --peers rate")
    parser.add_argument("--long", action="store_true", help="--cross and --tenk (bench/run.py --long passes it on)")
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
        failures += cross(args.peers, args.repeats, responder_ms)
    if args.tenk or args.long:
        failures += tenk(args.peers, args.repeats)
    if failures:
        hs.note(f"FAILURES: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
