"""The IP Security Monitor in a browser: ``ikecore serve --web ADDR:PORT``.

Design note. A small read-only HTTP/1.1 server on the gateway's event loop serves one page
(``web_assets/``: plain HTML, JavaScript and CSS shipped in the package, no CDN, no build
step) and a JSON API that reads through the same snapshot path as ``ikecore monitor``:

* ``GET /api/views``: the tree (modes and their views, as the IP Security Monitor document
  lists them), every view's columns with their titles and the default columns in the
  document's order;
* ``GET /api/view?mode=&view=&columns=&sort=&where=&limit=&offset=``: one page of a view's
  rows (``where`` repeatable, the CLI's ``--where`` rules; ``columns`` as ``--columns``) and
  ``total``, the number of rows that match;
* ``GET /api/series``: SAs established per second and the negotiation-time histograms over
  the last minutes, sampled every second by this server into a bounded ring.

Every request is a control-protocol request (``ikecore.monitor.control``) answered by a
``Source``: in one process by ``ControlServer``'s own code in-process (slice by slice, the
loop turning between two slices: a listing never holds a negotiation up); in the parent of
``--workers N`` by the fan-out (``ikecore.monitor.fanout.FanoutServer``), so the page shows
the whole gateway. Only ``view`` requests are ever made: nothing here can delete an SA.
Paging is done here: a page asks the gateway for ``offset + limit`` rows (the gateway stops
reading once it has them when there is no sort) and ``total`` comes from a listing of one
constant column (a few bytes per SA, counted, never decoded).

Safety: the server binds loopback unless told otherwise; any other address needs
``--web-token FILE`` (owner-only, its first line the token), and then every request must
carry it (``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` on the first page load,
which the page then keeps and sends as the header), compared in constant time. The page
is one request: its script and style are inlined into it and allowed by hash in its
Content-Security-Policy (nothing else runs, nothing loads from elsewhere). No view column
carries a key, a nonce or a PSK (``SECRET_WORDS`` is checked at start).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from ikecore.config import check_owner_only
from ikecore.errors import ConfigError
from ikecore.monitor.control_client import ControlClient
from ikecore.monitor.counters import Statistic, display_name
from ikecore.monitor.text import COLUMNS, DEFAULT_COLUMNS, MM, QM, column_title

__all__ = ["WebServer", "Series", "TREE", "load_token", "parse_address", "check_flags", "start_web", "local_source",
           "fanout_source", "SECRET_WORDS"]

#: The IP Security Monitor document's tree: each mode's views, in its order.
TREE: tuple[tuple[str, tuple[str, ...]], ...] = (
    (MM, ("generic-filters", "specific-filters", "ike-policies", "statistics", "security-associations")),
    (QM, ("generic-filters", "specific-filters", "statistics", "security-associations")),
)

#: Words no column may carry (checked at start): the page never shows a secret.
SECRET_WORDS = ("key", "nonce", "psk", "secret", "skeyid", "password")

#: A source answers one control-protocol request (a dict) with its answer line (bytes).
Source = Callable[[dict[str, Any]], Awaitable[bytes]]

_SA_VIEWS = {(MM, "security-associations"), (QM, "security-associations")}
_MAX_LIMIT = 5000
_MAX_HEAD = 16384
_ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
           "/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/app.css": ("app.css", "text/css; charset=utf-8")}
_HEADERS = (b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
            b"X-Frame-Options: DENY\r\n")
_POLICY = b"Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n"


# --- sources: the control protocol, answered in-process or by the fan-out --------------------


class _Sink:
    """A stream writer that keeps what is written (for ``ControlServer``'s streamed listing)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    async def drain(self) -> None:
        return None


def local_source(control: Any) -> Source:
    """Requests answered by a ``ControlServer`` in this process (its socket need not be open):
    a view is built slice by slice with the event loop turning in between, as on the socket."""

    async def ask(req: dict[str, Any]) -> bytes:
        line = orjson.dumps(req) + b"\n"
        sink = _Sink()
        if await control._stream_listing(line, sink):
            return b"".join(sink.parts).rstrip(b"\n")
        return bytes(control.answer(line)).rstrip(b"\n")

    return ask


def fanout_source(fanout: Any) -> Source:
    """Requests answered by the parent's fan-out (``FanoutServer``): every worker, merged."""

    async def ask(req: dict[str, Any]) -> bytes:
        return b"".join(await fanout.answer(orjson.dumps(req) + b"\n")).rstrip(b"\n")

    return ask


class RequestError(Exception):
    """A bad API request: answered 400 with its message."""


# --- the series: sampled every second, a bounded ring ----------------------------------------


@dataclass
class _Sample:
    time: float
    main_mode: int
    quick_mode: int
    phase1: list[int]  # cumulative bucket counts (the last: +Inf)
    phase1_sum: float
    phase2: list[int]
    phase2_sum: float


class Series:
    """SAs established per second and the negotiation-time histograms over the last minutes."""

    def __init__(self, source: Source, keep: int = 600, interval: float = 1.0) -> None:
        self.source = source
        self.interval = interval
        self.samples: collections.deque[_Sample] = collections.deque(maxlen=keep)
        self.buckets: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
                await self.sample()
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def sample(self) -> None:
        stats = orjson.loads(await self.source({"op": "view", "mode": MM, "view": "statistics"}))
        counters = orjson.loads(await self.source({"op": "view", "mode": MM, "view": "counters"}))
        if not stats.get("ok") or not counters.get("ok"):
            return
        values = {row["statistic"]: row["value"] for row in stats["rows"]}
        found: dict[str, dict[str, Any]] = {"phase1": {}, "phase2": {}}
        for row in counters["rows"]:
            name = str(row.get("counter"))
            if name.startswith("negotiation_seconds:"):
                _, phase, what = name.split(":", 2)
                if phase in found:
                    found[phase][what] = row["value"]
        buckets = [k[3:] for k in found["phase1"] if k.startswith("le=")]
        self.buckets = buckets
        self.samples.append(_Sample(
            time.time(), int(values.get("ike_main_mode", 0)), int(values.get("ike_quick_mode", 0)),
            [int(found["phase1"].get(f"le={b}", 0)) for b in buckets], float(found["phase1"].get("sum", 0.0)),
            [int(found["phase2"].get(f"le={b}", 0)) for b in buckets], float(found["phase2"].get("sum", 0.0))))

    def answer(self, seconds: int) -> dict[str, Any]:
        samples = list(self.samples)[-(seconds + 1):]
        times, rates, quick, p1_mean, p2_mean = [], [], [], [], []
        for before, after in zip(samples, samples[1:]):
            span = max(after.time - before.time, 1e-3)
            times.append(round(after.time, 3))
            rates.append(round((after.main_mode - before.main_mode) / span, 2))
            quick.append(round((after.quick_mode - before.quick_mode) / span, 2))
            p1_mean.append(_mean_ms(before.phase1, after.phase1, before.phase1_sum, after.phase1_sum))
            p2_mean.append(_mean_ms(before.phase2, after.phase2, before.phase2_sum, after.phase2_sum))
        first, last = (samples[0], samples[-1]) if samples else (None, None)
        return {"ok": True, "interval": self.interval, "buckets": self.buckets, "times": times,
                "sas_per_second": rates, "quick_modes_per_second": quick,
                "phase1_mean_ms": p1_mean, "phase2_mean_ms": p2_mean,
                "phase1_histogram": _window(first.phase1 if first else [], last.phase1 if last else []),
                "phase2_histogram": _window(first.phase2 if first else [], last.phase2 if last else [])}


def _mean_ms(before: list[int], after: list[int], sum_before: float, sum_after: float) -> float | None:
    count = (after[-1] if after else 0) - (before[-1] if before else 0)
    return round((sum_after - sum_before) / count * 1000.0, 3) if count > 0 else None


def _window(first: list[int], last: list[int]) -> list[int]:
    """Negotiations per bucket between two samples (cumulative counts in, per-bucket out)."""
    if not last:
        return []
    diff = [b - (first[i] if i < len(first) else 0) for i, b in enumerate(last)]
    return [diff[0]] + [max(0, diff[i] - diff[i - 1]) for i in range(1, len(diff))]


# --- the views' description ------------------------------------------------------------------


def views_description() -> dict[str, Any]:
    """What the page needs to draw the tree and every view's column list."""
    modes: dict[str, Any] = {}
    for mode, views in TREE:
        modes[mode] = {view: {"title": view.replace("-", " ").title().replace("Ike", "IKE"),
                              "columns": [{"key": c, "title": column_title(c)} for c in COLUMNS[(mode, view)]],
                              "default": list(DEFAULT_COLUMNS[(mode, view)])} for view in views}
    statistics = {s.key: display_name(s.key) for s in Statistic}
    return {"ok": True, "tree": [[mode, list(views)] for mode, views in TREE],
            "mode_titles": {MM: "Main Mode", QM: "Quick Mode"}, "views": modes, "statistic_titles": statistics}


def _check_no_secret_columns() -> None:
    for (mode, view), columns in COLUMNS.items():
        for column in columns:
            if any(word in column for word in SECRET_WORDS):
                raise AssertionError(f"{mode} {view} column {column} looks like a secret")


# --- the HTTP server -------------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` too) for ``--web``; ConfigError otherwise."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("--web", f"takes ADDR:PORT, e.g. --web 127.0.0.1:8080, not {text!r}")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(path: str) -> bytes:
    """The token of ``--web-token FILE``: its first line; the file must be owner-only."""
    try:
        with open(path, "rb") as handle:
            check_owner_only(os.fstat(handle.fileno()).st_mode, path, "--web-token")
            token = handle.readline().strip()
    except OSError as exc:
        raise ConfigError("--web-token", f"cannot read {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise ConfigError("--web-token", f"{path} must hold a token of at least 16 characters on its first line "
                                         "(e.g. head -c 24 /dev/urandom | base64 > FILE; chmod 600 FILE)")
    return token


class WebServer:
    """Serves the page and the API from ``source``; ``await start(host, port)``, ``close()``."""

    def __init__(self, source: Source, token: bytes | None = None, series: Series | None = None) -> None:
        _check_no_secret_columns()
        self.source = source
        self.token = token
        self.series = series or Series(source)
        self.address: tuple[str, int] | None = None
        self.requests = 0
        self._connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._assets = {path: (_asset(name), kind) for path, (name, kind) in _ASSETS.items()}
        self._page, self._page_policy = _inline_page()
        self._description = orjson.dumps(views_description())

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port, limit=_MAX_HEAD)
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        self.series.start()
        return self.address

    def close(self) -> None:
        self.series.close()
        if self._server is not None:
            self._server.close()
            self._server = None

    #: Connections served at once; more are closed at once (a page uses one or two).
    MAX_CONNECTIONS = 64

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= self.MAX_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        try:
            for _ in range(1000):  # keep-alive, bounded
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60.0)
                keep = await self._handle(head, writer)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError,
                OSError, ValueError):
            pass
        finally:
            self._connections -= 1
            writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            await writer.wait_closed()

    async def _handle(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        self.requests += 1
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            _respond(writer, 400, b'{"ok":false,"error":"bad request"}', "application/json", False)
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if method not in ("GET", "HEAD"):
            _respond(writer, 405, b'{"ok":false,"error":"read-only: GET only"}', "application/json", keep,
                     extra=b"Allow: GET, HEAD\r\n")
            return keep
        url = urlsplit(target)
        query = parse_qs(url.query, keep_blank_values=True)
        if not self._authorised(headers.get("authorization"), query.get("token", [None])[0]):
            _respond(writer, 401, b'{"ok":false,"error":"a token is required: Authorization: Bearer TOKEN"}',
                     "application/json", keep, extra=b'WWW-Authenticate: Bearer realm="ikecore"\r\n',
                     head_only=method == "HEAD")
            return keep
        status, body, kind = await self._route(url.path, query)
        policy = self._page_policy if kind.startswith("text/html") else _POLICY
        _respond(writer, status, body, kind, keep, head_only=method == "HEAD", extra=policy)
        return keep

    def _authorised(self, header: str | None, query_token: str | None) -> bool:
        if self.token is None:
            return True
        given = b""
        if header and header[:7].lower() == "bearer ":
            given = header[7:].strip().encode("utf-8", "replace")
        elif query_token:
            given = query_token.encode("utf-8", "replace")
        return hmac.compare_digest(given, self.token)

    async def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, bytes, str]:
        if path in ("/", "/index.html"):
            return 200, self._page, "text/html; charset=utf-8"
        asset = self._assets.get(path)
        if asset is not None:
            return 200, asset[0], asset[1]
        try:
            if path == "/api/views":
                return 200, self._description, "application/json"
            if path == "/api/view":
                return 200, orjson.dumps(await self.view(query)), "application/json"
            if path == "/api/series":
                seconds = _integer(query, "seconds", 300, 1, 3600)
                return 200, orjson.dumps(self.series.answer(seconds)), "application/json"
        except RequestError as exc:
            return 400, orjson.dumps({"ok": False, "error": str(exc)}), "application/json"
        return 404, b'{"ok":false,"error":"not found"}', "application/json"

    async def view(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """One page of a view: ``{"ok", "mode", "view", "columns", "rows", "total", "offset"}``."""
        mode, view = _one(query, "mode"), _one(query, "view")
        if not any(mode == m and view in views for m, views in TREE):
            raise RequestError(f"unknown view {mode} {view}")
        limit = _integer(query, "limit", 200, 0, _MAX_LIMIT)
        offset = _integer(query, "offset", 0, 0, 1 << 31)
        req: dict[str, Any] = {"op": "view", "mode": mode, "view": view}
        columns = query.get("columns", [""])[0]
        if columns:
            req["columns"] = columns
        sort = query.get("sort", [""])[0]
        if sort:
            req["sort"] = sort
        where = [w for w in query.get("where", []) if w.strip()]
        if where:
            for item in where:
                if "=" not in item:
                    raise RequestError(f"where takes COLUMN=VALUE, e.g. peer=192.0.2.7, not {item!r}")
            req["where"] = where
        sa_view = (mode, view) in _SA_VIEWS
        if sa_view:
            req["limit"] = offset + limit
        answer = orjson.loads(await self.source(req))
        if not answer.get("ok"):
            raise RequestError(str(answer.get("error", "request failed")))
        rows = answer.get("rows") or []
        total = len(rows)
        if sa_view:
            total = await self._count(mode, view, where) if len(rows) >= offset + limit else total
        return {"ok": True, "mode": mode, "view": view, "columns": answer.get("columns"), "total": total,
                "offset": offset, "rows": rows[offset:offset + limit], "time": answer.get("time"),
                "workers": [{k: w.get(k) for k in ("worker", "pid", "state", "answered")}
                            for w in answer.get("workers") or []]}

    async def _count(self, mode: str, view: str, where: list[str]) -> int:
        """The rows of an SA view that match ``where``: a listing of its constant column."""
        req: dict[str, Any] = {"op": "view", "mode": mode, "view": view, "columns": ["worker"]}
        if where:
            req["where"] = where
        split = ControlClient.split_rows(await self.source(req))
        if split is None:
            raise RequestError("the gateway gave no count")
        return split[1].count(b"{")


def _one(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    if not values or not values[0]:
        raise RequestError(f"{name} is required")
    return values[0]


def _integer(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name, [""])[0]
    if not text:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise RequestError(f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}


def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, kind: str, keep: bool, *,
             extra: bytes = b"", head_only: bool = False) -> None:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n").encode()
    if b"Content-Security-Policy" not in extra:
        extra += _POLICY
    writer.write(head + _HEADERS + extra + b"\r\n" + (b"" if head_only else body))


def _asset(name: str) -> bytes:
    return resources.files("ikecore.monitor").joinpath("web_assets", name).read_bytes()


def _inline_page() -> tuple[bytes, bytes]:
    """The page with its script and style inline (one request, the one that may carry
    ``?token=``: nothing else loads without the token) and its Content-Security-Policy,
    which allows exactly that script and that style (by hash) and requests to this server."""
    page = _asset("index.html").decode()
    script, style = _asset("app.js").decode(), _asset("app.css").decode()
    page = page.replace('<link rel="stylesheet" href="app.css">', f"<style>{style}</style>")
    page = page.replace('<script src="app.js" defer></script>\n', "")
    page = page.replace("</body>", f"<script>{script}</script>\n</body>")

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    policy = (f"Content-Security-Policy: default-src 'none'; connect-src 'self'; img-src 'self' data:; "
              f"style-src {digest(style)}; script-src {digest(script)}; base-uri 'none'; form-action 'none'; "
              f"frame-ancestors 'none'\r\n")
    return page.encode(), policy.encode()


def check_flags(address: str | None, token_file: str | None) -> tuple[str, int, bytes | None] | None:
    """``--web`` and ``--web-token`` checked (before the gateway binds anything): (host,
    port, token), or None without ``--web``; ConfigError names the flag and the fix."""
    if not address:
        if token_file is not None:
            raise ConfigError("--web-token", "protects the monitor page: give it with --web ADDR:PORT")
        return None
    host, port = parse_address(address)
    if token_file is None and not _is_loopback(host):
        raise ConfigError("--web-token", f"--web {address} is reachable from other hosts: give --web-token FILE "
                                         "(an owner-only file holding the token), or bind --web 127.0.0.1:PORT")
    return host, port, load_token(token_file) if token_file is not None else None


async def start_web(source: Source, address: str, token_file: str | None) -> WebServer:
    """Serve ``--web ADDR:PORT`` from ``source``; a non-loopback address needs a token file."""
    checked = check_flags(address, token_file)
    assert checked is not None
    host, port, token = checked
    server = WebServer(source, token)
    try:
        bound = await server.start(host, port)
    except OSError as exc:
        server.close()
        raise ConfigError("--web", f"cannot serve {address}: {exc.strerror}") from None
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{shown}:{bound[1]}/"
    logging.getLogger("ikecore.monitor").info("monitor page %s", url,
                                              extra={"event": "monitor_page", "fields": {"url": url}})
    return server
