"""Throw-away network namespaces joined by a veth pair, and the tools run inside them.

Both veth ends are created directly inside the namespaces, so the host's own
network namespace gets no interface, address or route: nothing sent in there can
leave the machine. Each namespace also gets an "inner" address on its loopback
(for Quick Mode traffic selectors of a site-to-site tunnel: a tunnel endpoint needs
a local address inside the local selector).

Two layouts:

``veth_pair(prefix, net)``
    ``net.0.1/24`` and ``net.0.2/24`` outside, ``net.1.1`` and ``net.2.1`` inside;
    a namespace that still holds processes at exit is left in place (an error).
``recipe_pair()``
    the tunnel recipe of the README: namespaces ``ikc-a-<pid>-<n>`` and
    ``ikc-b-<pid>-<n>``, outer 192.0.2.1/24 (a) and 192.0.2.2/24 (b), inner
    10.1.0.1/32 (a) and 10.2.0.1/32 (b) on ``lo``, MTU 1500. At exit whatever still
    runs inside the two namespaces (they are this fixture's own) is stopped by PID,
    SIGTERM then SIGKILL, and the namespaces are removed, also when the test failed.

    with recipe_pair() as pair, capture(pair.ns_a, pair.if_a, tmp / "veth.pcapng"):
        ...
        assert ping(pair.ns_a, pair.inner_a, pair.inner_b) == 5

The tools: :func:`spawn` (a process in a namespace, its own process group),
:func:`stop` (by PID), :func:`capture` (tshark on one interface, every frame),
:func:`frames` (tshark fields of a capture), :func:`ping` (replies received) and
:func:`iperf3` (one bounded TCP transfer, its throughput).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NetnsPair", "available", "veth_pair", "recipe_pair", "exists", "spawn", "stop",
           "capture", "frames", "ping", "iperf3", "tool_missing"]

_SEQ = itertools.count()


def available() -> str | None:
    """None when namespaces can be created here; otherwise the reason."""
    if shutil.which("ip") is None:
        return "iproute2 not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def tool_missing(*tools: str) -> str | None:
    """None when every program is on PATH; otherwise which is missing and its Debian package."""
    packages = {"ping": "iputils-ping", "iperf3": "iperf3", "tshark": "tshark", "ip": "iproute2"}
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package {packages.get(tool, tool)})"
    return None


@dataclass(frozen=True)
class NetnsPair:
    """Names and addresses of a namespace pair (``a`` and ``b``)."""

    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    addr_a: str
    addr_b: str
    inner_a: str
    inner_b: str
    subnet_a: str
    subnet_b: str


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False,
                         timeout=30, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


def exists(name: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=False, timeout=30, stdin=subprocess.DEVNULL)
    return name in (line.split()[0] for line in out.stdout.splitlines() if line.strip())


def _pids(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                         check=False, timeout=30, stdin=subprocess.DEVNULL)
    return out.stdout.split()


def _stop_inside(names: Sequence[str], grace: float = 5.0) -> None:
    """SIGTERM, then after ``grace`` seconds SIGKILL, every process of these namespaces."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for ns in names for p in _pids(ns) if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_pids(ns) for ns in names):
            time.sleep(0.1)


@contextlib.contextmanager
def _build(pair: NetnsPair, *, mtu: int, stop_leftovers: bool) -> Iterator[NetnsPair]:
    for ns in (pair.ns_a, pair.ns_b):
        if exists(ns):
            raise RuntimeError(f"network namespace {ns} already exists")
    created: list[str] = []
    try:
        for ns in (pair.ns_a, pair.ns_b):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("link", "add", pair.if_a, "netns", pair.ns_a, "mtu", str(mtu), "type", "veth",
            "peer", "name", pair.if_b, "netns", pair.ns_b, "mtu", str(mtu))
        _ip("-n", pair.ns_a, "addr", "add", f"{pair.addr_a}/24", "dev", pair.if_a)
        _ip("-n", pair.ns_b, "addr", "add", f"{pair.addr_b}/24", "dev", pair.if_b)
        _ip("-n", pair.ns_a, "addr", "add", f"{pair.inner_a}/32", "dev", "lo")
        _ip("-n", pair.ns_b, "addr", "add", f"{pair.inner_b}/32", "dev", "lo")
        for ns, iface in ((pair.ns_a, pair.if_a), (pair.ns_b, pair.if_b)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", iface, "up")
        yield pair
    finally:
        if stop_leftovers:
            _stop_inside(created)
        busy = []
        for ns in created:
            if _pids(ns):
                busy.append(ns)
            else:
                _ip("netns", "del", ns)
        if busy:
            raise RuntimeError(f"processes still run in {busy}; namespaces left in place")


@contextlib.contextmanager
def veth_pair(prefix: str | None = None, net: str = "10.199") -> Iterator[NetnsPair]:
    """Create namespaces ``<prefix>a``/``<prefix>b`` joined by a veth; delete them on exit.

    ``a``: ``net.0.1/24`` on ``<prefix>a0``, inner ``net.1.1`` (subnet ``net.1.0/24``);
    ``b``: ``net.0.2/24`` on ``<prefix>b0``, inner ``net.2.1`` (``net.2.0/24``).
    Refuses existing names (never deletes namespaces it did not create). On exit a
    namespace that still holds processes is left alone and an error is raised: stop
    the peers first.
    """
    prefix = prefix or f"ikec{os.getpid() % 100000}"
    if not 1 <= len(prefix) <= 12 or not prefix.isalnum():
        raise ValueError("prefix: 1 to 12 letters or digits")
    parts = net.split(".")
    if len(parts) != 2 or not all(p.isdigit() and int(p) < 256 for p in parts):
        raise ValueError("net: two octets, e.g. '10.199'")
    pair = NetnsPair(ns_a=f"{prefix}a", ns_b=f"{prefix}b", if_a=f"{prefix}a0",
                     if_b=f"{prefix}b0", addr_a=f"{net}.0.1", addr_b=f"{net}.0.2",
                     inner_a=f"{net}.1.1", inner_b=f"{net}.2.1",
                     subnet_a=f"{net}.1.0/24", subnet_b=f"{net}.2.0/24")
    with _build(pair, mtu=1500, stop_leftovers=False) as built:
        yield built


@contextlib.contextmanager
def recipe_pair(*, mtu: int = 1500) -> Iterator[NetnsPair]:
    """The README's tunnel recipe: see the module docstring. Unique names per call."""
    tag = f"{os.getpid()}-{next(_SEQ)}"
    short = tag.replace("-", "n")  # interface names: at most 15 characters
    pair = NetnsPair(ns_a=f"ikc-a-{tag}", ns_b=f"ikc-b-{tag}", if_a=f"ika{short}"[:15],
                     if_b=f"ikb{short}"[:15], addr_a="192.0.2.1", addr_b="192.0.2.2",
                     inner_a="10.1.0.1", inner_b="10.2.0.1",
                     subnet_a="10.1.0.0/24", subnet_b="10.2.0.0/24")
    with _build(pair, mtu=mtu, stop_leftovers=True) as built:
        yield built


# --- processes ---------------------------------------------------------------------------


def spawn(ns: str, argv: Sequence[str], *, log: str | os.PathLike[str] | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside ``ns`` in its own process group; stdout+stderr go to ``log``."""
    out: Any = subprocess.DEVNULL
    handle = None
    if log is not None:
        handle = open(log, "ab")
        out = handle
    try:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    finally:
        if handle is not None:
            handle.close()


def stop(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> int | None:
    """SIGTERM the process by its PID, SIGKILL after ``grace`` seconds; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


# --- capture -------------------------------------------------------------------------------


@contextlib.contextmanager
def capture(ns: str, interface: str, path: str | os.PathLike[str], *,
            timeout: float = 15.0, settle: float = 0.3) -> Iterator[Path]:
    """tshark on ``interface`` inside ``ns``, every frame, into the pcapng file ``path``:
    complete after the ``with`` block (``tshark.capture``)."""
    from interop import tshark

    with tshark.capture(interface, path=path, netns=ns, timeout=timeout, settle=settle,
                        every_frame=True) as out_path:
        yield out_path


def frames(pcap: str | os.PathLike[str], fields: Sequence[str], *, options: Iterable[str] = (),
           display_filter: str | None = None, timeout: float = 60.0) -> list[dict[str, list[str]]]:
    """One dict per frame: each of ``fields`` -> its values in that frame (outer first).

    ``options``: extra tshark arguments such as ``-o esp.enable_encryption_decode:TRUE``.
    """
    argv = ["tshark", "-n", "-r", str(pcap), *options, "-T", "fields", "-E", "occurrence=a",
            "-E", "aggregator=|", "-E", "separator=\t"]
    for field in fields:
        argv += ["-e", field]
    if display_filter:
        argv += ["-Y", display_filter]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"tshark -r {pcap} failed: {out.stderr[-2000:]}")
    rows = []
    for line in out.stdout.splitlines():
        cells = line.split("\t")
        cells += [""] * (len(fields) - len(cells))
        rows.append({f: [v for v in c.split("|") if v] for f, c in zip(fields, cells)})
    return rows


# --- traffic -------------------------------------------------------------------------------


def ping(ns: str, source: str, destination: str, count: int = 5, *,
         timeout: float = 30.0) -> int:
    """``ping -c COUNT -I SOURCE DESTINATION`` inside ``ns``: the replies received."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-I", source,
                          destination], capture_output=True, text=True,
                         check=False, timeout=timeout, stdin=subprocess.DEVNULL)
    for line in out.stdout.splitlines():
        if " received" in line:  # "5 packets transmitted, 5 received, 0% packet loss"
            return int(line.split(",")[1].split()[0])
    return 0


def iperf3(server_ns: str, server_addr: str, client_ns: str, client_addr: str, *,
           seconds: float = 3.0, port: int = 5201, reverse: bool = False) -> dict[str, Any]:
    """One TCP transfer of ``seconds`` from the client to the server (``reverse``: back).

    Returns ``{"bits_per_second": receiver's rate, "bytes": received, "retransmits": n,
    "cpu": client's and server's CPU percentages}``; raises RuntimeError when iperf3
    fails (for example no route, or nothing arrives through a tunnel).
    """
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "--server", "--one-off",
                               "--bind", server_addr, "--port", str(port), "--forceflush"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line or "listening" in line.lower():
                break
        argv = ["ip", "netns", "exec", client_ns, "iperf3", "--client", server_addr,
                "--bind", client_addr, "--port", str(port), "--time", str(seconds), "--json",
                "--connect-timeout", "5000"]
        if reverse:
            argv.append("--reverse")
        out = subprocess.run(argv, capture_output=True, text=True, check=False,
                             timeout=seconds + 30, stdin=subprocess.DEVNULL)
        try:
            report = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"iperf3 printed no report: {out.stderr[-500:]}") from None
        if "error" in report or out.returncode != 0:
            raise RuntimeError(f"iperf3: {report.get('error', out.stderr[-500:])}")
        end = report["end"]
        return {"bits_per_second": float(end["sum_received"]["bits_per_second"]),
                "bytes": int(end["sum_received"]["bytes"]),
                "retransmits": int(end["sum_sent"].get("retransmits", 0)),
                "cpu": end.get("cpu_utilization_percent", {})}
    finally:
        stop(server)  # type: ignore[arg-type]
