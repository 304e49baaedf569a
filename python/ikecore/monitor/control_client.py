"""The client side of the gateway's control socket: ``ControlClient``, ``request`` and
``worker_notices`` (protocol: ``ikecore.monitor.control``).

Kept apart from the server so that ``ikecore monitor`` imports only sockets and JSON.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
from typing import Any

__all__ = ["ControlClient", "ControlError", "request", "default_control_path", "default_control_directory",
           "check_control_path", "worker_notices"]


def _loads(data: bytes) -> Any:
    """JSON of an answer: the standard library's for short ones, orjson for long ones
    (imported then only: a one-shot ``ikecore monitor --where ...`` starts faster)."""
    if len(data) < 1 << 16:
        return json.loads(data)
    import orjson

    return orjson.loads(data)


class ControlError(Exception):
    """The control socket cannot be reached or answered with an error."""


def default_control_directory() -> str:
    """The directory of the default control socket, which only its owner may write:
    ``$XDG_RUNTIME_DIR/ikecore``, else ``/run/ikecore`` for root, else ``/tmp/ikecore-UID``."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "ikecore")
    uid = os.geteuid()
    return "/run/ikecore" if uid == 0 else f"/tmp/ikecore-{uid}"


def default_control_path() -> str:
    """``$IKECORE_CONTROL``, else ``control.sock`` in ``default_control_directory()``."""
    if os.environ.get("IKECORE_CONTROL"):
        return os.environ["IKECORE_CONTROL"]
    return os.path.join(default_control_directory(), "control.sock")


def check_control_path(path: str, *, create: bool = False) -> None:
    """Refuse a control socket path another user controls (ControlError, one line), so
    that nobody else can stand in for the gateway and feed ``ikecore monitor`` figures.

    The socket, when there, and its directory must belong to us (or root). The default
    directory (``default_control_directory()``) must moreover be a directory, not a
    symbolic link, that belongs to us and that group and others cannot write; with
    ``create`` (the gateway) it is made 0700 when missing.
    """
    uid = os.geteuid()
    directory = os.path.dirname(os.path.abspath(path))
    if directory == os.path.abspath(default_control_directory()):
        if create:
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                pass
            except OSError as exc:
                raise ControlError(f"cannot create {directory}: {exc.strerror}") from None
            else:
                os.chmod(directory, 0o700)  # whatever the umask
        try:
            status = os.lstat(directory)
        except FileNotFoundError:
            return  # no gateway has made it: connecting says so
        if not stat.S_ISDIR(status.st_mode):
            raise ControlError(f"{directory} is not a directory (a symbolic link?); remove it")
        if status.st_uid != uid:
            raise ControlError(f"{directory} belongs to uid {status.st_uid}, not to you (uid {uid}); "
                               f"remove it, or give --control PATH")
        if status.st_mode & 0o022:
            raise ControlError(f"{directory} is writable by other users (mode {status.st_mode & 0o777:04o}); "
                               f"chmod 700 {directory}")
    else:
        try:
            owner = os.stat(directory).st_uid
        except FileNotFoundError:
            return
        if owner not in (uid, 0):
            raise ControlError(f"{directory} belongs to uid {owner}, another user; put the control socket "
                               "in a directory of your own")
    for look in (os.lstat, os.stat):
        try:
            owner = look(path).st_uid
        except FileNotFoundError:
            return
        if owner not in (uid, 0):
            raise ControlError(f"{path} belongs to uid {owner}, another user, who may serve false figures; "
                               "remove it, or give another --control PATH")


def _check_peer(sock: socket.socket, path: str) -> None:
    """The process serving ``path`` must run as us (or root): SO_PEERCRED, checked after
    connecting, so that no race with ``check_control_path`` lets another user answer."""
    _pid, peer_uid, _gid = struct.unpack("iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               struct.calcsize("iII")))
    if peer_uid not in (os.geteuid(), 0):
        raise ControlError(f"{path} is served by uid {peer_uid}, another user, who may serve false figures; "
                           "refusing to ask it")


class ControlClient:
    """A connection to a gateway's control socket, kept open for many requests (``--watch``,
    pollers); ``close()`` or ``with`` ends it.

    Raises ControlError when nothing listens at ``path`` or the gateway answers an error.
    """

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buffer = b""
        try:
            check_control_path(path)
            self._sock.connect(path)
            _check_peer(self._sock, path)
        except ControlError:
            self._sock.close()
            raise
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise ControlError(f"no gateway listens on {path} ({exc.strerror}); start one with "
                               f"'ikecore serve --control {path}'") from None
        except OSError as exc:
            self._sock.close()
            raise ControlError(f"control socket {path}: {exc}") from None

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its answer."""
        return self.parse(self.request_line(payload))

    def request_line(self, payload: dict[str, Any]) -> bytes:
        """Send one request and return its answer line as received (no newline), unparsed."""
        try:
            self._sock.sendall(json.dumps(payload, separators=(",", ":")).encode() + b"\n")
            chunks = [self._buffer]
            end = self._buffer.find(b"\n")
            while end < 0:  # each piece is searched once; the line is copied once, when joined
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    raise ControlError(f"control socket {self.path} closed the connection")
                chunks.append(chunk)
                end = chunk.find(b"\n")
        except OSError as exc:
            raise ControlError(f"control socket {self.path}: {exc}") from None
        last = chunks.pop()
        self._buffer = last[end + 1:]
        chunks.append(last[:end])
        return b"".join(chunks)

    def parse(self, line: bytes) -> dict[str, Any]:
        """The answer object of a line; raises ControlError for an error answer."""
        try:
            response = _loads(line)
        except ValueError:
            raise ControlError(f"control socket {self.path} sent no JSON answer") from None
        if not isinstance(response, dict) or not response.get("ok"):
            raise ControlError(str(response.get("error", "request failed") if isinstance(response, dict)
                                   else "request failed"))
        return response

    @staticmethod
    def rows_json(line: bytes) -> bytes | None:
        """The ``rows`` array of a successful view answer as its JSON text, cut out of the
        line without decoding it, or None when the line is not such an answer (see
        ``split_rows``)."""
        split = ControlClient.split_rows(line)
        return None if split is None else split[1]

    @staticmethod
    def split_rows(line: bytes) -> tuple[dict[str, Any], bytes] | None:
        """(the answer without its rows, the ``rows`` array as JSON text) of a successful
        view answer, the rows cut out of the line without decoding them; None when the line
        is not such an answer. The gateway writes ``rows`` last (``ikecore.monitor.control``);
        the head before it must be a JSON object with ``"ok": true`` and the columns, and
        nothing may follow the array."""
        span = ControlClient.rows_span(line)
        return None if span is None else (span[0], line[span[1]:span[2]])

    @staticmethod
    def rows_span(line: bytes) -> tuple[dict[str, Any], int, int] | None:
        """Like ``split_rows`` but gives where the ``rows`` array starts and ends in the line
        (``line[start:end]``) instead of a copy of it."""
        at = line.find(b',"rows":[')
        if at < 0 or not line.startswith(b'{"ok":true,') or not line.endswith(b"]}"):
            return None
        try:
            head = _loads(line[:at] + b"}")
        except ValueError:
            return None
        if not isinstance(head, dict) or head.get("ok") is not True or not isinstance(head.get("columns"), list) \
                or "rows" in head:
            return None
        return head, at + 8, len(line) - 1

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(path: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the control socket at ``path`` on a new connection; returns the
    response object. Raises ControlError when nothing listens there or the gateway answers
    an error."""
    with ControlClient(path, timeout) as client:
        return client.request(payload)


def worker_notices(answer: dict[str, Any]) -> list[str]:
    """One line for each worker process of a gateway that did not answer a request, from
    the answer's ``workers`` (``ikecore.monitor.fanout``; none from a gateway of one
    process), e.g. ``worker 1 (pid 4242) is down: killed by SIGKILL; showing the other workers``."""
    workers = answer.get("workers")
    if not isinstance(workers, list):
        return []
    lines = []
    for worker in workers:
        if not isinstance(worker, dict) or worker.get("answered", True):
            continue
        known = worker.get("pid") or worker.get("last_pid")
        pid = f" (pid {known})" if known else ""
        state = worker.get("state") or "down"
        if state == "up":
            why = "did not answer"
        elif worker.get("last_exit"):
            why = f"is {state}: {worker['last_exit']}"
        else:
            why = f"is {state}"
        lines.append(f"worker {worker.get('worker')}{pid} {why}; showing the other workers")
    return lines
