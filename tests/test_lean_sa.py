"""What an SA keeps once it is up, remembered offers, and address packing without
``ipaddress`` (the per-SA cost of a gateway holding 100,000 SAs)."""

from __future__ import annotations

import ipaddress

import pytest

from ikecore import keymat, policy, wire
from ikecore.errors import NoProposalChosen
from ikecore.protocol import phase1, quick_mode
from ikecore.sa import Phase2State, Role

from helpers import Link


@pytest.mark.parametrize("address", ["0.0.0.0", "1.2.3.4", "127.1.0.1", "10.0.0.255", "255.255.255.255",
                                     "::1", "fe80::1", "2001:db8::42"])
def test_packed_address_matches_ipaddress(address: str) -> None:
    assert keymat.packed_address(address) == ipaddress.ip_address(address).packed


@pytest.mark.parametrize("text", ["1.2.3.256", "01.2.3.4", "1.2.3", "1.2.3.4.5", "a.b.c.d", "1.2.3.\u0663", "",
                                  "1..2.3", " 1.2.3.4", "1.2.3.4 ", "-1.2.3.4"])
def test_packed_address_refuses_what_ipaddress_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        ipaddress.ip_address(text)
    with pytest.raises(ValueError):
        keymat.packed_address(text)


@pytest.mark.parametrize("network", ["10.1.2.3/32", "10.0.0.0/8", "::1/128", "2001:db8::/32"])
def test_client_ids_are_those_of_the_selector(network: str) -> None:
    selector = policy.TrafficSelector(network, 17, 500)
    fast, slow = quick_mode._to_id(selector), selector.to_id()
    assert (fast.id_type, fast.data, fast.protocol_id, fast.port) == (slow.id_type, slow.data, slow.protocol_id,
                                                                      slow.port)


def _policy(text: str) -> policy.IkePolicy:
    return policy.IkePolicy("default", policy.parse_ike_proposals(text))


def test_a_remembered_offer_gets_the_choice_the_policy_makes() -> None:
    ours = _policy("aes256-sha256-ecp256,aes128-sha256-modp2048")
    offer = wire.parse_payloads(wire.PayloadType.SA, wire.encode_payloads(
        [_policy("3des-sha1-modp1024,aes128-sha256-modp2048").offer()]))[0]
    assert isinstance(offer, wire.SaPayload)
    expected = policy.choose_ike_transform(offer, ours)
    first = phase1.choose_ike(offer, ours)
    again = phase1.choose_ike(offer, ours)
    assert first[2] == expected[2] and first[2].name == "aes128-sha256-modp2048"
    assert (first[0].number, first[1].number) == (expected[0].number, expected[1].number)
    assert again[2] is first[2]  # one object for every SA that chose it
    # another policy object, even of the same name, is asked again
    other = _policy("3des-sha1-modp1024")
    assert phase1.choose_ike(offer, other)[2].name == "3des-sha1-modp1024"


def test_a_refused_offer_is_not_remembered() -> None:
    offer = _policy("des-md5-modp768").offer()
    ours = _policy("aes128-sha256-modp2048")
    size = len(phase1._IKE_CHOICES)
    for _ in range(2):
        with pytest.raises(NoProposalChosen):
            phase1.choose_ike(offer, ours)
    assert len(phase1._IKE_CHOICES) == size


def test_an_established_quick_mode_keeps_only_what_a_repeat_needs() -> None:
    link = Link()
    link.connect()
    (i_sa,) = link.initiator.sas()
    (r_sa,) = link.responder.sas()
    (i_qm,) = i_sa.quick_modes.values()
    (r_qm,) = r_sa.quick_modes.values()
    assert i_qm.state is r_qm.state is Phase2State.ESTABLISHED
    assert (i_qm.role, r_qm.role) == (Role.INITIATOR, Role.RESPONDER)
    for qm in (i_qm, r_qm):
        assert qm.nonce_i == qm.nonce_r == b"" and qm.id_ci is None and qm.id_cr is None and qm.installed == ()
        assert qm.last_received  # a repeat is known by its digest
    assert i_qm.last_sent  # QM3, sent again when QM2 is repeated
    assert r_qm.last_sent == b""  # a repeated QM3 is never answered
    # the IV chains of the finished exchange are gone too; phase 1's stays
    assert "chains=1)" in repr(i_sa.cipher) and "chains=1)" in repr(r_sa.cipher)
    # the IPsec SAs kept their keys and selectors
    assert r_sa.ipsec_sas[0].keys and r_sa.ipsec_sas[0].keys[0].local_ts
    # SKEYID and SKEYID_e are zeroed and dropped at establishment, SKEYID_d and _a kept
    assert len(r_sa.skeyids.skeyid) == len(r_sa.skeyids.skeyid_e) == 0
    assert len(r_sa.skeyids.skeyid_d) == len(r_sa.skeyids.skeyid_a) == 32


def test_a_repeated_qm2_is_answered_with_the_same_qm3_after_establishment() -> None:
    link = Link()
    link.connect()
    qm2 = [d for s, d in link.sent if s == "responder" and d[18] == wire.ExchangeType.QUICK_MODE]
    qm3 = [d for s, d in link.sent if s == "initiator" and d[18] == wire.ExchangeType.QUICK_MODE][-1]
    (i_sa,) = link.initiator.sas()
    link.initiator.receive_datagram(qm2[-1], i_sa.remote, i_sa.local, link.now)
    resent = [d for d, _to, _frm in link.initiator.datagrams_to_send()]
    assert resent == [qm3]


def test_initial_contact_looks_only_at_the_sas_of_that_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """charon's load tester: one address, a new identity per SA, INITIAL-CONTACT in each
    MM5. Each new SA compares identities with that identity's SAs only, not with every SA
    from the address (which made the gateway's CPU per SA grow with the SAs held)."""
    from ikecore.engine import Engine, core

    from helpers import make_config, seeded_random

    compared: list[int] = []
    same_id = core._same_id
    monkeypatch.setattr(core, "_same_id", lambda a, b: compared.append(1) or same_id(a, b))
    responder = Engine(make_config(psk="secret"), random=seeded_random(20))
    local = ("127.0.0.9", 500)

    def handshake(my_id: str, seed: int, now: float) -> None:
        initiator = Engine(make_config(psk="secret", my_id=my_id), random=seeded_random(seed))
        initiator.initiate(("127.0.0.1", 500), local=local, now=now, quick_mode=False)
        for _ in range(6):
            for data, remote, src in initiator.datagrams_to_send():
                responder.receive_datagram(data, src, remote, now)
            for data, remote, src in responder.datagrams_to_send():
                initiator.receive_datagram(data, src, remote, now)
        assert initiator.sas()[0].initial_contact

    for n in range(40):
        handshake(f"init{n}.lt.test", 100 + n, 10.0 + n)
    assert len(responder.sas()) == 40
    assert len(compared) <= 40  # at most the new SA itself each time, never the 39 others
    compared.clear()
    handshake("init7.lt.test", 300, 60.0)  # a reboot of one identity replaces its SA
    assert len(responder.sas()) == 40 and len(compared) <= 2
    assert [sa.started for sa in responder.sas() if sa.peer_id is not None
            and bytes(sa.peer_id.data) == b"init7.lt.test"] == [60.0]


def test_a_peer_authenticating_again_is_found_by_identity_not_by_a_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second ISAKMP SA from the same peer (no INITIAL-CONTACT: it is not its first)
    adopts the IPsec SAs of the first; the responder finds that SA through its identity
    index, not by walking every SA it holds (100,000 in a gateway)."""
    from ikecore import events as ev
    from ikecore.engine import Engine

    from helpers import INITIATOR, RESPONDER

    link = Link()
    first = link.connect()
    (old,) = link.responder.sas()
    kept = [ipsec.spi_in for ipsec in old.ipsec_sas]
    walked: list[int] = []
    every = Engine.sas
    monkeypatch.setattr(Engine, "sas", lambda self: walked.append(1) or every(self))
    second = link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now, quick_mode=False)
    link.pump()
    assert second != first and not link.initiator.sa(second).initial_contact  # type: ignore[union-attr]
    assert walked == []
    (rekeyed,) = link.of("responder", ev.Rekeyed)
    assert rekeyed.old_handle == old.handle
    new = link.responder.sa(rekeyed.handle)
    assert new is not None and [ipsec.spi_in for ipsec in new.ipsec_sas] == kept
