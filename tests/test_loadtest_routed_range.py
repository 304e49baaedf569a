"""Load-test peers from a routed range: ``--first-address`` outside 127.0.0.0/8.

A gateway on another host sees the generator's peers only when their addresses are
routable; the generator's machine holds such a range as local with an "AnyIP" route
(``ip route add local 10.8.0.0/24 dev lo``) and the gateway routes it back. The unit
tests check the validation (a one-line ``ConfigError`` naming the flag, with the fix);
the real run builds that layout in two network namespaces joined by a veth pair and
asks the gateway's own monitor which addresses its ISAKMP SAs came from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ikecore.errors import ConfigError
from ikecore.loadtest import LoadSpec, peer_address
from ikecore.loadtest.runners import check_peer_addresses
from ikecore.loadtest.cli import add_parser, spec_from_args

TARGET = ("127.0.0.1", 500)
#: TEST-NET-3 (RFC 5737): documentation only, never an address of a test machine
NOT_LOCAL = "203.0.113.77"
ROUTED = "10.8.0.0/24"
PEERS = 50
PSK = "routed-range-psk"


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikecore", "loadtest", *argv], capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


def test_routed_addresses_skip_network_and_broadcast_like_loopback() -> None:
    assert peer_address("10.8.0.1", 0) == "10.8.0.1"
    assert peer_address("10.8.0.1", 253) == "10.8.0.254"
    assert peer_address("10.8.0.1", 254) == "10.8.1.1"
    assert peer_address("10.8.255.254", 1) == "10.9.0.1"  # a routed range may cross a /16
    with pytest.raises(ConfigError, match="must not end in .0 or .255"):
        peer_address("10.8.0.255", 0)
    with pytest.raises(ConfigError, match="127.0.0.0/8"):
        peer_address("127.255.255.254", 1)  # a loopback range stays in loopback
    with pytest.raises(ConfigError, match="223.255.255.254") as caught:
        peer_address("223.255.255.254", 1)
    assert caught.value.field == "--peers"


def test_an_address_this_machine_does_not_hold_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        check_peer_addresses(LoadSpec(target=TARGET, peers=10, psk="x", first_address=NOT_LOCAL))
    assert caught.value.field == "--first-address"
    assert str(caught.value) == (f"--first-address: {NOT_LOCAL} is not an address of this machine: make the range "
                                 "local (ip route add local 203.0.113.0/24 dev lo) and route it to the gateway")
    # a range over several /24s names the /16 holding it
    with pytest.raises(ConfigError, match=r"ip route add local 203\.0\.0\.0/16 dev lo"):
        check_peer_addresses(LoadSpec(target=TARGET, peers=400, psk="x", first_address=NOT_LOCAL))
    with pytest.raises(ConfigError, match="not a unicast address"):
        LoadSpec(target=TARGET, peers=1, psk="x", first_address="224.0.0.5")


def test_the_command_prints_one_line_and_exits_2() -> None:
    out = _cli("127.0.0.1:1", "--peers", "5", "--psk", "x", "--first-address", NOT_LOCAL, "--no-progress")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--first-address" in lines[0] and "ip route add local 203.0.113.0/24 dev lo" in lines[0]


def test_a_locust_master_leaves_the_address_check_to_its_workers() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["loadtest", "192.0.2.9:500", "--peers", "300", "--first-address", NOT_LOCAL])
    spec = spec_from_args(args, secrets=False)  # the master: it sends nothing, checks nothing
    assert (spec.first_address, spec.peers) == (NOT_LOCAL, 300)
    with pytest.raises(ConfigError):
        check_peer_addresses(spec)  # a worker, which sends from those addresses


# --- a real run in two network namespaces --------------------------------------------------


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, timeout=30, capture_output=True, stdin=subprocess.DEVNULL)


def _in_ns(ns: str, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "ikecore", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@pytest.mark.interop("netns")
def test_peers_from_a_local_route_establish_with_a_gateway_in_another_namespace() -> None:
    from interop import netns

    with tempfile.TemporaryDirectory(prefix="ikecore-routed.") as scratch, \
            netns.veth_pair(f"ikrr{os.getpid() % 10000}", net="10.194") as pair:
        # generator side: the range is local; gateway side: it is reached through the generator
        _ip("-n", pair.ns_a, "route", "add", "local", ROUTED, "dev", "lo")
        _ip("-n", pair.ns_b, "route", "add", ROUTED, "via", pair.addr_a)
        control = Path(scratch) / "control.sock"
        gateway = netns.spawn(pair.ns_b, [sys.executable, "-m", "ikecore", "serve", "--listen", f"{pair.addr_b}:500",
                                          "--psk", PSK, "--control", str(control), "--duration", "120"],
                              log=Path(scratch) / "serve.log")
        try:
            deadline = time.monotonic() + 30
            while not control.exists() and gateway.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert control.exists(), (Path(scratch) / "serve.log").read_text()[-2000:]

            run = _in_ns(pair.ns_a, "loadtest", f"{pair.addr_b}:500", "--peers", str(PEERS), "--psk", PSK,
                         "--first-address", "10.8.0.1", "--json", "--no-progress", "--max-seconds", "60")
            assert run.returncode == 0, run.stderr[-2000:]
            report = json.loads(run.stdout)
            assert (report["established"], report["failed"]) == (PEERS, 0)

            listed = subprocess.run([sys.executable, "-m", "ikecore", "monitor", "--control", str(control),
                                     "main-mode", "security-associations", "--format", "json"],
                                    capture_output=True, text=True, timeout=30, check=True, stdin=subprocess.DEVNULL)
            rows = json.loads(listed.stdout)
            expected = {peer_address("10.8.0.1", i) for i in range(PEERS)}
            assert {row["peer"] for row in rows} == expected
            assert all(row["peer_id"] == row["peer"] and row["state"] == "ESTABLISHED" for row in rows)
            assert all(row["me"] == pair.addr_b for row in rows)

            # in the generator's namespace: an address outside the route, and a range running past its end
            outside = _in_ns(pair.ns_a, "loadtest", f"{pair.addr_b}:500", "--peers", "5", "--psk", PSK,
                             "--first-address", "10.9.0.1", "--no-progress")
            assert outside.returncode == 2
            assert "--first-address: 10.9.0.1 is not an address of this machine" in outside.stderr
            past_end = _in_ns(pair.ns_a, "loadtest", f"{pair.addr_b}:500", "--peers", "300", "--psk", PSK,
                              "--first-address", "10.8.0.1", "--no-progress")
            assert past_end.returncode == 2
            assert (f"--peers: {peer_address('10.8.0.1', 299)} is not an address of this machine: make the range "
                    "local (ip route add local 10.8.0.0/16 dev lo)") in past_end.stderr
        finally:
            netns.stop(gateway)
