"""Interop with a real strongSwan charon: NAT-T forced, DPD against a silent peer,
Aggressive Mode PSK, and charon's vendor IDs -- both directions where it applies.

charon's ``encap = yes`` fakes its own NAT-D hash, so ikecore must see a NAT at the
peer ("remote"), float to charon's NAT-T port with the non-ESP marker and negotiate
UDP-encapsulated ESP; charon's own view (``swanctl --list-sas``: ``encap``, ``nat-fake``,
ports, SPIs) must match ikecore's snapshot. Skipped on a laptop without charon; required
in CI (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ikecore.config import Timing, config_from_flags
from interop.charon import Charon, free_udp_ports
from test_interop_strongswan import CHARON, IKECORE, PSK, IkecoreGateway, _hex, _ikecore_connect, _wait

IKE, ESP = "aes128-sha256-modp2048", "aes128-sha256"


@pytest.fixture
def gateways() -> Iterator[Any]:
    made: list[IkecoreGateway] = []

    def make(port: int, **flags: Any) -> IkecoreGateway:
        timing = flags.pop("timing", Timing(retransmit_timeout=1.0, negotiation_timeout=20.0))
        config = config_from_flags(psk=PSK, ike=IKE, esp=ESP, listen=((IKECORE, port),), timing=timing, **flags)
        gateway = IkecoreGateway(config)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.close()


def _installed_child(charon: Charon) -> dict[str, Any]:
    return charon.wait_for(lambda: [c for s in charon.established() for c in s["child-sas"]
                                    if c.get("state") == "INSTALLED"], 10)[0]


@pytest.mark.interop("charon")
def test_nat_t_forced_by_charon_responder_ikecore_initiator_floats() -> None:
    port, natt = free_udp_ports(2)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, ike=IKE, esp=ESP, encap=True) as charon:
        result = _ikecore_connect(port, IKE, ESP, "--keep", "--natt-port", str(natt))
        main = result["main_mode"]
        assert (main["nat"], main["nat_t"], main["encapsulated"]) == ("remote", "RFC 3947", True)
        assert main["peer_port"] == natt
        (sa,) = charon.wait_for(charon.established, 10)
        assert (_hex(sa["initiator-spi"]), _hex(sa["responder-spi"])) == (
            main["initiator_cookie"], main["responder_cookie"])
        assert sa.get("nat-fake") == "yes" and sa.get("nat-any") == "yes", sa
        assert int(sa["local-port"]) == natt and int(sa["remote-port"]) == main["local_port"]
        child = _installed_child(charon)
        assert child.get("encap") == "yes", child
        (quick,) = result["quick_mode"]
        assert (_hex(child["spi-in"]), _hex(child["spi-out"])) == (quick["spi_out"], quick["spi_in"])


@pytest.mark.interop("charon")
def test_nat_t_forced_by_charon_initiator_ikecore_responder_follows(gateways: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gw_port)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, ike=IKE, esp=ESP,
                      remote=IKECORE, remote_port=gw_port, encap=True) as charon:
        done = charon.initiate(timeout=20)
        assert done.returncode == 0, done.stdout[-2000:]
        (sa,) = charon.established()
        (ours,) = _wait(lambda: [r for r in gateway.main_mode() if r["state"] == "ESTABLISHED"])
        assert (ours["nat"], ours["encapsulated"], ours["peer_port"]) == ("remote", True, natt)
        assert sa.get("nat-fake") == "yes" and int(sa["local-port"]) == natt, sa
        # Vendor IDs charon sent (fragmentation = yes in its config) are recorded by name.
        assert "RFC 3947 NAT-T" in ours["vendor_ids"] and "IKE fragmentation" in ours["vendor_ids"]
        (child,) = [c for c in sa["child-sas"] if c.get("state") == "INSTALLED"]
        assert child.get("encap") == "yes", child
        (quick,) = _wait(gateway.quick_mode)
        assert (_hex(child["spi-in"]), _hex(child["spi-out"])) == (quick["spi_out"], quick["spi_in"])


@pytest.mark.interop("charon")
@pytest.mark.parametrize("ikecore_role", ["responder", "initiator"])
def test_dpd_detects_a_charon_that_goes_silent(gateways: Any, ikecore_role: str) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gw_port, timing=Timing(retransmit_timeout=1.0, negotiation_timeout=20.0,
                                              dpd_delay=2.0, dpd_timeout=6.0))
    remote = dict(remote=IKECORE, remote_port=gw_port) if ikecore_role == "responder" else {}
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, ike=IKE, esp=ESP,
                      dpd_delay=30, **remote) as charon:
        if ikecore_role == "responder":
            assert charon.initiate(timeout=20).returncode == 0
        else:
            result = gateway.call(lambda: gateway.gateway.connect((CHARON, port), local=(IKECORE, gw_port)))
            assert result.ok, result.reason
        (ours,) = _wait(lambda: [r for r in gateway.main_mode() if r["state"] == "ESTABLISHED"])
        assert ours["dpd"] is True
        # charon acknowledges our R-U-THERE: after a few DPD rounds the SA is still there.
        sa = gateway.call(lambda: gateway.engine.sas()[0])
        assert _wait(lambda: sa.dpd_sequence >= 2 and not sa.dpd_pending, 10)
        assert gateway.main_mode() and gateway.quick_mode()
        charon.freeze()  # silent, no Delete
        assert _wait(lambda: not gateway.main_mode(), 15)
        charon.thaw()
        assert not gateway.quick_mode()
        extended = gateway.call(lambda: dict(gateway.monitor.extended))
        assert extended.get("dead_peers") == 1


@pytest.mark.interop("charon")
@pytest.mark.parametrize("encap", [False, True])
def test_aggressive_mode_psk_ikecore_initiator_to_charon(encap: bool) -> None:
    port, natt = free_udp_ports(2)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, ike=IKE, esp=ESP, aggressive=True,
                      encap=encap) as charon:
        result = _ikecore_connect(port, IKE, ESP, "--keep", "--aggressive", "--natt-port", str(natt))
        main = result["main_mode"]
        assert main["exchange"] == "aggressive"
        # With charon's encap = yes the float happens for AM3 (RFC 3947 section 4).
        assert (main["encapsulated"], main["peer_port"]) == ((True, natt) if encap else (False, port))
        (sa,) = charon.wait_for(charon.established, 10)
        assert (_hex(sa["initiator-spi"]), _hex(sa["responder-spi"])) == (
            main["initiator_cookie"], main["responder_cookie"])
        assert main["peer_id"] == CHARON and sa["remote-id"] == IKECORE
        child = _installed_child(charon)
        assert child.get("encap", "no") == ("yes" if encap else "no"), child
        (quick,) = result["quick_mode"]
        assert (_hex(child["spi-in"]), _hex(child["spi-out"])) == (quick["spi_out"], quick["spi_in"])


@pytest.mark.interop("charon")
def test_aggressive_mode_psk_charon_initiator_to_ikecore(gateways: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gw_port, aggressive=True)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, ike=IKE, esp=ESP, aggressive=True,
                      remote=IKECORE, remote_port=gw_port) as charon:
        done = charon.initiate(timeout=20)
        assert done.returncode == 0, done.stdout[-2000:]
        (sa,) = charon.established()
        (ours,) = _wait(lambda: [r for r in gateway.main_mode() if r["state"] == "ESTABLISHED"])
        assert ours["exchange"] == "aggressive" and ours["peer_id"] == CHARON
        assert (_hex(sa["initiator-spi"]), _hex(sa["responder-spi"])) == (
            ours["initiator_cookie"], ours["responder_cookie"])
        (child,) = [c for c in sa["child-sas"] if c.get("state") == "INSTALLED"]
        (quick,) = _wait(gateway.quick_mode)
        assert (_hex(child["spi-in"]), _hex(child["spi-out"])) == (quick["spi_out"], quick["spi_in"])


@pytest.mark.interop("charon")
def test_aggressive_mode_refused_by_ikecore_unless_enabled(gateways: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gw_port)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, ike=IKE, esp=ESP, aggressive=True,
                      remote=IKECORE, remote_port=gw_port) as charon:
        assert charon.initiate(timeout=10).returncode != 0
        assert not charon.established()
        stats = gateway.call(lambda: gateway.monitor.statistics(gateway.engine))
        assert stats["negotiation_failures"] >= 1
