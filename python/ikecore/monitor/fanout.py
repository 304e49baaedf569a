"""One control socket for a gateway of several worker processes: ask every worker, merge.

Design note. ``ikecore serve --workers N`` runs N worker processes, each a whole gateway
with its own engine, SAs and control socket (``ikecore.monitor.control.ControlServer``, on a
path inside a 0700 directory of the parent). The parent serves the user's ``--control`` path
with the same protocol (``FanoutServer``): each request is sent to every worker that is up,
concurrently, and the answers are merged into the answer one gateway would give:

* statistics and counters: rows summed by name (gauges and counters alike; the histograms'
  cumulative buckets, counts and sums bucket by bucket); then ``where``, the sort and
  ``limit`` on the sums;
* security associations (Main Mode and Quick Mode): each worker filters (``where``), sorts
  and cuts (``limit``) its own; without a sort or a limit the workers' rows are spliced
  as JSON text, never decoded; with one, they are decoded, merge-sorted and cut again;
* specific filters (made of the SAs' addresses): every worker's, duplicates once;
  generic filters and IKE policies (the configuration, the same in every worker): the
  first worker that answers;
* ``terminate``: every worker deletes its matching SAs; ``deleted`` is the sum.

Every answer carries ``"workers"``: the supervisor's ``status()`` of each worker with
``"answered"`` (whether it answered this request) and, for a worker that is not up,
``"last_pid"`` (its process that ended, when this server saw it). A worker that is down or restarting is
named there and the others' rows are shown; an answer is an error only when no worker
answered. The requests are checked here first (the same checks as a worker's), so that a
bad column is one error, not one per worker. ``gather`` gives the other parts of the parent
(the fleet's metrics) each worker's answer to one request.

The supervisor (``ikecore.gateway.workers.Supervisor``) is read through two names only:
``workers`` (objects with ``index``, ``pid``, ``control``, ``state``) and ``status()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from ikecore.monitor import actions
from ikecore.monitor import listing as sa_listing
from ikecore.monitor.control import check_view_request, listen_unix, views_answer
from ikecore.monitor.control_client import ControlClient
from ikecore.monitor.text import MM, QM, ViewError
from ikecore.monitor.views import filter_rows, parse_columns, parse_limit, parse_sort, parse_where, select

__all__ = ["FanoutServer", "merge_statistics", "FanoutOp"]

#: The longest head of a view answer (before its rows) read from a worker.
MAX_HEAD = 1 << 20

#: An operation added to the fan-out socket: the request -> the answer (or an awaitable of it).
FanoutOp = Callable[[dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]

_SA_VIEWS = {(MM, "security-associations"), (QM, "security-associations")}
_SUMMED = {"statistics", "counters"}
_UNIONED = {"specific-filters"}


def merge_statistics(answers: Sequence[list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Rows ``{key: name, "value": number}`` of several workers summed by name, in the order
    the names first appear (floats, such as histogram sums, rounded to the microsecond)."""
    totals: dict[Any, Any] = {}
    for rows in answers:
        for row in rows:
            name, value = row.get(key), row.get("value")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                totals.setdefault(name, value)
                continue
            totals[name] = totals.get(name, 0) + value
    return [{key: name, "value": round(value, 6) if isinstance(value, float) else value}
            for name, value in totals.items()]


class FanoutServer:
    """The parent's control socket for a gateway of worker processes (see the design note).

    Args:
        supervisor: ``workers`` (each with ``index``, ``pid``, ``control``, ``state``) and
            ``status()`` (a JSON-able dict per worker).
        timeout: seconds a worker may stay silent (not connecting, not sending its answer)
            before it is named as not answering.
        extra_ops: more operations of this socket (``{"op": NAME}``), plain or async callables.
    """

    def __init__(self, supervisor: Any, *, timeout: float = 5.0,
                 extra_ops: Mapping[str, FanoutOp] | None = None) -> None:
        self.supervisor = supervisor
        self.timeout = timeout
        self.extra_ops: dict[str, FanoutOp] = dict(extra_ops or {})
        self.path: str | None = None
        self.requests = 0
        self._server: asyncio.AbstractServer | None = None
        self._pids: dict[Any, int] = {}  # worker index -> the last pid seen (named once it ended)
        # worker index -> (its pid, idle connections to its control socket)
        self._idle: dict[int, tuple[Any, list[_Connection]]] = {}

    # --- serving -----------------------------------------------------------------------

    async def start(self, path: str) -> None:
        """Listen on ``path`` (mode 0600); a stale socket file is replaced."""
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
        for _pid, idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

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
                for piece in await self.answer(line):
                    writer.write(piece)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            writer.close()
            return
        finally:
            writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            await writer.wait_closed()

    async def answer(self, line: bytes) -> list[bytes]:
        """The answer to one request line, as pieces of one line to write in order (never raises)."""
        self.requests += 1
        try:
            req = orjson.loads(line)
            if not isinstance(req, dict):
                raise ViewError("a request is a JSON object")
            return await self.handle(req)
        except (ValueError, ViewError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return [orjson.dumps({"ok": False, "error": str(exc), "workers": self.status()}) + b"\n"]

    async def handle(self, req: dict[str, Any]) -> list[bytes]:
        op = req.get("op", "view")
        if op == "ping":
            return self._one({"ok": True})
        if op == "views":
            return self._one(views_answer())
        if op == "terminate":
            return await self._terminate(req)
        if op == "view":
            return await self._view(req)
        extra = self.extra_ops.get(op) if isinstance(op, str) else None
        if extra is None:
            known = ["view", "views", "terminate", "ping", *self.extra_ops]
            raise ViewError(f"unknown op {op!r}; use {', '.join(known)}")
        result = extra(req)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        return self._one(dict(result))  # type: ignore[arg-type]

    def _one(self, answer: dict[str, Any], answered: set[int] | None = None) -> list[bytes]:
        answer["workers"] = self.status(answered)
        return [orjson.dumps(answer, default=str) + b"\n"]

    # --- the workers ---------------------------------------------------------------------

    def status(self, answered: set[int] | None = None) -> list[dict[str, Any]]:
        """The supervisor's status of each worker, with whether it answered (when known)."""
        status = getattr(self.supervisor, "status", None)
        if callable(status):
            rows = [dict(row) for row in status()]
        else:
            rows = [{"worker": w.index, "pid": w.pid, "state": w.state, "restarts": getattr(w, "restarts", 0),
                     "last_exit": getattr(w, "last_exit", "")} for w in self.supervisor.workers]
        for row in rows:
            if row.get("pid"):
                self._pids[row.get("worker")] = row["pid"]
            elif row.get("state") != "up" and not row.get("last_pid") and self._pids.get(row.get("worker")):
                row["last_pid"] = self._pids[row.get("worker")]  # the process that ended
            if answered is not None:
                row["answered"] = row.get("worker") in answered
        return rows

    async def gather(self, payload: dict[str, Any]) -> list[tuple[int, dict[str, Any] | None]]:
        """Every worker's answer to ``payload`` (asked concurrently): (worker index, the
        parsed answer, or None when the worker is not up or did not answer in time)."""
        out: list[tuple[int, dict[str, Any] | None]] = []
        for index, line in await self.gather_lines(payload):
            answer = None
            if line is not None:
                try:
                    parsed = orjson.loads(line)
                except ValueError:
                    parsed = None
                answer = parsed if isinstance(parsed, dict) else None
            out.append((index, answer))
        return out

    async def gather_lines(self, payload: dict[str, Any],
                           workers: Sequence[Any] | None = None) -> list[tuple[int, bytes | None]]:
        """Like ``gather`` but each answer is its line as received (no newline), unparsed."""
        return [(index, None if chunks is None else _line_of(chunks))
                for index, chunks in await self.gather_chunks(payload, workers)]

    async def gather_chunks(self, payload: dict[str, Any],
                            workers: Sequence[Any] | None = None) -> list[tuple[int, list[bytes] | None]]:
        """Every worker's answer line to ``payload`` as the pieces its socket gave (the last
        one ends with the newline): an answer of many megabytes is never copied whole."""
        line = orjson.dumps(payload) + b"\n"
        chosen = list(self.supervisor.workers if workers is None else workers)
        answers = await asyncio.gather(*(self._ask(worker, line) for worker in chosen))
        return [(int(worker.index), answer) for worker, answer in zip(chosen, answers)]

    async def _ask(self, worker: Any, line: bytes) -> list[bytes] | None:
        if getattr(worker, "state", "up") != "up" or not getattr(worker, "control", None):
            return None
        try:
            return await self._exchange(worker, line)
        except (OSError, EOFError, ValueError, asyncio.TimeoutError):
            return None

    async def _exchange(self, worker: Any, line: bytes) -> list[bytes] | None:
        """One request to one worker, on an idle connection when there is one (a fresh one
        if that one turns out closed: the worker restarted)."""
        pid, idle = self._idle.get(worker.index, (None, []))
        if pid != worker.pid:  # a new process: its predecessor's connections are dead
            for old in idle:
                old.close()
            idle = []
            self._idle[worker.index] = (worker.pid, idle)
        loop = asyncio.get_running_loop()
        while True:
            fresh = not idle
            if fresh:
                _transport, connection = await asyncio.wait_for(
                    loop.create_unix_connection(_Connection, worker.control), self.timeout)
            else:
                connection = idle.pop()
                if connection.closed:
                    continue
            try:
                chunks = await connection.ask(line, self.timeout)
            except BaseException:  # cancelled (timed out): the connection is in an unknown state
                connection.close()
                raise
            if chunks is None:  # closed before answering
                connection.close()
                if fresh:
                    return None
                continue
            if len(idle) < 4:
                idle.append(connection)
            else:
                connection.close()
            return chunks

    # --- the operations ----------------------------------------------------------------

    def _no_answer(self, answered: set[int]) -> list[bytes]:
        from ikecore.monitor.control_client import worker_notices

        status = self.status(answered)
        why = "; ".join(line.rpartition(";")[0] for line in worker_notices({"workers": status})) or "no worker is up"
        return [orjson.dumps({"ok": False, "error": f"no worker answered ({why})", "workers": status}) + b"\n"]

    async def _terminate(self, req: dict[str, Any]) -> list[bytes]:
        where = req.get("where")
        if where is not None and not isinstance(where, (str, list)):
            raise ViewError("where must be a list of COLUMN=VALUE strings")
        actions.conditions(where)  # checked once here: a bad column is one error, not one per worker
        deleted, answered = 0, set()
        for index, answer in await self.gather({"op": "terminate", "where": where}):
            if answer is None:
                continue
            if not answer.get("ok"):
                return self._one({"ok": False, "error": str(answer.get("error", "terminate failed"))})
            answered.add(index)
            deleted += int(answer.get("deleted", 0))
        if not answered:
            return self._no_answer(answered)
        return self._one({"ok": True, "deleted": deleted}, answered)

    async def _view(self, req: dict[str, Any]) -> list[bytes]:
        mode, view = check_view_request(req)
        chosen = parse_columns(mode, view, req.get("columns"), all_columns=bool(req.get("all_columns")))
        order = parse_sort(req.get("sort"), mode, view)
        where = req.get("where")
        conditions = parse_where(mode, view, where)
        limit = parse_limit(req.get("limit"))
        if view in _SUMMED:
            return await self._summed(mode, view, chosen, req.get("sort"), conditions, limit)
        if (mode, view) in _SA_VIEWS:
            return await self._associations(mode, view, chosen, order, where, limit)
        if view in _UNIONED:
            return await self._unioned(mode, view, chosen, req.get("sort"), where, limit)
        return await self._first(mode, view, chosen, req.get("sort"), where, limit)

    def _head(self, mode: str, view: str, columns: list[str], answered: set[int]) -> bytes:
        head = orjson.dumps({"ok": True, "time": time.time(), "mode": mode, "view": view, "columns": columns,
                             "workers": self.status(answered)})
        return head[:-1] + b',"rows":'

    def _rows_answer(self, mode: str, view: str, columns: list[str], rows: list[dict[str, Any]],
                     answered: set[int]) -> list[bytes]:
        return [self._head(mode, view, columns, answered), orjson.dumps(rows, default=str), b"}\n"]

    async def _decoded(self, payload: dict[str, Any]) -> tuple[list[tuple[int, list[dict[str, Any]]]], set[int]]:
        """Each answering worker's rows; raises ViewError with a worker's error answer."""
        out: list[tuple[int, list[dict[str, Any]]]] = []
        for index, answer in await self.gather(payload):
            if answer is None:
                continue
            if not answer.get("ok"):
                raise ViewError(str(answer.get("error", "request failed")))
            out.append((index, list(answer.get("rows") or [])))
        return out, {index for index, _rows in out}

    async def _summed(self, mode: str, view: str, chosen: list[str], sort: str | None,
                      conditions: list[sa_listing.Condition], limit: int | None) -> list[bytes]:
        answers, answered = await self._decoded({"op": "view", "mode": mode, "view": view, "all_columns": True})
        if not answered:
            return self._no_answer(answered)
        key = "statistic" if view == "statistics" else "counter"
        rows = select(filter_rows(merge_statistics([rows for _i, rows in answers], key), conditions), chosen, sort)
        return self._rows_answer(mode, view, chosen, rows if limit is None else rows[:limit], answered)

    async def _associations(self, mode: str, view: str, chosen: list[str], order: tuple[str, bool] | None,
                            where: Any, limit: int | None) -> list[bytes]:
        asked = list(chosen)
        if order is not None and order[0] not in asked:
            asked.append(order[0])  # to merge the workers' sorted rows by it
        payload: dict[str, Any] = {"op": "view", "mode": mode, "view": view, "columns": asked, "where": where}
        if order is None and limit is None:  # spliced, never decoded
            parts, answered = [], set()
            for index, chunks in await self.gather_chunks(payload):
                if chunks is None:
                    continue
                split = _rows_pieces(chunks)
                if split is None:
                    answer = orjson.loads(_line_of(chunks))
                    raise ViewError(str(answer.get("error", "request failed")) if isinstance(answer, dict)
                                    else "a worker sent no view answer")
                answered.add(index)
                if split[1]:
                    parts.append(split[1])
            if not answered:
                return self._no_answer(answered)
            pieces = [self._head(mode, view, chosen, answered), b"["]
            for at, rows in enumerate(parts):
                if at:
                    pieces.append(b",")
                pieces += rows
            pieces.append(b"]}\n")
            return pieces
        if order is not None:
            payload["sort"] = f"{order[0]}:{'desc' if order[1] else 'asc'}"
        if limit is not None:
            payload["limit"] = limit
        answers, answered = await self._decoded(payload)
        if not answered:
            return self._no_answer(answered)
        if order is None:
            merged = [row for _i, rows in answers for row in rows]
        else:
            column, descending = order
            sort_key = sa_listing.sort_key
            merged = list(heapq.merge(*(rows for _i, rows in answers), key=lambda row: sort_key(row.get(column)),
                                      reverse=descending))
        if limit is not None:
            merged = merged[:limit]
        if asked != chosen:
            merged = [{c: row.get(c) for c in chosen} for row in merged]
        return self._rows_answer(mode, view, chosen, merged, answered)

    async def _unioned(self, mode: str, view: str, chosen: list[str], sort: str | None, where: Any,
                       limit: int | None) -> list[bytes]:
        payload = {"op": "view", "mode": mode, "view": view, "all_columns": True, "where": where}
        answers, answered = await self._decoded(payload)
        if not answered:
            return self._no_answer(answered)
        seen: set[tuple[Any, ...]] = set()
        rows = []
        for _index, part in answers:
            for row in part:
                key = tuple(row.values())
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
        rows = select(rows, chosen, sort)
        return self._rows_answer(mode, view, chosen, rows if limit is None else rows[:limit], answered)

    async def _first(self, mode: str, view: str, chosen: list[str], sort: str | None, where: Any,
                     limit: int | None) -> list[bytes]:
        """A view of the configuration (the same in every worker): the first worker's answer."""
        payload = {"op": "view", "mode": mode, "view": view, "columns": chosen, "sort": sort, "where": where,
                   "limit": limit}
        lines = await self.gather_lines(payload)
        answered = {index for index, line in lines if line is not None}
        for _index, line in lines:
            if line is None:
                continue
            split = ControlClient.split_rows(line)
            if split is None:
                answer = orjson.loads(line)
                raise ViewError(str(answer.get("error", "request failed")) if isinstance(answer, dict)
                                else "a worker sent no view answer")
            return [self._head(mode, view, chosen, answered), split[1], b"}\n"]
        return self._no_answer(answered)


class _Connection(asyncio.Protocol):
    """A connection to one worker's control socket, one request at a time: the answer line
    is collected as the pieces the socket gives (no copy; the worker sends nothing else,
    and JSON text has no raw newline, so the piece that ends with one ends the answer)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._chunks: list[bytes] = []
        self._done: asyncio.Future[list[bytes] | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._done is None or self._done.done():
            self.close()  # nothing was asked: out of step
            return
        self._chunks.append(data)
        if data.endswith(b"\n"):
            self._done.set_result(self._chunks)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def ask(self, line: bytes, timeout: float) -> list[bytes] | None:
        """Send one request line; the answer's pieces, or None when the connection closed
        first. Raises TimeoutError when the worker sends nothing for ``timeout`` seconds (a
        long answer that keeps coming is waited for)."""
        if self.closed or self.transport is None:
            return None
        self._chunks = []
        done = self._done = asyncio.get_running_loop().create_future()
        self.transport.write(line)
        seen = 0
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(done), timeout)
            except asyncio.TimeoutError:
                if len(self._chunks) == seen:
                    raise
                seen = len(self._chunks)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _line_of(chunks: list[bytes]) -> bytes:
    """An answer's pieces as its line, without the newline (one copy)."""
    if len(chunks) == 1:
        return chunks[0][:-1]
    return b"".join([*chunks[:-1], chunks[-1][:-1]])


_ROWS = b',"rows":['
_END = b"]}\n"


def _rows_pieces(chunks: list[bytes]) -> tuple[dict[str, Any], list[bytes]] | None:
    """(the head, the rows' JSON text without brackets as pieces) of a worker's successful
    view answer given as pieces; None for any other answer. Only the head is decoded."""
    prefix = b""
    for at_chunk, chunk in enumerate(chunks):
        prefix += chunk
        at = prefix.find(_ROWS)
        if at >= 0:
            break
        if len(prefix) > MAX_HEAD:
            return None
    else:
        return None
    if not prefix.startswith(b'{"ok":true,'):
        return None
    try:
        head = orjson.loads(prefix[:at] + b"}")
    except ValueError:
        return None
    if not isinstance(head, dict) or head.get("ok") is not True or "rows" in head:
        return None
    pieces = [prefix[at + len(_ROWS):], *chunks[at_chunk + 1:]]
    tail = b""
    while len(tail) < len(_END) and pieces:
        need = len(_END) - len(tail)
        last = pieces.pop()
        if len(last) > need:
            pieces.append(last[:-need])
            last = last[-need:]
        tail = last + tail
    if tail != _END:
        return None
    return head, [piece for piece in pieces if piece]
