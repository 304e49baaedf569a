"""``ikecore monitor`` and the gateway's monitoring services.

``ikecore monitor main-mode|quick-mode VIEW [--control PATH] [--columns ...]
[--sort COL[:desc]] [--format table|json|csv] [--watch]`` asks a running gateway's control
socket and prints the view. ``--columns`` takes keys in the order to show, ``+key`` to add
one to the defaults, ``-key`` to remove one (write ``--columns=-key``) or ``all``; JSON shows
every column unless told otherwise. ``--watch`` redraws every ``--interval`` seconds.

``start_services`` opens what ``ikecore serve --control/--metrics`` asks for; ``demo_report``
prints the statistics and security associations at the end of ``make run``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from ikecore.errors import ConfigError
from ikecore.monitor.control_client import ControlClient, ControlError, default_control_path
from ikecore.monitor.text import VIEWS, render

if TYPE_CHECKING:
    from ikecore.monitor.control import ControlServer
    from ikecore.monitor.views import Views

__all__ = ["add_parser", "run", "main", "start_services", "Services", "demo_report"]


def add_parser(sub: Any) -> None:
    """The ``monitor`` sub-command of ``ikecore`` (``ikecore.cli.main``)."""
    _add_arguments(sub.add_parser("monitor", help="show a running gateway's IP Security Monitor views"))


def main(argv: list[str]) -> int:
    """``ikecore monitor ARGS`` on its own (``ikecore.cli.entry``): the same command, without
    importing the rest of the command line (engine, crypto, asyncio)."""
    parser = argparse.ArgumentParser(prog="ikecore monitor", description="show a running gateway's IP Security "
                                                                         "Monitor views")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"ikecore monitor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=tuple(VIEWS), help="main-mode or quick-mode")
    parser.add_argument("view", help="generic-filters, specific-filters, ike-policies (main mode), statistics, "
                                     "security-associations or counters")
    parser.add_argument("--control", metavar="PATH", help="the gateway's control socket")
    parser.add_argument("--columns", metavar="COLS",
                        help="comma-separated keys in order; +key adds, -key removes (--columns=-key), all")
    parser.add_argument("--sort", metavar="COLUMN[:desc]")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--watch", action="store_true", help="redraw until interrupted")
    parser.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="--watch period")
    parser.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N redraws")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The ``monitor`` sub-command; exit 0, 1 (gateway unreachable) or 2 (bad request)."""
    out = out or sys.stdout
    if args.view not in VIEWS[args.mode]:
        raise ConfigError("VIEW", f"{args.mode} views are {', '.join(VIEWS[args.mode])}")
    if args.interval <= 0:
        raise ConfigError("--interval", "must be a positive number of seconds")
    path = args.control or default_control_path()
    payload = {"op": "view", "mode": args.mode, "view": args.view, "columns": args.columns, "sort": args.sort,
               "all_columns": args.format == "json" and args.columns is None}
    # JSON of a list view is the answer's rows as the gateway encoded them: copied through.
    passthrough = args.format == "json" and args.view != "statistics" and not args.watch
    shown = 0
    client: ControlClient | None = None
    while True:
        try:
            if client is None:
                client = ControlClient(path)
            line = client.request_line(payload)
            rows = client.rows_json(line) if passthrough else None
            if rows is not None:
                _write_bytes(out, rows + b"\n")
                client.close()
                return 0
            result = client.parse(line)
        except ControlError as exc:
            message = str(exc)
            print(f"ikecore monitor: {message}", file=sys.stderr)
            if client is not None:
                client.close()
            return 2 if "column" in message or "sort" in message or "view" in message else 1
        text = render(result, args.format)
        if args.watch:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"\x1b[H\x1b[2J{args.mode} {args.view} at {stamp} ({len(result['rows'])} rows)\n")
        out.write(text + "\n")
        out.flush()
        shown += 1
        if not args.watch or (args.count is not None and shown >= args.count):
            client.close()
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            client.close()
            return 0


def _write_bytes(out: TextIO, data: bytes) -> None:
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(data)
        buffer.flush()
    else:
        out.write(data.decode())
        out.flush()


class Services:
    """The monitoring services of one gateway; ``close()`` stops them."""

    def __init__(self, views: Views, control: ControlServer | None = None, metrics: Any = None,
                 metrics_address: tuple[str, int] | None = None) -> None:
        self.views = views
        self.control = control
        self.metrics = metrics  # ikecore.monitor.exporters.MetricsServer
        self.metrics_address = metrics_address

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.views.dns is not None:
            self.views.dns.close()


async def start_services(gateway: Any, control: str | None, metrics: str | None) -> Services:
    """Open the control socket (``control``: a path, '' for the default, None for none) and
    the metrics endpoint (``metrics``: ADDR:PORT or None) of ``gateway``."""
    from ikecore.config import parse_endpoint  # the gateway side: imported only by ``serve`` and tests
    from ikecore.monitor.control import ControlServer
    from ikecore.monitor.counters import Statistic
    from ikecore.monitor.views import DnsNameCache, Views

    monitor = gateway.monitor
    monitor.gauges[Statistic.ACQUIRE_HEAP_SIZE] = lambda: gateway.pending_connects
    views = Views(gateway.engine, monitor, clock=gateway.loop.time, dns=DnsNameCache())
    services = Services(views)
    if control is not None:
        path = control or default_control_path()
        services.control = ControlServer(views)
        try:
            await services.control.start(path)
        except OSError as exc:
            raise ConfigError("--control", f"cannot serve {path}: {exc}") from None
        print(f"ikecore serve: control socket {path}", file=sys.stderr, flush=True)
    if metrics is not None:
        from ikecore.monitor.exporters import IkecoreCollector, MetricsServer, make_registry  # only when asked

        host, port = parse_endpoint(metrics, 9500, "--metrics")
        services.metrics = MetricsServer(make_registry(IkecoreCollector(
            monitor, gateway.engine, clock=gateway.loop.time, sockets=gateway.sockets)))
        try:
            services.metrics_address = await services.metrics.start(host, port)
        except OSError as exc:
            services.close()
            raise ConfigError("--metrics", f"cannot listen on {host}:{port}: {exc.strerror}") from None
        print(f"ikecore serve: metrics at http://{host}:{services.metrics_address[1]}/metrics",
              file=sys.stderr, flush=True)
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
