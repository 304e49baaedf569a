"""ikecore ``--driver userland`` against Debian's strongSwan with kernel-libipsec, both roles.

The tunnel recipe's namespaces and selectors, with charon (kernel-libipsec: userland
ESP behind its own TUN device) on one side and ikecore on the other. kernel-libipsec
always acts as if behind a NAT, so IKE floats to port 4500 and ESP is UDP-encapsulated
(RFC 3948): ikecore must follow. Independent truth: the kernel's ping (both ways) and an
iperf3 TCP transfer cross only if both implementations agree on every byte of the Quick
Mode key material (a wrong key fails the ICV); charon's own logged keys, written as
Wireshark ``esp_sa`` records, equal the records of ikecore's ``--keylog``; charon's
counters show the packets it authenticated.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interop import libipsec, netns
from interop.charon import Charon
from tunnel import IkecoreEnd, require_tools, same_records

pytestmark = pytest.mark.interop("charon-libipsec", "netns")


def _child(charon: Charon) -> dict[str, str]:
    [sa] = charon.established()
    [child] = sa["child-sas"]
    return child


def _installed(charon: Charon) -> dict[str, str] | None:
    children = [c for sa in charon.established() for c in sa["child-sas"] if c.get("state") == "INSTALLED"]
    return children[0] if len(children) == 1 else None


def _traffic(pair: netns.NetnsPair, charon: Charon) -> None:
    assert netns.ping(pair.ns_a, pair.inner_a, pair.inner_b, 3) == 3
    assert netns.ping(pair.ns_b, pair.inner_b, pair.inner_a, 3) == 3
    forward = netns.iperf3(pair.ns_b, pair.inner_b, pair.ns_a, pair.inner_a, seconds=2)
    back = netns.iperf3(pair.ns_b, pair.inner_b, pair.ns_a, pair.inner_a, seconds=2, reverse=True)
    assert forward["bytes"] > 5_000_000 and back["bytes"] > 5_000_000, (forward, back)
    child = _child(charon)
    # charon authenticated and decrypted what ikecore sent, and the reverse
    assert int(child["packets-in"]) > 1000 and int(child["packets-out"]) > 1000, child


def test_charon_initiates_to_ikecore_serve(tmp_path: Path) -> None:
    require_tools(libipsec.available())
    with netns.recipe_pair() as pair, IkecoreEnd.serve(pair, tmp_path, side="b") as ours, \
            libipsec.start(pair, "a", initiator=True) as charon:
        out = charon.initiate(timeout=20)
        assert out.returncode == 0, out.stdout[-2000:] + ours.output()[-2000:]
        records = ours.wait_tunnel()
        [sa] = charon.established()
        child = _child(charon)
        assert (sa["remote-port"], child["encap"], child["mode"]) == ("4500", "yes", "TUNNEL")
        assert child["local-ts"] == [pair.subnet_a] and child["remote-ts"] == [pair.subnet_b]
        assert same_records(records, libipsec.esp_sa_lines(charon, initiator=True)), (
            records, libipsec.esp_sa_lines(charon, initiator=True))
        _traffic(pair, charon)
        assert ours.running()


def test_ikecore_connect_to_charon_responder(tmp_path: Path) -> None:
    require_tools(libipsec.available())
    with netns.recipe_pair() as pair, libipsec.start(pair, "b", initiator=False) as charon, \
            IkecoreEnd.connect(pair, tmp_path, side="a") as ours:
        records = ours.wait_tunnel()
        charon.wait_for(lambda: _installed(charon), 10)
        [sa] = charon.established()
        child = _child(charon)
        assert (sa["remote-port"], child["encap"], child["mode"]) == ("4500", "yes", "TUNNEL")
        assert child["local-ts"] == [pair.subnet_b] and child["remote-ts"] == [pair.subnet_a]
        assert same_records(records, libipsec.esp_sa_lines(charon, initiator=False)), (
            records, libipsec.esp_sa_lines(charon, initiator=False))
        _traffic(pair, charon)
        assert ours.running()
