"""``ikecore serve``: a gateway (responder and initiator) on UDP 500 and 4500.

With ``--workers 1`` (the default) one process runs the engine, its sockets and the
monitoring services (``--control``, ``--metrics``). Flags and configuration are read
here; the gateway itself is ``ikecore.gateway.transport.Gateway``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Any

from ikecore.cli import flags
from ikecore.config import Config, config_from_flags, load_config, parse_endpoint
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
from ikecore.gateway.dh_pool import DhPool, KeypairReserve
from ikecore.gateway.gc_tuning import tune_gc
from ikecore.gateway.transport import Gateway
from ikecore.monitor import cli as monitor_cli
from ikecore.monitor.counters import Monitor

__all__ = ["add_parser", "run", "KeyLog"]


class KeyLog:
    """Appends Wireshark IKEv1 decryption-table lines to the user's file."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        if self.path:
            with open(self.path, "a", encoding="ascii") as handle:
                handle.write(line + "\n")


def add_parser(sub: Any) -> None:
    """The ``serve`` sub-command of ``ikecore`` (``ikecore.cli.main``)."""
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
    flags.add_proposal_flags(serve)


def run(args: argparse.Namespace) -> int:
    """``ikecore serve``; raises ConfigError for bad flags."""
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    if args.config:
        config = load_config(args.config)
    else:
        credentials = flags.credentials(args)
        if not args.psk and credentials is None:
            raise ConfigError("--psk", "give --psk SECRET, --cert/--key/--ca or --config FILE")
        listen = tuple(parse_endpoint(item, 500, "--listen") for item in (args.listen or ["0.0.0.0:500",
                                                                                          "0.0.0.0:4500"]))
        config = config_from_flags(psk=args.psk or "", ike=args.ike, esp=args.esp, listen=listen, mode=args.mode,
                                   local_ts=args.local_ts, remote_ts=args.remote_ts, my_id=args.my_id,
                                   keylog=args.keylog, timing=flags.timing(args), aggressive=args.aggressive,
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
    engine = Engine(config, keylog=KeyLog(args.keylog or config.keylog),
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


