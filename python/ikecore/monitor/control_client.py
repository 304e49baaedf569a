"""The client side of the gateway's control socket: ``ControlClient`` and
``request`` (protocol: ``ikecore.monitor.control``).

Kept apart from the server so that ``ikecore monitor`` imports only sockets and JSON.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import orjson

__all__ = ["ControlClient", "ControlError", "request", "default_control_path"]


class ControlError(Exception):
    """The control socket cannot be reached or answered with an error."""


def default_control_path() -> str:
    """``$IKECORE_CONTROL``, else ``$XDG_RUNTIME_DIR/ikecore.sock``, else ``/tmp/ikecore-UID.sock``."""
    if os.environ.get("IKECORE_CONTROL"):
        return os.environ["IKECORE_CONTROL"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "ikecore.sock")
    return f"/tmp/ikecore-{os.getuid()}.sock"


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
            self._sock.connect(path)
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
            self._sock.sendall(orjson.dumps(payload) + b"\n")
            chunks = [self._buffer]
            while not chunks[-1].endswith(b"\n"):
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    raise ControlError(f"control socket {self.path} closed the connection")
                chunks.append(chunk)
        except OSError as exc:
            raise ControlError(f"control socket {self.path}: {exc}") from None
        line, _, self._buffer = b"".join(chunks).partition(b"\n")
        return line

    def parse(self, line: bytes) -> dict[str, Any]:
        """The answer object of a line; raises ControlError for an error answer."""
        try:
            response = orjson.loads(line)
        except ValueError:
            raise ControlError(f"control socket {self.path} sent no JSON answer") from None
        if not isinstance(response, dict) or not response.get("ok"):
            raise ControlError(str(response.get("error", "request failed") if isinstance(response, dict)
                                   else "request failed"))
        return response

    @staticmethod
    def rows_json(line: bytes) -> bytes | None:
        """The ``rows`` array of a successful view answer as its JSON text, cut out of the
        line without decoding it, or None when the line is not such an answer. The
        gateway writes ``rows`` last (``ikecore.monitor.control``); the head before it must be a
        JSON object with ``"ok": true`` and the columns, and nothing may follow the array."""
        at = line.find(b',"rows":[')
        if at < 0 or not line.startswith(b'{"ok":true,') or not line.endswith(b"]}"):
            return None
        try:
            head = orjson.loads(line[:at] + b"}")
        except ValueError:
            return None
        if not isinstance(head, dict) or head.get("ok") is not True or not isinstance(head.get("columns"), list) \
                or "rows" in head:
            return None
        return line[at + 8:-1]

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
