"""Real-UDP flood on loopback: spoofed message 1 at a fixed rate while legitimate peers negotiate.

Three processes, all on loopback:

* the gateway: ``python -m ikecore serve --listen 127.0.0.1:PORT --quiet --control SOCK``
  (its own process, so its RSS is the gateway's alone), with the default flood limits
  and the Rust receive path (``ikecore.gateway.frontdoor``; IKECORE_FAST_PATH=0 measures the
  Python path instead);
* the flood: ``tests/floodgen.py`` (``rate`` spoofed message 1 per second from 65,000
  addresses 127.2.0.1 upwards, for ``seconds``);
* the legitimate peers: an ``ikecore.loadtest.LoadTest`` run here over real UDP
  (``run_udp``, peers 127.1.x.y, Main Mode + one Quick Mode each), started one second
  into the flood and spread over the flood window; it counts every datagram it sends.

Then the gateway is left to settle and asked for its statistics over the control socket,
and the kernel's drop counter of its socket is read from /proc/net/udp. Accounting: every
datagram sent to the gateway (flood + legitimate) was either read by the gateway (its
``fast_path:received`` counter) or dropped by the kernel in front of its socket::

    flood_sent + legit_sent == fast_path:received + kernel drops

and every datagram read was either answered in Rust (``fast_path:stateless_replies``),
handled by the express lane (``fast_path:express``) or handed to the engine
(``fast_path:to_python``). Memory: the gateway's peak RSS
(VmHWM) minus its RSS once listening.

Long run (documented in bench/README.md)::

    .venv/bin/python tests/floodreal.py --rate 50000 --seconds 60 --peers 1000

``make test`` runs tests/test_floodreal.py (50,000/s for 12 s, 1,000 peers).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))

from ikecore.monitor import control  # noqa: E402
from ikecore.loadtest import LoadSpec, LoadTest, run_udp  # noqa: E402
from floodgen import own_drops  # noqa: E402

PSK = "flood-real-secret"
# The stated bound on the gateway's memory under the flood: peak RSS (VmHWM) at most
# this much above its RSS once listening (1,000 SAs with their IPsec SAs, up to 4,096
# half-open SAs, the offer cache and the fast path's buffers included).
RSS_GROWTH_BOUND = 96 * 2**20


class CountingLoad(LoadTest):
    """A LoadTest that counts the datagrams it hands to the socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datagrams_out = 0

    def datagrams_to_send(self) -> list[Any]:
        out = super().datagrams_to_send()
        self.datagrams_out += len(out)
        return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gateway_view(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    counters = control.request(path, {"op": "view", "mode": "main-mode", "view": "counters"})
    stats = control.request(path, {"op": "view", "mode": "main-mode", "view": "statistics"})
    return ({r["counter"]: r["value"] for r in counters["rows"]},
            {r["statistic"]: r["value"] for r in stats["rows"]})


def run(*, rate: float = 50000.0, seconds: float = 12.0, peers: int = 1000, wall_limit: float = 120.0,
        fast_path: bool = True, vary_offer: bool = False, wildcard: bool = False) -> dict[str, Any]:
    """Run the three processes; returns the measurements. Bounded by ``wall_limit``.
    ``wildcard``: the gateway listens on 0.0.0.0 (as ``ikecore serve`` does by default)."""
    port = _free_port()
    target = ("127.0.0.1", port)
    workdir = tempfile.mkdtemp(prefix="ikecore-floodreal-")
    ctl = os.path.join(workdir, "control")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "IKECORE_FAST_PATH": "1" if fast_path else "0"}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "ikecore", "serve", "--listen", f"{'0.0.0.0' if wildcard else '127.0.0.1'}:{port}",
         "--psk", PSK, "--quiet",
         "--control", ctl, "--duration", str(wall_limit)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "gateway.log"), "w"))
    flood = None
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                control.request(ctl, {"op": "ping"}, timeout=1.0)
                break
            except control.ControlError:
                if time.monotonic() > deadline or gateway.poll() is not None:
                    raise RuntimeError("the gateway did not start") from None
                time.sleep(0.1)
        rss_start = _status(gateway.pid)["VmRSS"]
        cpu_start = _cpu_seconds(gateway.pid)
        drops_start = own_drops(port)
        start_at = time.monotonic() + 0.5
        flood = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "floodgen.py"), f"127.0.0.1:{port}", "--rate", str(rate),
             "--seconds", str(seconds), "--start-at", str(start_at)] + (["--vary-offer"] if vary_offer else []),
            env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(max(0.0, start_at + 1.0 - time.monotonic()))
        window = max(1.0, seconds - 2.0)
        spec = LoadSpec(target=target, peers=peers, psk=PSK, rate=peers / window, timeout=30.0,
                        max_seconds=max(10.0, wall_limit - seconds - 10))
        load = CountingLoad(spec)
        legit = run_udp(load)
        flood_out, _ = flood.communicate(timeout=wall_limit)
        flood_report = json.loads(flood_out.strip().splitlines()[-1])
        # let the gateway read what is still queued and poll its kernel drop counter (1 s)
        settled: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        last = -1
        for _ in range(50):
            time.sleep(0.3)
            settled = _gateway_view(ctl)
            received = int(settled[0].get("fast_path:received", 0))
            if received == last:
                break
            last = received
        time.sleep(1.2)
        counters, stats = _gateway_view(ctl)
        drops = own_drops(port) - drops_start
        memory = _status(gateway.pid)
        cpu = _cpu_seconds(gateway.pid) - cpu_start
        # the express lane sends from Rust (sendmmsg): it counts what the kernel took
        lane_sent = load.lane.lane.datagrams_sent if load.lane is not None else 0
        legit_sent = load.datagrams_out + lane_sent - load.fault_counts.get("send_errors", 0)
        return {
            "fast_path": fast_path, "vary_offer": vary_offer, "wildcard": wildcard,
            "flood": flood_report,
            "legit": {"peers": legit.peers, "established": legit.established, "failed": legit.failed,
                      "unfinished": legit.unfinished, "quick_modes": legit.quick_modes,
                      "seconds": round(legit.seconds, 2), "failures": dict(legit.failures),
                      "datagrams_sent": legit_sent, "retransmissions": legit.retransmissions},
            "gateway": {
                "received": int(counters.get("fast_path:received", 0)),
                "stateless_replies_rust": int(counters.get("fast_path:stateless_replies", 0)),
                "to_python": int(counters.get("fast_path:to_python", 0)),
                "express": int(counters.get("fast_path:express", 0)),
                "stateless_cookies_sent": int(counters.get("flood:stateless_cookies_sent", 0)),
                "stateless_cookies_verified": int(counters.get("flood:stateless_cookies_verified", 0)),
                "receive_queue_full": int(counters.get("receive_queue_full", 0)),
                "kernel_drops_proc": drops,
                "kernel_drops_monitor": int(counters.get("kernel_receive_drops", 0)),
                "receive_failures": int(stats.get("receive_failures", 0)),
                "invalid_packets_received": int(stats.get("invalid_packets_received", 0)),
                "invalid_cookies_received": int(stats.get("invalid_cookies_received", 0)),
                "ike_main_mode": int(stats.get("ike_main_mode", 0)),
                "message1_in": int(counters.get("messages:identity_protection:1:in", 0)),
                "rss_start": rss_start, "rss_peak": memory["VmHWM"], "rss_end": memory["VmRSS"],
                "rss_growth": memory["VmHWM"] - rss_start, "cpu_seconds": round(cpu, 2),
            },
            "handled_per_cpu_second": round(
                int(counters.get("messages:identity_protection:1:in", 0)) / cpu, 1) if cpu > 0 else 0.0,
            "accounting": {
                "sent_to_gateway": flood_report["sent"] + legit_sent,
                "read_plus_dropped": int(counters.get("fast_path:received", 0)) + drops,
            },
            "rss_growth_bound": RSS_GROWTH_BOUND,
        }
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait()
        gateway.terminate()
        try:
            gateway.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50000.0, help="spoofed message 1 per second")
    parser.add_argument("--seconds", type=float, default=12.0, help="flood duration")
    parser.add_argument("--peers", type=int, default=1000, help="legitimate peers (MM + QM)")
    parser.add_argument("--python-path", action="store_true", help="gateway without the Rust receive path")
    parser.add_argument("--vary-offer", action="store_true", help="a different offer in every flood datagram")
    parser.add_argument("--wildcard", action="store_true", help="the gateway listens on 0.0.0.0")
    args = parser.parse_args(argv)
    result = run(rate=args.rate, seconds=args.seconds, peers=args.peers, fast_path=not args.python_path, vary_offer=args.vary_offer, wildcard=args.wildcard,
                 wall_limit=args.seconds + 90)
    print(json.dumps(result, indent=2))
    legit = result["legit"]
    ok = (legit["established"] >= 0.99 * legit["peers"]
          and result["gateway"]["rss_growth"] <= RSS_GROWTH_BOUND
          and result["accounting"]["sent_to_gateway"] == result["accounting"]["read_plus_dropped"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
