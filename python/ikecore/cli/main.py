"""The ``ikecore`` command line: argparse sub-commands, formatting only.

Sub-commands: ``connect`` (one-shot initiator), ``serve`` (gateway), ``monitor`` (views of a
running gateway, ``ikecore.monitor.cli``), ``demo`` (the
self-contained main job of ``make run``) and ``decode`` (ISAKMP dissector).
User errors print one line naming the flag and the fix, and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ikecore import __version__
from ikecore.cli import decode, demo
from ikecore.config import Config, Timing, config_from_flags, load_config, parse_endpoint
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
from ikecore.gateway import workers
from ikecore.gateway.dh_pool import DhPool, KeypairReserve
from ikecore.gateway.gc_tuning import tune_gc
from ikecore.gateway.transport import Gateway, local_address_towards
from ikecore.loadtest import cli as loadtest
from ikecore.monitor import cli as monitor_cli
from ikecore.monitor import listing
from ikecore.monitor.counters import MAIN_MODE_SA_COLUMNS, QUICK_MODE_SA_COLUMNS, Monitor, display_name
from ikecore.monitor.text import text_table

__all__ = ["main", "build_parser", "format_table"]


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain text table with the IP Security Monitor document's display names as headers."""
    return text_table([display_name(c) for c in columns], rows, columns)


class _KeyLog:
    """Appends Wireshark IKEv1 decryption-table lines to the user's file."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        if self.path:
            with open(self.path, "a", encoding="ascii") as handle:
                handle.write(line + "\n")


def _add_proposal_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ike", default="aes128-sha256-modp2048",
                        help="IKE proposals, e.g. aes128-sha256-modp2048,3des-sha1-modp1024")
    parser.add_argument("--esp", default="aes128-sha256",
                        help="ESP proposals, e.g. aes128-sha256 or, with PFS, aes128-sha256-modp2048")
    parser.add_argument("--mode", choices=("tunnel", "transport"), default="tunnel")
    parser.add_argument("--local-ts", help="local traffic selector (subnet); default our IKE address")
    parser.add_argument("--remote-ts", help="remote traffic selector (subnet); default the peer's address")
    parser.add_argument("--my-id", help="our identity (IP address, FQDN or user@FQDN)")
    parser.add_argument("--keylog", metavar="FILE",
                        help="append Wireshark IKEv1 decryption-table lines (secret keys!) to FILE")
    parser.add_argument("--retransmit-timeout", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="negotiation timeout")
    parser.add_argument("--aggressive", action="store_true",
                        help="allow (and initiate with) Aggressive Mode PSK; identities travel in the clear")
    parser.add_argument("--nat-t", choices=("auto", "force", "off"), default="auto",
                        help="NAT traversal: detect (auto), always encapsulate (force), or off")
    parser.add_argument("--dpd-delay", type=float, default=0.0, metavar="SECONDS",
                        help="send R-U-THERE after this long without traffic (0: no DPD checks)")
    parser.add_argument("--dpd-timeout", type=float, default=150.0, metavar="SECONDS",
                        help="delete the SAs of a peer that does not acknowledge for this long")
    parser.add_argument("--cert", metavar="FILE", help="our X.509 certificate (RSA signatures; with --key, --ca)")
    parser.add_argument("--key", metavar="FILE", help="the certificate's RSA private key (PEM or DER)")
    parser.add_argument("--ca", metavar="FILE", action="append", help="trusted CA certificate (repeatable)")


def _credentials(args: argparse.Namespace) -> Any:
    """--cert/--key/--ca as ``ikecore.credentials.Credentials`` (None without them)."""
    from ikecore.credentials import credentials_from_flags

    return credentials_from_flags(args.cert, args.key, args.ca)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ikecore", description="IKEv1 engine and tools")
    parser.add_argument("--version", action="version", version=f"ikecore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    connect = sub.add_parser("connect", help="negotiate Main Mode and Quick Mode with one peer")
    connect.add_argument("peer", metavar="ADDR[:PORT]")
    connect.add_argument("--psk", default="", help="pre-shared key (or --cert, --key and --ca)")
    connect.add_argument("--local", metavar="ADDR[:PORT]", help="local address and port (default: ephemeral)")
    connect.add_argument("--no-quick-mode", action="store_true", help="stop after Main Mode")
    connect.add_argument("--keep", action="store_true", help="do not delete the SAs on exit")
    connect.add_argument("--json", action="store_true", help="print one JSON object")
    connect.add_argument("--natt-port", type=int, metavar="PORT",
                         help="the peer's NAT-T port (default 4500 when the peer is on 500)")
    _add_proposal_flags(connect)

    serve = sub.add_parser("serve", help="run a gateway (responder and initiator)")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration")
    serve.add_argument("--listen", action="append", metavar="ADDR:PORT", help="repeatable")
    serve.add_argument("--psk", help="pre-shared key for every peer (without --config)")
    serve.add_argument("--duration", type=float, help="stop after this many seconds")
    serve.add_argument("--quiet", action="store_true", help="do not log every event (load tests)")
    serve.add_argument("--workers", type=int, default=1,
                       help="gateway processes sharing the ports (SO_REUSEPORT); each holds its own SAs")
    serve.add_argument("--dh-threads", type=int, default=1,
                       help="threads pre-computing DH key pairs (0: compute them inline)")
    serve.add_argument("--control", nargs="?", const="", metavar="PATH",
                       help="serve the monitor's control socket (default path: $IKECORE_CONTROL, "
                            "$XDG_RUNTIME_DIR/ikecore.sock or /tmp/ikecore-UID.sock)")
    serve.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus/OpenMetrics at /metrics")
    serve.add_argument("--store", metavar="FILE", help="keep established SAs in this SQLite file (0600) "
                       "and restore them at start; SAs are kept, not deleted, on exit")
    serve.add_argument("--store-key", metavar="FILE", help="encrypt the store with the 32-byte key in FILE "
                       "(created 0600 when missing)")
    _add_proposal_flags(serve)

    monitor_cli.add_parser(sub)

    demo_parser = sub.add_parser("demo", help="a gateway and a load test of simulated peers on loopback")
    demo.add_arguments(demo_parser)

    decode.add_parser(sub)
    loadtest.add_parser(sub)
    return parser


def _timing(args: argparse.Namespace) -> Timing:
    if args.retransmit_timeout <= 0:
        raise ConfigError("--retransmit-timeout", "must be a positive number of seconds")
    if args.timeout <= 0:
        raise ConfigError("--timeout", "must be a positive number of seconds")
    return Timing(retransmit_timeout=args.retransmit_timeout, negotiation_timeout=args.timeout,
                  dpd_delay=args.dpd_delay, dpd_timeout=args.dpd_timeout)


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
    config = config_from_flags(psk=args.psk, ike=args.ike, esp=args.esp, listen=(), remote=remote[0],
                               mode=args.mode, local_ts=args.local_ts, remote_ts=args.remote_ts,
                               my_id=args.my_id, keylog=args.keylog, timing=_timing(args),
                               aggressive=args.aggressive, nat_traversal=args.nat_t,
                               credentials=_credentials(args))
    engine = Engine(config, keylog=_KeyLog(args.keylog))
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


async def _serve(args: argparse.Namespace) -> int:
    if args.config:
        config = load_config(args.config)
    else:
        credentials = _credentials(args)
        if not args.psk and credentials is None:
            raise ConfigError("--psk", "give --psk SECRET, --cert/--key/--ca or --config FILE")
        listen = tuple(parse_endpoint(item, 500, "--listen") for item in (args.listen or ["0.0.0.0:500",
                                                                                          "0.0.0.0:4500"]))
        config = config_from_flags(psk=args.psk or "", ike=args.ike, esp=args.esp, listen=listen, mode=args.mode,
                                   local_ts=args.local_ts, remote_ts=args.remote_ts, my_id=args.my_id,
                                   keylog=args.keylog, timing=_timing(args), aggressive=args.aggressive,
                                   nat_traversal=args.nat_t, credentials=credentials)
    if args.listen and args.config:
        config = Config(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                           "listen": tuple(parse_endpoint(i, 500, "--listen") for i in args.listen)})

    def log(event: Any) -> None:
        name = type(event).__name__
        if name in ("DatagramReceived", "DatagramSent", "SpiAllocated", "KeyAdded", "KeyUpdated"):
            return
        if name in ("StatelessCookieSent", "HalfOpenRefused", "HalfOpenDropped", "ReplayDropped"):
            # come in floods: counted by the monitor, logged rate-limited (ikecore.gateway.faults)
            gateway.faults.report(name, str(vars_of(event).get("remote", "")), time.monotonic())
            return
        fields = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in vars_of(event).items() if k != "time"}
        # One write per line: stderr is write-through, and gateway workers share it, so
        # print()'s separate newline write could interleave with another worker's line.
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {name} {fields}\n")
        sys.stderr.flush()

    store = None
    if args.store:
        from ikecore.gateway.store import SaStore, StoreError

        try:
            store = SaStore(args.store, key_file=args.store_key)
        except StoreError as exc:
            raise ConfigError("--store", str(exc)) from None
    tune_gc()
    pool = DhPool(args.dh_threads) if args.dh_threads > 0 else None
    engine = Engine(config, keylog=_KeyLog(args.keylog or config.keylog),
                    keypair=KeypairReserve(pool) if pool is not None else None, store=store,
                    now=asyncio.get_running_loop().time())
    gateway = Gateway(engine, monitor=Monitor(), on_event=None if args.quiet else log)
    try:
        bound = await gateway.listen(config.listen, reuse_port=args.workers > 1)
    except OSError as exc:
        raise ConfigError("--listen", f"cannot bind: {exc.strerror}") from None
    # one write (workers share stderr; print's separate newline could interleave)
    sys.stderr.write(f"ikecore serve: listening on {', '.join(f'{a}:{p}' for a, p in bound)}\n")
    sys.stderr.flush()
    services = await monitor_cli.start_services(gateway, args.control, args.metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if args.duration:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        else:
            await stop.wait()
    finally:
        for sa in engine.sas():
            if store is None:  # with a store the tunnels outlive this process
                engine.delete(sa.handle, loop.time(), "gateway shutting down")
        gateway._flush()
        services.close()
        gateway.close()
        if pool is not None:
            pool.close()
    return 0


def vars_of(event: Any) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__dataclass_fields__}


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
            if args.workers > 1:
                if args.control is not None or args.metrics:
                    raise ConfigError("--workers", "each worker holds its own SAs: --control and --metrics "
                                                   "need --workers 1")
                return workers.run(args.workers, lambda: asyncio.run(_serve(args)))
            return asyncio.run(_serve(args))
        if args.command == "demo":
            return demo.run(args, sys.stdout)
        if args.command == "decode":
            return int(args.handler(args))
        if args.command == "loadtest":
            return loadtest.command(args, sys.stdout)
        if args.command == "monitor":
            return int(args.handler(args))
    except ConfigError as exc:
        print(f"ikecore {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.print_help(sys.stderr)
    return 2
