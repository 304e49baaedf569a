"""Views: keyword expansion against a prepared host, columns, sorting, formats, DNS names."""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import threading
import time
from pathlib import Path

import pytest

from ikecore import policy
from ikecore.config import config_from_dict
from ikecore.monitor.hostinfo import HostConfig, parse_fib_trie, parse_ip_address_json
from ikecore.monitor.counters import Monitor, Statistic
from ikecore.monitor.views import COLUMNS, DEFAULT_COLUMNS, VIEWS, DnsNameCache, Views, ViewError, parse_columns, render
from tests.helpers import RESPONDER, Link, make_config

IP_JSON = json.dumps([
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8},
                                   {"family": "inet6", "local": "::1", "prefixlen": 128}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "198.51.100.7", "prefixlen": 24},
                                     {"family": "inet6", "local": "2001:db8::7", "prefixlen": 64},
                                     {"family": "inet6", "local": "fe80::1", "prefixlen": 64}]},
])
RESOLV = "# generated\nsearch example.net\nnameserver 198.51.100.53\nnameserver 2001:db8::53\noptions edns0\n"
ROUTE = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
         "eth0\t00000000\t016433C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"       # default via 198.51.100.1
         "eth0\t006433C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
IPV6_ROUTE = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
              "20010db8000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n"
              "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 "
              "00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n")
LEASE = """lease {
  interface "eth0";
  fixed-address 198.51.100.7;
  option dhcp-server-identifier 198.51.100.2;
  option netbios-name-servers 198.51.100.20, 198.51.100.21;
}
"""
FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 203.0.113.0/24 2 0 2
           |-- 203.0.113.9
              /32 host LOCAL
        |-- 203.0.113.255
           /32 link BROADCAST
"""


@pytest.fixture
def host_files(tmp_path: Path) -> dict[str, str]:
    files = {"resolv_conf": RESOLV, "route": ROUTE, "ipv6_route": IPV6_ROUTE, "fib_trie": FIB_TRIE,
             "if_inet6": "20010db8000000000000000000000009 02 40 00 80 eth0\n", "lease": LEASE}
    paths = {}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        paths[name] = str(tmp_path / name)
    return paths


def _host(paths: dict[str, str], **kwargs: object) -> HostConfig:
    return HostConfig.read(ip_address_json=IP_JSON, resolv_conf=paths["resolv_conf"], route=paths["route"],
                           ipv6_route=paths["ipv6_route"], dhclient_leases=(paths["lease"],),
                           networkd_leases=(), **kwargs)  # type: ignore[arg-type]


def test_host_configuration_is_read_from_its_sources(host_files: dict[str, str]) -> None:
    host = _host(host_files)
    assert host.my_addresses == ("198.51.100.7", "2001:db8::7")      # no loopback, no link-local
    assert host.dns_servers == ("198.51.100.53", "2001:db8::53")
    assert host.default_gateways == ("198.51.100.1", "2001:db8::1")
    assert host.dhcp_servers == ("198.51.100.2",)
    assert host.wins_servers == ("198.51.100.20", "198.51.100.21")
    configured = _host(host_files, dhcp_servers=("192.0.2.67",), wins_servers=("192.0.2.137",))
    assert configured.dhcp_servers == ("192.0.2.67",) and configured.wins_servers == ("192.0.2.137",)


def test_without_iproute2_the_kernel_tables_give_my_addresses(host_files: dict[str, str]) -> None:
    assert parse_fib_trie(FIB_TRIE) == ("203.0.113.9",)
    host = HostConfig.read(ip_address_json=None, fib_trie=host_files["fib_trie"], if_inet6=host_files["if_inet6"],
                           resolv_conf=host_files["resolv_conf"], route=host_files["route"],
                           ipv6_route=host_files["ipv6_route"], dhclient_leases=(), networkd_leases=())
    # ip -j runs when present; either way the answer comes from this host's real tables.
    assert host.my_addresses
    assert parse_ip_address_json(IP_JSON) == ("198.51.100.7", "2001:db8::7")


def test_this_hosts_real_configuration_is_readable() -> None:
    host = HostConfig.read()
    resolv = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
    assert len(host.dns_servers) == sum(1 for line in resolv.splitlines() if line.split()[:1] == ["nameserver"])


def _keyword_config() -> object:
    return config_from_dict({
        "gateway": {"dhcp_servers": ["192.0.2.67"], "wins_servers": ["192.0.2.137", "192.0.2.138"]},
        "filter": [
            {"name": "to dns", "source": "me", "destination": "dns", "psk": "a", "weight": 5},
            {"name": "to dhcp", "source": "me", "destination": "dhcp", "psk": "a", "mirrored": False},
            {"name": "to wins", "source": "me", "destination": "wins", "psk": "a"},
            {"name": "to gateway", "source": "me", "destination": "gateway", "psk": "a",
             "connection_type": "lan"},
            {"name": "anyone", "source": "me", "destination": "any", "psk": "a"},
        ]})


def test_generic_filters_show_keywords_and_specific_filters_expand_them(host_files: dict[str, str]) -> None:
    config = _keyword_config()
    link = Link(make_config(), config)  # type: ignore[arg-type]
    host = _host(host_files, dhcp_servers=config.dhcp_servers,  # type: ignore[attr-defined]
                 wins_servers=config.wins_servers)  # type: ignore[attr-defined]
    views = Views(link.responder, Monitor(), host=host)
    generic = views.query("main-mode", "generic-filters")["rows"]
    assert [(r["name"], r["source"], r["destination"]) for r in generic] == [
        ("to dns", "My IP Address", "DNS Server"), ("to dhcp", "My IP Address", "DHCP Server"),
        ("to wins", "My IP Address", "WINS Servers"), ("to gateway", "My IP Address", "Default Gateway"),
        ("anyone", "My IP Address", "Any IP Address")]
    assert generic[0]["authentication_methods"] == "Preshared key"
    specific = views.query("main-mode", "specific-filters", "name,source,destination,direction,weight")["rows"]
    got = {(r["name"], r["source"], r["destination"], r["direction"], r["weight"]) for r in specific}
    expected = set()
    for mine in host.my_addresses:
        for dns in host.dns_servers:
            expected |= {("to dns", mine, dns, "outbound", 5), ("to dns", dns, mine, "inbound", 5)}
        expected.add(("to dhcp", mine, "192.0.2.67", "outbound", 0))          # not mirrored
        for wins in ("192.0.2.137", "192.0.2.138"):
            expected |= {("to wins", mine, wins, "outbound", 0), ("to wins", wins, mine, "inbound", 0)}
        for gw in host.default_gateways:
            expected |= {("to gateway", mine, gw, "outbound", 0), ("to gateway", gw, mine, "inbound", 0)}
    # keywords expand to both families: a specific filter pairs addresses of one family only
    expected = {e for e in expected if ipaddress.ip_address(e[1]).version == ipaddress.ip_address(e[2]).version}
    assert ("to dns", "2001:db8::7", "2001:db8::53", "outbound", 5) in got
    assert ("to dns", "2001:db8::7", "198.51.100.53", "outbound", 5) not in got
    assert not [r for r in got if r[0] == "to wins" and ":" in r[1] + r[2]]   # IPv4 WINS servers only
    assert got == expected  # "anyone" has no specific filter until a connection uses it


def test_a_connection_makes_its_filter_specific() -> None:
    link = Link()
    link.connect()
    views = Views(link.responder, Monitor(), host=HostConfig(my_addresses=("127.0.0.1",)))
    rows = views.query("main-mode", "specific-filters")["rows"]
    assert {(r["source"], r["destination"], r["direction"]) for r in rows} == {
        ("127.0.0.1", "127.0.0.2", "outbound"), ("127.0.0.2", "127.0.0.1", "inbound")}


def _established_views(peers: int = 3) -> tuple[Link, Views]:
    link = Link()
    for i in range(peers):
        link.initiator.initiate(RESPONDER, local=(f"127.0.0.{10 + i}", 500), now=link.now)
    link.pump(rounds=100)
    monitor = Monitor()
    for event in link.events["responder"]:
        monitor.observe(event)
    return link, Views(link.responder, monitor, clock=lambda: link.now, wall=lambda: 1_800_000_000.0,
                       host=HostConfig())


def test_security_associations_have_the_seed_columns_and_more() -> None:
    link, views = _established_views()
    result = views.query("main-mode", "security-associations", all_columns=True)
    assert result["columns"][:8] == ["me", "my_id", "peer", "peer_id", "authentication", "encryption",
                                     "integrity", "diffie_hellman"]
    row = result["rows"][0]
    assert {"initiator_cookie", "responder_cookie", "state", "role", "created", "lifetime_left", "nat",
            "vendor_ids", "quick_modes"} <= set(row)
    sa = link.responder.sas()[0]
    by_cookie = {r["initiator_cookie"]: r for r in result["rows"]}
    mine = by_cookie[sa.initiator_cookie.hex()]
    assert mine["state"] == "ESTABLISHED" and mine["role"] == "responder" and mine["quick_modes"] == 1
    assert mine["lifetime_left"] == int(sa.expires - link.now)
    assert mine["created"].endswith("Z") and mine["created"].startswith("2027-01-15T")
    assert (mine["encryption"], mine["integrity"], mine["diffie_hellman"]) == ("aes128", "sha256", "modp2048")
    qm = views.query("quick-mode", "security-associations", all_columns=True)["rows"]
    assert len(qm) == 3 and {r["spi_in"] for r in qm} == {ip.spi_in.hex() for s in link.responder.sas()
                                                           for ip in s.ipsec_sas}


def test_columns_can_be_added_removed_rearranged_and_sorted() -> None:
    _link, views = _established_views(4)
    assert parse_columns("main-mode", "security-associations", None) == list(
        DEFAULT_COLUMNS[("main-mode", "security-associations")])
    assert parse_columns("main-mode", "security-associations", "+state,-my_id,-peer_id")[-1] == "state"
    assert parse_columns("main-mode", "security-associations", "peer,me") == ["peer", "me"]
    assert parse_columns("main-mode", "security-associations", "all") == list(
        COLUMNS[("main-mode", "security-associations")])
    with pytest.raises(ViewError, match="unknown column 'bogus'"):
        parse_columns("main-mode", "security-associations", "bogus")
    down = views.query("main-mode", "security-associations", "peer,state", sort="peer:desc")["rows"]
    assert [r["peer"] for r in down] == ["127.0.0.13", "127.0.0.12", "127.0.0.11", "127.0.0.10"]
    assert list(down[0]) == ["peer", "state"]
    up = views.query("main-mode", "security-associations", "peer", sort="peer")["rows"]
    assert [r["peer"] for r in up] == list(reversed([r["peer"] for r in down]))
    with pytest.raises(ViewError):
        views.query("main-mode", "security-associations", sort="peer:sideways")


def test_addresses_sort_by_value_not_text() -> None:
    from ikecore.monitor.views import select

    rows = [{"peer": "10.0.0.10"}, {"peer": "10.0.0.9"}, {"peer": "9.0.0.1"}, {"peer": ""}]
    assert [r["peer"] for r in select(rows, ["peer"], "peer")] == ["9.0.0.1", "10.0.0.9", "10.0.0.10", ""]


def test_formats_table_json_csv() -> None:
    _link, views = _established_views(2)
    result = views.query("main-mode", "security-associations", "peer,encryption,+initiator_cookie")
    table = render(result, "table").splitlines()
    assert table[0].split() == ["Peer", "Encryption", "Initiator", "Cookie"]
    assert len(table) == 4
    rows = json.loads(render(result, "json"))
    assert [sorted(r) for r in rows] == [["encryption", "initiator_cookie", "peer"]] * 2
    parsed = list(csv.DictReader(io.StringIO(render(result, "csv"))))
    assert parsed == [{k: str(v) for k, v in r.items()} for r in rows]
    stats = views.query("main-mode", "statistics")
    as_json = json.loads(render(stats, "json"))
    assert list(as_json) == [s.key for s in Statistic] and as_json["ike_main_mode"] == 2
    assert "Invalid Cookies Received" in render(stats, "table")
    qm_stats = json.loads(render(views.query("quick-mode", "statistics"), "json"))
    assert qm_stats["active_sas"] == 2 and qm_stats["key_additions"] == 2


def test_every_view_answers() -> None:
    _link, views = _established_views(1)
    for mode, names in VIEWS.items():
        for view in names:
            result = views.query(mode, view)
            assert result["columns"] == list(DEFAULT_COLUMNS[(mode, view)])
            for fmt in ("table", "json", "csv"):
                assert render(result, fmt)


def test_ike_policies_view_lists_each_suite_in_preference_order() -> None:
    link = Link(make_config(), make_config(ike="aes256-sha384-ecp384,3des-sha1-modp1024"))
    rows = Views(link.responder, Monitor()).query("main-mode", "ike-policies", "all")["rows"]
    assert [(r["encryption"], r["integrity"], r["diffie_hellman"], r["preference"]) for r in rows] == [
        ("aes256", "sha384", "ecp384", 1), ("3des", "sha1", "modp1024", 2)]
    assert rows[0]["lifetime"] == policy.DEFAULT_IKE_LIFETIME


def test_quick_mode_specific_filters_show_dns_names_from_the_cache() -> None:
    link, _ = _established_views(2)
    calls: list[str] = []
    first_read_done = threading.Event()

    def resolve(address: str) -> str:
        calls.append(address)
        first_read_done.wait(5)
        if address == "127.0.0.11":
            time.sleep(0.3)  # slower than the time limit: remembered as no name
        return f"host-{address.replace('.', '-')}.example"

    dns = DnsNameCache(resolve, time_limit=0.2, ttl=60)
    views = Views(link.responder, Monitor(), host=HostConfig(), dns=dns)
    first = views.query("quick-mode", "specific-filters", "all")["rows"]
    assert all(r["source_dns_name"] == "" for r in first)  # nothing cached yet: the read did not wait
    first_read_done.set()
    dns.wait(5)
    rows = views.query("quick-mode", "specific-filters", "all")["rows"]
    names = {r["source"].split("/")[0]: r["source_dns_name"] for r in rows}
    assert names["127.0.0.10"] == "host-127-0-0-10.example"
    assert names["127.0.0.11"] == ""                        # timed out
    assert names["127.0.0.1"] == "host-127-0-0-1.example"
    count = len(calls)
    views.query("quick-mode", "specific-filters", "all")
    assert len(calls) == count                              # answered from the cache
    assert not any("dns_name" in c for c in COLUMNS[("main-mode", "specific-filters")])  # as in the IP Security Monitor document
    dns.close()


def test_dns_cache_expires_entries() -> None:
    now = [0.0]
    dns = DnsNameCache(lambda a: "name", ttl=10, clock=lambda: now[0])
    assert dns.name("192.0.2.1") is None
    dns.wait(5)
    assert dns.name("192.0.2.1") == "name" and dns.lookups == 1
    now[0] = 11.0
    assert dns.name("192.0.2.1") == "name"  # stale answer while the refresh runs
    dns.wait(5)
    assert dns.lookups == 2
    dns.close()


def test_reads_never_wait_for_a_slow_resolver() -> None:
    link, _ = _established_views(1)
    gate = threading.Event()
    dns = DnsNameCache(lambda a: (gate.wait(5), "late")[1], time_limit=10)
    views = Views(link.responder, Monitor(), host=HostConfig(), dns=dns)
    started = time.perf_counter()
    views.query("quick-mode", "specific-filters", "all")
    assert time.perf_counter() - started < 2.0  # the resolver blocks for 5 s
    gate.set()
    dns.wait(5)
    dns.close()


def test_quick_mode_generic_filters_show_selectors_and_tunnel_endpoints() -> None:
    config = config_from_dict({
        "esp_policy": {"site": {"proposals": "aes256-sha256-modp2048", "mode": "tunnel"},
                       "host": {"proposals": "aes128-sha256", "mode": "transport"}},
        "filter": [
            {"name": "branch", "source": "me", "destination": "203.0.113.0/24", "psk": "a", "esp_policy": "site",
             "local_ts": "10.1.0.0/16", "remote_ts": "10.2.0.0/16"},
            {"name": "admin", "source": "me", "destination": "dns", "psk": "a", "esp_policy": "host"}]})
    rows = Views(Link(make_config(), config).responder, Monitor(), host=HostConfig()).query(  # type: ignore[arg-type]
        "quick-mode", "generic-filters", "all")["rows"]
    assert rows[0] == {"name": "branch", "source": "10.1.0.0/16", "destination": "10.2.0.0/16", "source_port": 0,
                       "destination_port": 0, "source_tunnel_endpoint": "My IP Address",
                       "destination_tunnel_endpoint": "203.0.113.0/24", "protocol": "any",
                       "quick_mode_policy": "site", "mode": "tunnel"}
    assert rows[1]["destination"] == "DNS Server" and rows[1]["source_tunnel_endpoint"] == ""
    assert rows[1]["mode"] == "transport"


def test_json_fast_path_equals_the_rows_and_follows_changes() -> None:
    link, views = _established_views(3)
    for columns, sort in ((None, None), ("peer,state", "peer:desc"), ("all", None), ("peer,lifetime_left", "peer"),
                          ("peer,state", None)):
        for _ in range(2):  # second time from the per-row JSON cache
            chosen, data = views.query_json("main-mode", "security-associations", columns, sort)
            expected = views.query("main-mode", "security-associations", columns, sort)
            assert chosen == expected["columns"] and json.loads(data) == expected["rows"]
    link.now += 100
    rows = json.loads(views.query_json("main-mode", "security-associations", "peer,lifetime_left")[1])
    assert {r["lifetime_left"] for r in rows} == {int(sa.expires - link.now) for sa in link.responder.sas()}
    victim = link.responder.sas()[0]
    link.responder.delete(victim.handle, link.now)
    rows = json.loads(views.query_json("main-mode", "security-associations", "initiator_cookie,state")[1])
    assert victim.initiator_cookie.hex() not in {r["initiator_cookie"] for r in rows} and len(rows) == 2
    other = link.responder.sas()[0]
    other.ipsec_sas.clear()  # an IPsec SA left: the row is rebuilt
    rows = json.loads(views.query_json("main-mode", "security-associations", "initiator_cookie,quick_modes")[1])
    assert {r["initiator_cookie"]: r["quick_modes"] for r in rows}[other.initiator_cookie.hex()] == 0
    _cols, stats = views.query_json("main-mode", "statistics")
    assert json.loads(stats)[0] == {"statistic": "active_acquire", "value": 0}
    with pytest.raises(ViewError):
        views.query_json("main-mode", "security-associations", "peer", "nope")
    with pytest.raises(ViewError):
        views.query_json("main-mode", "security-associations", "peer", "peer:up")


def test_dns_cache_is_bounded() -> None:
    dns = DnsNameCache(lambda a: "n", max_entries=50, workers=2)
    for i in range(400):
        dns.name(f"10.0.{i // 250}.{i % 250}")
        if i % 100 == 99:
            dns.wait(5)
    dns.wait(5)
    assert len(dns._entries) <= 50 and len(dns._futures) <= 256
    dns.close()


def test_the_hosts_configuration_is_read_again_after_its_ttl() -> None:
    views = Views(Link().responder, Monitor())
    first = views.host
    assert views.host is first
    views.HOST_TTL = 0.0
    time.sleep(0.01)
    assert views.host is not first and views.host.dns_servers == first.dns_servers
    injected = HostConfig(dns_servers=("192.0.2.53",))
    fixed = Views(Link().responder, Monitor(), host=injected)
    fixed.HOST_TTL = 0.0
    assert fixed.host is injected


def test_ipv4_identities_read_as_ipaddress_does() -> None:
    import ipaddress
    import random as random_module

    from ikecore import wire
    from ikecore.sa import id_to_text

    rng = random_module.Random(7)
    for data in [bytes(4), b"\xff" * 4] + [rng.randbytes(4) for _ in range(500)]:
        assert id_to_text(wire.IdType.IPV4_ADDR, data) == str(ipaddress.ip_address(data))
    assert id_to_text(wire.IdType.IPV4_ADDR, b"\x01\x02\x03") == "010203"  # malformed: hex, as before
