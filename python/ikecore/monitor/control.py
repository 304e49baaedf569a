"""The gateway's control socket: JSON requests over a unix socket.

``ikecore serve --control PATH`` serves it; ``ikecore monitor`` asks it. The protocol is
one JSON object per line each way (NDJSON), several requests per connection allowed:

* ``{"op": "view", "mode": "main-mode", "view": "security-associations",
  "columns": "me,peer,+state" | [...] | null, "sort": "peer:desc" | null, "all_columns": false}``
  -> ``{"ok": true, "mode", "view", "columns", "rows", "time"}`` (rows: snake_case keys);
* ``{"op": "views"}`` -> the modes, their views and every view's columns;
* ``{"op": "ping"}`` -> ``{"ok": true}``.

Errors answer ``{"ok": false, "error": "..."}`` and keep the connection. Each request is
served on the gateway's event loop between two datagrams: a snapshot, never a wait on a
negotiation. Every view is streamed in slices of ``ControlServer.SLICE`` SAs with the
loop turning between two slices (``Views.listing``; ``rows`` comes last in the answer):
a listing of 100,000 SAs takes a few tenths of a second and never holds negotiations for
more than one slice. The socket is created mode 0600 (it shows who is connected).
Clients (``ikecore.monitor.control_client``, re-exported here): ``request`` (one connection per
request) and ``ControlClient`` (one connection for many, as ``--watch`` and pollers use).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import time
from typing import Any

import orjson

from ikecore.monitor import listing as sa_listing
from ikecore.monitor.control_client import ControlClient, ControlError, default_control_path, request
from ikecore.monitor.views import COLUMNS, DEFAULT_COLUMNS, VIEWS, ViewError, Views

__all__ = ["ControlServer", "ControlClient", "request", "default_control_path", "ControlError"]

MAX_REQUEST = 65536


class ControlServer:
    """Serves ``views`` on a unix socket; ``await start(path)``, ``close()``."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.path: str | None = None
        self.requests = 0
        self.busy_seconds = 0.0  # time spent answering (holding the event loop), for benchmarks
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        """Listen on ``path``; a stale socket file (no server behind it) is replaced."""
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
            self._server = await asyncio.start_unix_server(self._serve, path=path, limit=MAX_REQUEST)
        finally:
            os.umask(old_mask)
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
            columns, sort = req.get("columns"), req.get("sort")
            if (columns is not None and not isinstance(columns, (str, list))) or \
                    (sort is not None and not isinstance(sort, str)):
                return False  # ``answer`` words the error
            mode, view = str(req.get("mode")), str(req.get("view"))
            chosen, slices = self.views.listing(mode, view, columns, sort, all_columns=bool(req.get("all_columns")),
                                                slice_size=self.SLICE)
        except (ValueError, ViewError, TypeError):
            return False
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
            return {"ok": True, "views": {mode: {view: {"columns": list(COLUMNS[(mode, view)]),
                                                        "default": list(DEFAULT_COLUMNS[(mode, view)])}
                                                 for view in views} for mode, views in VIEWS.items()}}
        if op != "view":
            raise ViewError(f"unknown op {op!r}; use view, views or ping")
        columns = req.get("columns")
        if columns is not None and not isinstance(columns, (str, list)):
            raise ViewError("columns must be a string or a list")
        sort = req.get("sort")
        if sort is not None and not isinstance(sort, str):
            raise ViewError("sort must be a string COLUMN[:desc]")
        mode, view = str(req.get("mode")), str(req.get("view"))
        if mode not in VIEWS:
            raise ViewError(f"unknown mode {mode!r}; use {' or '.join(VIEWS)}")
        if view not in VIEWS[mode]:
            raise ViewError(f"unknown {mode} view {view!r}; use one of {', '.join(VIEWS[mode])}")
        chosen, rows = self.views.query_json(mode, view, columns, sort,
                                             all_columns=bool(req.get("all_columns", False)))
        return {"ok": True, "time": time.time(), "mode": mode, "view": view, "columns": chosen,
                "rows_json": rows}
