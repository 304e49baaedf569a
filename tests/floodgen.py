"""Spoofed Main Mode message 1 flood over real UDP on loopback (bounded in count and time).

One socket bound to 0.0.0.0 sends every datagram with ``sendmmsg`` and an ``IP_PKTINFO``
source address chosen from a pool of 127.2.0.1 upwards (``ikecore._core.udp_send_from``),
so 65,000 "sources" need one descriptor. Each message 1 has a fresh random CKY-I and the
offer of the gateway's own IKE policy (so the gateway answers it, statelessly under
flood). The answers (message 2, Notify) come back to the same socket, since every
127.x address is local: they are read in ``recvmmsg`` batches and counted, never kept.

The send schedule is an exact credit: ``rate`` x elapsed seconds, sent in batches every
few milliseconds, capped by ``count`` and by ``seconds`` (plus a short drain).

Run alone::

    .venv/bin/python tests/floodgen.py 127.0.0.1:500 --rate 50000 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from ikecore import _core, policy, wire  # noqa: E402
from ikecore.gateway.faults import udp_drops  # noqa: E402

MAX_BATCH = 4096          # datagrams per send step
TICK = 0.002              # seconds between send steps


def flood_source(index: int) -> str:
    """Source address ``index`` of the pool: 127.2.0.1 upwards, skipping .0 and .255."""
    block, low = divmod(index, 254)
    return f"127.{2 + block // 256}.{block % 256}.{low + 1}"


VARY_BYTES = 16          # random vendor ID bytes per datagram with vary_offer


def message1_tail(ike: str, vary_offer: bool = False) -> bytes:
    """Message 1 (offer of ``ike``) without its first 8 bytes (the CKY-I). With
    ``vary_offer`` it ends in a vendor ID whose last VARY_BYTES bytes the sender
    replaces per datagram, so every offer differs (no two share a template)."""
    offer = policy.IkePolicy("flood", policy.parse_ike_proposals(ike, field_name="--ike")).offer()
    payloads = [offer, wire.VendorIdPayload(bytes(VARY_BYTES))] if vary_offer else [offer]
    message = wire.Message(bytes(8), bytes(8), wire.ExchangeType.IDENTITY_PROTECTION, payloads).encode()[8:]
    return message[:-VARY_BYTES] if vary_offer else message


@dataclass
class FloodReport:
    sent: int = 0
    send_failures: int = 0
    replies: int = 0
    reply_bytes: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    sources: int = 0
    receive_drops: int = 0   # replies the kernel dropped on our own socket (/proc/net/udp)
    port: int = 0


def own_drops(port: int) -> int:
    """Drops of the IPv4 UDP socket bound to ``port`` (0 where /proc/net/udp is missing)."""
    return udp_drops({port}, ("/proc/net/udp",)) or 0


def run(target: tuple[str, int], *, rate: float, seconds: float, count: int | None = None,
        ike: str = "aes128-sha256-modp2048", sources: int = 65000, linger: float = 1.0,
        ready: float | None = None, vary_offer: bool = False) -> FloodReport:
    """Send the flood; returns what was sent and received. Bounded by ``count`` and by
    ``seconds`` + ``linger`` (the drain of late replies)."""
    total = int(rate * seconds) if count is None else min(count, int(rate * seconds))
    if os.geteuid() == 0:
        # the flood is the load under test: on a busy machine keep it at its rate ahead of
        # other work (its CPU is ~15% of a core at 50,000/s, mostly the kernel's UDP send)
        try:
            os.nice(-5)
        except OSError:
            pass
    pool = [flood_source(i) for i in range(sources)]
    pool2 = pool + pool
    tail = message1_tail(ike, vary_offer)
    extra = VARY_BYTES if vary_offer else 0
    receiver = _core.UdpReceiver(64)
    report = FloodReport(sources=sources)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind(("0.0.0.0", 0))
        report.port = sock.getsockname()[1]
        fd = sock.fileno()
        drops_before = own_drops(report.port)
        if ready is not None:
            time.sleep(max(0.0, ready - time.monotonic()))
        started = time.monotonic()
        stop = started + seconds
        next_source = 0
        while report.sent + report.send_failures < total:
            now = time.monotonic()
            if now >= stop:
                break
            due = min(total, int(rate * (now - started)) + 1) - report.sent - report.send_failures
            while due > 0:
                n = min(due, MAX_BATCH)
                if extra:
                    noise = os.urandom((8 + extra) * n)
                    step = 8 + extra
                    datagrams = [noise[i:i + 8] + tail + noise[i + 8:i + step] for i in range(0, step * n, step)]
                else:
                    cookies = os.urandom(8 * n)
                    datagrams = [cookies[i:i + 8] + tail for i in range(0, 8 * n, 8)]
                start = next_source % sources
                sent, failed = _core.udp_send_from(fd, datagrams, pool2[start:start + n], target)
                report.sent += sent
                report.send_failures += failed
                next_source += n
                due -= n
                got, size = receiver.discard(fd)
                report.replies += got
                report.reply_bytes += size
            got, size = receiver.discard(fd)
            report.replies += got
            report.reply_bytes += size
            time.sleep(TICK)
        report.seconds = time.monotonic() - started
        report.rate = report.sent / report.seconds if report.seconds > 0 else 0.0
        end = time.monotonic() + linger
        while time.monotonic() < end:
            got, size = receiver.discard(fd)
            report.replies += got
            report.reply_bytes += size
            time.sleep(0.01)
        report.receive_drops = own_drops(report.port) - drops_before
    finally:
        sock.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", metavar="ADDR:PORT")
    parser.add_argument("--rate", type=float, default=50000.0, help="message 1 datagrams per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--count", type=int, help="at most this many datagrams")
    parser.add_argument("--ike", default="aes128-sha256-modp2048", help="the offer (the gateway's IKE proposal)")
    parser.add_argument("--sources", type=int, default=65000, help="spoofed source addresses (127.2.0.1 up)")
    parser.add_argument("--start-at", type=float, help="time.monotonic() at which to start")
    parser.add_argument("--vary-offer", action="store_true", help="a different offer in every datagram")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    report = run((host, int(port)), rate=args.rate, seconds=args.seconds, count=args.count, ike=args.ike,
                 sources=args.sources, ready=args.start_at, vary_offer=args.vary_offer)
    print(json.dumps(asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
