"""Engine: Main Mode + Quick Mode between two in-memory engines with a fake clock.

The truth here is the protocol itself: two independent roles must agree on cookies, SPIs
and keys (each side's outbound key equals the other's inbound key for the same SPI), and
every failure path must end in the counted outcome without an exception escaping.
"""

from __future__ import annotations

import pytest

from ikecore import events as ev
from ikecore import wire
from ikecore.monitor import listing
from ikecore.sa import Phase1State

from helpers import INITIATOR, RESPONDER, Link, make_config


def _keys_agree(link: Link) -> None:
    """Each outbound SA at one side is the inbound SA of the other, byte for byte."""
    pairs = [(link.initiator_driver, link.responder_driver), (link.responder_driver, link.initiator_driver)]
    count = 0
    for sender, receiver in pairs:
        for (spi, _dst), out in sender.outbound.items():
            inbound = receiver.inbound[spi]
            assert inbound is not None
            assert (out.encryption_key, out.integrity_key) == (inbound.encryption_key, inbound.integrity_key)
            assert out.encryption == inbound.encryption and out.integrity == inbound.integrity
            count += 1
    assert count >= 2


def _established(link: Link, quick_modes: int = 1) -> None:
    assert len(link.of("initiator", ev.Phase1Established)) == 1
    assert len(link.of("responder", ev.Phase1Established)) == 1
    assert len(link.of("initiator", ev.Phase2Established)) == quick_modes
    assert len(link.of("responder", ev.Phase2Established)) == quick_modes
    (i_sa,) = link.initiator.sas()
    (r_sa,) = link.responder.sas()
    assert (i_sa.initiator_cookie, i_sa.responder_cookie) == (r_sa.initiator_cookie, r_sa.responder_cookie)
    assert i_sa.state is r_sa.state is Phase1State.ESTABLISHED
    _keys_agree(link)


SUITES = [f"{enc}-{integ}-modp2048" for enc in ("des", "3des", "aes128", "aes192", "aes256")
          for integ in ("md5", "sha1", "sha256", "sha384", "sha512")]
GROUPS = ["modp768", "modp1024", "modp1536", "modp2048", "modp3072", "modp4096", "modp6144",
          "modp8192", "ecp256", "ecp384", "ecp521", "modp2048s256"]


@pytest.mark.parametrize("suite", SUITES)
def test_every_cipher_and_hash_establishes_main_and_quick_mode(suite: str) -> None:
    esp = "-".join(suite.split("-")[:2]).replace("aes192", "aes256")
    config = make_config(ike=suite, esp=esp)
    link = Link(config, config)
    link.connect()
    _established(link)
    assert listing.main_mode_row(link.responder.sas()[0], link.now)["encryption"] == suite.split("-")[0]


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_establishes(group: str) -> None:
    config = make_config(ike=f"aes128-sha256-{group}")
    link = Link(config, config)
    link.connect()
    _established(link)
    assert listing.main_mode_row(link.initiator.sas()[0], link.now)["diffie_hellman"] == group


def test_quick_mode_with_pfs_and_transport_mode() -> None:
    config = make_config(esp="aes256-sha256-modp2048", mode="transport")
    link = Link(config, config)
    link.connect()
    _established(link)
    (out_spi, _), sa = next(iter(link.initiator_driver.outbound.items()))
    assert sa.mode == "transport"


def test_pfs_mismatch_is_no_proposal_chosen_in_quick_mode() -> None:
    link = Link(make_config(esp="aes128-sha256-modp2048"), make_config(esp="aes128-sha256"))
    link.connect()
    assert len(link.of("initiator", ev.Phase1Established)) == 1
    failed = link.of("responder", ev.Phase2Failed)
    assert failed and failed[0].notify_type == wire.NotifyType.NO_PROPOSAL_CHOSEN
    assert link.of("initiator", ev.NotifyReceived)[0].notify_type == wire.NotifyType.NO_PROPOSAL_CHOSEN
    assert not link.initiator_driver.outbound and not link.responder_driver.outbound


def test_many_concurrent_quick_modes_on_one_isakmp_sa() -> None:
    link = Link()
    handle = link.connect()
    for _ in range(4):
        link.initiator.initiate_quick_mode(handle, link.now)
    link.pump()
    _established(link, quick_modes=5)
    assert len(link.initiator_driver.outbound) == 5
    assert len({sa.spi for sa in link.initiator_driver.outbound.values()}) == 5


def test_wrong_psk_is_an_authentication_failure_and_no_sa() -> None:
    link = Link(make_config(psk="right"), make_config(psk="wrong"))
    link.connect()
    auth = link.of("responder", ev.AuthenticationFailed)
    assert len(auth) == 1
    assert not link.responder.sas()
    assert not link.initiator.sas()
    assert link.of("responder", ev.NotifySent)[0].notify_type == wire.NotifyType.AUTHENTICATION_FAILED
    assert "AUTHENTICATION-FAILED" in link.of("initiator", ev.Phase1Failed)[0].reason
    assert not link.of("initiator", ev.Phase1Established)


def test_no_common_proposal_is_answered_with_no_proposal_chosen() -> None:
    link = Link(make_config(ike="3des-sha1-modp1024"), make_config(ike="aes256-sha384-ecp384"))
    link.connect()
    sent = link.of("responder", ev.NotifySent)
    assert sent[0].notify_type == wire.NotifyType.NO_PROPOSAL_CHOSEN and not sent[0].protected
    assert "NO-PROPOSAL-CHOSEN" in link.of("initiator", ev.Phase1Failed)[0].reason
    assert not link.initiator.sas() and not link.responder.sas()


def test_responder_chooses_first_acceptable_offer_in_initiator_order() -> None:
    link = Link(make_config(ike="3des-sha1-modp1024,aes128-sha256-modp2048,aes256-sha256-ecp256"),
                make_config(ike="aes256-sha256-ecp256,aes128-sha256-modp2048"))
    link.connect()
    assert listing.main_mode_row(link.responder.sas()[0], link.now)["encryption"] == "aes128"


@pytest.mark.parametrize("lost", [1, 2, 3, 4, 5, 6, 7, 8])
def test_a_lost_datagram_is_retransmitted_identically(lost: int) -> None:
    link = Link()
    link.connect(drop=lambda side, index, data: index == lost)
    _established(link)
    retransmitted = link.of("initiator", ev.RetransmitSent) + link.of("responder", ev.RetransmitSent)
    duplicates = link.of("initiator", ev.DuplicateReceived) + link.of("responder", ev.DuplicateReceived)
    assert retransmitted or duplicates


def test_retransmissions_replay_the_identical_datagram() -> None:
    link = Link()
    link.connect(drop=lambda side, index, data: side == "responder" and index < 8)
    first = [d for s, d in link.sent if s == "initiator"]
    assert first[0] == first[1]  # MM1 resent byte for byte


def test_duplicated_datagrams_change_nothing() -> None:
    link = Link()
    link.connect(duplicate=True)
    _established(link)
    assert link.of("responder", ev.DuplicateReceived)


def test_reordered_batches_still_establish() -> None:
    link = Link()
    handle = link.connect()
    for _ in range(3):
        link.initiator.initiate_quick_mode(handle, link.now)
    link.pump(reorder=True)
    _established(link, quick_modes=4)


def test_retransmission_limit_reached_fails_the_negotiation() -> None:
    link = Link()
    link.connect(drop=lambda side, index, data: side == "initiator")
    link.advance(60)
    failed = link.of("initiator", ev.Phase1Failed)
    assert failed and ("retransmission limit" in failed[0].reason or "timed out" in failed[0].reason)
    assert len(link.of("initiator", ev.RetransmitSent)) == 3
    assert not link.initiator.sas()


def test_garbage_and_truncated_datagrams_mid_exchange_are_counted_and_dropped() -> None:
    link = Link()
    link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now)
    for round_ in range(12):
        batch = link.collect()
        if not batch:
            break
        for side, (data, remote, local) in batch:
            target = link.responder if side == "initiator" else link.initiator
            target.receive_datagram(data[:len(data) // 2], local, remote, link.now)      # truncated
            target.receive_datagram(data[:28] + b"\x55" * 40, local, remote, link.now)   # garbage body
            target.receive_datagram(b"\x00" * 3, local, remote, link.now)                 # runt
            target.receive_datagram(data, local, remote, link.now)
    link.pump()
    _established(link)
    invalid = link.of("responder", ev.InvalidPacketReceived) + link.of("initiator", ev.InvalidPacketReceived)
    assert len(invalid) >= 10
    assert not any("internal error" in e.reason for e in invalid)


def test_unknown_cookies_are_invalid_cookies() -> None:
    link = Link()
    link.connect()
    (sa,) = link.responder.sas()
    forged = wire.Message(b"\x01" * 8, b"\x02" * 8, wire.ExchangeType.IDENTITY_PROTECTION,
                          [wire.NoncePayload(b"x" * 16)]).encode()
    link.responder.receive_datagram(forged, INITIATOR, RESPONDER, link.now)
    assert link.of("responder", ev.InvalidCookieReceived)
    assert link.responder.sas() == [sa]


def test_delete_from_initiator_removes_both_phases_on_the_responder() -> None:
    link = Link()
    handle = link.connect()
    link.initiator.delete(handle, link.now)
    link.pump()
    assert not link.responder.sas()
    deleted = link.of("responder", ev.SaDeleted)
    assert {e.phase for e in deleted} == {1, 2}
    assert not link.responder_driver.outbound and not any(link.responder_driver.inbound.values())


def test_delete_from_responder_removes_the_initiator_sa() -> None:
    link = Link()
    link.connect()
    (sa,) = link.responder.sas()
    link.responder.delete(sa.handle, link.now)
    link.pump()
    assert not link.initiator.sas()


def test_sa_expires_at_its_lifetime_with_a_delete() -> None:
    config = make_config()
    link = Link(config, config)
    link.connect()
    link.advance(3600 + 1)  # ESP lifetime
    assert not link.initiator_driver.outbound
    link.advance(28800)
    assert not link.initiator.sas() and not link.responder.sas()


def test_responder_is_stateless_about_dh_before_message_3() -> None:
    calls: list[int] = []
    link = Link()
    original = link.responder._keypair
    link.responder._keypair = lambda group: calls.append(group) or original(group)
    link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now)
    for side, datagram in link.collect():
        link.deliver(side, datagram)  # MM1 only
    assert calls == []
    assert link.responder.sas()[0].state is Phase1State.R_EXPECT_MM3


def test_initial_contact_replaces_the_stale_sa_of_a_rebooted_peer() -> None:
    link = Link()
    link.connect()
    (old,) = link.responder.sas()
    # The initiator "reboots": a fresh engine with no SAs initiates again.
    rebooted = Link(seed=7)
    rebooted.responder = link.responder
    rebooted.responder_driver = link.responder_driver
    rebooted.connect()
    (sa,) = link.responder.sas()
    assert sa is not old and sa.state is Phase1State.ESTABLISHED
    notified = [e for e in rebooted.of("responder", ev.NotifyReceived)
                if e.notify_type == wire.NotifyType.INITIAL_CONTACT]
    assert notified
    # A second SA from a peer that still has one does not send INITIAL-CONTACT.
    rebooted.initiator.initiate(RESPONDER, local=INITIATOR, now=rebooted.now)
    rebooted.pump()
    assert len(link.responder.sas()) == 2
