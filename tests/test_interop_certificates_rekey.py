"""Interop with strongSwan's charon: RSA certificates and rekeying of both phases.

A test CA made here with ``cryptography`` issues one certificate to charon and one to
ikecore; charon loads them from absolute paths (``Charon.start(auth="pubkey", ...)``).
After every step charon's own view (``swanctl --list-sas``) must match ikecore's: the same
ISAKMP cookies and the same SPI pairs, nothing more on either side. Skipped on a laptop
without charon; required in CI.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ikecore.config import config_from_dict
from interop.charon import Charon, free_udp_ports
from pki import Issued, issue, make_ca
from test_interop_strongswan import CHARON, IKECORE, PSK, IkecoreGateway, _hex


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    charon: Issued = issue(ca, "charon.test", dns=("charon.test",), addresses=(CHARON,))
    ikecore: Issued = issue(ca, "ikecore.test", dns=("ikecore.test",), addresses=(IKECORE,))
    ca_cert, _ = ca.write(directory, "ca")
    charon_cert, charon_key = charon.write(directory, "charon")
    ikecore_cert, ikecore_key = ikecore.write(directory, "ikecore")
    return {"ca": ca_cert, "charon_cert": charon_cert, "charon_key": charon_key,
            "ikecore_cert": ikecore_cert, "ikecore_key": ikecore_key}


def gateway_config(port: int, *, pki: dict[str, str] | None = None, esp_lifetime: int = 3600,
                   ike_lifetime: int = 28800, margin: float = 0.0, local_id: str | None = None,
                   quick_mode_window: int = 0) -> Any:
    flt: dict[str, Any] = {"name": "charon", "destination": CHARON, "quick_mode_window": quick_mode_window}
    if pki is not None:
        flt.update(certificate=pki["ikecore_cert"], private_key=pki["ikecore_key"], ca=pki["ca"])
    else:
        flt["psk"] = PSK
    if local_id:
        flt["local_id"] = local_id
    return config_from_dict({
        "gateway": {"listen": [f"{IKECORE}:{port}"]},
        "ike_policy": {"default": {"proposals": "aes128-sha256-modp2048", "lifetime": ike_lifetime}},
        "esp_policy": {"default": {"proposals": "aes128-sha256", "lifetime": esp_lifetime}},
        "timing": {"retransmit_timeout": 1.0, "negotiation_timeout": 20.0, "rekey_margin": margin},
        "filter": [flt],
    })


@pytest.fixture
def gateways() -> Iterator[Callable[[Any], IkecoreGateway]]:
    made: list[IkecoreGateway] = []

    def make(config: Any) -> IkecoreGateway:
        gateway = IkecoreGateway(config)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.close()


View = tuple[set[tuple[str, str]], set[tuple[str, str]], set[tuple[str, str]], set[tuple[str, str]]]


def charon_view(charon: Charon) -> View:
    """(current ISAKMP cookie pairs, current (spi_in, spi_out) of children, then the same for
    everything charon still holds, including SAs it marked REKEYING / REKEYED)."""
    sas = charon.list_sas()
    current = [sa for sa in sas if sa.get("state") == "ESTABLISHED"]
    return ({(_hex(sa["initiator-spi"]), _hex(sa["responder-spi"])) for sa in current},
            {(_hex(c["spi-in"]), _hex(c["spi-out"])) for sa in current for c in sa["child-sas"]
             if c.get("state") == "INSTALLED"},
            {(_hex(sa["initiator-spi"]), _hex(sa["responder-spi"])) for sa in sas
             if sa.get("state") in ("ESTABLISHED", "REKEYING", "REKEYED")},
            {(_hex(c["spi-in"]), _hex(c["spi-out"])) for sa in sas for c in sa["child-sas"]
             if c.get("state") in ("INSTALLED", "REKEYING", "REKEYED")})


def ikecore_view(gateway: IkecoreGateway) -> View:
    """The same from ikecore, mirrored (its spi_out is charon's spi_in); superseded SAs are
    the ones its snapshots mark ``rekeyed``."""
    main = [r for r in gateway.main_mode() if r["state"] == "ESTABLISHED"]
    quick = gateway.quick_mode()
    return ({(r["initiator_cookie"], r["responder_cookie"]) for r in main if not r["rekeyed"]},
            {(r["spi_out"], r["spi_in"]) for r in quick if not r["rekeyed"]},
            {(r["initiator_cookie"], r["responder_cookie"]) for r in main},
            {(r["spi_out"], r["spi_in"]) for r in quick})


def views_match(charon: Charon, gateway: IkecoreGateway, children: int, timeout: float = 15.0,
                other_than: Any = None, children_other_than: Any = None) -> tuple[Any, Any]:
    """Wait until both views agree, with one current ISAKMP SA and ``children`` IPsec SAs
    (and, after a rekey, SAs ``other_than`` the old cookies / ``children_other_than`` the
    old SPI pairs: both views still agree on the old SAs until the rekey has begun);
    returns the current (cookies, children)."""
    deadline = time.monotonic() + timeout
    while True:
        theirs, ours = charon_view(charon), ikecore_view(gateway)
        if theirs == ours and len(ours[0]) == 1 and len(ours[1]) == children and ours[0] != other_than \
                and ours[1] != children_other_than:
            return ours[0], ours[1]
        if time.monotonic() > deadline:
            Path("/tmp/ike5b-charon.log").write_text(charon.log_text())
            pytest.fail(f"charon {theirs} != ikecore {ours}\n{charon.log_text()[-3000:]}")
        time.sleep(0.1)


@pytest.mark.interop("charon")
def test_charon_initiator_with_certificates_to_ikecore(pki: dict[str, str], gateways: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port, pki=pki))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, remote=IKECORE, remote_port=gw_port,
                      auth="pubkey", cert=pki["charon_cert"], key=pki["charon_key"], cacert=pki["ca"],
                      local_id="charon.test") as charon:
        done = charon.initiate(timeout=20)
        assert done.returncode == 0, done.stdout[-2000:] + charon.log_text()[-3000:]
        views_match(charon, gateway, 1)
        (row,) = gateway.main_mode()
        assert row["authentication"] == "RSA signature" and row["peer_id"] == "charon.test"
        (sa,) = charon.established()
        assert "CN=ikecore.test" in sa["remote-id"]  # our ID: the subject DN of our certificate


@pytest.mark.interop("charon")
@pytest.mark.parametrize("local_id", [None, "ikecore.test", IKECORE])
def test_ikecore_initiator_with_certificates_to_charon(pki: dict[str, str], gateways: Any,
                                                       local_id: str | None) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port, pki=pki, local_id=local_id))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, auth="pubkey", cert=pki["charon_cert"],
                      key=pki["charon_key"], cacert=pki["ca"], local_id="charon.test") as charon:
        result = gateway.call(lambda: gateway.gateway.connect((CHARON, port), local=(IKECORE, gw_port)))
        assert result.ok, result.reason + charon.log_text()[-3000:]
        views_match(charon, gateway, 1)
        (sa,) = charon.established()
        assert sa["remote-id"] == (local_id or "C=CH, O=ikecore test, CN=ikecore.test")


@pytest.mark.interop("charon")
def test_charon_refuses_ikecore_certificate_from_another_ca(pki: dict[str, str], gateways: Any,
                                                            tmp_path: Path) -> None:
    rogue_ca = make_ca("rogue CA")
    rogue = issue(rogue_ca, "ikecore.test", dns=("ikecore.test",))
    cert, key = rogue.write(tmp_path, "rogue")
    port, natt, gw_port = free_udp_ports(3)
    mine = dict(pki, ikecore_cert=cert, ikecore_key=key)
    gateway = gateways(gateway_config(gw_port, pki=mine))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, auth="pubkey", cert=pki["charon_cert"],
                      key=pki["charon_key"], cacert=pki["ca"], local_id="charon.test") as charon:
        result = gateway.call(lambda: gateway.gateway.connect((CHARON, port), local=(IKECORE, gw_port),
                                                              timeout=15, check=False))
        assert not result.ok
        assert not charon.established()


@pytest.mark.interop("charon")
def test_quick_mode_rekey_by_charon_and_by_ikecore(gateways: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, remote=IKECORE, remote_port=gw_port,
                      rekey=True, child_lifetime=120) as charon:
        assert charon.initiate(timeout=20).returncode == 0
        _, first = views_match(charon, gateway, 1)
        # charon rekeys: a new Quick Mode, then it deletes the old SA; ikecore follows.
        assert charon.rekey(child=True).returncode == 0
        _, second = views_match(charon, gateway, 1, children_other_than=first)
        assert second != first
        # ikecore rekeys: new SA first, then a Delete for the old one.
        (row,) = [r for r in gateway.quick_mode() if not r["rekeyed"]]
        handle = gateway.engine.sas()[0].handle
        gateway.call(lambda: (gateway.engine.rekey(handle, gateway.loop.time(), bytes.fromhex(row["spi_in"])),
                              gateway.gateway._flush()))
        _, third = views_match(charon, gateway, 1, children_other_than=second)
        assert third != second


@pytest.mark.interop("charon")
def test_ikecore_rekeys_quick_mode_before_a_short_lifetime_expires(gateways: Any) -> None:
    """ESP lifetime 24 s, margin 8 s: ikecore rekeys at 13-16 s; charon ends with the new SA."""
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port, esp_lifetime=24, margin=8.0))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, child_lifetime=600) as charon:
        result = gateway.call(lambda: gateway.gateway.connect((CHARON, port), local=(IKECORE, gw_port)))
        assert result.ok, result.reason
        _, first = views_match(charon, gateway, 1)
        time.sleep(17)
        _, second = views_match(charon, gateway, 1, timeout=20, children_other_than=first)
        assert not first & second


@pytest.mark.interop("charon")
def test_responder_lifetime_to_charon_does_not_break_quick_mode(gateways: Any) -> None:
    """charon offers 600 s; ikecore accepts with 60 s and says so (charon ignores the notify)."""
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port, esp_lifetime=60))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, remote=IKECORE, remote_port=gw_port,
                      child_lifetime=600) as charon:
        assert charon.initiate(timeout=20).returncode == 0
        views_match(charon, gateway, 1)
        (row,) = gateway.quick_mode()
        assert row["lifetime_left"] <= 60
        assert gateway.monitor.extended["responder_lifetime:sent"] == 1


@pytest.mark.interop("charon")
def test_phase1_reauthentication_by_charon_keeps_the_ipsec_sa(gateways: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, remote=IKECORE, remote_port=gw_port,
                      rekey=True, ike_lifetime=600) as charon:
        assert charon.initiate(timeout=20).returncode == 0
        cookies, children = views_match(charon, gateway, 1)
        assert charon.rekey(child=None).returncode == 0
        new_cookies, new_children = views_match(charon, gateway, 1, timeout=20, other_than=cookies)
        assert new_cookies != cookies


@pytest.mark.interop("charon")
def test_phase1_rekey_by_ikecore_keeps_the_ipsec_sa(gateways: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK) as charon:
        result = gateway.call(lambda: gateway.gateway.connect((CHARON, port), local=(IKECORE, gw_port)))
        assert result.ok, result.reason
        cookies, children = views_match(charon, gateway, 1)
        gateway.call(lambda: (gateway.engine.rekey(result.handle, gateway.loop.time()), gateway.gateway._flush()))
        new_cookies, new_children = views_match(charon, gateway, 1, timeout=20, other_than=cookies)
        assert new_cookies != cookies and new_children == children


@pytest.mark.interop("charon")
def test_charon_reauthenticates_on_its_own_with_a_short_ike_lifetime(gateways: Any) -> None:
    """charon (rekey=True, IKE lifetime 20 s) starts a new Main Mode at 18 s by itself."""
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, remote=IKECORE, remote_port=gw_port,
                      rekey=True, ike_lifetime=20, child_lifetime=600) as charon:
        assert charon.initiate(timeout=20).returncode == 0
        cookies, children = views_match(charon, gateway, 1)
        charon.wait_for(lambda: (now := charon_view(charon)[0]) and now != cookies, 30, 0.5)
        new_cookies, new_children = views_match(charon, gateway, 1, timeout=20, other_than=cookies)
        assert new_cookies != cookies and new_children == children


@pytest.mark.interop("charon")
def test_ikecore_rekeys_main_mode_on_its_own_with_a_short_ike_lifetime(gateways: Any) -> None:
    """IKE lifetime 24 s, margin 8 s: ikecore starts a new Main Mode at 14-16 s."""
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port, ike_lifetime=24, margin=8.0))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, child_lifetime=600) as charon:
        result = gateway.call(lambda: gateway.gateway.connect((CHARON, port), local=(IKECORE, gw_port)))
        assert result.ok, result.reason
        cookies, children = views_match(charon, gateway, 1)
        time.sleep(17)
        new_cookies, new_children = views_match(charon, gateway, 1, timeout=20, other_than=cookies)
        assert new_cookies != cookies and new_children == children


@pytest.mark.interop("charon")
def test_six_quick_modes_at_once_and_their_rekey_at_once_with_charon(gateways: Any) -> None:
    """charon 5.9.8 keeps the CBC IVs of only a few Message IDs per IKEv1 SA: with several
    Quick Modes in flight, plus the Informational Deletes of rekeyed SAs (each a new
    Message ID), it evicts the IV of an exchange still in flight, fails to decrypt its
    QM3 ("invalid HASH_V1 payload length, decryption failed?") and finally drops the
    IKE_SA (observed here: 5 at once, 3 at once, and 2 at once while rekeying). ikecore's
    ``quick_mode_window = 1`` holds its Quick Modes back and starts each as the previous
    ends: six Quick Modes asked for at once, then the rekey of all six at once, nothing
    lost. charon reads Quick Modes with equal selectors as rekeys (marks older ones
    REKEYED), so the full sets of SAs are compared."""
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateways(gateway_config(gw_port, quick_mode_window=1))
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK) as charon:
        result = gateway.call(lambda: gateway.gateway.connect((CHARON, port), local=(IKECORE, gw_port)))
        assert result.ok, result.reason

        def more() -> None:
            for _ in range(5):
                gateway.engine.initiate_quick_mode(result.handle, gateway.loop.time())
            gateway.gateway._flush()

        def all_sas(count: int) -> set[tuple[str, str]]:
            deadline = time.monotonic() + 40
            while True:
                theirs, ours = charon_view(charon), ikecore_view(gateway)
                if theirs[2:] == ours[2:] and len(ours[3]) == count and len(ours[2]) == 1:
                    return ours[3]
                if time.monotonic() > deadline:
                    Path("/tmp/ike5b-charon.log").write_text(charon.log_text())
                    pytest.fail(f"charon {theirs} != ikecore {ours}")
                time.sleep(0.2)

        gateway.call(more)
        first = all_sas(6)

        def rekey_all() -> None:
            for ipsec in list(gateway.engine.sa(result.handle).ipsec_sas):
                gateway.engine.rekey(result.handle, gateway.loop.time(), ipsec.spi_in)
            gateway.gateway._flush()

        gateway.call(rekey_all)
        second = all_sas(6)
        assert not first & second
        assert "decryption failed" not in charon.log_text()
