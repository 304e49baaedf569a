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
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ikecore import __version__
from ikecore.cli import decode, demo, flags, serve
from ikecore.config import (
    config_from_flags,
    parse_endpoint,
)
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
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
    connect.add_argument("--local", metavar="ADDR[:PORT]", help="local address and port (default: ephemeral)")
    connect.add_argument("--no-quick-mode", action="store_true", help="stop after Main Mode")
    connect.add_argument("--keep", action="store_true", help="do not delete the SAs on exit")
    connect.add_argument("--json", action="store_true", help="print one JSON object")
    connect.add_argument("--natt-port", type=int, metavar="PORT",
                         help="the peer's NAT-T port (default 4500 when the peer is on 500)")
    flags.add_proposal_flags(connect)

    serve.add_parser(sub)

    monitor_cli.add_parser(sub)
    monitor_cli.add_terminate_parser(sub)

    demo_parser = sub.add_parser("demo", help="a gateway and a load test of simulated peers on loopback")
    demo.add_arguments(demo_parser)

    decode.add_parser(sub)
    loadtest.add_parser(sub)
    return parser


#: What ``ikecore connect --json`` prints of the SA's Main Mode row and of its Quick Mode
#: rows (``ikecore.monitor.listing`` defines them), in this order.
_CONNECT_MAIN_MODE = ("me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity",
                      "diffie_hellman", "initiator_cookie", "responder_cookie", "state", "role", "local_port",
                      "peer_port", "created", "lifetime_left", "quick_modes", "rekeyed", "exchange", "nat", "nat_t",
                      "encapsulated", "dpd", "vendor_ids")
_CONNECT_QUICK_MODE = ("me", "my_id", "peer", "peer_id", "authentication", "encryption", "integrity",
                       "diffie_hellman", "initiator_cookie", "responder_cookie", "spi_in", "spi_out", "mode",
                       "local_ts", "remote_ts", "lifetime_left", "rekeyed")


async def _connect(args: argparse.Namespace, out: TextIO) -> int:
    remote = parse_endpoint(args.peer, 500, "peer")
    if args.local:
        local = parse_endpoint(args.local, 0, "--local")
    else:
        local = (local_address_towards(remote[0]), 0)
    config = config_from_flags(psk=flags.psk(args), ike=args.ike, esp=args.esp, listen=(), remote=remote[0],
                               mode=args.mode, local_ts=args.local_ts, remote_ts=args.remote_ts,
                               my_id=args.my_id, keylog=args.keylog, timing=flags.timing(args),
                               aggressive=args.aggressive, nat_traversal=args.nat_t,
                               credentials=flags.credentials(args))
    engine = Engine(config, keylog=serve.KeyLog(args.keylog))
    gateway = Gateway(engine, monitor=Monitor())
    try:
        bound = await gateway.open(local)
        result = await gateway.connect(remote, local=bound, quick_mode=not args.no_quick_mode,
                                       natt_port=args.natt_port)
        sa = engine.sa(result.handle)
        now = gateway.loop.time()
        mine = listing.main_mode_row(sa, now) if sa is not None else None
        main = {key: mine[key] for key in _CONNECT_MAIN_MODE} if mine is not None else None
        quick = [{key: row[key] for key in _CONNECT_QUICK_MODE} for row in listing.quick_mode_rows(engine.sas(), now)
                 if main is not None and row["initiator_cookie"] == main["initiator_cookie"]]
        if args.json:
            json.dump({"main_mode": main if result.phase1 else None, "quick_mode": quick,
                       "ok": result.ok, "reason": result.reason or None}, out, default=str)
            out.write("\n")
        elif result.phase1 is not None and main is not None:
            out.write("Main Mode security association\n")
            out.write(format_table([main], MAIN_MODE_SA_COLUMNS + ["initiator_cookie", "responder_cookie"]) + "\n")
            if quick:
                out.write("\nQuick Mode security associations\n")
                out.write(format_table(quick, QUICK_MODE_SA_COLUMNS) + "\n")
        if not result.ok:
            print(f"ikecore connect: failed: {result.reason}", file=sys.stderr)
        if sa is not None and not args.keep and sa.state.value == "ESTABLISHED":
            gateway.delete(result.handle)
            await asyncio.sleep(0.05)
        return 0 if result.ok else 1
    finally:
        gateway.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
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
        print(f"ikecore {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.print_help(sys.stderr)
    return 2
