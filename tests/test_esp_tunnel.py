"""The README's tunnel recipe, exactly as written, ikecore to ikecore with ``--driver userland``.

Two namespaces joined by a veth (192.0.2.1 and 192.0.2.2 outside, 10.1.0.1 and 10.2.0.1
inside); ``ikecore serve`` in b, ``ikecore connect ... --keep`` in a. Independent truth:
the kernel's ping and iperf3 (the packets cross only if both ends' ESP agree), and tshark
on the veth: without keys it sees nothing but ESP (IP protocol 50) and IKE between the
two outer addresses; given the ``esp_sa`` records of ``--keylog`` it decrypts the inner
ICMP and finds every ICV good.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from interop import netns
from tunnel import IkecoreEnd, esp_options, require_tools, same_records, tools_missing

pytestmark = pytest.mark.interop("netns", "tshark")

FIELDS = ["ip.src", "ip.dst", "ip.proto", "udp.srcport", "udp.dstport", "icmp.type",
          "esp.spi", "esp.icv_good", "esp.icv_bad"]


def _inner(address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network("10.0.0.0/8")


def test_recipe_ping_crosses_as_esp_only_and_tshark_decrypts_it(tmp_path: Path) -> None:
    require_tools(tools_missing())
    pcap = tmp_path / "veth.pcapng"
    with netns.recipe_pair() as pair, IkecoreEnd.serve(pair, tmp_path) as b:
        with netns.capture(pair.ns_a, pair.if_a, pcap):
            with IkecoreEnd.connect(pair, tmp_path) as a:
                records = a.wait_tunnel()
                b.wait_tunnel()
                # both ends wrote the same two SAs (one per direction), keys included
                assert len(records) == 2 and same_records(records, b.esp_records())
                # the route to the remote selector leaves by the tunnel with the inner source
                route = [line for line in a.routes().splitlines() if line.startswith("10.2.0.0/24")]
                assert route and "src 10.1.0.1" in route[0], a.routes()
                assert netns.ping(pair.ns_a, "10.1.0.1", "10.2.0.1", 5) == 5
                assert a.running() and b.running()
            # the route goes away with the SA (here: with the process that held it)
            deadline = time.monotonic() + 10
            while "10.2.0.0/24" in a.routes() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "10.2.0.0/24" not in a.routes()

    outer = netns.frames(pcap, FIELDS, display_filter="ip")
    between = [f for f in outer if {f["ip.src"][0], f["ip.dst"][0]} == {"192.0.2.1", "192.0.2.2"}]
    esp = [f for f in between if f["ip.proto"] == ["50"]]
    ike = [f for f in between if f["ip.proto"] == ["17"]
           and {f["udp.srcport"][0], f["udp.dstport"][0]} <= {"500", "4500"}]
    assert len(esp) >= 10  # 5 echo requests and 5 replies, nothing else carries them
    assert len(esp) + len(ike) == len(between), [f for f in between if f not in esp + ike]
    # no other IPv4 unicast on the wire (the kernel's own multicast, such as IGMP, aside)
    unicast = [f for f in outer if not ipaddress.ip_address(f["ip.dst"][0]).is_multicast
               and f["ip.dst"][0] != "192.0.2.255"]
    assert len(unicast) == len(between), [f for f in unicast if f not in between]
    assert not any(_inner(addr) for f in outer for addr in f["ip.src"] + f["ip.dst"])
    assert {int(f["esp.spi"][0], 16) for f in esp} == {int(r.split(",")[3].strip('"'), 16) for r in records}
    # without keys tshark finds no ICMP; with the key log's records it decrypts all of it
    assert netns.frames(pcap, FIELDS, display_filter="icmp") == []
    icmp = netns.frames(pcap, FIELDS, options=esp_options(records), display_filter="icmp")
    requests = [f for f in icmp if f["icmp.type"] == ["8"]]
    replies = [f for f in icmp if f["icmp.type"] == ["0"]]
    assert len(requests) == 5 and len(replies) == 5, icmp
    assert all(f["ip.src"] == ["192.0.2.1", "10.1.0.1"] and f["ip.dst"] == ["192.0.2.2", "10.2.0.1"]
               for f in requests)
    assert all(f["ip.src"] == ["192.0.2.2", "10.2.0.1"] and f["ip.dst"] == ["192.0.2.1", "10.1.0.1"]
               for f in replies)
    assert all(f["esp.icv_good"] == ["1"] and f["esp.icv_bad"] == ["0"] for f in icmp)


def test_recipe_carries_a_tcp_transfer(tmp_path: Path) -> None:
    require_tools(tools_missing())
    with netns.recipe_pair() as pair, IkecoreEnd.serve(pair, tmp_path) as b, \
            IkecoreEnd.connect(pair, tmp_path) as a:
        a.wait_tunnel()
        b.wait_tunnel()
        # the responder's side sends first too: its SA and route work in that direction
        assert netns.ping(pair.ns_b, "10.2.0.1", "10.1.0.1", 2) == 2
        result = netns.iperf3(pair.ns_b, "10.2.0.1", pair.ns_a, "10.1.0.1", seconds=3)
        # 3 s of TCP through the tunnel: megabytes, not a trickle of retransmissions
        assert result["bytes"] > 10_000_000, result
        assert a.running() and b.running()


def test_recipe_pair_is_removed_with_what_runs_inside_even_on_failure() -> None:
    require_tools(netns.available())
    with pytest.raises(ZeroDivisionError):
        with netns.recipe_pair() as pair:
            sleeper = netns.spawn(pair.ns_a, ["sleep", "60"])
            # the pair is usable: the veth carries a ping between the outer addresses
            assert netns.ping(pair.ns_a, pair.addr_a, pair.addr_b, 1) == 1
            1 / 0
    assert sleeper.wait(timeout=10) is not None and sleeper.returncode != 0
    assert not netns.exists(pair.ns_a) and not netns.exists(pair.ns_b)


def test_recipe_with_nat_t_forced_carries_esp_in_udp_4500(tmp_path: Path) -> None:
    """``--nat-t force`` on both ends: IKE floats to 4500 and ESP is UDP-encapsulated
    (RFC 3948) on the same port; tshark decodes it as udpencap and decrypts the ICMP."""
    require_tools(tools_missing())
    pcap = tmp_path / "veth.pcapng"
    force = ("--nat-t", "force")
    with netns.recipe_pair() as pair, IkecoreEnd.serve(pair, tmp_path, extra=force) as b:
        with netns.capture(pair.ns_a, pair.if_a, pcap), \
                IkecoreEnd.connect(pair, tmp_path, extra=force) as a:
            records = a.wait_tunnel()
            b.wait_tunnel()
            assert netns.ping(pair.ns_a, "10.1.0.1", "10.2.0.1", 3) == 3
    outer = netns.frames(pcap, FIELDS, display_filter="ip")
    assert outer and all(f["ip.proto"] == ["17"] for f in outer)  # no raw ESP at all
    esp = [f for f in outer if f["esp.spi"]]
    assert len(esp) >= 6 and all({f["udp.srcport"][0], f["udp.dstport"][0]} == {"4500"} for f in esp)
    icmp = netns.frames(pcap, FIELDS, options=esp_options(records), display_filter="icmp")
    assert sorted(f["icmp.type"][0] for f in icmp) == ["0"] * 3 + ["8"] * 3, icmp
    assert all(f["esp.icv_good"] == ["1"] for f in icmp)
