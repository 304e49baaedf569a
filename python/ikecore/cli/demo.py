"""``ikecore demo``, the main job behind ``make run``: a gateway and a load test.

A responder gateway runs in a child process (asyncio ``Gateway`` on 127.0.0.1, its own
DH key-pair reserve) so that it and the load generator each have a core. The parent
runs the load generator (``ikecore.loadtest``) against it with a progress bar, prints
the load test's report, then asks the gateway over a pipe for its Main Mode views
(security associations and statistics), a Quick Mode summary and its memory growth per
ISAKMP SA.

Ctrl-C (to the parent alone, or to the whole process group as a terminal sends it)
stops the load test: the parent prints the report of what was measured, marked
interrupted, stops the gateway and exits 130. The gateway process ignores SIGINT (its
parent ends it over the pipe) and stops quietly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, TextIO

from ikecore import loadtest
from ikecore.config import config_from_flags
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
from ikecore.gateway.dh_pool import DhPool, KeypairReserve
from ikecore.gateway.transport import Gateway
from ikecore.loadtest.cli import finish
from ikecore.loadtest.runners import StopSignals
from ikecore.monitor import cli as monitor_cli
from ikecore.monitor import listing
from ikecore.monitor.counters import Monitor
from ikecore.monitor.views import Views

__all__ = ["add_arguments", "run", "rss_bytes", "start_gateway"]

PSK = "ikecore-demo-secret"


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc), in bytes."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def add_arguments(parser: Any) -> None:
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--ike", default="aes128-sha256-modp2048")
    parser.add_argument("--esp", default="aes128-sha256")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _gateway_main(conn: Connection, ike: str, esp: str, dh_threads: int) -> None:
    """Child process: serve until the parent asks for the views, answer, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the parent's to handle
    try:
        asyncio.run(_gateway(conn, ike, esp, dh_threads))
    except (EOFError, OSError):
        pass  # the parent is gone


async def _gateway(conn: Connection, ike: str, esp: str, dh_threads: int) -> None:
    config = config_from_flags(psk=PSK, ike=ike, esp=esp, listen=(("127.0.0.1", 0),))
    pool = DhPool(dh_threads) if dh_threads else None
    engine = Engine(config, keypair=KeypairReserve(pool) if pool is not None else None)
    monitor = Monitor()
    gateway = Gateway(engine, monitor=monitor)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    try:
        (bound,) = await gateway.listen(config.listen)
        rss_before = rss_bytes()
        conn.send(bound)

        def on_request() -> None:
            request = conn.recv()
            if request == "views":
                text = io.StringIO()
                monitor_cli.demo_report(text, Views(engine, monitor, clock=loop.time))
                quick_mode = listing.quick_mode_rows(engine.sas(), loop.time())
                conn.send({"report": text.getvalue(), "quick_mode": len(quick_mode),
                           "rss_growth": rss_bytes() - rss_before, "sas": len(engine.sas())})
            else:
                done.set()

        loop.add_reader(conn.fileno(), on_request)
        loop.add_signal_handler(signal.SIGTERM, done.set)
        await asyncio.wait_for(done.wait(), 3600)
    finally:
        gateway.close()
        if pool is not None:
            pool.close()
        conn.close()


def start_gateway(ike: str, esp: str, dh_threads: int = 1) -> tuple[Any, Connection, tuple[str, int]]:
    """Fork the demo gateway; returns (process, pipe, bound address)."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_gateway_main, args=(child, ike, esp, dh_threads), daemon=True)
    process.start()
    child.close()
    if not parent.poll(30):
        process.kill()
        raise RuntimeError("the demo gateway did not start")
    return process, parent, parent.recv()


def _views(conn: Connection, quick_modes: int) -> dict[str, Any]:
    """The gateway's views, once it has completed the Quick Modes the peers completed
    (their last message, QM3, may still be on its way, or lost and answered again when the
    gateway repeats QM2 after its 2 s retransmission timeout): at most 200 asks, 50 ms apart."""
    for _ in range(200):
        conn.send("views")
        if not conn.poll(60):
            raise RuntimeError("the demo gateway did not answer")
        views: dict[str, Any] = conn.recv()
        if views["quick_mode"] >= quick_modes:
            break
        time.sleep(0.05)
    return views


def run(args: Any, out: TextIO) -> int:
    """The demo: see the module docstring. Exit 0 when every peer established."""
    if not 1 <= args.peers <= 100_000:
        raise ConfigError("--peers", "must be between 1 and 100,000")
    process, conn, server = start_gateway(args.ike, args.esp)
    try:
        out.write(f"ikecore demo: gateway (pid {process.pid}) listening on {server[0]}:{server[1]}; "
                  f"{args.peers} peers from 127.1.x.y negotiating {args.ike} / ESP {args.esp}, "
                  f"Main Mode + one Quick Mode, {args.concurrency} at a time\n")
        out.flush()
        spec = loadtest.LoadSpec(target=server, peers=args.peers, psk=PSK, ike=args.ike, esp=args.esp,
                                 concurrency=args.concurrency, max_seconds=300.0)
        with StopSignals() as stop, DhPool(1) as pool:
            began = time.monotonic()
            load = loadtest.LoadTest(spec, keypair=KeypairReserve(pool))
            progress = None if args.no_progress else loadtest.ProgressBar(sys.stderr, spec.peers, logger=logging.getLogger("ikecore.demo"))
            report = loadtest.run_udp(load, progress=progress, should_stop=stop)
        if stop.received:
            out.write("\n")
            return finish(report, spec.peers, False, out, stop.received, time.monotonic() - began)
        out.write("\n" + loadtest.format_report(report) + "\n")
        views = _views(conn, report.quick_modes)
        out.write(views["report"])
        sas = max(1, views["sas"])
        out.write(f"\nQuick Mode SAs at the gateway: {views['quick_mode']}; gateway RSS growth "
                  f"{views['rss_growth'] / 1024:.0f} KiB for {views['sas']} ISAKMP SAs "
                  f"({views['rss_growth'] / sas / 1024:.2f} KiB per SA, with its IPsec SAs and the "
                  f"Quick Mode exchanges kept a while for retransmissions)\n")
        out.write(f"\n{report.established}/{report.peers} peers established Main Mode + Quick Mode: "
                  f"{report.sas_per_second:.0f} SAs per second\n")
        return 0 if report.established == args.peers else 1
    finally:
        try:
            conn.send("stop")
        except OSError:
            pass
        process.join(10)
        if process.is_alive():
            process.kill()
        conn.close()
