"""Datagrams of several ISAKMP messages, the statistics as the IP Security Monitor
document defines them, the non-ESP marker only off port 500, and the policy views.

The truth is on the wire and in two independent engines: a responder engine seals Main
Mode message 6 and an encrypted Informational with its own keys, the initiator engine
(its own key derivation) must decrypt and verify both from one datagram. Statistics are
read from the monitor that observes the engine's events, against datagrams built here
byte by byte (RFC 2408 section 3.1 header layout).
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest
from helpers import INITIATOR, RESPONDER, Link, make_config, seeded_random
from ikecore import events as ev
from ikecore import wire
from ikecore.config import FloodLimits, config_from_dict
from ikecore.engine.core import Engine
from ikecore.errors import UnequalPayloadLengths
from ikecore.monitor.counters import Monitor
from ikecore.monitor.hostinfo import HostConfig
from ikecore.monitor.views import Views
from ikecore.protocol import informational
from ikecore.sa import Phase1State
from test_frontdoor import _gateway, _message1, _Peer

MM = wire.ExchangeType.IDENTITY_PROTECTION
INFO = wire.ExchangeType.INFORMATIONAL
MARKER = wire.NON_ESP_MARKER
INFO_MESSAGE_ID = 0x3C4D5E6F


def _monitor(events: list[ev.Event]) -> Monitor:
    monitor = Monitor()
    for event in events:
        monitor.observe(event)
    return monitor


def _statistics(link: Link, side: str) -> dict[str, int]:
    link.drain_events()
    return _monitor(link.events[side]).statistics()


def _held_main_mode_6() -> tuple[Link, bytes, bytes]:
    """Main Mode up to message 6, which is held back; returns it and an encrypted
    Informational (HASH(1), N(INITIAL-CONTACT)) sealed with the responder SA's keys, as
    a Cisco-like responder sends them together."""
    link = Link()
    link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now, quick_mode=False)
    mm6 = None
    for _ in range(10):
        for side, datagram in link.collect():
            data = datagram[0]
            if side == "responder" and data[18] == MM and data[19] & wire.Flag.ENCRYPTION:
                mm6 = data
                continue
            link.deliver(side, datagram)
        if mm6 is not None:
            break
    assert mm6 is not None
    (r_sa,) = link.responder.sas()
    (i_sa,) = link.initiator.sas()
    assert r_sa.state is Phase1State.ESTABLISHED and i_sa.state is Phase1State.I_EXPECT_MM6
    cookies = r_sa.initiator_cookie + r_sa.responder_cookie
    info = informational.build_protected(
        r_sa, [informational.notify(wire.NotifyType.INITIAL_CONTACT, spi=cookies)], INFO_MESSAGE_ID)
    return link, mm6, info


def test_main_mode_6_and_an_encrypted_informational_in_one_datagram_are_both_processed() -> None:
    link, mm6, info = _held_main_mode_6()
    # each is one whole message; together they are what wire.parse (one message) rejects
    assert wire.parse(mm6).exchange_type == MM and wire.parse(info).exchange_type == INFO
    with pytest.raises(UnequalPayloadLengths, match=f"Length is {len(mm6)} but the datagram has {len(mm6) + len(info)}"):
        wire.parse(mm6 + info)
    assert wire.split_messages(mm6 + info) == ([mm6, info], 0)
    link.initiator.receive_datagram(mm6 + info, RESPONDER, INITIATOR, link.now)
    (established,) = link.of("initiator", ev.Phase1Established)
    (notify,) = link.of("initiator", ev.NotifyReceived)
    assert (notify.notify_type, notify.protected, notify.handle) == (
        wire.NotifyType.INITIAL_CONTACT, True, established.handle)
    assert link.of("initiator", ev.InvalidPacketReceived) == []
    received = [e.exchange_type for e in link.of("initiator", ev.DatagramReceived)]
    assert received[-2:] == [MM, INFO]                     # in the datagram's order
    stats = _statistics(link, "initiator")
    assert stats["ike_main_mode"] == 1 and stats["invalid_packets_received"] == 0
    # the SA works afterwards: Quick Mode over it
    link.initiator.initiate_quick_mode(established.handle, link.now)
    link.pump()
    assert link.of("initiator", ev.Phase2Established)


def test_messages_are_processed_in_the_datagram_order() -> None:
    """The Informational first: until message 6 is processed the initiator's ISAKMP SA is
    not established, so a protected Informational is refused (an invalid packet); message 6
    after it still completes Main Mode."""
    link, mm6, info = _held_main_mode_6()
    link.initiator.receive_datagram(info + mm6, RESPONDER, INITIATOR, link.now)
    (invalid,) = link.of("initiator", ev.InvalidPacketReceived)
    assert "before the ISAKMP SA is established" in invalid.reason
    assert link.of("initiator", ev.Phase1Established)
    assert not [e for e in link.of("initiator", ev.NotifyReceived) if e.protected]
    stats = _statistics(link, "initiator")
    assert stats["invalid_packets_received"] == 1 and stats["ike_main_mode"] == 1


@pytest.mark.parametrize("trailing", [b"\x00", b"\x01\x02\x03", bytes(27), b"\x10" * 28])
def test_trailing_bytes_are_ignored_and_counted_as_one_invalid_packet(trailing: bytes) -> None:
    link, mm6, info = _held_main_mode_6()
    link.initiator.receive_datagram(mm6 + info + trailing, RESPONDER, INITIATOR, link.now)
    assert link.of("initiator", ev.Phase1Established)
    assert [e.notify_type for e in link.of("initiator", ev.NotifyReceived)] == [wire.NotifyType.INITIAL_CONTACT]
    (invalid,) = link.of("initiator", ev.InvalidPacketReceived)
    assert invalid.notify_type == wire.NotifyType.UNEQUAL_PAYLOAD_LENGTHS
    assert f"{len(trailing)} bytes after the last ISAKMP message" in invalid.reason
    link.drain_events()
    monitor = _monitor(link.events["initiator"])
    assert monitor.statistics()["invalid_packets_received"] == 1
    assert monitor.statistics()["invalid_cookies_received"] == 0
    assert monitor.extended["invalid_packets:unequal_payload_lengths"] == 1


def test_a_message_that_fails_does_not_stop_the_next_one() -> None:
    link, mm6, info = _held_main_mode_6()
    spoiled = bytearray(info)
    spoiled[-1] ^= 0xFF                                    # last ciphertext block: it no longer verifies
    (r_sa,) = link.responder.sas()
    second = informational.build_protected(r_sa, [informational.notify(
        wire.NotifyType.INITIAL_CONTACT, spi=r_sa.initiator_cookie + r_sa.responder_cookie)], INFO_MESSAGE_ID + 1)
    link.initiator.receive_datagram(mm6 + bytes(spoiled) + second, RESPONDER, INITIATOR, link.now)
    assert link.of("initiator", ev.Phase1Established)
    (invalid,) = link.of("initiator", ev.InvalidPacketReceived)
    assert "HASH(1) does not verify" in invalid.reason
    (notify,) = link.of("initiator", ev.NotifyReceived)
    assert notify.notify_type == wire.NotifyType.INITIAL_CONTACT and notify.protected


def test_over_udp_two_messages_in_one_datagram_pass_the_rust_path_and_both_are_answered() -> None:
    """A real gateway on loopback in stateless mode, where Rust answers a known offer: a
    datagram of two such message 1s (and 2 stray bytes) is not Rust's to answer; the
    engine answers both, in order, and counts the stray bytes."""
    async def scenario() -> None:
        gateway, address = await _gateway(FloodLimits(cookie_threshold=1))
        fast = gateway.fast_path
        assert fast is not None
        peer = _Peer()
        loop = asyncio.get_running_loop()
        try:
            for _ in range(3):    # a half-open SA (stateless from then on), the template, Rust's answer
                await peer.ask(_message1(), address)
            assert fast.totals["stateless_replies"] == 1
            first, second = _message1(), _message1()
            peer.sock.sendto(first + second + b"\x00\x01", address)
            replies = [await loop.run_in_executor(None, lambda: peer.sock.recv(65535)) for _ in range(2)]
            assert [r[4:12] for r in replies] == [first[:8], second[:8]]     # in the datagram's order
            assert all(r[:4] == MARKER and wire.parse(r[4:]).exchange_type == MM for r in replies)
            assert fast.totals["stateless_replies"] == 1 and fast.totals["to_python"] == 3
            assert gateway.monitor.extended["invalid_packets:unequal_payload_lengths"] == 1
            assert gateway.monitor.statistics()["invalid_cookies_received"] == 0
        finally:
            peer.sock.close()
            gateway.close()

    asyncio.run(scenario())


# --- Invalid Packets Received vs Invalid Cookies Received ----------------------------------------


def _well_formed(cky_i: bytes = b"\x11" * 8, cky_r: bytes = b"\x22" * 8) -> bytes:
    """A well-formed Main Mode message (a Nonce payload) whose cookies no SA has."""
    return wire.Message(cky_i, cky_r, MM, [wire.NoncePayload(b"n" * 16)]).encode()


def _with(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


BAD_HEADERS = {
    "Length larger than the datagram": lambda d: _with(d, 24, struct.pack(">I", len(d) + 1)),
    "Length below a header": lambda d: _with(d, 24, struct.pack(">I", 27)),
    "Length zero": lambda d: _with(d, 24, bytes(4)),
    "Length past the datagram by far": lambda d: _with(d, 24, b"\xff\xff\xff\xff"),
    "major version 2": lambda d: _with(d, 17, b"\x20"),
    "major version 0": lambda d: _with(d, 17, b"\x00"),
    "reserved flag bits": lambda d: _with(d, 19, b"\x08"),
    "reserved exchange type": lambda d: _with(d, 18, b"\x07"),
    "shorter than a header": lambda d: d[:27],
    # not the header: the payload chain (RFC 2408 section 3.2) does not fit the message
    "payload length past the message": lambda d: _with(d, 30, struct.pack(">H", len(d) - 28 + 1)),
    "payload length below 4": lambda d: _with(d, 30, struct.pack(">H", 3)),
    "payload chain shorter than the message": lambda d: _with(d, 30, struct.pack(">H", len(d) - 28 - 1)),
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_an_invalid_message_with_unknown_cookies_is_an_invalid_packet_not_an_invalid_cookie(name: str) -> None:
    engine = Engine(make_config(), random=seeded_random(5))
    data = BAD_HEADERS[name](_well_formed())
    assert data[:16] == b"\x11" * 8 + b"\x22" * 8 or len(data) < 28
    engine.receive_datagram(data, INITIATOR, RESPONDER, 1000.0)
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    stats = _monitor(events).statistics()
    assert (stats["invalid_packets_received"], stats["invalid_cookies_received"]) == (1, 0)
    assert engine.datagrams_to_send() == [] and engine.sas() == []


def test_well_formed_unknown_cookies_are_an_invalid_cookie_not_an_invalid_packet() -> None:
    engine = Engine(make_config(), random=seeded_random(5))
    engine.receive_datagram(_well_formed(), INITIATOR, RESPONDER, 1000.0)
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    stats = _monitor(events).statistics()
    assert (stats["invalid_packets_received"], stats["invalid_cookies_received"]) == (0, 1)


def test_an_invalid_header_naming_a_known_sa_is_an_invalid_packet_and_leaves_it() -> None:
    link = Link()
    link.connect()
    (sa,) = link.responder.sas()
    known = _well_formed(sa.initiator_cookie, sa.responder_cookie)
    before = _statistics(link, "responder")
    link.responder.receive_datagram(_with(known, 17, b"\x20"), INITIATOR, RESPONDER, link.now)
    link.responder.receive_datagram(_with(known, 19, b"\x81"), INITIATOR, RESPONDER, link.now)
    after = _statistics(link, "responder")
    assert after["invalid_packets_received"] - before["invalid_packets_received"] == 2
    assert after["invalid_cookies_received"] == before["invalid_cookies_received"]
    assert link.responder.sas() == [sa] and sa.state is Phase1State.ESTABLISHED


# --- the non-ESP marker only off port 500 (RFC 3948 section 2.2) ---------------------------------


def _message_1(cky_i: bytes) -> bytes:
    offer = make_config().ike_policies["default"].offer()
    return wire.Message(cky_i, bytes(8), MM, [offer]).encode()


def test_on_port_500_four_leading_zero_bytes_are_a_cookie_not_a_marker() -> None:
    cky_i = bytes(4) + b"\x5a\x5b\x5c\x5d"                # a random CKY-I may start so
    mm1 = _message_1(cky_i)
    assert mm1[:4] == MARKER
    engine = Engine(make_config(), random=seeded_random(7))
    engine.receive_datagram(mm1, INITIATOR, RESPONDER, 1000.0)      # ports 500 -> 500
    (mm2, remote, local), = engine.datagrams_to_send()
    assert (remote, local) == (INITIATOR, RESPONDER)
    assert mm2[:8] == cky_i and wire.parse(mm2).exchange_type == MM   # answered, no marker added
    # off port 500 the same bytes are a marker and a 4-byte-short message: not answered
    other = Engine(make_config(), random=seeded_random(7))
    other.receive_datagram(mm1, (INITIATOR[0], 4500), (RESPONDER[0], 4500), 1000.0)
    assert other.datagrams_to_send() == [] and other.sas() == []


def test_on_port_500_a_marker_is_not_stripped_and_the_datagram_is_counted_as_it_is() -> None:
    mm1 = _message_1(b"\x42" * 8)
    engine = Engine(make_config(), random=seeded_random(7))
    engine.receive_datagram(MARKER + mm1, INITIATOR, RESPONDER, 1000.0)
    assert engine.datagrams_to_send() == [] and engine.sas() == []
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    (invalid,) = [e for e in events if isinstance(e, ev.InvalidPacketReceived)]
    # read as ISAKMP from its first byte, its Length field is message 1's Message ID (0)
    assert invalid.reason == f"ISAKMP header Length is 0 but the datagram has {len(mm1) + 4} bytes"
    assert _monitor(events).statistics()["invalid_cookies_received"] == 0
    # from or to port 500 alike
    for remote, local in (((INITIATOR[0], 4500), RESPONDER), (INITIATOR, (RESPONDER[0], 4500))):
        engine.receive_datagram(MARKER + mm1, remote, local, 1000.0)
        assert engine.datagrams_to_send() == []


def test_off_port_500_the_marker_is_stripped_and_echoed() -> None:
    mm1 = _message_1(b"\x42" * 8)
    engine = Engine(make_config(), random=seeded_random(7))
    remote, local = (INITIATOR[0], 4500), (RESPONDER[0], 4500)
    engine.receive_datagram(MARKER + mm1, remote, local, 1000.0)
    (mm2, to, source), = engine.datagrams_to_send()
    assert (to, source) == (remote, local)
    assert mm2[:4] == MARKER and mm2[4:12] == b"\x42" * 8 and wire.parse(mm2[4:]).exchange_type == MM


def test_marker_allowed_and_split_messages_by_hand() -> None:
    assert wire.marker_allowed(4500, 4500) and wire.marker_allowed(4500, 31000)
    assert not wire.marker_allowed(500, 4500) and not wire.marker_allowed(4500, 500)
    one = _well_formed()
    assert wire.split_messages(one) == ([one], 0)
    assert wire.split_messages(one + one + b"xy") == ([one, one], 2)
    assert wire.split_messages(b"") == ([], 0)
    assert wire.split_messages(one[:27]) == ([], 27)
    assert wire.split_messages(_with(one, 24, struct.pack(">I", len(one) + 1))) == ([], len(one))
    # a 28-byte header of Length 28 is a (payload-less) message of its own
    header_only = _with(one[:28], 24, struct.pack(">I", 28))
    assert wire.split_messages(header_only * 3) == ([header_only] * 3, 0)


# --- views: policies in force, specific filters of one family ---------------------------------------


def test_ike_policies_view_has_no_unused_default_policy() -> None:
    config = config_from_dict({
        "ike_policy": {"strong": {"proposals": "aes256-sha384-ecp384"}},
        "filter": [{"name": "peers", "source": "me", "destination": "any", "psk": "a", "ike_policy": "strong"}]})
    assert "default" in config.ike_policies                 # the configuration keeps one, unused
    rows = Views(Engine(config), Monitor(), host=HostConfig()).query("main-mode", "ike-policies", "all")["rows"]
    assert [(r["name"], r["encryption"], r["integrity"], r["diffie_hellman"]) for r in rows] == [
        ("strong", "aes256", "sha384", "ecp384")]


def test_ike_policies_view_shows_default_when_it_is_in_force() -> None:
    rows = Views(Engine(make_config()), Monitor(), host=HostConfig()).query("main-mode", "ike-policies", "all")["rows"]
    assert [(r["name"], r["encryption"], r["integrity"], r["diffie_hellman"]) for r in rows] == [
        ("default", "aes128", "sha256", "modp2048")]
    config = config_from_dict({
        "ike_policy": {"spare": {"proposals": "3des-sha1-modp1024"}},
        "filter": [{"name": "peers", "source": "me", "destination": "any", "psk": "a"}]})
    rows = Views(Engine(config), Monitor(), host=HostConfig()).query("main-mode", "ike-policies", "all")["rows"]
    assert [r["name"] for r in rows] == ["spare", "default"]  # a named policy shows even before a filter uses it


def test_specific_filters_pair_addresses_of_one_family() -> None:
    host = HostConfig(my_addresses=("198.51.100.7", "fd00::2"), dns_servers=("10.255.255.53", "fd00::53"),
                      default_gateways=("198.51.100.1",))
    config = config_from_dict({"filter": [
        {"name": "to dns", "source": "me", "destination": "dns", "psk": "a"},
        {"name": "to gateway", "source": "me", "destination": "gateway", "psk": "a", "mirrored": False},
        {"name": "literal v6", "source": "me", "destination": "2001:db8::/32", "psk": "a", "mirrored": False}]})
    rows = Views(Engine(config), Monitor(), host=host).query("main-mode", "specific-filters", "all")["rows"]
    got = {(r["name"], r["source"], r["destination"], r["direction"]) for r in rows}
    assert got == {
        ("to dns", "198.51.100.7", "10.255.255.53", "outbound"), ("to dns", "10.255.255.53", "198.51.100.7", "inbound"),
        ("to dns", "fd00::2", "fd00::53", "outbound"), ("to dns", "fd00::53", "fd00::2", "inbound"),
        ("to gateway", "198.51.100.7", "198.51.100.1", "outbound"),
        ("literal v6", "fd00::2", "2001:db8::/32", "outbound")}
    for _name, source, destination, _direction in got:
        assert ipaddress.ip_network(source, strict=False).version == \
            ipaddress.ip_network(destination, strict=False).version
