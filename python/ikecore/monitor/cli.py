"""``ikecore monitor``, ``ikecore terminate`` and the gateway's monitoring services.

``ikecore monitor main-mode|quick-mode VIEW [--control PATH] [--columns ...]
[--sort COL[:desc]] [--where COLUMN=VALUE ...] [--limit N] [--format table|json|csv]
[--watch]`` asks a running gateway's control socket and prints the view. ``--columns``
takes keys in the order to show, ``+key`` to add one to the defaults, ``-key`` to remove
one (write ``--columns=-key``) or ``all``; JSON shows every column unless told otherwise.
``--where`` (repeatable, all must hold) keeps the rows whose column has that value (an
address or a CIDR on address columns such as ``me`` and ``peer``), ``--limit`` the first N
rows; the gateway filters, so the answer carries only those rows. ``--watch`` redraws
every ``--interval`` seconds. A gateway of several worker processes names, after the
rows, each worker that did not answer (on stderr for JSON and CSV). On a terminal, a
table redraws in place (the screen is cleared first); into a pipe, or in JSON or CSV,
nothing but the text is written: ``--watch --format json`` is JSON Lines, one document
per refresh, ``--format csv`` one CSV block (with its header) per refresh after a blank
line. Values are written as ``ikecore.monitor.formats`` says (times in ISO 8601 UTC,
cookies and SPIs in hex, lists as JSON lists or ``;``-joined, ``true``/``false``).

``ikecore terminate [--control PATH] --where COLUMN=VALUE ...`` deletes the matching ISAKMP
SAs with their IPsec SAs (the peers get Delete notifications) and prints how many.

``start_services`` opens what ``ikecore serve --control/--metrics/--web`` asks for,
``start_fleet_services`` the same for the parent of ``--workers N``; ``demo_report``
prints the statistics and security associations at the end of ``make run``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from ikecore.errors import ConfigError
from ikecore.monitor.control_client import ControlClient, ControlError, default_control_path, worker_notices
from ikecore.monitor.formats import iso_utc
from ikecore.monitor.text import VIEWS, render

if TYPE_CHECKING:
    from ikecore.monitor.control import ControlServer
    from ikecore.monitor.fanout import FanoutServer
    from ikecore.monitor.views import Views

__all__ = ["add_parser", "add_terminate_parser", "run", "terminate", "main", "terminate_main", "start_services",
           "Services", "start_fleet_services", "FleetServices", "demo_report"]


def add_parser(sub: Any) -> None:
    """The ``monitor`` sub-command of ``ikecore`` (``ikecore.cli.main``)."""
    _add_arguments(sub.add_parser("monitor", help="show a running gateway's IP Security Monitor views"))


def add_terminate_parser(sub: Any) -> None:
    """The ``terminate`` sub-command of ``ikecore`` (``ikecore.cli.main``)."""
    _add_terminate_arguments(sub.add_parser("terminate", help="delete a running gateway's matching SAs"))


def main(argv: list[str]) -> int:
    """``ikecore monitor ARGS`` on its own (``ikecore.cli.entry``): the same command, without
    importing the rest of the command line (engine, crypto, asyncio)."""
    parser = argparse.ArgumentParser(prog="ikecore monitor", description="show a running gateway's IP Security "
                                                                         "Monitor views")
    _add_arguments(parser)
    return _main("monitor", run, parser.parse_args(argv))


def terminate_main(argv: list[str]) -> int:
    """``ikecore terminate ARGS`` on its own (``ikecore.cli.entry``), as ``main``."""
    parser = argparse.ArgumentParser(prog="ikecore terminate", description="delete a running gateway's ISAKMP "
                                     "SAs that match every --where, with their IPsec SAs")
    _add_terminate_arguments(parser)
    return _main("terminate", terminate, parser.parse_args(argv))


def _log() -> Any:
    """The ``ikecore.monitor`` logger (``logging`` imported only by the services' paths)."""
    import logging

    return logging.getLogger("ikecore.monitor")


def _main(name: str, command: Any, args: argparse.Namespace) -> int:
    try:
        return int(command(args))
    except ConfigError as exc:
        print(f"ikecore {name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _add_where(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--where", action="append", metavar="COLUMN=VALUE",
                        help=f"{what} whose COLUMN has VALUE (an address or a CIDR for me, peer and other "
                             "address columns); repeatable, all must hold")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=tuple(VIEWS), help="main-mode or quick-mode")
    parser.add_argument("view", help="generic-filters, specific-filters, ike-policies (main mode), statistics, "
                                     "security-associations or counters")
    parser.add_argument("--control", metavar="PATH", help="the gateway's control socket")
    parser.add_argument("--columns", metavar="COLS",
                        help="comma-separated keys in order; +key adds, -key removes (--columns=-key), all")
    parser.add_argument("--sort", metavar="COLUMN[:desc]")
    _add_where(parser, "only the rows")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N rows (the first N after --sort)")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--watch", action="store_true", help="redraw until interrupted")
    parser.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="--watch period")
    parser.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N redraws")
    parser.set_defaults(handler=run)


def _add_terminate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", metavar="PATH", help="the gateway's control socket")
    _add_where(parser, "delete the ISAKMP SAs (Main Mode security-associations columns)")
    parser.set_defaults(handler=terminate)


def _check_where(where: list[str] | None) -> list[str] | None:
    for item in where or ():
        column, equals, _value = item.partition("=")
        if not equals or not column.strip():
            raise ConfigError("--where", f"takes COLUMN=VALUE, e.g. --where peer=192.0.2.7, not {item!r}")
    return where


def _exit_status(message: str) -> int:
    """2 for a request the gateway refused (a bad column, sort, view, condition), else 1."""
    return 2 if any(word in message for word in ("column", "sort", "view", "where", "limit", "mode")) else 1


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The ``monitor`` sub-command; exit 0, 1 (gateway unreachable) or 2 (bad request)."""
    out = out or sys.stdout
    if args.view not in VIEWS[args.mode]:
        raise ConfigError("VIEW", f"{args.mode} views are {', '.join(VIEWS[args.mode])}")
    if args.interval <= 0:
        raise ConfigError("--interval", "must be a positive number of seconds")
    where = _check_where(getattr(args, "where", None))
    limit = getattr(args, "limit", None)
    if limit is not None and limit < 0:
        raise ConfigError("--limit", "must be a whole number of rows, 0 or more")
    path = args.control or default_control_path()
    payload: dict[str, Any] = {"op": "view", "mode": args.mode, "view": args.view, "columns": args.columns,
                               "sort": args.sort, "all_columns": args.format == "json" and args.columns is None}
    if where:
        payload["where"] = where
    if limit is not None:
        payload["limit"] = limit
    # JSON of a list view is the answer's rows as the gateway encoded them: copied through.
    passthrough = args.format == "json" and args.view != "statistics" and not args.watch
    notices_to = out if args.format == "table" else sys.stderr
    shown = 0
    client: ControlClient | None = None
    while True:
        try:
            if client is None:
                client = ControlClient(path)
            line = client.request_line(payload)
            span = client.rows_span(line) if passthrough else None
            if span is not None:
                head, start, end = span
                _write_bytes(out, memoryview(line)[start:end], b"\n")
                _notify(notices_to, head)
                client.close()
                return 0
            result = client.parse(line)
        except ControlError as exc:
            message = str(exc)
            print(f"ikecore monitor: {message}", file=sys.stderr)
            if client is not None:
                client.close()
            return _exit_status(message)
        text = render(result, args.format)
        if args.watch and args.format == "table":
            # escapes only for a person at a terminal; a pipe gets the text alone
            clear = "\x1b[H\x1b[2J" if _is_terminal(out) else ("\n" if shown else "")
            out.write(f"{clear}{args.mode} {args.view} at {iso_utc(time.time())} ({len(result['rows'])} rows)\n")
        elif args.watch and args.format == "csv" and shown:
            out.write("\n")  # CSV blocks apart
        out.write(text + "\n")
        out.flush()
        _notify(notices_to, result)
        shown += 1
        if not args.watch or (args.count is not None and shown >= args.count):
            client.close()
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            client.close()
            return 130   # 128 + SIGINT, as every other command


def terminate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The ``terminate`` sub-command: exit 0 (however many were deleted), 1 (gateway
    unreachable) or 2 (no or a bad ``--where``)."""
    out = out or sys.stdout
    where = _check_where(args.where)
    if not where:
        raise ConfigError("--where", "say which SAs to delete, e.g. --where peer=ADDR (repeatable; every SA "
                                     "matching all of them is deleted)")
    path = args.control or default_control_path()
    try:
        with ControlClient(path) as client:
            answer = client.request({"op": "terminate", "where": where})
    except ControlError as exc:
        message = str(exc)
        print(f"ikecore terminate: {message}", file=sys.stderr)
        return _exit_status(message)
    deleted = int(answer.get("deleted", 0))
    out.write(f"terminated {deleted} ISAKMP SA{'' if deleted == 1 else 's'}\n")
    out.flush()
    for notice in worker_notices(answer):
        print(notice.replace("showing the other workers", "its SAs are untouched"), file=sys.stderr)
    return 0


def _is_terminal(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):
        return False


def _notify(out: TextIO, answer: dict[str, Any]) -> None:
    """The workers that did not answer, one line each, after the rows."""
    notices = worker_notices(answer)
    if notices:
        out.write("".join(f"{line}\n" for line in notices))
        out.flush()


def _write_bytes(out: TextIO, *pieces: bytes | memoryview) -> None:
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        for piece in pieces:
            buffer.write(piece)
        buffer.flush()
    else:
        out.write("".join(bytes(piece).decode() for piece in pieces))
        out.flush()


class Services:
    """The monitoring services of one gateway; ``close()`` stops them."""

    def __init__(self, views: Views, control: ControlServer | None = None, metrics: Any = None,
                 metrics_address: tuple[str, int] | None = None) -> None:
        self.views = views
        self.control = control
        self.metrics = metrics  # ikecore.monitor.exporters.MetricsServer
        self.metrics_address = metrics_address
        self.web: Any = None  # ikecore.monitor.web.WebServer (``--web``)

    def close(self) -> None:
        if self.web is not None:
            self.web.close()
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.views.dns is not None:
            self.views.dns.close()


async def start_services(gateway: Any, control: str | None, metrics: str | None, options: Any = None) -> Services:
    """Open the control socket (``control``: a path, '' for the default, None for none) and
    the metrics endpoint (``metrics``: ADDR:PORT or None) of ``gateway``; ``options``: the
    ``serve`` flags (``--metrics-per-sa`` ...: ``ikecore.monitor.exporters.MetricsOptions``)."""
    from ikecore.monitor.control import ControlServer
    from ikecore.monitor.counters import Statistic
    from ikecore.monitor.views import DnsNameCache, Views

    monitor = gateway.monitor
    monitor.gauges[Statistic.ACQUIRE_HEAP_SIZE] = lambda: gateway.pending_connects
    views = Views(gateway.engine, monitor, clock=gateway.loop.time, dns=DnsNameCache())
    services = Services(views)
    if control is not None:
        path = control or default_control_path()
        services.control = ControlServer(views, gateway=gateway)  # ``terminate`` deletes through the gateway
        try:
            await services.control.start(path)
        except OSError as exc:
            raise ConfigError("--control", f"cannot serve {path}: {exc}") from None
        _log().info("control socket %s", path, extra={"event": "control_socket", "fields": {"path": path}})
    if metrics is not None or services.control is not None:
        # /metrics when asked, and on every control socket the "metrics" operation: the
        # exposition as JSON, which the parent of a gateway's workers merges into one /metrics.
        from ikecore.monitor.exporters import (
            IkecoreCollector,
            MetricsOptions,
            control_op,
            make_registry,
            start_metrics_server,
        )

        try:
            chosen = MetricsOptions.from_args(options, gateway.engine.config)
        except ConfigError:
            services.close()
            raise
        collector = IkecoreCollector(monitor, gateway.engine, clock=gateway.loop.time, sockets=gateway.sockets,
                                     per_sa_limit=chosen.per_sa, faults=gateway.faults)
        if services.control is not None:
            services.control.extra_ops.setdefault("metrics", control_op(collector))
        if metrics is not None:
            try:
                services.metrics, services.metrics_address = await start_metrics_server(
                    make_registry(collector), metrics, chosen)
            except ConfigError:
                services.close()
                raise
    web = getattr(options, "web", None)
    if web:  # the monitor page, answered by a control server's code in this process
        from ikecore.monitor.web import local_source, start_web

        control_code = services.control or ControlServer(views, gateway=gateway)
        try:
            services.web = await start_web(local_source(control_code), web, getattr(options, "web_token", None))
        except ConfigError:
            services.close()
            raise
    return services


class FleetServices:
    """The monitoring services of the parent of a gateway's worker processes: the fan-out
    control socket (``ikecore.monitor.fanout.FanoutServer``, there even without a socket:
    its ``gather`` asks the workers) and the fleet's metrics; ``close()`` stops them."""

    def __init__(self, fanout: FanoutServer, metrics: Any = None) -> None:
        self.fanout = fanout
        self.control: FanoutServer | None = None
        self.metrics = metrics  # what ``ikecore.monitor.fleet_metrics.start`` returned
        self.web: Any = None  # ikecore.monitor.web.WebServer (``--web``: the whole gateway)

    def close(self) -> None:
        if self.web is not None:
            self.web.close()
        self.fanout.close()
        close = getattr(self.metrics, "close", None)
        if callable(close):
            close()


async def start_fleet_services(supervisor: Any, args: argparse.Namespace) -> FleetServices:
    """Open the control socket and the metrics endpoint of a gateway of worker processes
    whose parent is ``supervisor`` (``ikecore.gateway.workers.Supervisor``), as
    ``ikecore serve``'s parsed flags ask (``args.control``: a path, '' for the default, None
    for none, as ``start_services``; ``args.metrics``: ADDR:PORT or None, served by
    ``ikecore.monitor.fleet_metrics.start``; ``args.web``: the monitor page)."""
    from ikecore.monitor.fanout import FanoutServer  # the gateway side: imported only by ``serve`` and tests

    flags = args
    control, metrics = getattr(args, "control", None), getattr(args, "metrics", None)
    fanout = FanoutServer(supervisor)
    services = FleetServices(fanout)
    if control is not None:
        path = control or default_control_path()
        try:
            await fanout.start(path)
        except OSError as exc:
            raise ConfigError("--control", f"cannot serve {path}: {exc}") from None
        services.control = fanout
        _log().info("control socket %s (all workers)", path,
                    extra={"event": "control_socket", "fields": {"path": path}})
    if metrics:
        from ikecore.monitor import fleet_metrics

        try:
            services.metrics = await fleet_metrics.start(fanout, flags)
        except BaseException:
            services.close()
            raise
    web = getattr(flags, "web", None)
    if web:  # the monitor page of the whole gateway, read through the fan-out
        from ikecore.monitor.web import fanout_source, start_web

        try:
            services.web = await start_web(fanout_source(fanout), web, getattr(flags, "web_token", None))
        except BaseException:
            services.close()
            raise
    return services


def demo_report(out: TextIO, views: Views) -> None:
    """The end of ``make run``: the gateway's Main Mode SAs (abridged) and statistics."""
    result = views.query("main-mode", "security-associations", sort="peer")
    rows = result["rows"]
    out.write(f"\nMain Mode security associations at the gateway ({len(rows)}):\n")
    if len(rows) > 12:
        result = {**result, "rows": rows[:6] + [{c: "..." for c in result["columns"]}] + rows[-5:]}
    out.write(render(result) + "\n")
    out.write("\nMain Mode statistics at the gateway:\n")
    out.write(render(views.query("main-mode", "statistics")) + "\n")
