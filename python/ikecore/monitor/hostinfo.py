"""The host's network configuration: what the filter keywords expand into.

Generic filters may name a keyword instead of an address (the IP Security Monitor document: My IP Address, DNS
Server, DHCP Server, WINS Servers, Default Gateway). The specific filters show the actual
addresses, read here from the host's real configuration:

* My IP Address: the interface addresses (``ip -j address show``; without iproute2, the
  kernel's ``/proc/net/fib_trie`` LOCAL entries and ``/proc/net/if_inet6``), loopback and
  IPv6 link-local left out;
* DNS Server: the ``nameserver`` lines of ``/etc/resolv.conf``;
* Default Gateway: the default routes of ``/proc/net/route`` and ``/proc/net/ipv6_route``;
* DHCP Server / WINS Servers: the gateway configuration when it names them, else the
  DHCP leases on this host (dhclient's ``dhcp-server-identifier`` and
  ``netbios-name-servers`` options, systemd-networkd's ``SERVER_ADDRESS``).

Every source is a parameter of ``HostConfig.read`` so tests feed a prepared host.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import socket
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HostConfig", "parse_ip_address_json", "parse_fib_trie", "parse_if_inet6", "parse_resolv_conf",
           "parse_route", "parse_ipv6_route", "parse_dhclient_leases", "parse_networkd_lease"]

DHCLIENT_LEASES = ("/var/lib/dhcp/dhclient*.leases", "/var/lib/dhclient/*.lease*")
NETWORKD_LEASES = ("/run/systemd/netif/leases/*",)


def _usable(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def parse_ip_address_json(text: str) -> tuple[str, ...]:
    """Interface addresses from ``ip -j address show``."""
    out = []
    for link in json.loads(text or "[]"):
        for info in link.get("addr_info", ()):
            local = info.get("local")
            if local and info.get("family") in ("inet", "inet6") and _usable(local):
                out.append(local)
    return _unique(out)


def parse_fib_trie(text: str) -> tuple[str, ...]:
    """IPv4 addresses the kernel treats as local (``/32 host LOCAL`` leaves)."""
    out, last = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif stripped.startswith("/32 host LOCAL") and last and _usable(last):
            out.append(last)
    return _unique(out)


def parse_if_inet6(text: str) -> tuple[str, ...]:
    """IPv6 interface addresses from ``/proc/net/if_inet6``."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            address = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
            if _usable(address):
                out.append(address)
    return _unique(out)


def parse_resolv_conf(text: str) -> tuple[str, ...]:
    out = []
    for line in text.splitlines():
        fields = line.split("#")[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(fields[1].split("%")[0])))
            except ValueError:
                continue
    return _unique(out)


def parse_route(text: str) -> tuple[str, ...]:
    """IPv4 default gateways from ``/proc/net/route`` (little-endian hex fields)."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        destination, gateway, flags, mask = fields[1], fields[2], int(fields[3], 16), fields[7]
        if int(destination, 16) == 0 and int(mask, 16) == 0 and flags & 0x2 and int(gateway, 16):
            out.append(socket.inet_ntoa(struct.pack("<I", int(gateway, 16))))
    return _unique(out)


def parse_ipv6_route(text: str) -> tuple[str, ...]:
    """IPv6 default gateways from ``/proc/net/ipv6_route``."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        if int(fields[0], 16) == 0 and int(fields[1], 16) == 0 and int(fields[4], 16):
            out.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[4]))))
    return _unique(out)


def parse_dhclient_leases(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DHCP servers, WINS servers) from a dhclient lease file, the latest lease's first."""
    dhcp: tuple[str, ...] = ()
    wins: tuple[str, ...] = ()
    for line in text.splitlines():
        fields = line.strip().rstrip(";").split(None, 2)
        if len(fields) == 3 and fields[0] == "option":
            values = tuple(v.strip() for v in fields[2].split(","))
            if fields[1] == "dhcp-server-identifier":
                dhcp = values  # a later lease replaces an earlier one
            elif fields[1] == "netbios-name-servers":
                wins = values
    return dhcp, wins


def parse_networkd_lease(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DHCP servers, WINS servers) from a systemd-networkd lease file."""
    dhcp: list[str] = []
    wins: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "SERVER_ADDRESS":
            dhcp.append(value.strip())
        elif key == "NETBIOS_NAME_SERVERS":  # not written by every version; read when present
            wins.extend(value.split())
    return _unique(dhcp), _unique(wins)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _ip_json() -> str | None:
    try:
        done = subprocess.run(["ip", "-j", "address", "show"], capture_output=True, text=True, timeout=2,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


@dataclass(frozen=True, slots=True)
class HostConfig:
    """The addresses each filter keyword stands for on this host."""

    my_addresses: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()
    dhcp_servers: tuple[str, ...] = ()
    wins_servers: tuple[str, ...] = ()
    default_gateways: tuple[str, ...] = ()

    @classmethod
    def read(cls, *, ip_address_json: str | None = None, fib_trie: str = "/proc/net/fib_trie",
             if_inet6: str = "/proc/net/if_inet6", resolv_conf: str = "/etc/resolv.conf",
             route: str = "/proc/net/route", ipv6_route: str = "/proc/net/ipv6_route",
             dhcp_servers: Sequence[str] = (), wins_servers: Sequence[str] = (),
             dhclient_leases: Sequence[str] = DHCLIENT_LEASES,
             networkd_leases: Sequence[str] = NETWORKD_LEASES) -> HostConfig:
        """Read the host's configuration; every file, command output and lease glob can be injected.

        ``ip_address_json`` is the output of ``ip -j address show``; None runs the command
        (and falls back to the /proc files when iproute2 is missing). Configured DHCP and
        WINS servers win over what the leases say.
        """
        text = ip_address_json if ip_address_json is not None else _ip_json()
        if text is not None:
            mine = parse_ip_address_json(text)
        else:
            mine = parse_fib_trie(_read(fib_trie)) + parse_if_inet6(_read(if_inet6))
        lease_dhcp: list[str] = []
        lease_wins: list[str] = []
        for pattern in dhclient_leases:
            for path in sorted(glob.glob(pattern)):
                found = parse_dhclient_leases(_read(path))
                lease_dhcp += found[0]
                lease_wins += found[1]
        for pattern in networkd_leases:
            for path in sorted(glob.glob(pattern)):
                found = parse_networkd_lease(_read(path))
                lease_dhcp += found[0]
                lease_wins += found[1]
        return cls(my_addresses=_unique(mine),
                   dns_servers=parse_resolv_conf(_read(resolv_conf)),
                   dhcp_servers=_unique(list(dhcp_servers)) or _unique(lease_dhcp),
                   wins_servers=_unique(list(wins_servers)) or _unique(lease_wins),
                   default_gateways=parse_route(_read(route)) + parse_ipv6_route(_read(ipv6_route)))

    def expand(self, pattern: str) -> tuple[str, ...]:
        """The addresses a filter's Source or Destination stands for (itself if not a keyword)."""
        table = {"me": self.my_addresses, "dns": self.dns_servers, "dhcp": self.dhcp_servers,
                 "wins": self.wins_servers, "gateway": self.default_gateways}
        return table.get(pattern, (pattern,))
