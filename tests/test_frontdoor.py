"""The gateway's Rust receive path (ikecore.gateway.frontdoor, rust/frontdoor.rs) over real loopback UDP.

Independent truth: the cookie formula is recomputed here with Python's hmac and hashlib;
message 2 from Rust is compared byte for byte with the one the engine built for the same
offer; a real initiator engine completes Main Mode and Quick Mode against a message 2
that only Rust sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import os
import socket
from dataclasses import replace
from typing import Any

import pytest

from ikecore import _core, policy, wire
from ikecore.config import Config, config_from_flags
from ikecore.engine.core import Engine
from ikecore.config import FloodLimits
from ikecore.gateway.frontdoor import available, uniform_filter
from ikecore.monitor.counters import Monitor
from ikecore.gateway.transport import Gateway

pytestmark = pytest.mark.skipif(not available(), reason="build without the Rust receive path")

PSK = "front-door-secret"
IKE = "aes128-sha256-modp2048"


def _endpoint(address: tuple[str, int]) -> bytes:
    return ipaddress.ip_address(address[0]).packed + address[1].to_bytes(2, "big")


def _formula(secret: bytes, cky_i: bytes, source: bytes, local: bytes, offer: bytes) -> bytes:
    digest = hashlib.sha256(offer).digest()
    return digest[:2] + hmac.new(secret, cky_i + source + local + digest, hashlib.sha256).digest()[:6]


def _message1(lifetime: int = 28800, cky_i: bytes | None = None) -> bytes:
    proposal = replace(policy.parse_ike_proposals(IKE)[0], lifetime=lifetime)
    offer = policy.IkePolicy("t", (proposal,)).offer()
    return wire.Message(cky_i or os.urandom(8), bytes(8), wire.ExchangeType.IDENTITY_PROTECTION, [offer]).encode()


def _offer(message1: bytes) -> bytes:
    return message1[16:17] + message1[28:]


def _config(limits: FloodLimits, **kwargs: Any) -> Config:
    base = config_from_flags(psk=PSK, ike=IKE, listen=(), **kwargs)
    return replace(base, flood=limits)


def test_stateless_cookie_is_the_documented_formula() -> None:
    for _ in range(20):
        secret, cky_i, source, local, offer = (os.urandom(32), os.urandom(8), os.urandom(6), os.urandom(6),
                                               os.urandom(100))
        digest = _core.offer_digest(offer)
        assert digest == hashlib.sha256(offer).digest()
        assert _core.stateless_cookie(secret, cky_i, source, local, digest) == _formula(secret, cky_i, source,
                                                                                        local, offer)


def test_uniform_filter_only_when_every_address_pair_gets_the_same_filter() -> None:
    assert uniform_filter(config_from_flags(psk=PSK)) is not None          # source me, destination any
    assert uniform_filter(config_from_flags(psk=PSK, remote="10.0.0.0/8")) is None
    config = config_from_flags(psk=PSK)
    narrow = replace(config.filters[0], name="narrow", destination="10.1.0.0/16", weight=5)
    assert uniform_filter(replace(config, filters=(narrow, config.filters[0]))) is None
    assert uniform_filter(replace(config, filters=(config.filters[0], narrow))) is None      # weight first
    later = replace(narrow, weight=0)
    assert uniform_filter(replace(config, filters=(config.filters[0], later))) is config.filters[0]
    mirrored = replace(config.filters[0], source="any", destination="me")
    assert uniform_filter(replace(config, filters=(mirrored,))) is mirrored


class _Peer:
    """A raw UDP socket on 127.0.0.1 speaking to the gateway."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5.0)
        self.address = self.sock.getsockname()

    async def ask(self, data: bytes, gateway: tuple[str, int]) -> bytes:
        self.sock.sendto(data, gateway)
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.sock.recv(65535))


async def _gateway(limits: FloodLimits, listen: str = "127.0.0.1") -> tuple[Gateway, tuple[str, int]]:
    engine = Engine(_config(limits), now=asyncio.get_running_loop().time())
    gateway = Gateway(engine, monitor=Monitor(), fast_path=True)
    local = await gateway.open((listen, 0))
    return gateway, ("127.0.0.1", local[1])


def test_rust_answers_known_offers_exactly_as_the_engine_does() -> None:
    async def scenario() -> None:
        gateway, address = await _gateway(FloodLimits(cookie_threshold=1, offer_cache_size=1))
        fast = gateway.fast_path
        assert fast is not None
        peer = _Peer()
        try:
            # stateful mode: the first message 1 makes a half-open SA (now stateless from here on)
            await peer.ask(_message1(), address)
            assert gateway.engine.admission.stateless()
            # the engine answers the first message 1 of an offer statelessly and registers its reply
            first = _message1()
            reply_python = await peer.ask(first, address)
            assert fast.totals["stateless_replies"] == 0 and fast.templates >= 1
            # the same offer from another CKY-I: answered in Rust
            second = _message1()
            reply_rust = await peer.ask(second, address)
            assert fast.totals["stateless_replies"] == 1
            # neither port is 500: both replies carry the non-ESP marker (RFC 3948 framing)
            assert reply_python[:4] == reply_rust[:4] == bytes(4)
            assert reply_rust[4 + 16:] == reply_python[4 + 16:]
            assert reply_rust[4:12] == second[:8]
            secret, _until = gateway.engine.admission.current_secret(gateway.loop.time())
            assert reply_rust[12:20] == _formula(secret, second[:8], _endpoint(peer.address), _endpoint(address),
                                                 _offer(second))
            # a message 1 behind a non-ESP marker is answered the same way
            third = _message1()
            reply_marked = await peer.ask(bytes(4) + third, address)
            assert fast.totals["stateless_replies"] == 2 and reply_marked[4 + 16:] == reply_python[4 + 16:]
            # a new offer evicts the old one (offer_cache_size=1): its template goes too
            await peer.ask(_message1(lifetime=3600), address)
            before = fast.totals["stateless_replies"]
            await peer.ask(_message1(), address)
            assert fast.totals["stateless_replies"] == before     # back to the engine
            monitor = gateway.monitor
            assert monitor.extended["fast_path:stateless_replies"] == fast.totals["stateless_replies"]
            assert monitor.extended["fast_path:received"] == fast.totals["received"] == 6
            assert monitor.extended["flood:stateless_cookies_sent"] == 5
            assert monitor.extended["messages:identity_protection:1:in"] == 6
        finally:
            peer.sock.close()
            gateway.close()

    asyncio.run(scenario())


def test_a_peer_answered_by_rust_establishes_main_mode_and_quick_mode() -> None:
    async def scenario() -> None:
        gateway, address = await _gateway(FloodLimits(cookie_threshold=1))
        assert gateway.fast_path is not None
        peer = _Peer()
        initiator = Gateway(Engine(config_from_flags(psk=PSK, ike=IKE, listen=())), monitor=Monitor(),
                            fast_path=True)
        try:
            await peer.ask(_message1(), address)          # a half-open SA: stateless from now on
            results = []
            for _ in range(3):
                results.append(await initiator.connect(address, local=("127.0.0.1", 0), timeout=20))
            assert all(r.ok and r.phase2 for r in results), [r.reason for r in results]
            assert gateway.fast_path.totals["stateless_replies"] >= 2     # the 2nd and 3rd message 2
            assert gateway.monitor.extended["flood:stateless_cookies_verified"] == 3
        finally:
            peer.sock.close()
            initiator.close()
            gateway.close()

    asyncio.run(scenario())


def test_wildcard_sockets_answer_with_the_address_the_peer_used() -> None:
    async def scenario() -> None:
        gateway, address = await _gateway(FloodLimits(cookie_threshold=1), listen="0.0.0.0")
        fast = gateway.fast_path
        assert fast is not None
        peer = _Peer()
        other = ("127.0.0.5", address[1])       # also ours (127/8), not what routing picks for 127.0.0.1
        try:
            await peer.ask(_message1(), other)                      # stateful: a half-open SA
            [sa] = gateway.engine.sas()
            assert sa.local == other                                # IP_PKTINFO, not the routing guess
            await peer.ask(_message1(), other)                      # engine: stateless, template
            second = _message1()
            reply = await peer.ask(second, other)                   # Rust
            assert fast.totals["stateless_replies"] == 1
            secret, _until = gateway.engine.admission.current_secret(gateway.loop.time())
            assert reply[12:20] == _formula(secret, second[:8], _endpoint(peer.address), _endpoint(other),
                                            _offer(second))
            initiator = Gateway(Engine(config_from_flags(psk=PSK, ike=IKE, listen=())), monitor=Monitor(),
                                fast_path=True)
            try:
                for _ in range(2):
                    result = await initiator.connect(other, local=("127.0.0.1", 0), timeout=20)
                    assert result.ok and result.phase2, result.reason
            finally:
                initiator.close()
            assert fast.totals["stateless_replies"] >= 2
        finally:
            peer.sock.close()
            gateway.close()

    asyncio.run(scenario())


def test_stateful_mode_leaves_everything_to_the_engine() -> None:
    async def scenario() -> None:
        gateway, address = await _gateway(FloodLimits())      # threshold 512: stateful
        peer = _Peer()
        try:
            for _ in range(3):
                await peer.ask(_message1(), address)
            assert gateway.fast_path is not None and gateway.fast_path.totals["stateless_replies"] == 0
            assert gateway.fast_path.totals["to_python"] == 3
            assert gateway.engine.flood_stats()["half_open"] == 3
        finally:
            peer.sock.close()
            gateway.close()

    asyncio.run(scenario())


def test_malformed_and_oversized_datagrams_reach_the_engine_and_are_counted() -> None:
    async def scenario() -> None:
        gateway, address = await _gateway(FloodLimits(cookie_threshold=1))
        peer = _Peer()
        try:
            await peer.ask(_message1(), address)
            await peer.ask(_message1(), address)       # template registered
            bad = [_message1()[:-3], b"\xff", bytes(40), _message1()[:27], os.urandom(300)]
            for data in bad:
                peer.sock.sendto(data, address)
            huge = bytearray(_message1())
            peer.sock.sendto(bytes(huge) + bytes(60000), address)
            for _ in range(50):
                await asyncio.sleep(0.02)
                if gateway.fast_path is not None and gateway.fast_path.totals["received"] >= 8:
                    break
            assert gateway.fast_path is not None
            totals = gateway.fast_path.totals
            assert totals["received"] == 8 and totals["stateless_replies"] == 0 and totals["to_python"] == 8
            assert gateway.monitor.statistics()["invalid_packets_received"] >= 4
        finally:
            peer.sock.close()
            gateway.close()

    asyncio.run(scenario())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_message1_is_answered_in_rust_with_the_16_byte_endpoint_cookie() -> None:
    async def scenario() -> None:
        engine = Engine(_config(FloodLimits(cookie_threshold=1)), now=asyncio.get_running_loop().time())
        gateway = Gateway(engine, monitor=Monitor(), fast_path=True)
        local = await gateway.open(("::1", 0))
        address = ("::1", local[1])
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
        sock.settimeout(5.0)
        loop = asyncio.get_running_loop()

        async def ask(data: bytes) -> bytes:
            sock.sendto(data, address)
            return await loop.run_in_executor(None, lambda: sock.recv(65535))

        try:
            await ask(_message1())
            first = await ask(_message1())
            second = _message1()
            reply = await ask(second)
            assert gateway.fast_path is not None and gateway.fast_path.totals["stateless_replies"] == 1
            assert reply[4 + 16:] == first[4 + 16:]
            secret, _until = engine.admission.current_secret(loop.time())
            peer = sock.getsockname()
            assert reply[12:20] == _formula(secret, second[:8], _endpoint((peer[0], peer[1])), _endpoint(address),
                                            _offer(second))
        finally:
            sock.close()
            gateway.close()

    asyncio.run(scenario())
