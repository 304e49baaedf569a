"""The gateway's control socket: JSON requests over a unix socket.

``ikecore serve --control PATH`` serves it; ``ikecore monitor`` and ``ikecore terminate``
ask it. The protocol is one JSON object per line each way (NDJSON), several requests per
connection allowed:

* ``{"op": "view", "mode": "main-mode", "view": "security-associations",
  "columns": "me,peer,+state" | [...] | null, "sort": "peer:desc" | null, "all_columns": false,
  "where": ["peer=192.0.2.0/24", "state=ESTABLISHED"] | null, "limit": 100 | null}``
  -> ``{"ok": true, "mode", "view", "columns", "rows", "time"}`` (rows: snake_case keys; only
  the rows for which every ``COLUMN=VALUE`` of ``where`` holds, at most ``limit`` of them,
  after the sort: ``ikecore.monitor.listing.Condition``);
* ``{"op": "terminate", "where": [...]}`` -> ``{"ok": true, "deleted": N}``: deletes the
  ISAKMP SAs that match (Main Mode SA columns; at least one condition) with their IPsec
  SAs, sending the peers Delete notifications (``ikecore.monitor.actions``);
* ``{"op": "views"}`` -> the modes, their views and every view's columns;
* ``{"op": "ping"}`` -> ``{"ok": true}``;
* the operations a gateway adds (``extra_ops``: name -> callable(request) -> answer).

Errors answer ``{"ok": false, "error": "..."}`` (an unknown column names the view's columns)
and keep the connection. Each request is served on the gateway's event loop between two
datagrams: a snapshot, never a wait on a negotiation. Every view is streamed in slices of
``ControlServer.SLICE`` SAs with the loop turning between two slices (``Views.listing``;
``rows`` comes last in the answer): a listing of 100,000 SAs takes a few tenths of a second
and never holds negotiations for more than one slice; ``terminate`` deletes a slice at a
time the same way. The socket is created mode 0600: it shows who is connected and can
delete SAs. Clients (``ikecore.monitor.control_client``, re-exported here): ``request`` (one
connection per request) and ``ControlClient`` (one connection for many, as ``--watch`` and
pollers use). A gateway of several worker processes answers the same protocol from its
parent (``ikecore.monitor.fanout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from ikecore.monitor import actions
from ikecore.monitor import listing as sa_listing
from ikecore.monitor.control_client import (
    ControlClient,
    ControlError,
    check_control_path,
    default_control_path,
    request,
)
from ikecore.monitor.views import COLUMNS, DEFAULT_COLUMNS, VIEWS, ViewError, Views

__all__ = ["ControlServer", "ControlClient", "request", "default_control_path", "ControlError", "listen_unix",
           "views_answer", "ExtraOp"]

MAX_REQUEST = 65536

#: An operation a gateway adds to its control socket: the request object -> the answer object.
ExtraOp = Callable[[dict[str, Any]], dict[str, Any]]


async def listen_unix(path: str, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                      limit: int = MAX_REQUEST) -> asyncio.AbstractServer:
    """A unix stream server on ``path``, mode 0600 (owner only: a control socket shows the
    gateway's SAs and can delete them); a stale socket file (no server behind it) is
    replaced, anything else at ``path`` refused (OSError). The default directory is made
    0700 when missing; a directory or socket of another user is refused
    (``ikecore.monitor.control_client.check_control_path``)."""
    try:
        check_control_path(path, create=True)
    except ControlError as exc:
        raise OSError(str(exc)) from None
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
            else:
                raise OSError(f"another gateway is serving {path}")
    old_mask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(serve, path=path, limit=limit)
    finally:
        os.umask(old_mask)
    os.chmod(path, 0o600)  # whatever the umask of a caller's thread did meanwhile
    return server


def views_answer() -> dict[str, Any]:
    """The answer to ``{"op": "views"}``: every mode, its views and their columns."""
    return {"ok": True, "views": {mode: {view: {"columns": list(COLUMNS[(mode, view)]),
                                                "default": list(DEFAULT_COLUMNS[(mode, view)])}
                                         for view in views} for mode, views in VIEWS.items()}}


def check_view_request(req: dict[str, Any]) -> tuple[str, str]:
    """The mode and view of a view request, its fields' types checked; raises ViewError."""
    columns = req.get("columns")
    if columns is not None and not isinstance(columns, (str, list)):
        raise ViewError("columns must be a string or a list")
    sort = req.get("sort")
    if sort is not None and not isinstance(sort, str):
        raise ViewError("sort must be a string COLUMN[:desc]")
    where = req.get("where")
    if where is not None and not isinstance(where, (str, list)):
        raise ViewError("where must be a list of COLUMN=VALUE strings")
    mode, view = str(req.get("mode")), str(req.get("view"))
    if mode not in VIEWS:
        raise ViewError(f"unknown mode {mode!r}; use {' or '.join(VIEWS)}")
    if view not in VIEWS[mode]:
        raise ViewError(f"unknown {mode} view {view!r}; use one of {', '.join(VIEWS[mode])}")
    return mode, view


class ControlServer:
    """Serves ``views`` on a unix socket; ``await start(path)``, ``close()``.

    Args:
        views: the gateway's views.
        extra_ops: more operations (``{"op": NAME, ...}`` -> ``extra_ops[NAME](request)``).
        gateway: what ``terminate`` deletes through (a ``Gateway``: Delete notifications go
            out at once); by default the views' engine.
    """

    def __init__(self, views: Views, *, extra_ops: Mapping[str, ExtraOp] | None = None,
                 gateway: Any = None) -> None:
        self.views = views
        self.extra_ops: dict[str, ExtraOp] = dict(extra_ops or {})
        self.gateway = gateway
        self.path: str | None = None
        self.requests = 0
        self.busy_seconds = 0.0  # time spent answering (holding the event loop), for benchmarks
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        """Listen on ``path`` (mode 0600); a stale socket file (no server behind it) is replaced."""
        self._server = await listen_unix(path, self._serve)
        self.path = path

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b'{"ok": false, "error": "request longer than 65536 bytes"}\n')
                    break
                if not line:
                    break
                if await self._stream_listing(line, writer):
                    continue
                if _op_of(line) == "terminate":
                    writer.write(await self._terminate(line))
                else:
                    writer.write(self.answer(line))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:  # the gateway is shutting down with this client connected
            writer.close()
            return
        finally:
            writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            await writer.wait_closed()

    async def _stream_listing(self, line: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer a view request slice by slice (``Views.listing``), letting the event loop
        turn between slices (``SLICE`` SAs, a few milliseconds each): a listing of 100,000
        SAs never holds negotiations for longer than one slice. Returns False (nothing
        written) for any other request and for a bad one, which ``answer`` then serves."""
        started = time.perf_counter()
        try:
            req = orjson.loads(line)
            if not isinstance(req, dict) or req.get("op", "view") != "view":
                return False
            mode, view = check_view_request(req)
            chosen, slices = self.views.listing(mode, view, req.get("columns"), req.get("sort"),
                                                all_columns=bool(req.get("all_columns")), slice_size=self.SLICE,
                                                where=req.get("where"), limit=req.get("limit"))
        except (ValueError, ViewError, TypeError):
            return False  # ``answer`` words the error
        self.requests += 1
        head = orjson.dumps({"ok": True, "time": time.time(), "mode": mode, "view": view, "columns": chosen})
        writer.write(head[:-1] + b',"rows":[')
        first = True
        for part in slices:
            if part:
                writer.write(part if first else b"," + part)
                first = False
            self.busy_seconds += time.perf_counter() - started
            await writer.drain()  # the client reads while the next slice is built
            await asyncio.sleep(0)
            started = time.perf_counter()
        writer.write(b"]}\n")
        self.busy_seconds += time.perf_counter() - started
        return True

    async def _terminate(self, line: bytes) -> bytes:
        """``{"op": "terminate", "where": [...]}``, a slice of SAs at a time with the event
        loop turning in between (Delete notifications go out as each slice is deleted)."""
        self.requests += 1
        started = time.perf_counter()
        try:
            where = _where_of(orjson.loads(line))
            deleted = 0
            for count in actions.terminating(self._target(), where, slice_size=self.SLICE):
                deleted += count
                self.busy_seconds += time.perf_counter() - started
                await asyncio.sleep(0)
                started = time.perf_counter()
            response: dict[str, Any] = {"ok": True, "deleted": deleted}
        except (ValueError, ViewError, TypeError) as exc:
            response = {"ok": False, "error": str(exc)}
        self.busy_seconds += time.perf_counter() - started
        return orjson.dumps(response) + b"\n"

    def _target(self) -> Any:
        if self.gateway is not None:
            return self.gateway
        return _EngineTarget(self.views)

    #: SA records per slice of a streamed listing (a few ms of work on an idle core).
    SLICE = sa_listing.SLICE

    def answer(self, line: bytes) -> bytes:
        """The response line for one request line (never raises)."""
        self.requests += 1
        started = time.perf_counter()
        try:
            return self._answer(line)
        finally:
            self.busy_seconds += time.perf_counter() - started

    def _answer(self, line: bytes) -> bytes:
        try:
            response = self.handle(orjson.loads(line))
        except (ValueError, ViewError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            response = {"ok": False, "error": str(exc)}
        rows = response.pop("rows_json", None)
        if rows is None:
            return orjson.dumps(response, default=str) + b"\n"
        # Splice the rows, encoded by the views, into the answer (last, as streamed answers).
        return orjson.dumps(response, default=str)[:-1] + b',"rows":' + rows + b"}\n"

    def handle(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict):
            raise ViewError("a request is a JSON object")
        op = req.get("op", "view")
        if op == "ping":
            return {"ok": True}
        if op == "views":
            return views_answer()
        if op == "terminate":
            return {"ok": True, "deleted": actions.terminate(self._target(), _where_of(req))}
        extra = self.extra_ops.get(op) if isinstance(op, str) else None
        if extra is not None:
            return extra(req)
        if op != "view":
            known = ["view", "views", "terminate", "ping", *self.extra_ops]
            raise ViewError(f"unknown op {op!r}; use {', '.join(known)}")
        mode, view = check_view_request(req)
        chosen, rows = self.views.query_json(mode, view, req.get("columns"), req.get("sort"),
                                             all_columns=bool(req.get("all_columns", False)),
                                             where=req.get("where"), limit=req.get("limit"))
        return {"ok": True, "time": time.time(), "mode": mode, "view": view, "columns": chosen,
                "rows_json": rows}


class _EngineTarget:
    """``terminate`` on the views' engine when the server knows no gateway (tests, programs
    without sockets): the engine queues the Delete notifications for whoever sends them."""

    def __init__(self, views: Views) -> None:
        self.engine = views.engine
        self._clock = views.clock

    def delete(self, handle: int) -> None:
        self.engine.delete(handle, self._clock())


def _op_of(line: bytes) -> Any:
    """The ``op`` of a request line (None when the line is no JSON object)."""
    try:
        req = orjson.loads(line)
    except ValueError:
        return None
    return req.get("op", "view") if isinstance(req, dict) else None


def _where_of(req: Any) -> Any:
    if not isinstance(req, dict):
        raise ViewError("a request is a JSON object")
    where = req.get("where")
    if where is not None and not isinstance(where, (str, list)):
        raise ViewError("where must be a list of COLUMN=VALUE strings")
    return where
