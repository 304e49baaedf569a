"""asyncio transport: the engine on the event loop, with its UDP sockets and its clock.

``Gateway`` drives one ``Engine``: it opens UDP sockets (listening ones, and ephemeral or
named local ones for initiators), feeds every datagram to the engine with ``loop.time()``,
sends what the engine queues, arms one timer from ``engine.get_timer()``, and hands each
event to the listeners (the monitor, futures of ``connect``, the application).

Received datagrams go through a bounded queue drained in batches on the event loop, so
a burst cannot grow memory without bound: when ``receive_queue`` datagrams wait, more
are dropped and counted (Receive Failures, ``receive_queue_full``). Socket send and
receive errors, a full queue, driver and store failures are counted by the monitor and
logged once per kind with rate limiting (``ikecore.gateway.faults``); negotiation goes on.

With the Rust receive path (``ikecore.gateway.frontdoor``, on by default where the build has it;
``fast_path=False`` or IKECORE_FAST_PATH=0 turns it off) the gateway owns plain
non-blocking sockets, registers them with ``loop.add_reader`` and drains each in
``recvmmsg`` batches; under a flood, message 1 of known offers is answered in Rust and
never reaches the queue. On wildcard sockets each datagram brings its local address
(IP_PKTINFO / IPV6_RECVPKTINFO): the engine gets the address the peer used, and
replies leave from it.

As a library: ``async with Gateway.listen(config) as gateway:`` (or a list of addresses
and ``config_from_flags`` keywords: ``Gateway.listen([("127.0.0.1", 500)], psk=...)``)
builds the engine, opens the sockets and closes them on exit; ``async with
Gateway(engine)`` closes a gateway built by hand. ``connect`` returns a ``ConnectResult``
when the SAs are up and raises ``ikecore.NegotiationFailed`` (``.notify``, ``.reason``,
``.phase``) when they are not, ``ikecore.NegotiationTimeout`` when the peer never answers;
``connect(..., check=False)`` returns the ``ConnectResult`` whatever happened.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ikecore import events as ev
from ikecore import wire
from ikecore.config import Config, config_from_flags, parse_endpoint
from ikecore.engine.core import Engine
from ikecore.errors import NegotiationFailed, NegotiationTimeout
from ikecore.events import Address
from ikecore.gateway.faults import FaultLog, udp_drops
from ikecore.gateway.frontdoor import IP_PKTINFO, FastPath, source_pktinfo
from ikecore.gateway.frontdoor import available as fast_path_available
from ikecore.protocol.nat_traversal import NAT_T_PORT

__all__ = ["Gateway", "ConnectResult", "local_address_towards", "TIMED_OUT"]

RECEIVE_BUFFER = 8 << 20          # bytes of kernel receive buffer asked for each fast-path socket
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def local_address_towards(remote: str) -> str:
    """The address this host uses to reach ``remote`` (asks the routing table, sends nothing)."""
    family = socket.AF_INET6 if ipaddress.ip_address(remote).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((remote, 9))
        return str(probe.getsockname()[0])


@functools.lru_cache(maxsize=64)
def _wildcard(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified


@dataclass
class ConnectResult:
    """What one initiation ended with (``notify``: the Notify Message Type that ended a
    failed one, the peer's else ours, as ``NegotiationFailed.notify``)."""

    handle: int
    ok: bool
    reason: str = ""
    phase1: ev.Phase1Established | None = None
    phase2: list[ev.Phase2Established] = field(default_factory=list)
    notify: int | None = None

    def failure(self) -> NegotiationFailed:
        """This failed outcome as the exception ``connect`` raises."""
        phase = 1 if self.phase1 is None else 2
        kind = NegotiationTimeout if self.reason == TIMED_OUT else NegotiationFailed
        return kind(self.reason, notify=self.notify, phase=phase, handle=self.handle, result=self)


#: ``ConnectResult.reason`` of a negotiation the peer never finished.
TIMED_OUT = "timed out"


def _notify_type(number: int | None) -> int | None:
    """A Notify Message Type by name where ``wire.NotifyType`` knows it."""
    if number is None:
        return None
    try:
        return wire.NotifyType(number)
    except ValueError:
        return number


class _Listening:
    """What ``Gateway.listen`` on the class returns: used as ``async with``, the gateway,
    closed on the way out; awaited, the bound addresses (the sockets stay open)."""

    def __init__(self, gateway: Gateway, addresses: Any, *, reuse_port: bool = False) -> None:
        self.gateway = gateway
        self.addresses = [parse_endpoint(a, 500, "listen") if isinstance(a, str) else (str(a[0]), int(a[1]))
                          for a in addresses]
        self.reuse_port = reuse_port

    async def _open(self) -> list[Address]:
        gateway = self.gateway
        bound = [await gateway.open(address, reuse_port=self.reuse_port) for address in self.addresses]
        gateway.loop.call_soon(gateway._start)
        return bound

    def __await__(self) -> Any:
        return self._open().__await__()

    async def __aenter__(self) -> Gateway:
        try:
            await self._open()
        except BaseException:  # a port in use: the sockets opened before it close too
            await self.gateway.aclose()
            raise
        return self.gateway

    async def __aexit__(self, *exc_info: object) -> None:
        await self.gateway.aclose()


class _ListenMethod:
    """``Gateway.listen``: on a gateway, ``await gateway.listen(addresses)`` opens its
    listening sockets and returns their addresses; on the class,
    ``Gateway.listen(config_or_addresses, **options)`` builds the gateway too (``_Listening``)."""

    def __get__(self, gateway: Gateway | None, owner: type[Gateway]) -> Callable[..., Any]:
        if gateway is None:
            return functools.partial(_listen_new, owner)
        return gateway._listen_on


def _listen_new(owner: type[Gateway], target: Any, *, reuse_port: bool = False, monitor: Any = None,
                on_event: Callable[[ev.Event], None] | None = None, fast_path: bool | None = None,
                **flags: Any) -> _Listening:
    """A gateway for ``target`` (an ``Engine``, a ``Config``, or the addresses to listen on,
    ``(ADDR, PORT)`` or ``"ADDR:PORT"``, with the ``config_from_flags`` keywords ``flags``:
    ``psk``, ``ike``, ``esp``...) on its listening addresses."""
    if flags and not isinstance(target, (list, tuple, str)):
        raise TypeError(f"Gateway.listen: {', '.join(flags)} go with a list of addresses, not with a "
                        f"{type(target).__name__}")
    if isinstance(target, Engine):
        engine = target
    elif isinstance(target, Config):
        engine = Engine(target)
    else:
        addresses = [parse_endpoint(a, 500, "listen") if isinstance(a, str) else (str(a[0]), int(a[1]))
                     for a in ([target] if isinstance(target, str) else target)]
        engine = Engine(config_from_flags(listen=tuple(addresses), **flags))
    gateway = owner(engine, monitor=monitor, on_event=on_event, fast_path=fast_path)
    return _Listening(gateway, engine.config.listen, reuse_port=reuse_port)


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("0.0.0.0", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # asyncio reads into a fresh 256 KiB buffer per datagram (an mmap and munmap each
        # time); a UDP payload is at most 65,535 bytes
        transport.max_size = 65535  # type: ignore[attr-defined]
        sockname = transport.get_extra_info("sockname")
        self.local = (str(sockname[0]), int(sockname[1]))

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.gateway._enqueue(self, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self.gateway.monitor_receive_failed()
        self.gateway.faults.report("socket receive error", str(exc), self.gateway.loop.time())


class _SocketTransport:
    """The little of asyncio's datagram transport the gateway uses, over a socket it
    reads itself (the fast path): ``sendto`` (non-blocking; a full buffer is a send
    failure), ``close``, ``get_extra_info``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, pktinfo: bool = False) -> None:
        self._loop = loop
        self._sock = sock
        self.pktinfo = pktinfo   # wildcard socket: datagrams carry their local address both ways

    def sendto(self, data: bytes, addr: Address, source: str | None = None) -> None:
        """Send ``data``; from local address ``source`` (IP_PKTINFO / IPV6_PKTINFO) when the
        socket is bound to the wildcard address and the engine names one."""
        if source is None or not self.pktinfo:
            self._sock.sendto(data, addr)
        elif self._sock.family == socket.AF_INET:
            self._sock.sendmsg([data], source_pktinfo(source), 0, addr)
        else:
            info = struct.pack("=16sI", socket.inet_pton(socket.AF_INET6, source), 0)
            self._sock.sendmsg([data], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)], 0, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


class Gateway:
    """An asyncio UDP front for an Engine (responder and initiator).

    Args:
        engine: the sans-IO engine to drive.
        on_event: called with every engine event after the built-in listeners.
        receive_queue: most datagrams waiting for the engine; more are dropped and counted.
        faults: where local faults are logged (rate limited).
        fast_path: read sockets through the Rust receive path (``ikecore.gateway.frontdoor``);
            None: where available, unless the environment says IKECORE_FAST_PATH=0.
        express: behind the fast path, let the engine's express lane (``ikecore.engine.express``)
            negotiate the SAs it can take on.
        express_thread: the lane computes g^xy on a thread of its own (with a core to spare).
    """

    def __init__(self, engine: Engine, *, monitor: Any = None,
                 on_event: Callable[[ev.Event], None] | None = None, receive_queue: int = 4096,
                 faults: FaultLog | None = None, fast_path: bool | None = None, express: bool = False,
                 express_thread: bool = False) -> None:
        self.engine = engine
        self.monitor = monitor
        self.on_event = on_event
        self._endpoints: dict[Address, _Endpoint] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._waiters: dict[int, tuple[asyncio.Future[ConnectResult], ConnectResult, bool]] = {}
        self._local_cache: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[ev.Event], None]] = []
        self.faults = faults or FaultLog()
        self._queue: deque[tuple[_Endpoint, bytes, Address, str | None]] = deque()
        self._queue_limit = receive_queue
        self._draining = False
        self._kernel_drops = 0
        self._poller: asyncio.TimerHandle | None = None
        if fast_path is None:
            fast_path = os.environ.get("IKECORE_FAST_PATH", "1") != "0"
        self.fast_path: FastPath | None = FastPath(engine) if fast_path and fast_path_available() else None
        if express and self.fast_path is not None:
            self.fast_path.express(thread=express_thread)
        # ESP arriving on a NAT-T socket (RFC 3948: no non-ESP marker, port != 500) goes
        # here (the userland driver) instead of to the engine as a malformed message
        self.esp_sink: Callable[[bytes, Address], None] | None = None
        self.esp_flush: Callable[[], None] | None = None  # after each batch of received datagrams

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def open(self, local: Address, *, reuse_port: bool = False) -> Address:
        """Bind a UDP socket on ``local`` (port 0: ephemeral); returns the bound address.

        ``reuse_port``: SO_REUSEPORT, so that worker processes share the port (the kernel
        spreads peers over them by address and port)."""
        family = socket.AF_INET6 if ipaddress.ip_address(local[0]).version == 6 else socket.AF_INET
        if self.fast_path is not None:
            endpoint = self._open_fast(local, family, reuse_port)
        else:
            _transport, endpoint = await self.loop.create_datagram_endpoint(
                lambda: _Endpoint(self), local_addr=local, family=family, reuse_port=reuse_port or None)
        self._endpoints[endpoint.local] = endpoint
        if self._poller is None:
            self._poller = self.loop.call_later(1.0, self.poll_faults)
        return endpoint.local

    async def adopt(self, sock: socket.socket) -> Address:
        """Serve on a UDP socket bound elsewhere (a worker's socket of its parent's
        SO_REUSEPORT group, ``ikecore.gateway.workers``); the gateway owns it from now on
        and closes it with the others. Returns its address."""
        name = sock.getsockname()
        local: Address = (str(name[0]), int(name[1]))
        if self.fast_path is not None:
            try:
                self._prepare_fast(sock, local)
            except OSError:
                sock.close()
                raise
            endpoint = self._serve_fast(sock, local)
        else:
            sock.setblocking(False)
            _transport, endpoint = await self.loop.create_datagram_endpoint(lambda: _Endpoint(self), sock=sock)
        self._endpoints[endpoint.local] = endpoint
        if self._poller is None:
            self._poller = self.loop.call_later(1.0, self.poll_faults)
            self.loop.call_soon(self._start)
        return endpoint.local

    @staticmethod
    def _prepare_fast(sock: socket.socket, local: Address) -> None:
        # room for a burst while the loop is busy in Python: SO_RCVBUFFORCE when
        # privileged (a gateway on port 500 is), else up to net.core.rmem_max
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        if _wildcard(local[0]):  # learn the address each datagram was sent to
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        sock.setblocking(False)

    def _open_fast(self, local: Address, family: int, reuse_port: bool) -> _Endpoint:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self._prepare_fast(sock, local)
            sock.bind(local)
        except OSError:
            sock.close()
            raise
        return self._serve_fast(sock, local)

    def _serve_fast(self, sock: socket.socket, local: Address) -> _Endpoint:
        endpoint = _Endpoint(self)
        endpoint.connection_made(_SocketTransport(self.loop, sock, _wildcard(local[0])))  # type: ignore[arg-type]
        self.loop.add_reader(sock.fileno(), self._readable, endpoint, sock.fileno())
        return endpoint

    def _readable(self, endpoint: _Endpoint, fd: int, max_datagrams: int = 1024) -> None:
        """A fast-path socket is readable: Rust drains it; the rest joins the queue."""
        assert self.fast_path is not None
        now = self.loop.time()
        received = self.fast_path.drain(fd, endpoint.local, now, max_datagrams)
        lane = self.engine.express
        if lane is not None and lane.adopt_all(now) and not received:
            self._flush()  # what the lane finished: its events, its timers
        for data, remote, local_ip in received:
            self._enqueue(endpoint, data, remote, local_ip, schedule=False)
        if self._queue and not self._draining:
            # the first batch now, not one loop iteration later: at a few hundred SAs a second
            # each wake-up brings one datagram, and the hop cost as much as the wake-up
            self._draining = True
            self._drain()
        counts = self.fast_path.fold(self.monitor)
        if counts["receive_errors"] or counts["send_failures"]:
            self.faults.report("fast path socket error", f"{counts['receive_errors']} receive errors, "
                               f"{counts['send_failures']} replies not sent", self.loop.time())

    #: ``await gateway.listen(addresses, reuse_port=False)``: open the listening sockets,
    #: returns their addresses; ``async with Gateway.listen(config_or_addresses, ...) as
    #: gateway``: build, listen, and close on exit (``_ListenMethod``).
    listen = _ListenMethod()

    async def _listen_on(self, addresses: list[Address] | tuple[Address, ...], *,
                         reuse_port: bool = False) -> list[Address]:
        return await _Listening(self, addresses, reuse_port=reuse_port)

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """``close``, then one turn of the event loop: asyncio's transports close their
        sockets there, so the ports are free when this returns."""
        self.close()
        await asyncio.sleep(0)

    def addresses(self) -> list[Address]:
        return list(self._endpoints)

    async def connect(self, remote: Address, *, local: Address | None = None, quick_mode: bool = True,
                      timeout: float | None = None, natt_port: int | None = None,
                      check: bool = True) -> ConnectResult:
        """Negotiate Main Mode (and one Quick Mode) with ``remote``; wait for the outcome.

        Returns the ``ConnectResult`` of the SAs. Raises ``ikecore.NegotiationFailed``
        (``.notify``, ``.reason``, ``.phase``, ``.result``) when the negotiation fails,
        ``ikecore.NegotiationTimeout`` when it is not done within ``timeout`` seconds
        (default: the negotiation timeout plus 5); with ``check=False`` returns the
        ``ConnectResult`` (``ok`` False) instead of raising."""
        if local is None:
            local = (local_address_towards(remote[0]), 0)
        if local not in self._endpoints:
            local = await self.open(local)
        if local[1] == 500:
            await self._open_nat_t_socket(local[0])
        handle = self.engine.initiate(remote, local=local, now=self.loop.time(), quick_mode=quick_mode,
                                      natt_port=natt_port)
        future: asyncio.Future[ConnectResult] = self.loop.create_future()
        self._waiters[handle] = (future, ConnectResult(handle, False), quick_mode)
        self._flush()
        limit = timeout if timeout is not None else self.engine.config.timing.negotiation_timeout + 5
        try:
            result = await asyncio.wait_for(future, limit)
        except asyncio.TimeoutError:
            waiter = self._waiters.pop(handle, None)
            result = waiter[1] if waiter is not None else ConnectResult(handle, False)
            result.ok, result.reason = False, TIMED_OUT
        if check and not result.ok:
            raise result.failure()
        return result

    async def _open_nat_t_socket(self, address: str) -> None:
        """An initiator on port 500 floats to port 4500 when NAT-T is used (RFC 3947 section
        4, ``ikecore.protocol.nat_traversal.float_initiator``): open that socket beside it
        now, as strongSwan does, unless one is open or every filter has NAT-T off. A port
        that cannot be bound is logged; the negotiation then goes on without it."""
        if all(f.nat_traversal == "off" for f in self.engine.config.filters):
            return
        if self._endpoint_for((address, NAT_T_PORT)) is not None:
            return
        try:
            await self.open((address, NAT_T_PORT))
        except OSError as exc:
            self.faults.report("NAT-T socket", f"cannot open {address}:{NAT_T_PORT}: {exc.strerror}",
                               self.loop.time())

    def delete(self, handle: int) -> None:
        self.engine.delete(handle, self.loop.time())
        self._flush()

    def poll_faults(self) -> int:
        """Count datagrams the kernel dropped on our sockets (full receive queue) since the
        last poll as Receive Failures; runs every second while sockets are open."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = self.loop.call_later(1.0, self.poll_faults) if self._endpoints else None
        drops = udp_drops({port for _address, port in self._endpoints})
        new = 0 if drops is None else max(0, drops - self._kernel_drops)
        if drops is not None:
            self._kernel_drops = drops
        if new:
            if self.monitor is not None:
                for _ in range(new):
                    self.monitor.receive_failed()
                self.monitor.extended["kernel_receive_drops"] += new
            self.faults.report("kernel receive queue full", f"{new} datagrams dropped by the kernel",
                               self.loop.time())
        return new

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._timer is not None:
            self._timer.cancel()
        for endpoint in self._endpoints.values():
            if endpoint.transport is not None:
                endpoint.transport.close()
        self._endpoints.clear()
        for future, result, _want_qm in self._waiters.values():  # nothing more will come
            if not future.done():
                result.reason = result.reason or "the gateway closed"
                future.set_result(result)
        self._waiters.clear()

    def add_listener(self, listener: Callable[[ev.Event], None]) -> None:
        """Call ``listener`` with every engine event (after the monitor); it must not block."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ev.Event], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def sa_events(self, *, maxsize: int = 10000) -> Any:
        """An async iterator of this gateway's SA events (``ikecore.gateway.stream.SaEventStream``)."""
        from ikecore.gateway.stream import SaEventStream

        return SaEventStream(self, maxsize=maxsize)

    def sockets(self) -> list[Any]:
        """The gateway's UDP sockets (for kernel queue statistics; do not read from them)."""
        return [ep.transport.get_extra_info("socket") for ep in self._endpoints.values()
                if ep.transport is not None]

    @property
    def pending_connects(self) -> int:
        """The monitor's Acquire Heap Size: ``connect`` calls waiting for their outcome, plus
        the acquires in the engine's heap (``Engine.acquire``: a driver's kernel ACQUIREs)."""
        return len(self._waiters) + self.engine.acquire_counts()[0]

    def monitor_receive_failed(self) -> None:
        if self.monitor is not None:
            self.monitor.receive_failed()

    # --- internals ------------------------------------------------------------------------

    def _enqueue(self, endpoint: _Endpoint, data: bytes, remote: Address, local_ip: str | None = None,
                 schedule: bool = True) -> None:
        if len(self._queue) >= self._queue_limit:
            if self.monitor is not None:
                self.monitor.receive_failed()
                self.monitor.extended["receive_queue_full"] += 1
            self.faults.report("receive queue full", f"{self._queue_limit} datagrams waiting; dropped one from "
                               f"{remote[0]}", self.loop.time())
            return
        self._queue.append((endpoint, data, remote, local_ip))
        if self.monitor is not None:
            self.monitor.receive_heap_size = len(self._queue)
        if schedule and not self._draining:
            self._draining = True
            self.loop.call_soon(self._drain)

    def _drain(self, batch: int = 256) -> None:
        """Feed queued datagrams to the engine, a batch per loop iteration."""
        for _ in range(min(batch, len(self._queue))):
            endpoint, data, remote, local_ip = self._queue.popleft()
            self._on_datagram(endpoint, data, remote, local_ip)
        if self.esp_flush is not None:
            self.esp_flush()
        if self.monitor is not None:
            self.monitor.receive_heap_size = len(self._queue)
        if self._queue:
            self.loop.call_soon(self._drain)
        else:
            self._draining = False

    def _on_datagram(self, endpoint: _Endpoint, data: bytes, remote: Address, local_ip: str | None = None) -> None:
        local = endpoint.local
        if (self.esp_sink is not None and local[1] != 500 and remote[1] != 500 and len(data) > 8
                and data[:4] != b"\0\0\0\0"):
            self.esp_sink(data, remote)
            return
        if local_ip is not None:  # the address the peer sent to (fast path, wildcard socket)
            local = (local_ip, local[1])
        elif _wildcard(local[0]):
            address = self._local_cache.get(remote[0])
            if address is None:
                address = self._local_cache[remote[0]] = local_address_towards(remote[0])
            local = (address, local[1])
        self.engine.receive_datagram(data, remote, local, self.loop.time())
        self._flush()

    def _endpoint_for(self, local: Address) -> _Endpoint | None:
        endpoint = self._endpoints.get(local)
        if endpoint is None:
            for address, candidate in self._endpoints.items():
                if address[1] == local[1] and _wildcard(address[0]):
                    return candidate
        return endpoint

    def _flush(self) -> None:
        for data, remote, local in self.engine.datagrams_to_send():
            endpoint = self._endpoint_for(local)
            try:
                if endpoint is None or endpoint.transport is None:
                    raise OSError(f"no socket for {local}")
                if isinstance(endpoint.transport, _SocketTransport):
                    endpoint.transport.sendto(data, remote, local[0])
                else:
                    endpoint.transport.sendto(data, remote)
            except OSError as exc:
                if self.monitor is not None:
                    self.monitor.send_failed()
                self.faults.report("socket send error", f"to {remote[0]}: {exc}", self.loop.time())
        while (event := self.engine.next_event()) is not None:
            self._dispatch(event)
        self._arm_timer()

    def _dispatch(self, event: ev.Event) -> None:
        if self.monitor is not None:
            self.monitor.observe(event)
        kind = type(event)
        if kind is ev.DriverFailed or kind is ev.StoreFailed:
            self.faults.report(f"{kind.__name__} {event.operation}", event.reason,  # type: ignore[attr-defined]
                               self.loop.time())
        # a responder has no waiters; an event without a handle has none either
        waiter = self._waiters.get(getattr(event, "handle", None)) if self._waiters else None  # type: ignore[arg-type]
        if waiter is not None:
            future, result, want_qm = waiter
            done = False
            if isinstance(event, ev.Phase1Established):
                result.phase1 = event
                done = not want_qm
            elif isinstance(event, ev.Phase2Established):
                result.phase2.append(event)
                done = True
            elif isinstance(event, (ev.Phase1Failed, ev.Phase2Failed)):
                result.reason = event.reason
                if result.notify is None:
                    result.notify = _notify_type(event.notify_type)
                done = True
            elif kind is ev.NotifyReceived and event.notify_type < 16384:  # type: ignore[attr-defined]
                result.notify = _notify_type(event.notify_type)  # type: ignore[attr-defined]  # an error
            elif isinstance(event, ev.SaDeleted) and event.phase == 1 and result.phase1 is None:
                result.reason = event.reason
                done = True
            if done:
                result.ok = not result.reason
                self._waiters.pop(event.handle, None)  # type: ignore[attr-defined]
                if not future.done():
                    future.set_result(result)
        if self._listeners:
            for listener in list(self._listeners):
                listener(event)
        if self.on_event is not None:
            self.on_event(event)

    def _start(self) -> None:
        """Serving began: what the engine did at start leaves now, so SAs restored from the
        store are live at once (their timers armed, the monitor and listeners told)."""
        if self._endpoints:
            self._flush()

    def _arm_timer(self) -> None:
        deadline = self.engine.get_timer()
        if deadline is None or deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.engine.handle_timer(self.loop.time())
        self._flush()
