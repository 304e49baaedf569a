"""Lifetimes and rekeying of both phases, in memory with a fake clock.

Truth: the two engines are independent; after every rekey each side's outbound SA must be
the other's inbound SA (same SPI, same keys), the old SPIs must be gone from both IPsec
drivers, and at no instant may a side be without an IPsec SA (make before break).
"""

from __future__ import annotations

from typing import Any

import pytest

from ikecore import events as ev
from ikecore import wire
from ikecore.monitor import listing
from ikecore.protocol import lifetime
from ikecore.config import config_from_dict
from ikecore.sa import Phase1State

from helpers import Link
from test_engine import _keys_agree


def config(*, esp_lifetime: int = 600, ike_lifetime: int = 28800, margin: float = 60.0,
           kilobytes: int = 0) -> Any:
    return config_from_dict({
        "ike_policy": {"default": {"proposals": "aes128-sha256-modp2048", "lifetime": ike_lifetime}},
        "esp_policy": {"default": {"proposals": "aes128-sha256", "lifetime": esp_lifetime,
                                   "lifetime_kilobytes": kilobytes}},
        "timing": {"retransmit_timeout": 1.0, "retransmit_tries": 3, "negotiation_timeout": 30.0,
                   "rekey_margin": margin},
        "filter": [{"name": "peer", "psk": "secret"}],
    })


def pairs(link: Link) -> tuple[set[tuple[bytes, bytes]], set[tuple[bytes, bytes]]]:
    """(spi_in, spi_out) of every IPsec SA at each side, the responder's mirrored."""
    mine = {(s.spi_in, s.spi_out) for sa in link.initiator.sas() for s in sa.ipsec_sas}
    theirs = {(s.spi_out, s.spi_in) for sa in link.responder.sas() for s in sa.ipsec_sas}
    return mine, theirs


def assert_consistent(link: Link, count: int) -> None:
    mine, theirs = pairs(link)
    assert mine == theirs and len(mine) == count
    inbound = {spi for spi, keys in link.initiator_driver.inbound.items() if keys is not None}
    assert inbound == {spi_in for spi_in, _ in mine}
    assert {spi for spi, _dst in link.initiator_driver.outbound} == {spi_out for _, spi_out in mine}
    _keys_agree(link)


def flush(link: Link) -> None:
    """Deliver what the engines queued (Link.advance may stop with datagrams pending)."""
    for _ in range(20):
        batch = link.collect()
        if not batch:
            break
        for side, datagram in batch:
            link.deliver(side, datagram)
    link.drain_events()


def step_through(link: Link, seconds: float, count: int = 1) -> None:
    """Advance second by second; every second both sides hold at least ``count`` SAs."""
    for _ in range(int(seconds)):
        link.advance(1.0)
        flush(link)
        mine, theirs = pairs(link)
        assert len(mine) >= count and len(theirs) >= count, link.now


def test_encode_life_known_answer() -> None:
    # RFC 2407 4.5: SA Life Type = 1 (1 = seconds, 2 = kilobytes), SA Life Duration = 2,
    # TV (AF bit set) when the value fits 16 bits, else TLV with a 4-byte value.
    assert lifetime.encode_life(300, None) == bytes.fromhex("800100018002012c")
    assert lifetime.encode_life(None, 100000) == bytes.fromhex("80010002" "00020004000186a0")
    assert lifetime.decode_life(bytes.fromhex("800100018002012c" "80010002" "00020004000186a0")) == (300, 100000)


def test_malformed_life_attributes_are_payload_malformed() -> None:
    from ikecore.errors import PayloadMalformed

    for data in (b"\x80\x01\x00", bytes.fromhex("0002000000"), bytes.fromhex("00020009") + bytes(9)):
        with pytest.raises(PayloadMalformed):
            lifetime.decode_life(data)


def test_phase2_rekeys_before_expiry_with_jitter_and_make_before_break() -> None:
    link = Link(config(), config())
    start = link.now
    link.connect()
    (first,) = link.initiator.sas()[0].ipsec_sas
    step_through(link, 600 - 60 - 15 - 2)
    assert not link.of("initiator", ev.RekeyStarted)
    step_through(link, 20)
    started = link.of("initiator", ev.RekeyStarted)
    assert len(started) == 1 and start + 600 - 75 <= started[0].time <= start + 600 - 60
    assert len(link.of("initiator", ev.Rekeyed)) == 1
    assert not link.of("responder", ev.RekeyStarted)  # the peer that made it rekeys it
    assert_consistent(link, 1)
    (second,) = link.initiator.sas()[0].ipsec_sas
    assert second.spi_in != first.spi_in and first.spi_in not in link.initiator_driver.inbound
    # Three more lifetimes: always one SA, a rekey per lifetime, no expiry without a successor.
    step_through(link, 3 * 600)
    assert len(link.of("initiator", ev.Rekeyed)) == 4
    assert not [e for e in link.of("initiator", ev.SaDeleted) if e.reason == "lifetime expired"]
    assert_consistent(link, 1)


def test_without_margin_the_sa_expires_and_is_not_rekeyed() -> None:
    link = Link(config(margin=0), config(margin=0))
    link.connect()
    link.advance(601)
    assert not link.of("initiator", ev.RekeyStarted)
    assert pairs(link) == (set(), set())


def test_responder_lifetime_is_sent_and_honoured() -> None:
    link = Link(config(esp_lifetime=600, margin=0), config(esp_lifetime=300, kilobytes=5000, margin=0))
    link.connect()
    sent = link.of("responder", ev.ResponderLifetime)
    honoured = link.of("initiator", ev.ResponderLifetime)
    assert [(e.sent, e.seconds, e.kilobytes) for e in sent] == [(True, 300, 5000)]
    assert [(e.sent, e.seconds, e.kilobytes) for e in honoured] == [(False, 300, 5000)]
    for driver in (link.initiator_driver, link.responder_driver):
        assert {(k.lifetime, k.lifetime_kilobytes) for k in driver.outbound.values()} == {(300, 5000)}
    assert listing.quick_mode_rows(link.initiator.sas(), link.now)[0]["lifetime_left"] == pytest.approx(300, abs=1)
    link.advance(301)  # both ends expire together
    assert pairs(link) == (set(), set())


def test_no_responder_lifetime_when_lifetimes_agree() -> None:
    link = Link(config(), config())
    link.connect()
    assert not link.of("responder", ev.ResponderLifetime)
    notify = wire.NotifyType.RESPONDER_LIFETIME
    assert not [e for e in link.of("initiator", ev.NotifyReceived) if e.notify_type == notify]


def test_rekey_collision_keeps_exactly_one_sa_on_both_sides() -> None:
    link = Link(config(margin=0), config(margin=0))
    handle = link.connect()
    (old,) = link.initiator.sas()[0].ipsec_sas
    responder_sa = link.responder.sas()[0]
    link.initiator.rekey(handle, link.now, old.spi_in)
    link.responder.rekey(responder_sa.handle, link.now, old.spi_out)
    link.pump()
    collisions = [link.of(side, ev.RekeyCollision) for side in ("initiator", "responder")]
    assert len(collisions[0]) == len(collisions[1]) == 1
    # Both sides agree on the winner: the initiator's spi_in is the responder's spi_out.
    winner_i = collisions[0][0].winner_spi
    assert_consistent(link, 1)
    (kept,) = link.initiator.sas()[0].ipsec_sas
    assert kept.spi_in == winner_i and old.spi_in not in link.initiator_driver.inbound


@pytest.mark.parametrize("count", [4, 8])
def test_more_than_three_quick_modes_and_rekey_of_all_at_once(count: int) -> None:
    link = Link(config(margin=0), config(margin=0))
    handle = link.connect()
    for _ in range(count - 1):
        link.initiator.initiate_quick_mode(handle, link.now)
    link.pump()
    assert_consistent(link, count)
    before = pairs(link)[0]
    for ipsec in list(link.initiator.sas()[0].ipsec_sas):
        link.initiator.rekey(handle, link.now, ipsec.spi_in)
    assert len(link.initiator.sas()[0].quick_modes) >= count  # all in flight together
    link.pump()
    assert len(link.of("initiator", ev.Rekeyed)) == count
    assert not link.of("initiator", ev.RekeyCollision)
    assert_consistent(link, count)
    assert not pairs(link)[0] & before


def test_phase1_rekey_adopts_the_ipsec_sas_and_deletes_the_old_isakmp_sa() -> None:
    link = Link(config(ike_lifetime=1000, esp_lifetime=3000, margin=100),
                config(ike_lifetime=1000, esp_lifetime=3000, margin=100))
    start = link.now
    old_handle = link.connect()
    before = pairs(link)[0]
    step_through(link, 1000 - 100 - 25 - 2)
    assert not link.of("initiator", ev.RekeyStarted)
    step_through(link, 30)
    (new_sa,) = link.initiator.sas()
    assert new_sa.handle != old_handle and new_sa.state is Phase1State.ESTABLISHED
    (rekeyed,) = link.of("initiator", ev.Rekeyed)
    assert rekeyed.phase == 1 and start + 875 <= rekeyed.time <= start + 900
    assert len(link.responder.sas()) == 1 and len(link.of("responder", ev.Rekeyed)) == 1
    assert pairs(link)[0] == before  # same IPsec SAs, now under the new ISAKMP SA
    assert_consistent(link, 1)
    # The adopted IPsec SA is still rekeyed in time through the new ISAKMP SA.
    step_through(link, 3000)
    assert [e.phase for e in link.of("initiator", ev.Rekeyed)].count(2) >= 1
    assert_consistent(link, 1)


def test_kilobyte_limits_reported_by_the_driver() -> None:
    link = Link(config(margin=0, kilobytes=1000), config(margin=0, kilobytes=1000))
    handle = link.connect()
    (ipsec,) = link.initiator.sas()[0].ipsec_sas
    assert link.initiator.ipsec_lifetime_expired(ipsec.spi_in, link.now, hard=False)
    link.pump()
    assert len(link.of("initiator", ev.Rekeyed)) == 1
    assert_consistent(link, 1)
    (new,) = link.initiator.sas()[0].ipsec_sas
    assert link.initiator.ipsec_lifetime_expired(new.spi_in, link.now, hard=True)
    link.pump()
    assert pairs(link) == (set(), set())
    assert not link.initiator.ipsec_lifetime_expired(b"\x00\x00\x01\x00", link.now, hard=True)
    assert link.initiator.sa(handle) is not None


def test_quick_mode_window_paces_our_quick_modes_and_rekeys() -> None:
    """A peer such as charon follows at most 3 IKEv1 exchanges at once: with
    ``quick_mode_window`` we keep that many in flight and start the rest as they end."""
    def windowed() -> Any:
        base = config(margin=0)
        (flt,) = base.filters
        import dataclasses
        return dataclasses.replace(base, filters=(dataclasses.replace(flt, quick_mode_window=2),))

    link = Link(windowed(), config(margin=0))
    handle = link.connect()
    sa = link.initiator.sa(handle)
    for _ in range(5):
        link.initiator.initiate_quick_mode(handle, link.now)
    states = [qm.state.value for qm in sa.quick_modes.values() if qm.state.value != "ESTABLISHED"]
    assert sorted(states) == ["I_EXPECT_QM2"] * 2 + ["I_QUEUED"] * 3
    sent_qm1 = [d for side, d in link.collect() if side == "initiator"]
    assert len(sent_qm1) == 2  # only two QM1s left
    for data in sent_qm1:
        link.responder.receive_datagram(data, ("127.0.0.2", 500), ("127.0.0.1", 500), link.now)
    link.pump()
    assert_consistent(link, 6)
    for ipsec in list(sa.ipsec_sas):
        link.initiator.rekey(handle, link.now, ipsec.spi_in)
    assert sum(1 for qm in sa.quick_modes.values() if qm.state.value == "I_EXPECT_QM2") == 2
    link.pump()
    assert len(link.of("initiator", ev.Rekeyed)) == 6
    assert_consistent(link, 6)


def test_a_rebooted_peer_s_new_main_mode_adopts_nothing() -> None:
    """INITIAL-CONTACT: the old IPsec SAs are stale and go with the old ISAKMP SA."""
    from ikecore.driver import MemoryDriver
    from ikecore.engine.core import Engine

    from helpers import seeded_random

    link = Link(config(margin=0), config(margin=0))
    link.connect()
    (old_sa,) = link.responder.sas()
    (old_ipsec,) = old_sa.ipsec_sas
    link.initiator = Engine(config(margin=0), driver=MemoryDriver(), random=seeded_random(99))
    link.initiator_driver = link.initiator.driver  # type: ignore[assignment]
    link.connect()
    (new_sa,) = link.responder.sas()
    assert new_sa is not old_sa and new_sa.initial_contact
    assert [s.spi_in for s in new_sa.ipsec_sas] != [old_ipsec.spi_in] and len(new_sa.ipsec_sas) == 1
    assert not link.of("responder", ev.Rekeyed)
    assert old_ipsec.spi_in not in link.responder_driver.inbound


def kb_config(margin: float) -> Any:
    return config_from_dict({
        "ike_policy": {"default": {"proposals": "aes128-sha256-modp2048", "lifetime_kilobytes": 2}},
        "timing": {"retransmit_timeout": 1.0, "retransmit_tries": 3, "negotiation_timeout": 30.0,
                   "rekey_margin": margin},
        "filter": [{"name": "peer", "psk": "secret"}],
    })


def test_isakmp_kilobyte_lifetime_is_offered_counted_and_enforced() -> None:
    link = Link(kb_config(0), kb_config(0))
    handle = link.connect()
    sa, responder_sa = link.initiator.sa(handle), link.responder.sas()[0]
    assert sa.chosen.lifetime_kilobytes == responder_sa.chosen.lifetime_kilobytes == 2
    mm1 = wire.parse(link.sent[0][1])
    attrs = [(a.type, a.int_value) for a in mm1.payloads[0].proposals[0].transforms[0].attributes]
    assert (wire.OakleyAttribute.LIFE_TYPE, wire.LifeType.KILOBYTES) in attrs
    assert (wire.OakleyAttribute.LIFE_DURATION, 2) in attrs
    assert 0 < sa.octets < 2048  # QM1 + QM2 + QM3 so far; Main Mode itself is not counted
    for _ in range(20):
        if link.initiator.sa(handle) is None:
            break
        link.initiator.initiate_quick_mode(handle, link.now)
        link.pump()
    assert link.initiator.sa(handle) is None
    (gone,) = [e for e in link.of("initiator", ev.SaDeleted) if e.phase == 1]
    assert gone.reason == "kilobyte lifetime expired"
    assert not link.responder.sas()  # told with a Delete (or at its own count)
    assert pairs(link) == (set(), set())


def test_isakmp_kilobyte_lifetime_rekeys_at_ninety_percent() -> None:
    link = Link(kb_config(10), kb_config(10))
    handle = link.connect()
    for _ in range(20):
        if link.of("initiator", ev.RekeyStarted):
            break
        link.initiator.initiate_quick_mode(handle, link.now)
        link.pump()
    (started,) = link.of("initiator", ev.RekeyStarted)
    assert started.phase == 1
    link.pump()
    (new_sa,) = link.initiator.sas()
    assert new_sa.handle != handle and new_sa.octets < 2048 * 0.9
    assert len(new_sa.ipsec_sas) >= 3  # the IPsec SAs moved over
    assert_consistent(link, len(new_sa.ipsec_sas))


def test_the_replaced_sa_is_deleted_one_retransmission_timeout_after_the_rekey() -> None:
    """Make before break with a pause: QM3 goes alone, the Delete of the old SA follows
    later (charon serves one IKE_SA's messages in any order and keeps only three IV
    chains, so a Delete right behind QM3 can leave QM3 undecryptable)."""
    link = Link(config(margin=0), config(margin=0))
    handle = link.connect()
    (old,) = link.initiator.sas()[0].ipsec_sas
    link.initiator.rekey(handle, link.now, old.spi_in)
    sent_before = len(link.sent)
    for _ in range(4):  # QM1, QM2, QM3 without letting the clock reach a timer
        for side, datagram in link.collect():
            link.deliver(side, datagram)
    exchanges = [data[18] for _side, data in link.sent[sent_before:]]
    assert exchanges == [wire.ExchangeType.QUICK_MODE] * 3  # no Delete yet
    assert len(link.of("initiator", ev.Rekeyed)) == 1
    assert old.superseded and old in link.initiator.sas()[0].ipsec_sas  # still installed
    link.advance(link.initiator.config.timing.retransmit_timeout)
    link.pump()
    deletes = link.of("responder", ev.DeleteReceived)
    assert len(deletes) == 1
    assert old not in link.initiator.sas()[0].ipsec_sas
    assert_consistent(link, 1)
