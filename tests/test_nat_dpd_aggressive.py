"""NAT traversal, Dead Peer Detection, Aggressive Mode and vendor IDs, in memory.

Two engines over ``helpers.Link`` with a fake clock; ``Link(nat=...)`` rewrites the
initiator's source address and port in transit like a NAT. The truth: NAT-D hashes are
recomputed here from RFC 3947's formula with hashlib (independent of keymat), the
datagrams on the wire are parsed back (payload numbers, marker, ports), and both sides'
IPsec keys must agree byte for byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from typing import Any

import pytest

from ikecore import wire
from ikecore.protocol import dpd, nat_traversal
from ikecore import events as ev
from ikecore.config import Timing
from ikecore.monitor.counters import Monitor
from ikecore.monitor import listing
from ikecore.sa import Phase1State

from helpers import INITIATOR, RESPONDER, Link, make_config
from test_engine import _established, _keys_agree

NAT_IP = "198.51.100.7"
DPD_TIMING = Timing(retransmit_timeout=1.0, retransmit_tries=3, negotiation_timeout=30.0,
                    dpd_delay=10.0, dpd_timeout=30.0)


def _messages(link: Link, side: str, exchange_type: int | None = None) -> list[tuple[bool, object]]:
    """(had non-ESP marker, parsed message) of every IKE datagram ``side`` sent."""
    out = []
    for who, data in link.sent:
        if who != side or data == b"\xff":
            continue
        marker = data[:4] == wire.NON_ESP_MARKER
        message = wire.parse(data[4:] if marker else data)
        if exchange_type is None or message.exchange_type == exchange_type:
            out.append((marker, message))
    return out


def _main_mode_rows(link: Link) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Main Mode row of the initiator's first SA and of the responder's."""
    return (listing.main_mode_row(link.initiator.sas()[0], link.now),
            listing.main_mode_row(link.responder.sas()[0], link.now))


def _rfc3947_hash(cky_i: bytes, cky_r: bytes, address: tuple[str, int]) -> bytes:
    """NAT-D by hand: SHA-256 (the negotiated prf hash) of CKY-I | CKY-R | IP | port."""
    return hashlib.sha256(cky_i + cky_r + ipaddress.ip_address(address[0]).packed
                          + address[1].to_bytes(2, "big")).digest()


# --- NAT traversal --------------------------------------------------------------------------


def test_no_nat_means_no_float_plain_modes_and_rfc_vendor_ids() -> None:
    link = Link()
    link.connect()
    _established(link)
    mm = _messages(link, "initiator", wire.ExchangeType.IDENTITY_PROTECTION)
    vids = [p.data for p in mm[0][1].payloads if p.payload_type == wire.PayloadType.VID]
    assert [v.vendor_id for v in nat_traversal.VARIANTS] == vids[:4]  # RFC + drafts, as charon
    assert wire.VID_DPD in vids
    nat_d = [p for p in mm[1][1].payloads if p.payload_type == wire.PayloadType.NAT_D]
    (i_sa,) = link.initiator.sas()
    assert [p.data for p in nat_d] == [_rfc3947_hash(i_sa.initiator_cookie, i_sa.responder_cookie, RESPONDER),
                                       _rfc3947_hash(i_sa.initiator_cookie, i_sa.responder_cookie, INITIATOR)]
    for snap in _main_mode_rows(link):
        assert (snap["nat"], snap["nat_t"], snap["encapsulated"]) == ("none", "RFC 3947", False)
        assert (snap["local_port"], snap["peer_port"]) == (500, 500)
    assert not any(marker for marker, _ in _messages(link, "initiator"))
    assert all(not sa.udp_encapsulation for sa in link.initiator_driver.outbound.values())


def test_nat_in_front_of_initiator_floats_to_4500_with_udp_encapsulated_esp() -> None:
    link = Link(nat=NAT_IP)
    link.connect()
    _established(link)
    i_snap, r_snap = _main_mode_rows(link)
    assert (i_snap["nat"], r_snap["nat"]) == ("local", "remote")
    assert i_snap["encapsulated"] and r_snap["encapsulated"]
    assert (i_snap["local_port"], i_snap["peer_port"]) == (4500, 4500)
    assert r_snap["local_port"] == 4500 and r_snap["peer"] == NAT_IP
    assert (NAT_IP, r_snap["peer_port"]) == link.nat_mappings[(INITIATOR[0], 4500)]
    # MM1-MM4 plain on 500, MM5 on with the non-ESP marker (RFC 3947 section 4).
    markers = [marker for marker, _ in _messages(link, "initiator", wire.ExchangeType.IDENTITY_PROTECTION)]
    assert markers == [False, False, True]
    assert all(marker for marker, _ in _messages(link, "initiator", wire.ExchangeType.QUICK_MODE))
    for driver in (link.initiator_driver, link.responder_driver):
        assert all(sa.udp_encapsulation for sa in driver.outbound.values())
    (i_sa,) = link.initiator.sas()
    qm = i_sa.ipsec_sas[0]
    assert qm.mode == "tunnel"
    assert listing.quick_mode_rows(link.initiator.sas(), link.now)[0]["mode"] == "tunnel"


def test_udp_tunnel_mode_number_in_quick_mode_is_rfc_3_and_draft_61443(monkeypatch: pytest.MonkeyPatch) -> None:
    for variants, expected_mode, nat_d_type in (
            ((nat_traversal.RFC3947, nat_traversal.DRAFT_02), wire.EncapsulationMode.UDP_TUNNEL, 20),
            ((nat_traversal.DRAFT_02,), wire.EncapsulationMode.UDP_TUNNEL_DRAFT, 130)):
        monkeypatch.setattr(nat_traversal, "VARIANTS", variants)
        link = Link(nat=NAT_IP)
        link.connect()
        _established(link)
        (i_sa,), (r_sa,) = link.initiator.sas(), link.responder.sas()
        assert i_sa.nat_t is r_sa.nat_t is variants[0]
        mm3 = _messages(link, "initiator", wire.ExchangeType.IDENTITY_PROTECTION)[1][1]
        assert [p.payload_type for p in mm3.payloads].count(nat_d_type) == 2
        assert len(i_sa.quick_modes) == len(r_sa.quick_modes) == 1
        assert all(q.mode == expected_mode for q in [*i_sa.quick_modes.values(), *r_sa.quick_modes.values()])
        assert all(sa.udp_encapsulation for sa in link.responder_driver.inbound.values())


def test_forced_encapsulation_without_nat_makes_the_peer_see_a_nat() -> None:
    link = Link(make_config(nat_traversal="force"), make_config())
    link.connect()
    _established(link)
    i_snap, r_snap = _main_mode_rows(link)
    assert (i_snap["nat"], r_snap["nat"]) == ("none", "remote")
    assert i_snap["encapsulated"] and r_snap["encapsulated"]
    assert all(sa.udp_encapsulation for sa in link.responder_driver.outbound.values())


def test_nat_t_off_on_the_responder_means_no_vendor_id_and_no_nat_d() -> None:
    link = Link(make_config(), make_config(nat_traversal="off"))
    link.connect()
    _established(link)
    mm3 = _messages(link, "initiator", wire.ExchangeType.IDENTITY_PROTECTION)[1][1]
    assert wire.PayloadType.NAT_D not in [p.payload_type for p in mm3.payloads]
    assert listing.main_mode_row(link.initiator.sas()[0], link.now)["nat_t"] == ""


def test_missing_nat_d_after_agreeing_nat_t_fails_the_negotiation() -> None:
    sa = type("S", (), {})()
    with pytest.raises(Exception, match="NAT-D"):
        nat_traversal.detect(sa, nat_traversal.RFC3947, [wire.NatDPayload(b"x" * 32)])


def test_nat_keepalive_every_20_seconds_only_from_the_side_behind_the_nat() -> None:
    link = Link(nat=NAT_IP)
    link.connect()
    before = len(link.sent)
    link.advance(45.0)
    keepalives = [(side, data) for side, data in link.sent[before:] if data == b"\xff"]
    assert keepalives == [("initiator", b"\xff")] * 2
    assert len(link.of("initiator", ev.NatKeepaliveSent)) == 2
    assert not link.of("responder", ev.NatKeepaliveSent)


# --- DPD ------------------------------------------------------------------------------------


def test_dpd_probe_is_acknowledged_and_the_sa_stays() -> None:
    config = make_config(timing=DPD_TIMING)
    link = Link(config, config)
    link.connect()
    link.advance(25.0)
    sent = [e for e in link.of("initiator", ev.NotifySent) if e.notify_type == wire.NotifyType.R_U_THERE]
    assert sent, "no R-U-THERE after dpd_delay of idleness"
    acks = [e for e in link.of("initiator", ev.NotifyReceived) if e.notify_type == wire.NotifyType.R_U_THERE_ACK]
    assert len(acks) >= len(sent) // 2 and acks
    (sa,) = link.initiator.sas()
    assert sa.state is Phase1State.ESTABLISHED and sa.dpd_pending == []
    assert not link.of("initiator", ev.DeadPeerDetected)


def test_silent_peer_is_declared_dead_and_its_sas_deleted_and_counted() -> None:
    config = make_config(timing=DPD_TIMING)
    link = Link(config, config)
    link.connect()
    established_at = link.now
    link.silent.add("responder")
    link.advance(60.0)
    (dead,) = link.of("initiator", ev.DeadPeerDetected)
    # idle 10 s, then probes every second for 30 s: dead 40 s after the last traffic.
    assert dead.time == pytest.approx(established_at + 40.0, abs=1.0)
    assert dead.unanswered >= 30
    assert link.initiator.sas() == []
    deleted = link.of("initiator", ev.SaDeleted)
    assert {e.phase for e in deleted} == {1, 2} and all("dead peer" in e.reason for e in deleted)
    monitor = Monitor()
    for event in link.events["initiator"]:
        monitor.observe(event)
    assert monitor.extended["dead_peers"] == 1


def test_dpd_off_without_the_peer_vendor_id() -> None:
    responder = make_config(timing=DPD_TIMING)
    responder = dataclasses.replace(responder, filters=(dataclasses.replace(responder.filters[0], dpd=False),))
    link = Link(make_config(timing=DPD_TIMING), responder)
    link.connect()
    link.silent.add("responder")
    link.advance(60.0)
    assert not link.of("initiator", ev.DeadPeerDetected)
    assert listing.main_mode_row(link.initiator.sas()[0], link.now)["dpd"] is False


def test_dpd_ack_with_a_wrong_sequence_number_or_spi_is_ignored() -> None:
    link = Link()
    link.connect()
    (sa,) = link.initiator.sas()
    probe = dpd.r_u_there(sa)
    spi = sa.initiator_cookie + sa.responder_cookie
    wrong = wire.NotifyPayload(int(wire.NotifyType.R_U_THERE_ACK), spi=spi,
                               data=(int.from_bytes(probe.data, "big") + 1).to_bytes(4, "big"))
    assert not dpd.on_ack(sa, wrong, link.now)
    bad_spi = wire.NotifyPayload(int(wire.NotifyType.R_U_THERE_ACK), spi=bytes(16), data=probe.data)
    assert not dpd.on_ack(sa, bad_spi, link.now)
    right = wire.NotifyPayload(int(wire.NotifyType.R_U_THERE_ACK), spi=spi, data=probe.data)
    assert dpd.on_ack(sa, right, link.now) and sa.dpd_pending == []


# --- Aggressive Mode ------------------------------------------------------------------------


def test_aggressive_mode_establishes_with_three_messages_and_quick_mode() -> None:
    config = make_config(aggressive=True)
    link = Link(config, config)
    link.connect()
    _established(link)
    am = [m for _, m in _messages(link, "initiator", wire.ExchangeType.AGGRESSIVE)]
    am += [m for _, m in _messages(link, "responder", wire.ExchangeType.AGGRESSIVE)]
    assert len(am) == 3
    assert not _messages(link, "initiator", wire.ExchangeType.IDENTITY_PROTECTION)
    assert listing.main_mode_row(link.responder.sas()[0], link.now)["exchange"] == "aggressive"
    assert listing.main_mode_row(link.responder.sas()[0], link.now)["peer_id"] == INITIATOR[0]


def test_aggressive_mode_is_refused_unless_the_responder_filter_allows_it() -> None:
    link = Link(make_config(aggressive=True), make_config())
    link.connect()
    (failed,) = link.of("responder", ev.Phase1Failed)
    assert failed.notify_type == wire.NotifyType.NO_PROPOSAL_CHOSEN
    assert link.of("initiator", ev.Phase1Failed)
    assert link.responder.sas() == [] and link.initiator.sas() == []


def test_aggressive_mode_wrong_psk_fails_on_hash_r() -> None:
    link = Link(make_config(psk="one", aggressive=True), make_config(psk="two", aggressive=True))
    link.connect()
    (failure,) = link.of("initiator", ev.AuthenticationFailed)
    assert "HASH_R" in failure.reason
    assert not link.of("initiator", ev.Phase1Established)


def test_aggressive_mode_behind_nat_floats_for_message_3() -> None:
    config = make_config(aggressive=True)
    link = Link(config, config, nat=NAT_IP)
    link.connect()
    _established(link)
    markers = [marker for marker, _ in _messages(link, "initiator", wire.ExchangeType.AGGRESSIVE)]
    assert markers == [False, True]
    assert tuple(row["nat"] for row in _main_mode_rows(link)) == ("local", "remote")
    _keys_agree(link)
    # The initiator stays on the NAT-T port it floated to: AM2's source must not pull it back.
    (sa,) = link.initiator.sas()
    assert sa.remote[1] == 4500 and sa.encapsulated
    quick = [marker for marker, _ in _messages(link, "initiator", wire.ExchangeType.QUICK_MODE)]
    assert quick and all(quick)


# --- vendor IDs -----------------------------------------------------------------------------


def test_vendor_ids_of_other_stacks_are_recognised_and_recorded() -> None:
    config = make_config()
    link = Link(config, config)
    unity, xauth, frag = (bytes.fromhex("12f5f28c457168a9702d9fe274cc0100"), bytes.fromhex("09002689dfd6b712"),
                          bytes.fromhex("4048b7d56ebce88525e7de7f00d6c2d3"))
    ms = bytes.fromhex("1e2b516905991c7d7c96fcbfb587e46100000009")  # MS NT5 ISAKMPOAKLEY, version 9
    unknown = b"\x01" * 16
    offer = config.ike_policies["default"].offer()
    mm1 = wire.Message(b"\x11" * 8, bytes(8), wire.ExchangeType.IDENTITY_PROTECTION,
                       [offer, *(wire.VendorIdPayload(v) for v in (unity, xauth, frag, ms, wire.VID_DPD,
                                                                    wire.VID_NAT_T_RFC3947, unknown))]).encode()
    link.responder.receive_datagram(mm1, INITIATOR, RESPONDER, link.now)
    (snap,) = listing.main_mode_rows(link.responder.sas(), link.now)
    assert snap["vendor_ids"] == ["Cisco Unity", "XAUTH", "IKE fragmentation", "MS NT5 ISAKMPOAKLEY",
                                  "Dead Peer Detection v1.0", "RFC 3947 NAT-T", unknown.hex()]
    assert snap["dpd"] is True and snap["nat_t"] == "RFC 3947"
    (mm2,) = link.responder.datagrams_to_send()
    vids = [p.data for p in wire.parse(mm2[0]).payloads if p.payload_type == wire.PayloadType.VID]
    assert vids == [wire.VID_NAT_T_RFC3947, wire.VID_DPD]  # the chosen variant only, and DPD


def test_aggressive_mode_lost_message_3_is_recovered_by_the_responder_resending_message_2() -> None:
    config = make_config(aggressive=True)
    link = Link(config, config)
    link.connect(drop=lambda side, index, data: index == 3)  # AM1, AM2, then AM3 is lost
    _established(link)
    assert link.of("responder", ev.RetransmitSent)
    assert link.of("initiator", ev.DuplicateReceived)
    assert not link.of("responder", ev.Phase1Failed)


def test_toml_config_enables_aggressive_mode_nat_t_and_dpd_per_filter(tmp_path: object) -> None:
    from ikecore.config import config_from_dict
    from ikecore.errors import ConfigError

    config = config_from_dict({
        "filter": [{"name": "legacy", "psk": "x", "aggressive": True, "nat_traversal": "force", "dpd": False}],
        "timing": {"dpd_delay": 30, "dpd_timeout": 120, "nat_keepalive": 15},
    })
    (flt,) = config.filters
    assert (flt.aggressive, flt.nat_traversal, flt.dpd) == (True, "force", False)
    assert (config.timing.dpd_delay, config.timing.dpd_timeout, config.timing.nat_keepalive) == (30.0, 120.0, 15.0)
    default = config_from_dict({"filter": [{"psk": "x"}]}).filters[0]
    assert (default.aggressive, default.nat_traversal, default.dpd) == (False, "auto", True)
    with pytest.raises(ConfigError, match="nat_traversal"):
        config_from_dict({"filter": [{"psk": "x", "nat_traversal": "sometimes"}]})


def test_aggressive_mode_initial_contact_in_message_3_drops_stale_sas_of_a_rebooted_peer() -> None:
    from helpers import seeded_random
    from ikecore.driver import MemoryDriver
    from ikecore.engine.core import Engine

    config = make_config(aggressive=True)
    link = Link(config, config)
    link.connect()
    (old,) = link.responder.sas()
    link.initiator = Engine(config, driver=MemoryDriver(), random=seeded_random(99))  # the peer rebooted
    link.connect()
    (new,) = link.responder.sas()
    assert new is not old and new.initial_contact
    assert any("INITIAL-CONTACT" in e.reason for e in link.of("responder", ev.SaDeleted) if e.handle == old.handle)


def test_aggressive_mode_forced_float_on_high_ports_stays_on_the_natt_port() -> None:
    # Off port 500 every datagram carries the non-ESP marker (as with charon on high
    # ports), so AM2 arriving from the peer's IKE port must not pull the initiator back.
    link = Link(make_config(aggressive=True, nat_traversal="force"), make_config(aggressive=True))
    link.initiator.initiate(("127.0.0.1", 15500), local=("127.0.0.2", 15600), now=link.now, natt_port=15501)
    for _ in range(2):  # AM1 to the responder, then AM2 back (the initiator answers AM3 + QM1)
        for side, datagram in link.collect():
            link.deliver(side, datagram)
    (sa,) = link.initiator.sas()
    assert sa.state is Phase1State.ESTABLISHED and sa.remote == ("127.0.0.1", 15501)
    link.pump()
    (peer,) = link.responder.sas()
    assert sa.state is Phase1State.ESTABLISHED and sa.encapsulated
    assert sa.remote == ("127.0.0.1", 15501) and peer.local == ("127.0.0.1", 15501)
    assert len(link.of("initiator", ev.Phase2Established)) == 1
