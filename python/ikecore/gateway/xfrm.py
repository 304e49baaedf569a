"""The Linux kernel IPsec driver: Quick Mode SAs and filters in the kernel's XFRM databases.

Design note
-----------
``XfrmDriver`` implements ``ikecore.driver.IpsecDriver`` over ``NETLINK_XFRM``
(``ikecore._core.XfrmSocket``, ``rust/xfrm/``), as strongSwan's kernel-netlink does:

=====================  ==================================  ================================
IP Security Monitor     ikecore                             kernel
=====================  ==================================  ================================
Get SPI                 ``get_spi``                         XFRM_MSG_ALLOCSPI (a larval SA)
Key Addition            ``add_outbound``                    XFRM_MSG_NEWSA
Key Update              ``update_inbound``                  XFRM_MSG_UPDSA (replaces the larval SA)
(delete)                ``delete``                          XFRM_MSG_DELSA, then the SA's policies
specific filters        ``attach`` / SAs without a trap     XFRM_MSG_UPDPOLICY out / in / fwd
Active Acquire ...      ``Engine.acquire``                  XFRM_MSG_ACQUIRE (XFRMNLGRP_ACQUIRE)
lifetimes               ``Engine.ipsec_lifetime_expired``   XFRM_MSG_EXPIRE soft / hard
Soft Associations       ``SoftSaCreated``                   an allow policy that expires itself
=====================  ==================================  ================================

Policies: a specific filter's Direction gives the policy direction (outbound: ``out``;
inbound: ``in``, and ``fwd`` in tunnel mode, so forwarded traffic of the remote network is
let in too) and its Weight the priority: ``PRIORITY_BASE - weight`` (the kernel prefers the
lowest number, the monitor the highest weight). Each policy's template asks for ESP between
the two gateways with a ``reqid`` shared by the traffic selector pair's SAs, so an outbound
SA satisfies exactly its policy.

Traps: when the gateway starts (``attach``), every filter that names a peer (one address as
``destination``) and both traffic selectors gets its outbound, inbound and forward policies
without any SA. The first packet toward the remote selector then makes the kernel send an
ACQUIRE; the driver hands it to ``Engine.acquire`` (so Active Acquire, Acquire Heap Size and
Total Acquire count kernel requests), one at a time per trap while its negotiation runs.
When the acquire falls back to clear text (``fallback_to_clear`` and an unanswered Main
Mode: a soft SA), an outbound and an inbound policy for the acquired flow's two hosts, with
no template and a preferred priority, let the traffic pass; the kernel removes them after
``soft_sa_lifetime`` seconds (XFRM_MSG_POLEXPIRE).

SAs negotiated without a trap (we answered the peer's Quick Mode) bring their own policies,
counted per selector pair so that a rekeyed SA keeps them while the old one goes. The
gateway's IKE sockets bypass all policies (per-socket ``IP_XFRM_POLICY`` allow, in and out,
as strongSwan does), so policies that cover the gateways' own addresses never hold IKE back. ``close``
removes every policy the driver installed; SAs are deleted by the engine beforehand.

Lifetimes: the engine rekeys and expires SAs by time itself; the kernel is given the
kilobyte limit (soft at ``SOFT_FRACTION``, hard at the limit) and, as a safety net when
ikecore is gone, a hard time limit ``HARD_MARGIN`` seconds after the engine's. Its EXPIRE
messages become ``Engine.ipsec_lifetime_expired`` (soft: rekey; hard: delete), for an
outbound SA through the inbound SA negotiated with it.

Every refusal of the kernel is a ``DriverError`` whose text names the request, the errno
and the kernel's words, e.g. ``XFRM_MSG_NEWSA: EPROTONOSUPPORT (Requested type not found)``
from a kernel without ESP; the engine counts it (Key Addition Failures, Key Update
Failures, Get SPI Failures). Keys go to Rust through the buffer protocol and are zeroized
there after the request.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ikecore import _core
from ikecore import events as ev
from ikecore.driver import DriverError, IpsecSaKeys
from ikecore.gateway.transport import local_address_towards
from ikecore.policy import GenericFilter
from ikecore.policy import selector_parts as ts_parts

__all__ = ["XfrmDriver", "Trap", "PRIORITY_BASE", "SPI_RANGE", "selector_parts"]

log = logging.getLogger("ikecore.gateway.xfrm")

PRIORITY_BASE = 65536             # kernel priority of a filter of weight 0 (lower is preferred)
SPI_RANGE = (0xC0000000, 0xCFFFFFFF)  # inbound SPIs the kernel allocates (strongSwan's range)
SOFT_FRACTION = 0.9               # soft byte limit: this share of the kilobyte lifetime
HARD_MARGIN = 60                  # seconds past the engine's lifetime the kernel deletes an SA
IKE_PORT = 500
NAT_T_PORT = 4500
MAX_NOTIFICATIONS = 64            # datagrams read per wake-up of the notification socket
UDP_ENCAP = 100                   # setsockopt(SOL_UDP, UDP_ENCAP, ...) of linux/udp.h
UDP_ENCAP_ESPINUDP = 2


def selector_parts(text: str) -> tuple[str, int, int]:
    """``policy.selector_parts`` with the network as the kernel takes it (a CIDR, host bits clear)."""
    network, protocol, port = ts_parts(text)
    return str(ipaddress.ip_network(network.strip(), strict=False)), protocol, port


def _reason(exc: Exception) -> str:
    """The one-line text of an XfrmSocket error (its strerror names request, errno and text)."""
    return str(exc.strerror) if isinstance(exc, OSError) and exc.strerror else str(exc)


def priority_of(weight: int) -> int:
    """A filter's Weight as a kernel policy priority (higher weight, lower number)."""
    return max(1, PRIORITY_BASE - max(0, weight))


@dataclass(frozen=True, slots=True)
class Trap:
    """The policies of one filter that names a peer and its traffic selectors."""

    filter_name: str
    local: str        # our gateway address
    remote: str       # the peer's
    local_ts: str     # CIDR
    remote_ts: str
    reqid: int
    priority: int
    mode: str
    fallback_to_clear: bool


@dataclass(frozen=True, slots=True)
class _Policy:
    src: str
    dst: str
    dir: str
    proto: int = 0
    sport: int = 0
    dport: int = 0


class XfrmDriver:
    """Quick Mode SAs and policies in the Linux kernel (``--driver xfrm``).

    Args:
        spi_range: inbound SPIs are allocated in this range (RFC 4303: above 255).
        replay_window: the anti-replay window of inbound SAs, in packets.
    """

    def __init__(self, *, spi_range: tuple[int, int] = SPI_RANGE, replay_window: int = 32) -> None:
        try:
            self._socket = _core.XfrmSocket()
            # the acquire and expire groups: refused without CAP_NET_ADMIN, so known at once
            self._events: Any = _core.XfrmSocket(notifications=True)
        except OSError as exc:
            raise DriverError(f"cannot open the kernel's XFRM netlink sockets: {_reason(exc)} "
                              "(needs Linux with XFRM and root: CAP_NET_ADMIN)") from None
        self.spi_range = spi_range
        self.replay_window = replay_window
        self.counters: Counter[str] = Counter()
        self.traps: dict[tuple[str, str], Trap] = {}          # (local_ts, remote_ts) -> trap
        self._gateway: Any = None
        self._reqids: dict[tuple[str, str], int] = {}
        self._larval: dict[bytes, tuple[str, str]] = {}       # SPI -> (source, destination)
        self._inbound: dict[bytes, IpsecSaKeys] = {}          # spi_in -> keys (installed)
        self._outbound: dict[bytes, tuple[str, str]] = {}     # spi_out -> (source, destination)
        self._pair: dict[bytes, bytes] = {}                   # spi_out -> spi_in
        self._last_outbound: IpsecSaKeys | None = None
        self._sa_policies: dict[bytes, list[_Policy]] = {}    # spi_in -> policies it brought
        self._policy_users: Counter[_Policy] = Counter()
        self._trap_policies: set[_Policy] = set()
        self._soft_policies: set[_Policy] = set()
        self._acquiring: dict[int, int] = {}                  # reqid -> acquire id in flight
        self._acquire_reqid: dict[int, int] = {}              # acquire id -> reqid
        self._acquire_flow: dict[int, tuple[str, str]] = {}   # acquire id -> (source, destination) host
        self._encapsulating: set[int] = set()                 # NAT-T socket descriptors marked UDP_ENCAP
        self._bypassing: set[int] = set()                     # IKE socket descriptors bypassing policies

    # --- IpsecDriver ------------------------------------------------------------------------

    def get_spi(self, source: str, destination: str, protocol_id: int) -> bytes:
        """Get SPI: the kernel allocates an SPI for a larval SA ``source`` -> ``destination`` (us)."""
        try:
            spi = self._socket.alloc_spi(source, destination, spi_min=self.spi_range[0],
                                         spi_max=self.spi_range[1])
        except (OSError, ValueError) as exc:
            raise DriverError(_reason(exc)) from None
        value = spi.to_bytes(4, "big")
        self._larval[value] = (source, destination)
        return value

    def add_outbound(self, sa: IpsecSaKeys) -> None:
        """Key Addition: XFRM_MSG_NEWSA of the outbound SA."""
        self._install(sa, update=False, outbound=True)
        self._outbound[sa.spi] = (sa.source, sa.destination)
        self._last_outbound = sa

    def update_inbound(self, sa: IpsecSaKeys) -> None:
        """Key Update: XFRM_MSG_UPDSA of the larval inbound SA, then the pair's policies. An SA
        whose SPI this kernel never allocated (restored from the SA store) is added instead."""
        self._install(sa, update=sa.spi in self._larval, outbound=False)
        self._larval.pop(sa.spi, None)
        self._inbound[sa.spi] = sa
        partner = self._last_outbound
        self._last_outbound = None
        if partner is not None and partner.destination == sa.source:
            self._pair[partner.spi] = sa.spi
        try:
            self._sa_policies[sa.spi] = self._install_sa_policies(sa)
        except DriverError:
            self._delete_sa(sa.spi, sa.destination, sa.source)
            self._inbound.pop(sa.spi, None)
            raise

    def delete(self, spi: bytes, destination: str, protocol_id: int) -> None:
        """XFRM_MSG_DELSA of the SA (``destination``, ``spi``); an inbound SA's policies go
        with the last SA that needs them. An SA the kernel no longer has is not an error."""
        inbound = self._inbound.pop(spi, None)
        larval = self._larval.pop(spi, None)
        outbound = self._outbound.pop(spi, None)
        self._pair.pop(spi, None)
        source = (inbound.source if inbound is not None else outbound[0] if outbound is not None
                  else larval[0] if larval is not None else None)
        failure: DriverError | None = None
        try:
            self._delete_sa(spi, destination, source)
        except DriverError as exc:
            failure = exc
        for policy in self._sa_policies.pop(spi, []):
            self._release(policy)
        if failure is not None:
            raise failure

    # --- the gateway's side ----------------------------------------------------------------

    def attach(self, gateway: Any) -> None:
        """Serve ``gateway``: install the traps of its filters and read the kernel's ACQUIRE
        and EXPIRE messages on its event loop."""
        self._gateway = gateway
        gateway.loop.add_reader(self._events.fileno(), self.read_notifications)
        gateway.add_listener(self._on_event)
        for flt in gateway.engine.config.filters:
            trap = self._trap_of(flt)
            if trap is not None:
                self._install_trap(trap)

    def close(self) -> None:
        """Stop reading the kernel; remove every policy this driver installed and the larval
        SAs of SPIs no SA took (installed SAs are the engine's to delete, or to keep with a store)."""
        gateway, self._gateway = self._gateway, None
        if self._events is not None:
            if gateway is not None:
                try:
                    gateway.loop.remove_reader(self._events.fileno())
                except (RuntimeError, ValueError):  # the loop is closed already
                    pass
                gateway.remove_listener(self._on_event)
            self._events = None
        for spi, (source, destination) in list(self._larval.items()):  # SPIs no SA ever used
            try:
                self._delete_sa(spi, destination, source)
            except DriverError as exc:
                log.warning("xfrm: larval SA %s not removed: %s", spi.hex(), exc)
        self._larval.clear()
        for policy in list(self._policy_users) + list(self._trap_policies) + list(self._soft_policies):
            self._remove_policy(policy)
        self._policy_users.clear()
        self._trap_policies.clear()
        self._soft_policies.clear()
        self._sa_policies.clear()

    def read_notifications(self) -> int:
        """Handle what the kernel sent (the event loop calls this when the socket is
        readable); returns how many notifications were handled."""
        events = self._events
        gateway = self._gateway
        if events is None or gateway is None:
            return 0
        try:
            notes = events.notifications(MAX_NOTIFICATIONS)
        except OSError as exc:
            gateway.faults.report("xfrm notifications", str(exc), gateway.loop.time())
            return 0
        lost = events.overruns - self.counters["overruns"]
        if lost > 0:
            self.counters["overruns"] += lost
            gateway.faults.report("xfrm notifications", f"{lost} lost (socket queue full)", gateway.loop.time())
        for note in notes:
            kind = note["type"]
            self.counters[f"kernel_{kind}"] += 1
            try:
                if kind == "acquire":
                    self._on_acquire(note)
                elif kind == "expire":
                    self._on_expire(note)
                elif kind == "policy_expire" and note.get("hard"):
                    self._soft_policies.discard(_Policy(note.get("src", ""), note.get("dst", ""), note["dir"]))
            except Exception as exc:  # noqa: BLE001 - one bad notification must not stop the reader
                self.counters["notification_errors"] += 1
                gateway.faults.report(f"xfrm {kind}", f"{type(exc).__name__}: {exc}", gateway.loop.time())
        if notes:
            gateway._flush()
        if gateway.monitor is not None:
            for key in ("acquire", "expire", "policy_expire"):
                gateway.monitor.extended[f"xfrm:{key}"] = self.counters[f"kernel_{key}"]
        return len(notes)

    # --- internals -----------------------------------------------------------------------

    def _reqid(self, local_ts: str, remote_ts: str) -> int:
        key = (local_ts, remote_ts)
        if key not in self._reqids:
            self._reqids[key] = len(self._reqids) + 1
        return self._reqids[key]

    def _trap_of(self, flt: GenericFilter) -> Trap | None:
        if not flt.local_ts or not flt.remote_ts:
            return None
        try:
            peer = ipaddress.ip_network(flt.destination, strict=False)
        except ValueError:
            return None  # any, me or a server keyword: no peer named
        if peer.num_addresses != 1:
            return None
        remote = str(peer.network_address)
        try:
            local = str(ipaddress.ip_address(flt.source))
        except ValueError:
            try:
                local = local_address_towards(remote)
            except OSError as exc:
                log.warning("xfrm: no trap for filter %r: no route to %s (%s)", flt.name, remote, exc.strerror)
                return None
        local_ts = selector_parts(flt.local_ts)[0]
        remote_ts = selector_parts(flt.remote_ts)[0]
        engine = self._gateway.engine if self._gateway is not None else None
        esp = engine.config.esp_policies.get(flt.esp_policy) if engine is not None else None
        mode = getattr(esp, "mode", "tunnel")
        return Trap(flt.name, local, remote, local_ts, remote_ts, self._reqid(local_ts, remote_ts),
                    priority_of(flt.weight), mode, flt.fallback_to_clear)

    def _install_trap(self, trap: Trap) -> None:
        self.traps[(trap.local_ts, trap.remote_ts)] = trap
        for policy, template in self._policies_for(trap.local, trap.remote, trap.local_ts, trap.remote_ts,
                                                   trap.reqid, trap.mode):
            try:
                self._add_policy(policy, trap.priority, template, trap.mode)
            except DriverError as exc:
                log.warning("xfrm: trap of filter %r not installed: %s", trap.filter_name, exc)
                continue
            self._trap_policies.add(policy)
        self.counters["traps"] += 1

    @staticmethod
    def _policies_for(local: str, remote: str, local_ts: str, remote_ts: str, reqid: int,
                      mode: str) -> Iterator[tuple[_Policy, tuple[str, str, int]]]:
        """Direction by direction: (policy, template (tunnel source, destination, reqid))."""
        lnet, lproto, lport = selector_parts(local_ts)
        rnet, rproto, rport = selector_parts(remote_ts)
        proto = lproto or rproto
        yield _Policy(lnet, rnet, "out", proto, lport, rport), (local, remote, reqid)
        yield _Policy(rnet, lnet, "in", proto, rport, lport), (remote, local, reqid)
        if mode == "tunnel":
            yield _Policy(rnet, lnet, "fwd", proto, rport, lport), (remote, local, reqid)

    def _add_policy(self, policy: _Policy, priority: int, template: tuple[str, str, int] | None, mode: str,
                    hard_seconds: int = 0) -> None:
        try:
            self._socket.add_policy(policy.src, policy.dst, policy.dir, priority, template, mode=mode,
                                    proto=policy.proto, sport=policy.sport, dport=policy.dport,
                                    hard_seconds=hard_seconds)
        except (OSError, ValueError) as exc:
            raise DriverError(_reason(exc)) from None

    def _remove_policy(self, policy: _Policy) -> None:
        try:
            self._socket.delete_policy(policy.src, policy.dst, policy.dir, proto=policy.proto,
                                       sport=policy.sport, dport=policy.dport)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # gone already (expired, or removed by someone else)
                log.warning("xfrm: policy %s -> %s %s not removed: %s", policy.src, policy.dst, policy.dir, exc)

    def _install_sa_policies(self, sa: IpsecSaKeys) -> list[_Policy]:
        """The policies of an inbound SA's selector pair that no trap installed."""
        self._bypass_ike_sockets()
        local_ts, remote_ts = sa.local_ts, sa.remote_ts
        key = (selector_parts(local_ts)[0], selector_parts(remote_ts)[0])
        trap = self.traps.get(key)
        reqid = self._reqid(local_ts, remote_ts) if trap is None else trap.reqid
        priority = trap.priority if trap is not None else priority_of(0)
        installed: list[_Policy] = []
        for policy, template in self._policies_for(sa.destination, sa.source, local_ts, remote_ts, reqid, sa.mode):
            if policy in self._trap_policies:
                continue
            if not self._policy_users[policy]:
                try:
                    self._add_policy(policy, priority, template, sa.mode)
                except DriverError:
                    for done in installed:
                        self._release(done)
                    raise
            self._policy_users[policy] += 1
            installed.append(policy)
        return installed

    def _release(self, policy: _Policy) -> None:
        self._policy_users[policy] -= 1
        if self._policy_users[policy] <= 0:
            del self._policy_users[policy]
            self._remove_policy(policy)

    def _install(self, sa: IpsecSaKeys, *, update: bool, outbound: bool) -> None:
        local_ts, remote_ts = sa.local_ts, sa.remote_ts
        trap = self.traps.get((selector_parts(local_ts)[0], selector_parts(remote_ts)[0]))
        reqid = trap.reqid if trap is not None else self._reqid(local_ts, remote_ts)
        lnet = selector_parts(local_ts)[0]
        rnet = selector_parts(remote_ts)[0]
        selector = (lnet, rnet) if outbound else (rnet, lnet)
        kilobytes = sa.lifetime_kilobytes or 0
        ports = (NAT_T_PORT, NAT_T_PORT) if sa.udp_encapsulation else None
        if ports is not None:
            self._encapsulate_nat_t_sockets()
        try:
            self._socket.add_sa(sa.source, sa.destination, int.from_bytes(sa.spi, "big"), sa.encryption,
                                sa.encryption_key, sa.integrity, sa.integrity_key, update=update, mode=sa.mode,
                                reqid=reqid, selector=selector,
                                soft_bytes=int(kilobytes * 1024 * SOFT_FRACTION) or None,
                                hard_bytes=kilobytes * 1024 or None,
                                hard_seconds=sa.lifetime + HARD_MARGIN if sa.lifetime else 0,
                                encap=ports, replay_window=0 if outbound else self.replay_window)
        except (OSError, ValueError) as exc:
            raise DriverError(_reason(exc)) from None

    def _bypass_ike_sockets(self) -> None:
        """The gateway's IKE sockets bypass every policy (strongSwan does the same), so that a
        policy covering the gateways' own addresses (host-to-host SAs) never holds IKE back."""
        gateway = self._gateway
        if gateway is None:
            return
        for sock in gateway.sockets():
            try:
                fd = sock.fileno()
                if fd < 0 or fd in self._bypassing:
                    continue
                _core.xfrm_socket_bypass(fd, sock.family == socket.AF_INET6)
            except OSError as exc:
                gateway.faults.report("xfrm IKE socket bypass", _reason(exc), gateway.loop.time())
                continue
            self._bypassing.add(fd)

    def _encapsulate_nat_t_sockets(self) -> None:
        """UDP-encapsulated ESP (RFC 3948) reaches the kernel's SAs only through an IKE socket
        marked UDP_ENCAP_ESPINUDP (the kernel then still hands IKE, with its non-ESP marker,
        and keepalives to the socket): mark the gateway's sockets other than port 500."""
        gateway = self._gateway
        if gateway is None:
            return
        for sock in gateway.sockets():
            try:
                fd, port = sock.fileno(), sock.getsockname()[1]
                if port == IKE_PORT or fd in self._encapsulating:
                    continue
                sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
            except OSError as exc:
                gateway.faults.report("xfrm UDP encapsulation", _reason(exc), gateway.loop.time())
                continue
            self._encapsulating.add(fd)

    def _delete_sa(self, spi: bytes, destination: str, source: str | None) -> None:
        try:
            self._socket.delete_sa(destination, int.from_bytes(spi, "big"), source)
        except OSError as exc:
            if exc.errno != errno.ESRCH:  # the kernel has no such SA (expired, or never added)
                raise DriverError(_reason(exc)) from None
        except ValueError as exc:
            raise DriverError(_reason(exc)) from None

    def _local_endpoint(self, address: str) -> tuple[str, int]:
        """The gateway's IKE endpoint for our address ``address`` (port 500 if it listens there)."""
        ports = [port for host, port in self._gateway.addresses()
                 if host == address or ipaddress.ip_address(host).is_unspecified]
        port = IKE_PORT if IKE_PORT in ports or not ports else min(ports)
        return address, port

    def _on_acquire(self, note: dict[str, Any]) -> None:
        """A packet matched a trap: negotiate (one acquire at a time per trap)."""
        gateway = self._gateway
        trap = self.traps.get((note.get("policy_src", ""), note.get("policy_dst", "")))
        reqid = note.get("reqid", 0) or (trap.reqid if trap is not None else 0)
        if reqid and reqid in self._acquiring:
            self.counters["acquires_merged"] += 1  # its negotiation is running already
            return
        self._bypass_ike_sockets()
        local = self._local_endpoint(note["local"])
        remote = (note["remote"], IKE_PORT)
        ident = gateway.engine.acquire(remote, local=local, now=gateway.loop.time(),
                                       filter_name=trap.filter_name if trap is not None else None)
        if reqid:
            self._acquiring[reqid] = ident
            self._acquire_reqid[ident] = reqid
        if note.get("flow_src") and note.get("flow_dst"):
            self._acquire_flow[ident] = (note["flow_src"].split("/")[0], note["flow_dst"].split("/")[0])

    def _on_expire(self, note: dict[str, Any]) -> None:
        spi: bytes = note["spi"]
        spi_in = spi if spi in self._inbound else self._pair.get(spi)
        if spi_in is None:
            self.counters["expires_ignored"] += 1  # a larval SA, or one that is not ours
            if note["hard"]:
                self._larval.pop(spi, None)
            return
        gateway = self._gateway
        if note["hard"] and spi != spi_in:  # the kernel removed the outbound SA already
            self._outbound.pop(spi, None)
        gateway.engine.ipsec_lifetime_expired(spi_in, gateway.loop.time(), hard=bool(note["hard"]))

    def _on_event(self, event: ev.Event) -> None:
        """Acquire results: the trap may acquire again; a soft SA lets clear text pass."""
        if isinstance(event, (ev.AcquireSucceeded, ev.AcquireFailed)):
            self._acquire_flow.pop(event.acquire, None)
            reqid = self._acquire_reqid.pop(event.acquire, None)
            if reqid is not None and self._acquiring.get(reqid) == event.acquire:
                del self._acquiring[reqid]
        elif isinstance(event, ev.SoftSaCreated):
            self._soft_sa(event)

    def _soft_sa(self, event: ev.SoftSaCreated) -> None:
        gateway = self._gateway
        reqid = self._acquire_reqid.get(event.acquire)
        trap = next((t for t in self.traps.values() if t.reqid == reqid), None)
        flow = self._acquire_flow.get(event.acquire)
        if trap is None or gateway is None or flow is None:
            return
        lifetime = max(1, int(event.expires - gateway.loop.time() + 0.5))
        # the flow's hosts, both ways: the trap's own selectors would replace the trap
        for policy in (_Policy(flow[0], flow[1], "out"), _Policy(flow[1], flow[0], "in")):
            try:
                self._add_policy(policy, max(0, trap.priority - 1), None, trap.mode, hard_seconds=lifetime)
            except DriverError as exc:
                gateway.faults.report("xfrm soft SA", str(exc), gateway.loop.time())
                continue
            self._soft_policies.add(policy)
        self.counters["soft_sas"] += 1
