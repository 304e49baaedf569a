"""Logging of the ``ikecore`` command: one line per record on standard error.

Design note
-----------
Every status and event line of ``serve``, ``connect``, ``loadtest`` and ``demo`` (and of
the library under them) goes through ``logging``, under the ``ikecore`` logger tree
(``ikecore.gateway``, ``ikecore.serve``, ``ikecore.monitor``, ...). ``configure(level,
fmt)`` puts one handler on ``ikecore`` that writes to standard error, one write per line
(the processes of one gateway share the stream, so a line is never interleaved).

A record may carry structured fields: ``extra={"event": NAME, "fields": {...}}``
(``log_event`` builds it; an engine event's fields are ``ikecore.events.event_fields``).
Two formats:

* ``text``: ``2026-12-07T21:30:00.123Z INFO ikecore.gateway event=phase1_established
  remote=192.0.2.2:500 initiator_cookie=0123...``; a record with a message shows the
  message instead of its fields (``... INFO ikecore.serve listening on 127.0.0.1:500``).
  Values with spaces, quotes or ``=`` are quoted as JSON strings; lists are joined by
  commas; None is left out.
* ``json``: one object per line: ``time``, ``level``, ``logger``, then ``worker`` (in a
  worker process), ``event`` and its fields, and ``message`` for records with one.

Times are ISO 8601 UTC with milliseconds. A worker process tags each record with its
index (``worker=k``; ``configure(..., worker=k)``). Secrets never reach a record: field
names that hold keys (``SECRET_FIELDS``) are dropped by the formatters whatever the caller
passed. Errors while writing (a closed pipe) are swallowed: logging never ends a process.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

__all__ = ["FORMATS", "LEVELS", "SECRET_FIELDS", "JsonFormatter", "TextFormatter", "configure", "log_event",
           "tag_worker"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
#: Field names never written, whoever logs them (keys, pre-shared keys, key material).
SECRET_FIELDS = frozenset({"psk", "key", "keys", "secret", "password", "skeyid", "skeyid_d", "skeyid_a",
                           "skeyid_e", "keymat", "encryption_key", "integrity_key", "shared_secret", "token"})
_HANDLER_MARK = "_ikecore_handler"


def log_event(logger: logging.Logger, level: int, event: str, message: str = "", **fields: Any) -> None:
    """Log one structured record: ``event`` (a snake-case name) and its fields, with an
    optional human ``message`` (shown instead of the fields by the text format)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", message, extra={"event": event, "fields": fields})


def tag_worker(worker: int | None) -> None:
    """Tag every record made from now on in this process with ``worker`` (None: untag)."""
    base = getattr(logging, "_ikecore_base_factory", None) or logging.getLogRecordFactory()
    setattr(logging, "_ikecore_base_factory", base)
    if worker is None:
        logging.setLogRecordFactory(base)
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        record.worker = worker
        return record

    logging.setLogRecordFactory(factory)


_last_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _iso(created: float) -> str:
    global _last_second
    seconds = int(created)
    last = _last_second  # one tuple, replaced whole: safe from any thread
    if last[0] != seconds:  # a busy gateway logs many lines a second: format each second once
        last = _last_second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{last[1]}.{int((created - seconds) * 1000):03d}Z"


def _record_fields(record: logging.LogRecord) -> tuple[str | None, dict[str, Any]]:
    event = getattr(record, "event", None)
    raw = getattr(record, "fields", None)
    fields = {str(k): v for k, v in raw.items() if str(k).lower() not in SECRET_FIELDS} \
        if isinstance(raw, dict) else {}
    return (str(event) if event is not None else None), fields


def _message(record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info and record.levelno >= logging.ERROR:
        # one line: the exception's type and text, never a traceback
        exc = record.exc_info[1]
        if exc is not None:
            message = f"{message}: {type(exc).__name__}: {exc}" if message else f"{type(exc).__name__}: {exc}"
    return message


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = _record_fields(record)
        out: dict[str, Any] = {"time": _iso(record.created), "level": record.levelname, "logger": record.name}
        worker = getattr(record, "worker", None)
        if worker is not None:
            out["worker"] = worker
        if event is not None:
            out["event"] = event
        for key, value in fields.items():
            if key not in out:
                out[key] = value
        message = _message(record)
        if message or event is None:
            out["message"] = message
        return json.dumps(out, default=str, separators=(",", ":"))


_NEEDS_QUOTES = re.compile("[ \t\n\r\"='\\\\]")


def _text_value(value: Any) -> str:
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str:
        return json.dumps(value) if not value or _NEEDS_QUOTES.search(value) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return ",".join(_text_value(v) for v in value)
        return json.dumps(value, default=str, separators=(",", ":"))
    if isinstance(value, dict):
        return json.dumps(value, default=str, separators=(",", ":"))
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER [worker=k] message`` or ``... event=NAME key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = _record_fields(record)
        parts = [_iso(record.created), record.levelname, record.name]
        worker = getattr(record, "worker", None)
        if worker is not None:
            parts.append(f"worker={worker}")
        message = _message(record)
        if message:
            parts.append(message.replace("\n", " "))
        else:
            if event is not None:
                parts.append(f"event={event}")
            parts += [f"{key}={_text_value(value)}" for key, value in fields.items() if value is not None]
        return " ".join(parts)


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """A stream handler that writes each line in one call and never raises."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            stream = self.stream
            stream.write(line)
            stream.flush()
        except RecursionError:
            raise
        except Exception:  # a closed pipe, a full disk: logging never ends the process
            pass


def configure(level: str = "info", fmt: str = "text", *, worker: int | None = None,
              stream: TextIO | None = None) -> logging.Handler:
    """Send the ``ikecore`` loggers' records at ``level`` or above to standard error (or
    ``stream``) in format ``fmt``; called again, it replaces its own handler. ``worker``
    tags every record of this process (``worker=k``)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    logging.raiseExceptions = False
    # what no ikecore format shows is not gathered per record (the logging docs' optimization
    # advice): the caller's frame, thread, process and multiprocessing names
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger("ikecore")
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = _LineHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    tag_worker(worker)
    return handler
