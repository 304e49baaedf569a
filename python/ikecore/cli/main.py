"""The ``ikecore`` command line: argparse sub-commands, formatting only.

Sub-commands: ``connect`` (one-shot initiator), ``serve`` (gateway), ``monitor`` (views of a
running gateway, ``ikecore.monitor.cli``), ``terminate`` (delete a running gateway's matching
SAs, the same module), ``demo`` (the
self-contained main job of ``make run``) and ``decode`` (ISAKMP dissector).
User errors print one line naming the flag and the fix, and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ikecore import __version__
from ikecore.cli import decode, demo, flags, logs, serve
from ikecore.config import (
    config_from_flags,
    flag_message,
    parse_endpoint,
)
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
from ikecore.gateway.drivers import make_driver
from ikecore.gateway.transport import Gateway, local_address_towards
from ikecore.loadtest import cli as loadtest
from ikecore.monitor import cli as monitor_cli
from ikecore.monitor import listing
from ikecore.monitor.counters import (
    MAIN_MODE_SA_COLUMNS,
    QUICK_MODE_SA_COLUMNS,
    Monitor,
    display_name,
)
from ikecore.monitor.formats import json_value
from ikecore.monitor.text import text_table

__all__ = ["main", "build_parser", "format_table"]


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain text table with the IP Security Monitor document's display names as headers."""
    return text_table([display_name(c) for c in columns], rows, columns)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ikecore", description="IKEv1 engine and tools")
    parser.add_argument("--version", action="version", version=f"ikecore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    connect = sub.add_parser("connect", help="negotiate Main Mode and Quick Mode with one peer")
    connect.add_argument("peer", metavar="ADDR[:PORT]")
    flags.add_psk_flags(connect, "(or --cert, --key and --ca)")
    connect.add_argument("--local", metavar="ADDR[:PORT]",
                         help="local address and port (default port: ephemeral; 500 with --driver xfrm or userland)")
    connect.add_argument("--no-quick-mode", action="store_true", help="stop after Main Mode")
    connect.add_argument("--keep", action="store_true",
                         help="do not delete the SAs on exit; with --driver userland, keep the tunnel up "
                              "until Ctrl-C or SIGTERM (the tunnel lives in this process)")
    connect.add_argument("--json", action="store_true", help="print one JSON object")
    connect.add_argument("--natt-port", type=int, metavar="PORT",
                         help="the peer's NAT-T port (default 4500 when the peer is on 500)")
    flags.add_proposal_flags(connect)
    flags.add_driver_flag(connect)

    serve.add_parser(sub)

    monitor_cli.add_parser(sub)
    monitor_cli.add_terminate_parser(sub)

    demo_parser = sub.add_parser("demo", help="a gateway and a load test of simulated peers on loopback")
    demo.add_arguments(demo_parser)

    decode.add_parser(sub)
    loadtest.add_parser(sub)
    flags.add_log_flags(parser, top=True)
    for name in ("connect", "serve", "demo", "loadtest"):
        flags.add_log_flags(sub.choices[name])
    return parser


#: What ``ikecore connect --json`` prints of the SA's Main Mode row and of its Quick Mode
#: rows, in this order: the views' columns (``ikecore.monitor.listing``), written as the
#: views write them (``ikecore.monitor.formats``: ``created`` in ISO 8601 UTC, cookies and
#: SPIs in hex, ``vendor_ids`` a list), and ``rekeyed``.
_CONNECT_MAIN_MODE = ("me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity",
                      "diffie_hellman", "initiator_cookie", "responder_cookie", "state", "role", "local_port",
                      "peer_port", "created", "age_seconds", "lifetime_left", "quick_modes", "rekeyed", "exchange",
                      "nat", "nat_t", "encapsulated", "dpd", "vendor_ids")
_CONNECT_QUICK_MODE = ("me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity",
                       "diffie_hellman", "initiator_cookie", "responder_cookie", "spi_in", "spi_out", "mode",
                       "local_ts", "remote_ts", "created", "lifetime_left", "rekeyed")


async def _connect(args: argparse.Namespace, out: TextIO) -> int:
    remote = parse_endpoint(args.peer, 500, "peer")
    # a tunnel endpoint (a driver that protects packets) speaks from port 500, and 4500
    # for NAT-T, as a gateway does; the memory driver from an ephemeral port
    port = 500 if args.driver not in (None, "memory") else 0
    if args.local:
        local = parse_endpoint(args.local, port, "--local")
    else:
        local = (local_address_towards(remote[0]), port)
    config = config_from_flags(psk=flags.psk(args), ike=args.ike, esp=args.esp, listen=(), remote=remote[0],
                               mode=args.mode, local_ts=args.local_ts, remote_ts=args.remote_ts,
                               my_id=args.my_id, keylog=args.keylog, timing=flags.timing(args),
                               aggressive=args.aggressive, nat_traversal=args.nat_t,
                               credentials=flags.credentials(args))
    keylog = serve.KeyLog(args.keylog)
    driver = keylog.wrap(make_driver(args.driver, tun_name=args.tun))
    engine = Engine(config, keylog=keylog, driver=driver)
    gateway = Gateway(engine, monitor=Monitor())
    if hasattr(driver, "attach"):
        driver.attach(gateway)
    interrupted = False
    try:
        try:
            bound = await gateway.open(local)
        except OSError as exc:
            raise ConfigError("--local", f"cannot bind {local[0]}:{local[1]}: {exc.strerror}; "
                                         "name another address or port (--local ADDR:PORT)") from None
        result = await gateway.connect(remote, local=bound, quick_mode=not args.no_quick_mode,
                                       natt_port=args.natt_port, check=False)
        sa = engine.sa(result.handle)
        now, wall = gateway.loop.time(), time.time()
        main = listing.shown_rows([sa], _CONNECT_MAIN_MODE, now, wall)[0] if sa is not None else None
        quick = [row for row in listing.shown_quick_mode_rows([sa] if sa is not None else [], _CONNECT_QUICK_MODE,
                                                              now, wall)]
        if args.json:
            notify = getattr(result.notify, "name", result.notify)
            json.dump({"main_mode": main if result.phase1 else None, "quick_mode": quick,
                       "ok": result.ok, "reason": result.reason or None, "notify": notify}, out,
                      default=json_value)
            out.write("\n")
        elif result.phase1 is not None and main is not None:
            out.write("Main Mode security association\n")
            out.write(format_table([main], MAIN_MODE_SA_COLUMNS + ["initiator_cookie", "responder_cookie"]) + "\n")
            if quick:
                out.write("\nQuick Mode security associations\n")
                out.write(format_table(quick, QUICK_MODE_SA_COLUMNS) + "\n")
        if not result.ok:
            print(f"ikecore connect: failed: {result.reason}", file=sys.stderr)
        out.flush()
        tunnel = result.ok and args.keep and hasattr(driver, "attach")  # it lives in this process
        if tunnel:
            logging.getLogger("ikecore.connect").info(
                "tunnel up (%s driver); Ctrl-C or SIGTERM ends it", args.driver,
                extra={"event": "tunnel_up", "fields": {"driver": args.driver}})
            interrupted = await serve.wait_for_signal() == signal.SIGINT
            sa = engine.sa(result.handle)
        if sa is not None and (tunnel or not args.keep) and sa.state.value == "ESTABLISHED":
            gateway.delete(result.handle)
            await asyncio.sleep(0.05)
        if interrupted:
            return 128 + signal.SIGINT  # as a shell reports ^C
        return 0 if result.ok else 1
    finally:
        gateway.close()
        if hasattr(driver, "close"):
            driver.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logs.configure(args.log_level, args.log_format)
    try:
        if args.command == "connect":
            return asyncio.run(_connect(args, sys.stdout))
        if args.command == "serve":
            return serve.run(args)
        if args.command == "demo":
            return demo.run(args, sys.stdout)
        if args.command == "decode":
            return int(args.handler(args))
        if args.command == "loadtest":
            return loadtest.command(args, sys.stdout)
        if args.command in ("monitor", "terminate"):
            return int(args.handler(args))
    except ConfigError as exc:
        print(f"ikecore {args.command}: {flag_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.print_help(sys.stderr)
    return 2
