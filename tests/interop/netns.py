"""Two throw-away network namespaces joined by a veth pair (for kernel-libipsec peers).

Both veth ends are created directly inside the namespaces, so the host's own
network namespace gets no interface, address or route: nothing sent in there can
leave the machine. Each namespace also gets an "inner" address on its loopback
(for Quick Mode traffic selectors of a site-to-site tunnel: kernel-libipsec needs a
local address inside the local selector).

    with veth_pair() as pair:
        Charon.start(netns=pair.ns_b, addr=pair.addr_b, kernel="libipsec", ...)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["NetnsPair", "available", "veth_pair", "exists"]


def available() -> str | None:
    """None when namespaces can be created here; otherwise the reason."""
    if shutil.which("ip") is None:
        return "iproute2 not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
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
    for ns in (pair.ns_a, pair.ns_b):
        if exists(ns):
            raise RuntimeError(f"network namespace {ns} already exists")
    created: list[str] = []
    try:
        for ns in (pair.ns_a, pair.ns_b):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("link", "add", pair.if_a, "netns", pair.ns_a, "type", "veth",
            "peer", "name", pair.if_b, "netns", pair.ns_b)
        _ip("-n", pair.ns_a, "addr", "add", f"{pair.addr_a}/24", "dev", pair.if_a)
        _ip("-n", pair.ns_b, "addr", "add", f"{pair.addr_b}/24", "dev", pair.if_b)
        _ip("-n", pair.ns_a, "addr", "add", f"{pair.inner_a}/32", "dev", "lo")
        _ip("-n", pair.ns_b, "addr", "add", f"{pair.inner_b}/32", "dev", "lo")
        for ns, iface in ((pair.ns_a, pair.if_a), (pair.ns_b, pair.if_b)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", iface, "up")
        yield pair
    finally:
        busy = []
        for ns in created:
            if _pids(ns):
                busy.append(ns)
            else:
                _ip("netns", "del", ns)
        if busy:
            raise RuntimeError(f"processes still run in {busy}; namespaces left in place")
