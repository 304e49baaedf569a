"""``ikecore serve``: a gateway (responder and initiator) on UDP 500 and 4500.

Three ways to run, one set of flags:

* ``--workers 1`` (the default): one process runs the engine, its sockets and the
  monitoring services (``--control``, ``--metrics``);
* ``--workers N`` (N >= 2, or ``auto``: the cores this process may use): the parent
  binds the sockets, steers datagrams by initiator cookie and supervises N worker
  processes (``ikecore.gateway.workers.Supervisor``); it serves ``--control`` and
  ``--metrics`` for the whole gateway (``ikecore.monitor.cli.start_fleet_services``)
  and prints the one "listening on" line;
* worker k (hidden flags ``--worker k/N --worker-sockets FD,... --worker-control PATH``,
  given by the parent): the gateway of one process on the sockets it was passed, with
  ``Engine(worker=(k, N))``, its shard of ``--store`` and a control socket at PATH for
  the parent's fan-out; its log records carry ``worker=K``.

Events and status lines go through ``logging`` (``ikecore.cli.logs``): the engine's events
under ``ikecore.gateway`` (``event_fields``: hex, enum names, ``ADDR:PORT``), floods of
refused or dropped messages rate-limited (``ikecore.gateway.faults``), this module's lines
under ``ikecore.serve``. SIGINT stops the gateway with status 130, SIGTERM with 0 (a
requested stop); with workers the parent forwards either to them.

Flags and configuration are read here; the gateway itself is
``ikecore.gateway.transport.Gateway``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import signal
import socket
import time
from typing import Any

from ikecore.cli import flags, logs
from ikecore.config import (
    Config,
    check_owner_only,
    config_from_flags,
    load_config,
    parse_endpoint,
)
from ikecore.engine.core import Engine
from ikecore.errors import ConfigError
from ikecore.events import event_fields
from ikecore.gateway import tuning, workers
from ikecore.gateway.dh_pool import DhPool, KeypairReserve
from ikecore.gateway.drivers import make_driver
from ikecore.gateway.gc_tuning import tune_gc
from ikecore.gateway.transport import Gateway
from ikecore.monitor import cli as monitor_cli
from ikecore.monitor.counters import Monitor

__all__ = ["add_parser", "run", "KeyLog"]

LOG = logging.getLogger("ikecore.serve")
EVENTS = logging.getLogger("ikecore.gateway")
#: Events of every datagram and driver call: logged at debug only.
_DEBUG_EVENTS = frozenset({"DatagramReceived", "DatagramSent", "SpiAllocated", "KeyAdded", "KeyUpdated"})
#: Events that come in floods: counted by the monitor, logged rate-limited (ikecore.gateway.faults).
_FLOOD_EVENTS = frozenset({"StatelessCookieSent", "HalfOpenRefused", "HalfOpenDropped", "ReplayDropped",
                           "LimitReached"})
#: Local faults the gateway itself logs, rate-limited (``Gateway.faults``).
_GATEWAY_LOGS = frozenset({"DriverFailed", "StoreFailed"})
#: Events that say something went wrong: logged at warning.
_WARNING_EVENTS = frozenset({"Phase1Failed", "Phase2Failed", "AuthenticationFailed", "InvalidPacketReceived",
                             "DeadPeerDetected", "AcquireFailed"})


class KeyLog:
    """Appends Wireshark IKEv1 decryption-table lines (secret keys) to the user's file.

    The file is opened at start and kept open: created 0600 whatever the umask; an
    existing file that group or others may access, or that another user owns, is refused
    with a ConfigError naming ``field_name`` (as ssh refuses such a private key); its mode
    is never changed behind the user's back. One ``write`` per line (O_APPEND), so the
    processes of one gateway may share the file.
    """

    def __init__(self, path: str | None, field_name: str = "--keylog") -> None:
        self.path = path
        self._fd: int | None = None
        if not path:
            return
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                os.fchmod(fd, 0o600)  # the umask may have taken the owner's bits away
            except FileExistsError:
                fd = os.open(path, flags)
        except OSError as exc:
            raise ConfigError(field_name, f"cannot open {path}: {exc.strerror}") from None
        try:
            status = os.fstat(fd)
            if status.st_uid != os.geteuid():
                raise ConfigError(field_name, f"{path} belongs to uid {status.st_uid}, who would read the keys; "
                                              "name a file of your own")
            check_owner_only(status.st_mode, path, field_name)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __call__(self, line: str) -> None:
        if self._fd is not None:
            os.write(self._fd, (line + "\n").encode("ascii"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def wrap(self, driver: Any) -> Any:
        """``driver``, writing each Quick Mode SA it is given as a line of Wireshark's ESP
        SA table (``"IPv4","SRC","DST","0xSPI","AES-CBC [RFC3602]","0xKEY",...``, one per
        direction, ``tshark -o 'uat:esp_sa:LINE'``) when a file is open."""
        return driver if self._fd is None else _EspKeyLog(driver, self)


class _EspKeyLog:
    """An IPsec driver that writes ESP SA table lines, then hands every call on."""

    def __init__(self, driver: Any, keylog: KeyLog) -> None:
        self._driver = driver
        self._keylog = keylog

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    def _log(self, sa: Any) -> None:
        from ikecore.gateway.userland import esp_sa_lines

        for line in esp_sa_lines(sa):
            self._keylog(line)

    def add_outbound(self, sa: Any) -> None:
        self._driver.add_outbound(sa)
        self._log(sa)

    def update_inbound(self, sa: Any) -> None:
        self._driver.update_inbound(sa)
        self._log(sa)


def stop_on_signals() -> tuple[asyncio.Event, list[int]]:
    """An event set by SIGINT or SIGTERM on the running loop, and the signals received."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    return stop, received


async def wait_for_signal() -> int:
    """Wait for SIGINT or SIGTERM; returns the signal."""
    stop, received = stop_on_signals()
    try:
        await stop.wait()
        return received[0]
    finally:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def add_parser(sub: Any) -> None:
    """The ``serve`` sub-command of ``ikecore`` (``ikecore.cli.main``)."""
    serve = sub.add_parser("serve", help="run a gateway (responder and initiator)")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration")
    serve.add_argument("--listen", action="append", metavar="ADDR:PORT", help="repeatable")
    flags.add_psk_flags(serve, "for every peer (without --config)")
    serve.add_argument("--duration", type=float, help="stop after this many seconds")
    serve.add_argument("--quiet", action="store_true", help="do not log every event (load tests)")
    serve.add_argument("--log-rate", type=int, metavar="N",
                       help=f"log at most N info events a second per process, counting the rest "
                            f"(default {tuning.LOG_RATE}; 0: every event; warnings always)")
    serve.add_argument("--workers", default="1", metavar="N|auto",
                       help="gateway processes, one per core (auto: the cores this process may use); "
                            "datagrams reach the worker holding their SA by its initiator cookie")
    # given by the parent to each worker process (ikecore.gateway.workers)
    serve.add_argument("--worker", metavar="K/N", help=argparse.SUPPRESS)
    serve.add_argument("--worker-sockets", metavar="FD,...", help=argparse.SUPPRESS)
    serve.add_argument("--worker-control", metavar="PATH", help=argparse.SUPPRESS)
    serve.add_argument("--no-express", dest="express", action="store_false",
                       help="negotiate every SA in the engine (default: pre-shared-key Main Mode from message 3 "
                            "and the first Quick Mode of known offers run in Rust; off with --keylog, --store, "
                            "--driver other than memory, debug logging or a filter the lane cannot take)")
    serve.add_argument("--dh-threads", type=int, default=None,
                       help="threads pre-computing DH key pairs (0: compute them inline; default: 1 when "
                            "two cores are left free and the group is MODP, else 0)")
    serve.add_argument("--control", nargs="?", const="", metavar="PATH",
                       help="serve the monitor's control socket (default path: $IKECORE_CONTROL, "
                            "control.sock in $XDG_RUNTIME_DIR/ikecore/, /run/ikecore/ for root or "
                            "/tmp/ikecore-UID/, a directory made 0700)")
    serve.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus/OpenMetrics at /metrics")
    serve.add_argument("--web", metavar="ADDR:PORT",
                       help="serve the IP Security Monitor as a page (read-only; e.g. 127.0.0.1:8080)")
    serve.add_argument("--web-token", metavar="FILE",
                       help="require the token on FILE's first line (owner-only) on every --web request; "
                            "needed when --web is not a loopback address")
    serve.add_argument("--metrics-per-sa", type=int, metavar="N",
                       help="per-SA series (cookies, peers, identities, SPIs) for at most N SAs "
                            "(default 0: none; [metrics] per_sa)")
    serve.add_argument("--metrics-cache", type=float, metavar="SECONDS",
                       help="build the exposition at most once per SECONDS, whatever the scrapers (default 1)")
    serve.add_argument("--metrics-connections", type=int, metavar="N",
                       help="scrape connections served at once (default 8)")
    serve.add_argument("--metrics-web-config", metavar="FILE",
                       help="TLS and basic auth for --metrics: a Prometheus exporter-toolkit web config (YAML)")
    serve.add_argument("--store", metavar="FILE", help="keep established SAs in this SQLite file (0600) "
                       "and restore them at start; SAs are kept, not deleted, on exit")
    serve.add_argument("--store-key", metavar="FILE", help="encrypt the store with the 32-byte key in FILE "
                       "(created 0600 when missing and the store holds no SA)")
    flags.add_proposal_flags(serve)
    flags.add_driver_flag(serve)
    serve.set_defaults(serve_parser=serve)


def run(args: argparse.Namespace) -> int:
    """``ikecore serve``; raises ConfigError for bad flags."""
    args.workers = workers.worker_count(args.workers)
    args.dh_threads = tuning.dh_threads(args.dh_threads, args.workers, args.ike)
    if args.worker is None:  # --web and --web-token refused before anything is bound
        from ikecore.monitor.web import check_flags

        check_flags(args.web, args.web_token)
    if args.worker is not None:
        if not args.worker_sockets or not args.worker_control:
            raise ConfigError("--worker", "is given by the gateway's parent process with --worker-sockets "
                                          "and --worker-control")
        workers.follow_parent()
    return asyncio.run(_serve(args))


#: Flags of the parent only: workers do not get them.
PARENT_ONLY = {"workers", "control", "metrics", "web", "web_token", "duration", "worker", "worker_sockets",
               "worker_control", "psk", "help"}


def worker_flags(args: argparse.Namespace) -> list[str]:
    """The parent's flags for its workers, rebuilt from ``args`` (as ``--flag=value``);
    the parent-only ones left out (the pre-shared key of ``--psk`` travels in the
    environment, not on a command line ``ps`` shows)."""
    out: list[str] = []
    parser: argparse.ArgumentParser = args.serve_parser
    for action in parser._actions:
        if not action.option_strings or action.dest in PARENT_ONLY or action.dest in _LOG_DEFAULTS:
            continue
        value = getattr(args, action.dest, None)
        option = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if value is None or value == action.default:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse._StoreConstAction)):
            out.append(option)
        elif isinstance(action, argparse._CountAction):
            out.extend([option] * int(value))
        elif isinstance(action, argparse._AppendAction):
            out.extend(f"{option}={item}" for item in value)
        elif action.nargs == "?" and value == action.const:
            out.append(option)
        else:
            out.append(f"{option}={value}")
    # the same log level and format (given before or after ``serve``: the defaults live on the top parser)
    for dest, default in _LOG_DEFAULTS.items():
        value = getattr(args, dest, default)
        if value != default:
            out.append(f"--{dest.replace('_', '-')}={value}")
    return out


_LOG_DEFAULTS = {"log_level": "info", "log_format": "text"}


def worker_environment(args: argparse.Namespace) -> dict[str, str]:
    """What the workers' environment adds to the parent's: the ``--psk`` key."""
    from ikecore.config import PSK_ENVIRONMENT

    return {PSK_ENVIRONMENT: args.psk} if getattr(args, "psk", None) else {}


async def _serve(args: argparse.Namespace) -> int:
    if args.config:
        config = load_config(args.config)
    else:
        credentials = flags.credentials(args)
        psk = flags.psk(args)
        if not psk and credentials is None:
            raise ConfigError("--psk", "give --psk-file FILE, $IKECORE_PSK, --psk SECRET, --cert/--key/--ca "
                                       "or --config FILE")
        listen = tuple(parse_endpoint(item, 500, "--listen") for item in (args.listen or ["0.0.0.0:500",
                                                                                          "0.0.0.0:4500"]))
        config = config_from_flags(psk=psk, ike=args.ike, esp=args.esp, listen=listen, mode=args.mode,
                                   local_ts=args.local_ts, remote_ts=args.remote_ts, my_id=args.my_id,
                                   keylog=args.keylog, timing=flags.timing(args), aggressive=args.aggressive,
                                   nat_traversal=args.nat_t, credentials=credentials)
    if args.listen and args.config:
        config = Config(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                           "listen": tuple(parse_endpoint(i, 500, "--listen") for i in args.listen)})
    # opened (and refused, when others may read it) before any worker starts
    keylog = KeyLog(args.keylog or config.keylog, "--keylog" if args.keylog else "gateway.keylog")
    driver_name = args.driver or config.driver
    driver_field = "--driver" if args.driver else "gateway.driver"
    if driver_name not in (None, "memory") and (args.workers > 1 or args.worker is not None):
        raise ConfigError(driver_field, f"the {driver_name} driver runs in one process: give --workers 1")
    if args.worker is None and args.workers > 1:
        keylog.close()  # each worker appends on its own
        return await _supervise(args, config)
    worker = workers.parse_worker(args.worker) if args.worker is not None else (0, 1)
    if args.worker is not None:
        logs.tag_worker(worker[0])
        # its control socket is the parent's business: the parent names the gateway's own
        logging.getLogger("ikecore.monitor").setLevel(logging.WARNING)

    def log(event: Any) -> None:
        name = type(event).__name__
        if name in _GATEWAY_LOGS:
            return
        if name in _FLOOD_EVENTS:
            remote = event_fields(event).get("remote", "")
            gateway.faults.report(name, str(remote), time.monotonic())
            return
        level = logging.DEBUG if name in _DEBUG_EVENTS else logging.WARNING if name in _WARNING_EVENTS \
            else logging.INFO
        if not EVENTS.isEnabledFor(level) or not budget.admit(name, level):
            return
        fields = event_fields(event)
        kind = fields.pop("event")
        del fields["time"]  # the engine's clock; the record has the wall-clock time
        logs.log_event(EVENTS, level, kind, **fields)

    store = _open_store(args, worker)
    budget = tuning.LogBudget(args.log_rate)
    tune_gc()
    pool = DhPool(args.dh_threads) if args.dh_threads > 0 else None
    driver = keylog.wrap(make_driver(driver_name, field_name=driver_field, tun_name=args.tun))
    engine = Engine(config, keylog=keylog if keylog.path else None, driver=driver,
                    keypair=KeypairReserve(pool) if pool is not None else None, store=store,
                    now=asyncio.get_running_loop().time(), worker=worker)
    gateway = Gateway(engine, monitor=Monitor(), on_event=None if args.quiet else log,
                      express=args.express and not EVENTS.isEnabledFor(logging.DEBUG),
                      express_thread=args.dh_threads > 0)  # the same rule as DH threads: a core to spare
    if hasattr(driver, "attach"):
        driver.attach(gateway)
    # before the control socket appears: from then on a worker is up and may be told to stop
    stop, received = stop_on_signals()
    loop = asyncio.get_running_loop()
    if args.worker is not None:  # the parent bound the sockets and says where they are
        for fd in args.worker_sockets.split(","):
            await gateway.adopt(socket.socket(fileno=int(fd)))
        with contextlib.redirect_stderr(io.StringIO()):  # its control socket is the parent's business
            services = await monitor_cli.start_services(gateway, args.worker_control, None, args)
    else:
        try:
            bound = await gateway.listen(config.listen)
        except OSError as exc:
            raise ConfigError("--listen", f"cannot bind: {exc.strerror}") from None
        bound += await _nat_t_beside(gateway, bound)
        _listening(bound)
        services = await monitor_cli.start_services(gateway, args.control, args.metrics, args)
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
        if hasattr(driver, "close"):
            driver.close()
        if pool is not None:
            pool.close()
        if args.worker is not None:
            workers.orphaned(args.worker_control)
    return _exit_status(received)


async def _nat_t_beside(gateway: Gateway, bound: list[Any]) -> list[Any]:
    """A gateway listening on ADDR:500 also listens on ADDR:4500 (NAT-T, RFC 3947), as
    strongSwan does; a port 4500 that cannot be bound is logged and left out."""
    added: list[Any] = []
    for address, port in list(bound):
        if port != 500 or any(a == address and p == 4500 for a, p in bound):
            continue
        try:
            added.append(await gateway.open((address, 4500)))
        except OSError as exc:
            LOG.warning("not listening on %s:4500 (NAT-T): %s", address, exc.strerror)
    return added


def _exit_status(received: list[int]) -> int:
    """130 when SIGINT stopped the gateway (as a shell reports ^C), else 0 (SIGTERM or
    ``--duration``: a requested stop)."""
    return 128 + signal.SIGINT if signal.SIGINT in received else 0


def _listening(bound: Any, note: str = "") -> None:
    addresses = [f"{a}:{p}" for a, p in bound]
    LOG.info("listening on %s%s", ", ".join(addresses), note,
             extra={"event": "listening", "fields": {"addresses": addresses}})


def _open_store(args: argparse.Namespace, shard: tuple[int, int]) -> Any:
    """``--store``'s SaStore for worker ``shard`` (k, n), or None without --store. A
    StoreError (a damaged store, a key that does not fit) becomes a one-line ConfigError
    naming ``--store`` or ``--store-key``."""
    if not args.store:
        return None
    from ikecore.gateway.store import SaStore, StoreError

    try:
        return SaStore(args.store, key_file=args.store_key, shard=shard)
    except StoreError as exc:
        raise ConfigError("--store-key" if exc.about == "key" else "--store", str(exc)) from None


async def _supervise(args: argparse.Namespace, config: Config) -> int:
    """The parent of ``--workers N``: bind, start the fleet's monitoring services and the
    workers, wait for a signal (forwarded to the workers) or ``--duration``."""
    supervisor = workers.Supervisor(args.workers, config.listen, worker_flags(args),
                                    environment=worker_environment(args))
    try:
        bound = supervisor.bind()
    except OSError as exc:
        supervisor.close()
        raise ConfigError("--listen", f"cannot bind: {exc.strerror}") from None
    loop = asyncio.get_running_loop()
    stop, received = stop_on_signals()
    services: Any = None
    try:
        services = await monitor_cli.start_fleet_services(supervisor, args)  # --control, --metrics
        await supervisor.start()
        deadline = loop.time() + args.duration if args.duration else None
        stopping = asyncio.ensure_future(stop.wait())
        try:
            # the one "listening on" line once every worker is up (as one process prints it
            # once its sockets are read); a worker's failure or a signal ends the wait
            ready = asyncio.ensure_future(supervisor.ready(timeout=60.0))
            await asyncio.wait({ready, stopping}, timeout=args.duration or None, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not stop.is_set() and supervisor.failure is None:
                _listening(bound, f" ({args.workers} workers)")
                waiting = asyncio.ensure_future(supervisor.wait())
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait({waiting, stopping}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
        finally:
            stopping.cancel()
        failure = supervisor.failure
        if failure is not None:
            LOG.error("%s; stopping", failure)
            return 2
        return _exit_status(received)
    finally:
        if services is not None:
            services.close()
        await supervisor.stop(received[-1] if received else signal.SIGTERM)
        supervisor.close()


def vars_of(event: Any) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__dataclass_fields__}


