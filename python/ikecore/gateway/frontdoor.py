"""The gateway's receive fast path: batched receive and stateless message 2 in Rust.

Design note
-----------
Handing the engine one datagram per asyncio callback reaches about 4,000 datagrams
per second per core: a spoofed message 1 flood above that rate would fill the kernel
queue and push legitimate peers out. ``FastPath`` puts ``ikecore._core.FrontDoor``
(``rust/frontdoor.rs``) in front of the engine:

* the gateway registers each socket with ``loop.add_reader``; on readiness
  :meth:`FastPath.drain` reads up to ``max_datagrams`` with ``recvmmsg`` batches (GIL
  released during the system calls);
* while the engine's admission control is in stateless mode (``ikecore.engine.admission``), a
  message 1 whose offer Python already answered is answered in Rust: the message 2
  Python built for that offer (its *template*, registered through
  ``AdmissionControl.on_reply``) with CKY-I and the stateless CKY-R stamped in, sent
  back with ``sendmmsg``. The cookie is ``_core.stateless_cookie``, the formula
  ``ikecore.engine.admission`` itself uses, with the secret of ``AdmissionControl.current_secret``
  pushed before every batch (:meth:`FastPath.sync`); a template disappears when the
  offer cache forgets its offer (``OfferCache.on_evict``);
* everything else (other messages, unknown offers, a secret rotation due, a message 1
  the engine's cookie table already knows, a datagram of more than one ISAKMP message or
  with bytes after its message) comes back as ``(data, remote)`` and goes to the engine
  unchanged through the gateway's bounded queue. Rust strips a non-ESP marker only when
  neither port is 500 (RFC 3948), as the engine does.

Preconditions for answering in Rust, else everything goes to Python: the local
address is known (a socket bound to a specific address, or a wildcard socket with
IP_PKTINFO / IPV6_RECVPKTINFO: the address each datagram was sent to, which the cookie
covers and which the engine then gets as the local address too), and the
configuration's generic filters choose the same filter for every address pair
(:func:`uniform_filter`), since message 2 is a function of the offer *and* the filter.

Accounting: the Rust counters are folded into the monitor after each drain
(:meth:`FastPath.fold`) as the engine's events would have counted them (message 1 in,
message 2 out, ``flood:stateless_cookies_sent``), plus ``fast_path:*`` counters
(received, stateless replies, handled by the express lane, passed to Python, send failures); truncated datagrams
count as Invalid Packets Received, socket errors as Receive/Send Failures. So every
datagram that reached the socket is in the statistics, and the kernel's own drops
are read from /proc/net/udp by the gateway (``kernel_receive_drops``).
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from typing import Any

from ikecore import _core, wire
from ikecore.engine.admission import KNOWN_OFFERS_MAX
from ikecore.events import Address

__all__ = ["FastPath", "uniform_filter", "available", "IP_PKTINFO", "source_pktinfo", "pktinfo_destination"]

#: IPv4 packet info (Linux value; Python 3.11 lacks the name): the local address a datagram
#: was sent to (received) or is to leave from (sent) on a socket bound to 0.0.0.0.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)

_MM = wire.ExchangeType(wire.ExchangeType.IDENTITY_PROTECTION).name.lower()
#: Rust counter -> the monitor's extended counter it adds to.
FAST_PATH_COUNTERS = {"received": "fast_path:received", "stateless_replies": "fast_path:stateless_replies",
                      "to_python": "fast_path:to_python", "express": "fast_path:express",
                      "truncated": "fast_path:truncated",
                      "send_failures": "fast_path:send_failures", "receive_errors": "fast_path:receive_errors"}


def source_pktinfo(address: str) -> list[tuple[int, int, bytes]]:
    """``sendmsg`` ancillary data that sends a datagram from IPv4 ``address``."""
    return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_aton(address), bytes(4)))]


def pktinfo_destination(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """The IPv4 address a datagram received with ``recvmsg`` was sent to (None: not said)."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntoa(data[8:12])
    return None


def available() -> bool:
    """True when this build has the Rust receive path (Linux: recvmmsg/sendmmsg)."""
    return hasattr(_core, "FrontDoor")


def _everything(local_pattern: str, remote_pattern: str) -> bool:
    # ``me`` matches the local address itself; ``any`` matches every address.
    return local_pattern in ("any", "me") and remote_pattern == "any"


def uniform_filter(config: Any) -> Any:
    """The generic filter ``config.filter_for`` returns for every address pair, or None
    when the choice depends on the addresses (then Rust never answers message 1)."""
    ordered = sorted(enumerate(config.filters), key=lambda item: (-item[1].weight, item[0]))
    if not ordered:
        return None
    first = ordered[0][1]
    if _everything(first.source, first.destination) or (first.mirrored and _everything(first.destination, first.source)):
        return first
    return None


class FastPath:
    """One engine's Rust receive path (see the design note).

    Args:
        engine: the engine whose admission control and cookie table it mirrors.
        batch: datagrams per ``recvmmsg`` call.
    """

    def __init__(self, engine: Any, *, batch: int = 64) -> None:
        self.engine = engine
        self.filter = uniform_filter(engine.config)
        gate = engine.admission
        self._door = _core.FrontDoor(gate.limits.max_offer_size, gate.limits.offer_cache_size + KNOWN_OFFERS_MAX,
                                     cookies=engine.cookie_table, batch=batch)
        self.totals: Counter[str] = Counter()
        if self.filter is not None:
            gate.on_reply = self._answered
            gate.offers.on_evict = self._evicted

    def _answered(self, digest: bytes, message2: bytes) -> None:
        self._door.add_template(digest, message2)

    def _evicted(self, digest: bytes) -> None:
        self._door.forget_template(digest)
        lane = self.engine.express
        if lane is not None:
            lane.forget_offer(digest)

    def express(self, *, thread: bool = False) -> bool:
        """Start the engine's express lane (``ikecore.engine.express``) behind this path;
        False when the engine's configuration or this path cannot have one. ``thread``: its
        g^xy on a thread of its own (worth it only with a core to spare, as DH threads)."""
        return self.filter is not None and bool(self.engine.enable_express(self.filter, thread=thread))

    @property
    def templates(self) -> int:
        return int(self._door.template_count)

    def sync(self, now: float) -> None:
        """Mirror the admission control's mode and current cookie secret into Rust."""
        gate = self.engine.admission
        if self.filter is None or not (gate.stateless() or self.engine.express is not None):
            self._door.set_state(False, None, 0.0)
            return
        secret, until = gate.current_secret(now)
        self._door.set_state(True, secret, until)

    def drain(self, fd: int, local: Address, now: float,
              max_datagrams: int = 1024) -> list[tuple[bytes, Address, str | None]]:
        """Read what waits on ``fd`` (bound to ``local``); answer what Rust may; return the
        rest for the engine as (data, remote, local address or None: see ``_core.FrontDoor.drain``).
        Never raises for socket errors (they are counted)."""
        self.sync(now)
        lane = self.engine.express
        if lane is None:
            return self._door.drain(fd, local, now, max_datagrams, self.filter is not None)
        lane.before_batch(now)
        return self._door.drain(fd, local, now, max_datagrams, True, lane.rust)

    def fold(self, monitor: Any) -> dict[str, int]:
        """Add the Rust counters since the last fold to ``totals`` and to ``monitor``."""
        counts = self._door.take_counters()
        self.totals.update(counts)
        lane = self.engine.express
        if lane is not None:
            lane.fold(monitor)
        if monitor is not None and any(counts.values()):
            x = monitor.extended
            replies = counts["stateless_replies"]
            if replies:
                x[f"messages:{_MM}:1:in"] += replies
                x[f"messages:{_MM}:2:out"] += replies
                x["flood:stateless_cookies_sent"] += replies
            for key, name in FAST_PATH_COUNTERS.items():
                if counts[key]:
                    x[name] += counts[key]
            for _ in range(counts["truncated"]):
                monitor.invalid_packet("truncated")
            for _ in range(counts["send_failures"]):
                monitor.send_failed()
            for _ in range(counts["receive_errors"]):
                monitor.receive_failed()
        return counts
