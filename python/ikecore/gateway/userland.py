"""The userland IPsec driver: ESP (RFC 4303, tunnel mode) behind a TUN device.

``UserlandDriver`` implements ``ikecore.driver.IpsecDriver`` over the Rust data plane
(``ikecore._core.EspDataplane``, ``rust/esp/``): the Quick Mode SAs go into its tables,
and its own threads move packets between the TUN device (``ikecore0`` by default) and
raw ESP sockets (IP protocol 50), or the IKE SA's UDP socket when the SA is
UDP-encapsulated (RFC 3948). Python never touches a packet on those paths; ESP that
reaches the gateway's NAT-T socket is handed in by the gateway (``receive_esp``).

Routing (rtnetlink, from Rust): each outbound SA's remote traffic selector gets a route to the TUN device
with the local inner address as source (an address of this host inside the local
traffic selector; a host selector that no interface holds is put on the TUN device).
A route lives while an SA for that selector does; rekeyed SAs share it. A selector that
holds the peer's own address gets no route (its ESP would go back into the TUN device):
such host-to-host SAs carry only what reaches the TUN device otherwise.

Lifetimes: the data plane counts bytes per SA; at 90% of ``lifetime_kilobytes`` (soft)
and at 100% (hard) it queues an expiry, which ``attach`` hands to the engine from the
event loop every half second (``Engine.ipsec_lifetime_expired``: rekey, then delete).

Needs CAP_NET_ADMIN (TUN device, routes) and CAP_NET_RAW (raw ESP sockets).
"""

from __future__ import annotations

import ipaddress
import subprocess
from typing import Any

from ikecore.driver import DriverError, IpsecSaKeys, free_spi

__all__ = ["UserlandDriver", "DEFAULT_TUN", "SOFT_FRACTION", "esp_sa_lines"]

DEFAULT_TUN = "ikecore0"
DEFAULT_MTU = 1400        # 1500 minus the outer IPv4 header, UDP, ESP header, IV, padding and ICV
SOFT_FRACTION = 0.9       # soft expiry at this share of the byte lifetime
POLL_SECONDS = 0.5        # how often expiries are handed to the engine
_IP_TIMEOUT = 10.0        # seconds an ``ip`` command (link set, addr add) may take

_WIRESHARK_ENCRYPTION = {"aes128": "AES-CBC [RFC3602]", "aes192": "AES-CBC [RFC3602]",
                         "aes256": "AES-CBC [RFC3602]", "3des": "TripleDES-CBC [RFC2451]",
                         "des": "DES-CBC [RFC2405]"}
_WIRESHARK_INTEGRITY = {"md5": "HMAC-MD5-96 [RFC2403]", "sha1": "HMAC-SHA-1-96 [RFC2404]",
                        "sha256": "HMAC-SHA-256-128 [RFC4868]", "sha384": "HMAC-SHA-384-192 [RFC4868]",
                        "sha512": "HMAC-SHA-512-256 [RFC4868]"}


def esp_sa_lines(sa: IpsecSaKeys) -> list[str]:
    """Wireshark's ESP SA table (``esp_sa`` UAT) line for one SA direction, as
    ``tshark -o 'uat:esp_sa:LINE'`` takes it; [] for an algorithm it does not name."""
    encryption = _WIRESHARK_ENCRYPTION.get(sa.encryption)
    integrity = _WIRESHARK_INTEGRITY.get(sa.integrity)
    if encryption is None or integrity is None:
        return []
    family = "IPv6" if ":" in sa.destination else "IPv4"
    return [f'"{family}","{sa.source}","{sa.destination}","0x{sa.spi.hex()}","{encryption}",'
            f'"0x{bytes(sa.encryption_key).hex()}","{integrity}","0x{bytes(sa.integrity_key).hex()}"']


def _ip(*args: str) -> None:
    """Run ``ip ARGS``; DriverError with its message when it fails."""
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(f"ip {' '.join(args)}: {exc}") from None
    if done.returncode != 0:
        raise DriverError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _route(add: bool, destination: str, device: str, source: str | None = None) -> None:
    """``ip route replace|del DESTINATION dev DEVICE [src SOURCE]`` over rtnetlink."""
    from ikecore import _core

    try:
        _core.esp_route(add, destination, device, source)
    except OSError as exc:
        verb = "replace" if add else "del"
        raise DriverError(f"ip route {verb} {destination} dev {device}: {exc.strerror or exc}") from None


def _holds(network: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def _kilobytes(limit: int | None) -> tuple[int, int]:
    """(soft, hard) byte limits of a lifetime in kilobytes (0: none)."""
    if not limit:
        return 0, 0
    hard = limit * 1024
    return int(hard * SOFT_FRACTION), hard


class UserlandDriver:
    """Quick Mode SAs into the userland ESP data plane (see the module notes).

    Args:
        tun_name: the TUN device to create (or open).
        mtu: the TUN device's MTU (room for the ESP overhead below a 1500-byte path).
        dataplane: an ``EspDataplane`` to use instead of starting one (tests).
    """

    def __init__(self, tun_name: str = DEFAULT_TUN, *, mtu: int = DEFAULT_MTU, dataplane: Any = None) -> None:
        from ikecore import _core

        if dataplane is None:
            try:
                dataplane = _core.EspDataplane.start(tun_name)
            except OSError as exc:
                reason = str(exc.strerror or exc).split(" (os error")[0]
                raise DriverError(f"cannot open TUN device {tun_name} and raw ESP sockets: {reason} "
                                  "(needs root: CAP_NET_ADMIN and CAP_NET_RAW)") from None
            try:
                _ip("link", "set", "dev", dataplane.tun_name, "mtu", str(mtu), "txqueuelen", "1000", "up")
            except DriverError:
                dataplane.close()
                raise
        self.dataplane = dataplane
        self.tun_name: str | None = dataplane.tun_name
        self.inbound: dict[bytes, IpsecSaKeys | None] = {}
        self.outbound: dict[tuple[bytes, str], IpsecSaKeys] = {}
        self._pair: dict[bytes, bytes] = {}            # outbound SPI -> inbound SPI of one Quick Mode
        self._last_outbound: bytes | None = None
        self._routes: dict[str, int] = {}              # remote traffic selector -> SAs using its route
        self._tun_addresses: set[str] = set()
        self._gateway: Any = None
        self._poller: Any = None
        #: outbound SAs whose remote selector holds the peer's own address: routing it to the
        #: TUN device would send the ESP (and IKE) back into it, so they get no route
        self.unrouted = 0
        self.udp_dropped = 0

    # --- IpsecDriver ----------------------------------------------------------------------

    def get_spi(self, source: str, destination: str, protocol_id: int) -> bytes:
        spi = free_spi(self.inbound)
        self.inbound[spi] = None
        return spi

    def add_outbound(self, sa: IpsecSaKeys) -> None:
        if sa.mode != "tunnel":
            raise DriverError(f"the userland driver does tunnel mode only, not {sa.mode}")
        soft, hard = _kilobytes(sa.lifetime_kilobytes)
        port, fd = 0, None
        if sa.udp_encapsulation:
            port, fd = self._udp_path(sa)
        try:
            self.dataplane.add_outbound(sa.spi, sa.destination, sa.encryption, sa.encryption_key, sa.integrity,
                                        sa.integrity_key, sa.local_ts, sa.remote_ts, port=port,
                                        soft_bytes=soft, hard_bytes=hard, udp_fd=fd)
        except (ValueError, OSError) as exc:
            raise DriverError(str(exc)) from None
        self.outbound[(sa.spi, sa.destination)] = sa
        self._last_outbound = sa.spi
        if _holds(sa.remote_ts, sa.destination):
            self.unrouted += 1  # its ESP would loop back into the TUN device: no route
        else:
            self._add_route(sa.remote_ts, sa.local_ts)

    def update_inbound(self, sa: IpsecSaKeys) -> None:
        if sa.spi not in self.inbound:
            raise DriverError(f"inbound SPI {sa.spi.hex()} was not allocated by get_spi")
        soft, hard = _kilobytes(sa.lifetime_kilobytes)
        try:
            self.dataplane.add_inbound(sa.spi, sa.encryption, sa.encryption_key, sa.integrity, sa.integrity_key,
                                       remote_ts=sa.remote_ts, soft_bytes=soft, hard_bytes=hard)
        except ValueError as exc:
            raise DriverError(str(exc)) from None
        self.inbound[sa.spi] = sa
        if self._last_outbound is not None:
            self._pair[self._last_outbound] = sa.spi
            self._last_outbound = None

    def restore(self, outbound: IpsecSaKeys, inbound: IpsecSaKeys) -> None:
        """Take back both directions of an SA saved before a restart (SA store)."""
        self.inbound.setdefault(inbound.spi, None)
        self.add_outbound(outbound)
        self.update_inbound(inbound)

    def delete(self, spi: bytes, destination: str, protocol_id: int) -> None:
        if spi in self.inbound:
            self.inbound.pop(spi, None)
            self.dataplane.delete_inbound(spi)
        sa = self.outbound.pop((spi, destination), None)
        if sa is not None:
            self.dataplane.delete_outbound(spi, destination)
            self._pair.pop(spi, None)
            if not _holds(sa.remote_ts, sa.destination):
                self._remove_route(sa.remote_ts)

    # --- counters ---------------------------------------------------------------------------

    def counters(self, spi_in: bytes, spi_out: bytes) -> dict[str, int] | None:
        """ESP counters of one Quick Mode SA: bytes and packets each way, and the inbound
        drops (replay, ICV failures, padding errors). None when the SA is not here."""
        inbound = self.dataplane.counters(spi_in, False)
        outbound = self.dataplane.counters(spi_out, True)
        if inbound is None and outbound is None:
            return None
        inbound = inbound or {}
        outbound = outbound or {}
        return {"bytes_in": inbound.get("bytes", 0), "packets_in": inbound.get("packets", 0),
                "bytes_out": outbound.get("bytes", 0), "packets_out": outbound.get("packets", 0),
                "replay_drops": inbound.get("replay_drops", 0), "icv_failures": inbound.get("icv_failures", 0),
                "padding_errors": inbound.get("padding_errors", 0)}

    def stats(self) -> dict[str, int]:
        """Data plane counters: unknown_spi, no_sa, malformed, send_errors, tun_errors."""
        return dict(self.dataplane.stats())

    # --- the gateway ------------------------------------------------------------------------

    def attach(self, gateway: Any) -> None:
        """Serve ``gateway``: take the ESP arriving on its NAT-T sockets, send
        UDP-encapsulated ESP from its sockets, hand lifetime expiries to its engine."""
        self._gateway = gateway
        gateway.esp_sink = self.receive_esp
        gateway.esp_flush = self.flush_esp
        self._poller = gateway.loop.call_later(POLL_SECONDS, self.poll_expiries)

    def receive_esp(self, data: bytes, remote: tuple[str, int]) -> None:
        """UDP-encapsulated ESP from ``remote`` (RFC 3948): decapsulated to the TUN device."""
        try:
            self.dataplane.receive_udp(data, remote[0].partition("%")[0], remote[1])
        except ValueError:  # an address the data plane cannot name: dropped
            self.udp_dropped += 1

    def flush_esp(self) -> None:
        """Write what ``receive_esp`` held back to coalesce (after each batch)."""
        self.dataplane.flush_udp()

    def poll_expiries(self) -> int:
        """Hand the byte-lifetime expiries to the engine (soft: rekey, hard: delete)."""
        gateway = self._gateway
        if gateway is None:
            return 0
        self._poller = gateway.loop.call_later(POLL_SECONDS, self.poll_expiries)
        expiries = self.dataplane.take_expiries()
        for spi, outbound, hard in expiries:
            spi_in = self._pair.get(spi) if outbound else spi
            if spi_in is not None:
                gateway.engine.ipsec_lifetime_expired(spi_in, gateway.loop.time(), hard=hard)
        if expiries:
            gateway._flush()
        return len(expiries)

    def close(self) -> None:
        """Stop the data plane: the TUN device and its routes go with it."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._gateway is not None and getattr(self._gateway, "esp_sink", None) == self.receive_esp:
            self._gateway.esp_sink = None
            self._gateway.esp_flush = None
        self.dataplane.close()
        from ikecore import _core

        self.dataplane = _core.EspDataplane.detached()  # the last reference: the device closes now
        for sa in list(self.outbound.values()) + [s for s in self.inbound.values() if s is not None]:
            for key in (sa.encryption_key, sa.integrity_key):
                if isinstance(key, bytearray):
                    key[:] = bytes(len(key))
        self.outbound.clear()
        self.inbound.clear()
        self._routes.clear()

    # --- internals --------------------------------------------------------------------------

    def _udp_path(self, sa: IpsecSaKeys) -> tuple[int, int | None]:
        """(peer port, socket fd) for a UDP-encapsulated SA: the ports of the ISAKMP SA
        between these addresses (the newest), else 4500 from the gateway's NAT-T socket."""
        gateway = self._gateway
        if gateway is None:
            return 4500, None
        local_port, remote_port = 4500, 4500
        candidates = [s for s in gateway.engine.sas() if s.local[0] == sa.source and s.remote[0] == sa.destination]
        if candidates:
            newest = max(candidates, key=lambda s: s.handle)
            local_port, remote_port = newest.local[1], newest.remote[1]
        endpoint = gateway._endpoint_for((sa.source, local_port))
        sock = endpoint.transport.get_extra_info("socket") if endpoint is not None and endpoint.transport else None
        return remote_port, (sock.fileno() if sock is not None else None)

    def _add_route(self, remote_ts: str, local_ts: str) -> None:
        if self.tun_name is None:
            return
        if self._routes.get(remote_ts):
            self._routes[remote_ts] += 1
            return
        source = self._inner_address(local_ts)
        if source is not None and ipaddress.ip_address(source).version != ipaddress.ip_network(remote_ts).version:
            source = None
        _route(True, remote_ts, self.tun_name, source)
        self._routes[remote_ts] = 1

    def _remove_route(self, remote_ts: str) -> None:
        if self.tun_name is None or remote_ts not in self._routes:
            return
        self._routes[remote_ts] -= 1
        if self._routes[remote_ts] <= 0:
            del self._routes[remote_ts]
            try:
                _route(False, remote_ts, self.tun_name)
            except DriverError:
                pass  # gone with the device already

    def _inner_address(self, local_ts: str) -> str | None:
        """An address of this host inside ``local_ts``; a host selector nobody holds goes
        on the TUN device."""
        from ikecore import _core

        network = ipaddress.ip_network(local_ts, strict=False)
        for address in _core.host_addresses():
            try:
                if ipaddress.ip_address(address) in network:
                    return address
            except ValueError:
                continue
        if network.num_addresses == 1 and self.tun_name is not None:
            address = str(network.network_address)
            if address not in self._tun_addresses:
                _ip("addr", "add", f"{address}/{network.max_prefixlen}", "dev", self.tun_name)
                self._tun_addresses.add(address)
            return address
        return None
