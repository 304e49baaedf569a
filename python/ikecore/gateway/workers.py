"""Worker processes: one gateway on every core, supervised by its parent.

Design note
-----------
``ikecore serve --workers N`` (N >= 2) runs a parent, the ``Supervisor``, and N worker
processes. The parent binds, per listen endpoint, N SO_REUSEPORT UDP sockets in order
and attaches the steering program (``ikecore.gateway.reuseport``): the kernel delivers
every datagram to socket ``worker_of(CKY-I, N)`` (``ikecore.steering``), so an ISAKMP SA
stays on one worker whatever its peer's address and port do. Worker k is started as

    python -m ikecore serve <the same flags> --worker k/N --worker-sockets FD,...
        --worker-control PATH

with its own socket of each group passed to it (``pass_fds``): it runs the ordinary
gateway on them with ``Engine(worker=(k, N))`` (its initiator cookies map to itself),
its share of the SA store, and a control socket at PATH inside a directory only the
owner may enter (0700), which the parent's fan-out asks.

The parent keeps every socket open for the gateway's life: the kernel numbers a
group's sockets in bind order and would move the last one into a closed socket's slot,
re-steering SAs; kept open, a dead worker's datagrams wait in its socket's queue and
the worker started again in its place reads them. A worker that dies is started again
after a bounded backoff (``restarts`` counts, ``last_exit`` says how it ended); one that
ends before it ever came up (a configuration error only a worker notices, such as an
unreadable store) stops the gateway instead: it would fail again. SIGINT and SIGTERM
are forwarded to the workers; after ``grace`` seconds the rest are killed. Workers run
in their own process group (a terminal's ^C reaches only the parent, which forwards
it) and are sent SIGTERM by the kernel if the parent dies (``PR_SET_PDEATHSIG``); the
last one out then removes the directory the parent could not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ikecore.errors import ConfigError
from ikecore.events import Address
from ikecore.gateway.reuseport import bind_group

__all__ = ["Supervisor", "Worker", "worker_count", "parse_worker", "follow_parent", "orphaned", "describe_exit",
           "PARENT_ENVIRONMENT"]

#: The environment variable that tells a worker its parent's PID (``follow_parent``).
PARENT_ENVIRONMENT = "IKECORE_SUPERVISOR_PID"
#: A worker that lived this long before dying is restarted after the shortest delay again.
STEADY_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def worker_count(text: str | int) -> int:
    """``--workers N|auto``: ``auto`` is the number of cores this process may run on."""
    if str(text).strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        count = int(text)
    except ValueError:
        raise ConfigError("--workers", f"{text!r} is not a number; give N (1 to 256) or auto") from None
    if not 1 <= count <= 256:
        raise ConfigError("--workers", "must be between 1 and 256, or auto")
    return count


def parse_worker(text: str) -> tuple[int, int]:
    """The hidden ``--worker k/N`` flag as (k, N)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError("--worker", f"{text!r} is not k/N") from None
    if not 0 <= index < count:
        raise ConfigError("--worker", f"{text!r}: k must be in 0..N-1")
    return index, count


def follow_parent() -> None:
    """In a worker: receive SIGTERM when the parent dies, and stop now if it already has."""
    parent = os.environ.get(PARENT_ENVIRONMENT, "")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent.isdigit() and os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


def orphaned(control: str) -> None:
    """In a worker that stops: when its parent is gone (killed, so it could not clean up),
    remove the parent's directory of control sockets once the last worker has left it."""
    parent = os.environ.get(PARENT_ENVIRONMENT, "")
    if parent.isdigit() and os.getppid() != int(parent):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(control))  # only when empty: the other workers' sockets are gone


def describe_exit(returncode: int) -> str:
    """``Popen.returncode`` in words: 'exited with status 1', 'killed by SIGKILL'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


@dataclass
class Worker:
    """One worker process as the parent sees it."""

    index: int
    control: str                  # its control socket (inside the parent's private directory)
    pid: int | None = None
    state: str = "starting"       # "starting" | "up" | "down"
    restarts: int = 0
    last_exit: str = ""
    last_pid: int | None = None   # the process that ended last (named while it is down)
    sockets: list[socket.socket] = field(default_factory=list, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    quick_deaths: int = 0         # deaths in a row soon after a start (the backoff's exponent)
    ever_up: bool = False
    pidfd: int = -1               # readable when the process has exited
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def status(self) -> dict[str, Any]:
        return {"worker": self.index, "pid": self.pid, "state": self.state, "restarts": self.restarts,
                "last_exit": self.last_exit, "last_pid": self.last_pid}


class Supervisor:
    """The parent of a gateway's worker processes (see the module design note).

    Args:
        count: the number of workers (2 or more).
        listen: the listen endpoints; each gets a socket group of ``count`` sockets.
        flags: the ``ikecore serve`` flags every worker gets before its hidden ones.
        environment: added to the parent's environment for the workers.
        grace: seconds a stopping worker has before it is killed.
        backoff: (first, longest) delay before a dead worker is started again; the
            delay doubles with each death soon after a start.
        directory: where the private directory of control sockets goes (default: the
            system's temporary directory).
    """

    def __init__(self, count: int, listen: Sequence[Address], flags: Sequence[str], *,
                 environment: dict[str, str] | None = None, grace: float = 30.0,
                 backoff: tuple[float, float] = (0.25, 5.0), directory: str | None = None) -> None:
        if count < 2:
            raise ValueError("a supervisor needs 2 or more workers")
        self.count = count
        self.listen = list(listen)
        self.flags = list(flags)
        self.environment = dict(environment or {})
        self.grace = grace
        self.backoff = backoff
        self.directory = tempfile.mkdtemp(prefix="ikecore-workers-", dir=directory)  # mode 0700
        os.chmod(self.directory, 0o700)
        self.workers = [Worker(k, os.path.join(self.directory, f"worker{k}.sock")) for k in range(count)]
        self.addresses: list[Address] = []
        #: why the gateway must stop (a worker that cannot start), or None
        self.failure: str | None = None
        self._groups: list[list[socket.socket]] = []
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    # --- sockets ---------------------------------------------------------------------------

    def bind(self) -> list[Address]:
        """Bind every listen endpoint's socket group (raises OSError); returns the bound
        addresses (port 0 resolved)."""
        try:
            for local in self.listen:
                group = bind_group(local, self.count)
                self._groups.append(group)
                name = group[0].getsockname()
                self.addresses.append((str(name[0]), int(name[1])))
        except OSError:
            self._close_sockets()
            raise
        for worker in self.workers:
            worker.sockets = [group[worker.index] for group in self._groups]
        return list(self.addresses)

    # --- processes -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker (after ``bind``)."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        for worker in self.workers:
            self._spawn(worker)

    def command(self, worker: Worker) -> list[str]:
        """The command line of ``worker``."""
        fds = ",".join(str(sock.fileno()) for sock in worker.sockets)
        return [sys.executable, "-m", "ikecore", "serve", *self.flags, "--worker", f"{worker.index}/{self.count}",
                "--worker-sockets", fds, "--worker-control", worker.control]

    def status(self) -> list[dict[str, Any]]:
        """Every worker as JSON-able dicts: worker, pid, state, restarts, last_exit."""
        return [worker.status() for worker in self.workers]

    async def ready(self, timeout: float) -> str | None:
        """Wait (at most ``timeout`` seconds) until every worker is up; returns ``failure``."""
        assert self._changed is not None, "start() first"
        deadline = time.monotonic() + timeout
        while self.failure is None and any(w.state != "up" for w in self.workers):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return self.failure

    async def wait(self) -> str | None:
        """Wait until the supervisor must stop on its own (returns ``failure``); runs for
        ever otherwise: cancel it, or race it against a stop signal."""
        assert self._changed is not None, "start() first"
        while self.failure is None:
            self._changed.clear()
            await self._changed.wait()
        return self.failure

    async def stop(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to every worker, wait ``grace`` seconds, kill the rest."""
        self._stopping = True
        for worker in self.workers:
            self._cancel_timer(worker)
        alive = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        for worker in alive:
            with contextlib.suppress(ProcessLookupError, AttributeError):
                worker.process.send_signal(signum)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(w.process is not None and w.process.poll() is None
                                                  for w in alive):
            await asyncio.sleep(0.05)
        for worker in alive:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
            self._ended(worker)

    def close(self) -> None:
        """Release the sockets and remove the control directory (after ``stop``)."""
        self._stopping = True
        for worker in self.workers:
            self._cancel_timer(worker)
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
            self._ended(worker)
        self._close_sockets()
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- internals -------------------------------------------------------------------------

    def _close_sockets(self) -> None:
        for group in self._groups:
            for sock in group:
                sock.close()
        self._groups.clear()

    def _spawn(self, worker: Worker) -> None:
        assert self._loop is not None
        worker.timer = None
        if self._stopping:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.control)  # its appearance says the new worker is up
        environment = {**os.environ, **self.environment, PARENT_ENVIRONMENT: str(os.getpid())}
        try:
            process = subprocess.Popen(self.command(worker), pass_fds=[s.fileno() for s in worker.sockets],
                                       stdin=subprocess.DEVNULL, env=environment, process_group=0)
        except OSError as exc:
            worker.state, worker.pid, worker.last_exit = "down", None, f"cannot start: {exc.strerror or exc}"
            self._restart_later(worker)
            return
        worker.process, worker.pid, worker.state = process, process.pid, "starting"
        worker.started_at = time.monotonic()
        try:
            worker.pidfd = os.pidfd_open(process.pid)
        except (OSError, AttributeError):  # no pidfd (Linux before 5.3): _poll notices the exit
            worker.pidfd = -1
        else:
            self._loop.add_reader(worker.pidfd, self._on_exit, worker)
        self._poll(worker)

    def _poll(self, worker: Worker) -> None:
        """A starting worker is up when its control socket appears; without a pidfd this
        also notices its exit."""
        assert self._loop is not None
        worker.timer = None
        if worker.process is None or self._stopping:
            return
        if worker.pidfd < 0 and worker.process.poll() is not None:
            self._on_exit(worker)
            return
        if worker.state == "starting" and os.path.exists(worker.control):
            worker.state = "up"
            worker.ever_up = True
            self._notify()
        if worker.state == "starting" or worker.pidfd < 0:
            worker.timer = self._loop.call_later(0.05 if worker.state == "starting" else 0.5, self._poll, worker)

    def _on_exit(self, worker: Worker) -> None:
        self._cancel_timer(worker)
        self._ended(worker)
        if self._stopping:
            return
        if not worker.ever_up:  # it never started: it would fail again (its message says why)
            self.failure = f"worker {worker.index} {worker.last_exit} before it came up"
            self._notify()
            return
        self._restart_later(worker)

    def _ended(self, worker: Worker) -> None:
        """Reap the worker's process (it has exited or been killed) and say how it ended."""
        if worker.pidfd >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = -1
        process = worker.process
        if process is None:
            return
        code: int | None = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = process.wait(5)
        worker.process = None
        worker.last_pid, worker.pid = worker.pid, None
        worker.state = "down"
        worker.last_exit = describe_exit(code) if code is not None else "lost"
        if time.monotonic() - worker.started_at >= STEADY_SECONDS:
            worker.quick_deaths = 0
        self._notify()

    def _restart_later(self, worker: Worker) -> None:
        assert self._loop is not None
        first, longest = self.backoff
        delay = min(longest, first * (2 ** min(worker.quick_deaths, 16)))
        worker.quick_deaths += 1

        def again() -> None:
            worker.timer = None
            if not self._stopping:
                worker.restarts += 1
                self._spawn(worker)

        worker.timer = self._loop.call_later(delay, again)

    @staticmethod
    def _cancel_timer(worker: Worker) -> None:
        if worker.timer is not None:
            worker.timer.cancel()
            worker.timer = None

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
