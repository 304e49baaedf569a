"""The userland ESP data plane (rust/esp, ``ikecore._core.EspDataplane``) and its driver.

Known answers come from an independent implementation: every ESP packet is built or
checked here with the ``cryptography`` package (AES/3DES-CBC, HMAC) following RFC 4303
section 2 byte by byte; the data plane must agree on every byte. Bad ESP (wrong ICV,
replays, bad padding, unknown SPI, garbage) must be dropped and counted, never raise.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import struct
import subprocess
import sys

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ikecore import _core
from ikecore.driver import IpsecSaKeys
from ikecore.errors import ConfigError
from ikecore.gateway.drivers import make_driver
from ikecore.gateway.userland import UserlandDriver, esp_sa_lines

SPI = bytes.fromhex("c0ffee01")
PEER = "192.0.2.2"
_HASH = {"sha1": (hashlib.sha1, 20, 12), "sha256": (hashlib.sha256, 32, 16), "sha384": (hashlib.sha384, 48, 24),
         "sha512": (hashlib.sha512, 64, 32), "md5": (hashlib.md5, 16, 12)}
_CIPHER = {"aes128": 16, "aes192": 24, "aes256": 32, "3des": 24}


def ipv4(source: str, destination: str, payload: bytes = b"x" * 40) -> bytes:
    """A minimal IPv4 packet (protocol ICMP); the checksum is not the data plane's business."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 1, 0,
                         bytes(int(x) for x in source.split(".")), bytes(int(x) for x in destination.split(".")))
    return header + payload


def _block_cipher(name: str, key: bytes) -> tuple[object, int]:
    if name == "3des":
        return TripleDES(key), 8
    return algorithms.AES(key), 16


def reference_esp(spi: bytes, seq: int, iv: bytes, inner: bytes, encryption: str, enc_key: bytes, integrity: str,
                  auth_key: bytes, *, next_header: int = 4, pad_bytes: bytes | None = None) -> bytes:
    """RFC 4303 tunnel-mode ESP built independently (``pad_bytes``: other padding, to test
    the receiver's check)."""
    algorithm, block = _block_cipher(encryption, enc_key)
    pad_length = (block - (len(inner) + 2) % block) % block
    padding = bytes(range(1, pad_length + 1)) if pad_bytes is None else pad_bytes
    plain = inner + padding + bytes([len(padding), next_header])
    encryptor = Cipher(algorithm, modes.CBC(iv)).encryptor()  # type: ignore[arg-type]
    body = spi + struct.pack("!I", seq) + iv + encryptor.update(plain) + encryptor.finalize()
    digest, _key_len, icv_len = _HASH[integrity]
    return body + hmac.new(auth_key, body, digest).digest()[:icv_len]


def keys(encryption: str = "aes128", integrity: str = "sha256") -> tuple[bytes, bytes]:
    return os.urandom(_CIPHER[encryption]), os.urandom(_HASH[integrity][1])


def inbound_plane(encryption: str = "aes128", integrity: str = "sha256", remote_ts: str | None = "10.1.0.0/24",
                  **kw: int) -> tuple[_core.EspDataplane, bytes, bytes]:
    plane = _core.EspDataplane.detached()
    enc_key, auth_key = keys(encryption, integrity)
    plane.add_inbound(SPI, encryption, enc_key, integrity, auth_key, remote_ts=remote_ts, **kw)
    return plane, enc_key, auth_key


@pytest.mark.parametrize("encryption,integrity", [
    ("aes128", "sha256"), ("aes192", "sha1"), ("aes256", "sha384"), ("aes256", "sha512"), ("3des", "sha1"),
    ("aes128", "md5")])
def test_encapsulation_matches_an_independent_implementation(encryption: str, integrity: str) -> None:
    plane = _core.EspDataplane.detached()
    enc_key, auth_key = keys(encryption, integrity)
    plane.add_outbound(SPI, PEER, encryption, bytearray(enc_key), integrity, auth_key, "10.1.0.0/24", "10.2.0.0/24")
    block = 8 if encryption == "3des" else 16
    for seq, length in enumerate((0, 1, 13, 14, 15, 16, 17, 100, 1380), start=1):
        inner = ipv4("10.1.0.1", "10.2.0.9", bytes(range(256)) * 6)[:20 + length]
        iv = os.urandom(block)
        packet, destination, port = plane.encapsulate(inner, iv)
        assert (destination, port) == (PEER, 0)
        assert packet == reference_esp(SPI, seq, iv, inner, encryption, enc_key, integrity, auth_key)
    counters = plane.counters(SPI, True)
    assert counters is not None and counters["packets"] == 9


def test_random_ivs_differ_and_decrypt_with_the_reference() -> None:
    plane = _core.EspDataplane.detached()
    enc_key, auth_key = keys()
    plane.add_outbound(SPI, PEER, "aes128", enc_key, "sha256", auth_key, "10.1.0.0/24", "10.2.0.0/24")
    inner = ipv4("10.1.0.1", "10.2.0.1")
    first, _, _ = plane.encapsulate(inner)
    second, _, _ = plane.encapsulate(inner)
    assert first[8:24] != second[8:24]
    assert second == reference_esp(SPI, 2, second[8:24], inner, "aes128", enc_key, "sha256", auth_key)


def test_outbound_sa_chosen_by_traffic_selectors_newest_first() -> None:
    plane = _core.EspDataplane.detached()
    enc_key, auth_key = keys()
    plane.add_outbound(SPI, PEER, "aes128", enc_key, "sha256", auth_key, "10.1.0.0/24", "10.2.0.0/24")
    assert plane.encapsulate(ipv4("10.1.0.1", "10.3.0.1")) is None, "no SA for that destination"
    assert plane.encapsulate(ipv4("10.9.0.1", "10.2.0.1")) is None, "source outside the local selector"
    assert plane.stats()["no_sa"] == 2
    rekeyed = bytes.fromhex("c0ffee02")
    plane.add_outbound(rekeyed, PEER, "aes128", enc_key, "sha256", auth_key, "10.1.0.0/24", "10.2.0.0/24",
                       port=4500)
    packet, _, port = plane.encapsulate(ipv4("10.1.0.1", "10.2.0.1"))
    assert packet[:4] == rekeyed and port == 4500
    assert plane.delete_outbound(rekeyed, PEER) and not plane.delete_outbound(rekeyed, PEER)
    packet, _, port = plane.encapsulate(ipv4("10.1.0.1", "10.2.0.1"))
    assert packet[:4] == SPI and port == 0


@pytest.mark.parametrize("encryption,integrity", [("aes128", "sha256"), ("aes256", "sha512"), ("3des", "sha1")])
def test_decapsulation_of_reference_packets(encryption: str, integrity: str) -> None:
    plane, enc_key, auth_key = inbound_plane(encryption, integrity)
    block = 8 if encryption == "3des" else 16
    for seq in (1, 2, 3):
        inner = ipv4("10.1.0.1", "10.2.0.1", os.urandom(seq * 50))
        esp = reference_esp(SPI, seq, os.urandom(block), inner, encryption, enc_key, integrity, auth_key)
        assert plane.receive(esp, PEER) == inner
    counters = plane.counters(SPI, False)
    assert counters is not None and counters["packets"] == 3
    assert counters["bytes"] == sum(20 + seq * 50 for seq in (1, 2, 3))


def _esp(seq: int, enc_key: bytes, auth_key: bytes, **kw: object) -> bytes:
    return reference_esp(SPI, seq, os.urandom(16), ipv4("10.1.0.1", "10.2.0.1"), "aes128", enc_key, "sha256",
                         auth_key, **kw)  # type: ignore[arg-type]


def test_anti_replay_window_edges() -> None:
    plane, enc_key, auth_key = inbound_plane()
    accepted = [seq for seq in (0, 1, 1, 3, 2, 2) if plane.receive(_esp(seq, enc_key, auth_key), PEER)]
    assert accepted == [1, 3, 2], "0 is never sent, repeats are refused, late ones inside the window pass"
    assert plane.receive(_esp(5000, enc_key, auth_key), PEER) is not None
    window = 1024
    assert plane.receive(_esp(5000 - window, enc_key, auth_key), PEER) is None, "just below the window"
    assert plane.receive(_esp(5000 - window + 1, enc_key, auth_key), PEER) is not None, "its oldest number"
    assert plane.receive(_esp(5000 - window + 1, enc_key, auth_key), PEER) is None
    assert plane.receive(_esp(4999, enc_key, auth_key), PEER) is not None
    assert plane.receive(_esp(2**32 - 1, enc_key, auth_key), PEER) is not None, "the highest number"
    assert plane.receive(_esp(4998, enc_key, auth_key), PEER) is None, "far below the window now"
    counters = plane.counters(SPI, False)
    assert counters is not None
    assert counters["replay_drops"] == 6 and counters["packets"] == 7


def test_a_replay_with_a_forged_icv_does_not_move_the_window() -> None:
    plane, enc_key, auth_key = inbound_plane()
    forged = bytearray(_esp(100, enc_key, auth_key))
    forged[-1] ^= 0x01
    assert plane.receive(bytes(forged), PEER) is None
    assert plane.receive(_esp(1, enc_key, auth_key), PEER) is not None, "100 was not authenticated"
    counters = plane.counters(SPI, False)
    assert counters is not None and counters["icv_failures"] == 1 and counters["replay_drops"] == 0


def test_bad_icv_padding_next_header_and_selector_dropped_and_counted() -> None:
    plane, enc_key, auth_key = inbound_plane()
    wrong_key = _esp(1, enc_key, os.urandom(32))
    bad_padding = _esp(2, enc_key, auth_key, pad_bytes=bytes(range(1, 18)) + b"\x63")  # 60 + 18 + 2 = 80
    empty_inside = reference_esp(SPI, 3, os.urandom(16), b"", "aes128", enc_key, "sha256", auth_key,
                                 pad_bytes=bytes(range(1, 15)))  # 14 + 2 = one block, nothing inside
    dummy = _esp(4, enc_key, auth_key, next_header=59)
    outside = reference_esp(SPI, 5, os.urandom(16), ipv4("10.7.0.1", "10.2.0.1"), "aes128", enc_key, "sha256",
                            auth_key)
    for packet in (wrong_key, bad_padding, empty_inside, dummy, outside):
        assert plane.receive(packet, PEER) is None
    counters = plane.counters(SPI, False)
    assert counters is not None
    assert (counters["icv_failures"], counters["padding_errors"], counters["malformed"], counters["policy_drops"],
            counters["packets"]) == (1, 1, 2, 1, 0)


def test_unknown_spi_and_garbage_never_raise() -> None:
    plane, enc_key, auth_key = inbound_plane()
    assert plane.receive(_esp(1, enc_key, auth_key)[:3], PEER) is None
    other = bytes.fromhex("0badf00d") + _esp(1, enc_key, auth_key)[4:]
    assert plane.receive(other, PEER) is None
    assert plane.stats()["unknown_spi"] == 1 and plane.stats()["malformed"] == 1
    rng = random.Random(4303)
    for _ in range(3000):
        junk = SPI + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        assert plane.receive(junk, PEER, 4500) is None
    valid = bytearray(_esp(9, enc_key, auth_key))
    for _ in range(500):  # one flipped bit anywhere after the SPI
        copy = bytearray(valid)
        position = rng.randrange(4, len(copy))
        copy[position] ^= 1 << rng.randrange(8)
        assert plane.receive(bytes(copy), PEER) is None
    counters = plane.counters(SPI, False)
    assert counters is not None and counters["packets"] == 0
    assert plane.receive(bytes(valid), PEER) is not None, "the original still passes"


def test_byte_lifetimes_give_soft_then_hard_expiries_once() -> None:
    plane = _core.EspDataplane.detached()
    enc_key, auth_key = keys()
    inner = ipv4("10.1.0.1", "10.2.0.1", bytes(80))  # 100 bytes
    plane.add_outbound(SPI, PEER, "aes128", enc_key, "sha256", auth_key, "10.1.0.0/24", "10.2.0.0/24",
                       soft_bytes=250, hard_bytes=400)
    seen = []
    for _ in range(6):
        plane.encapsulate(inner)
        seen.append(plane.take_expiries())
    assert seen == [[], [], [(SPI, True, False)], [(SPI, True, True)], [], []]
    inbound, in_enc, in_auth = inbound_plane(soft_bytes=1, hard_bytes=10_000)
    assert inbound.receive(_esp(1, in_enc, in_auth), PEER) is not None
    assert inbound.take_expiries() == [(SPI, False, False)]


def test_wrong_names_and_key_lengths_refused() -> None:
    plane = _core.EspDataplane.detached()
    with pytest.raises(ValueError, match="not supported"):
        plane.add_inbound(SPI, "chacha", bytes(32), "sha256", bytes(32))
    with pytest.raises(ValueError, match="16"):
        plane.add_inbound(SPI, "aes128", bytes(15), "sha256", bytes(32))
    with pytest.raises(ValueError, match="SPI"):
        plane.add_inbound(b"\x01", "aes128", bytes(16), "sha256", bytes(32))
    with pytest.raises(ValueError, match="remote_ts"):
        plane.add_outbound(SPI, PEER, "aes128", bytes(16), "sha256", bytes(32), "10.1.0.0/24", "10.2.0.0/40")


# --- the driver ---------------------------------------------------------------------------


def _sa_keys(spi: bytes, source: str, destination: str, enc_key: bytes, auth_key: bytes, local_ts: str,
             remote_ts: str, kilobytes: int | None = None) -> IpsecSaKeys:
    return IpsecSaKeys(spi=spi, protocol_id=3, source=source, destination=destination, encryption="aes128",
                       encryption_key=bytearray(enc_key), integrity="sha256", integrity_key=bytearray(auth_key),
                       mode="tunnel", lifetime=3600, lifetime_kilobytes=kilobytes, local_ts=local_ts,
                       remote_ts=remote_ts)


class _FakeEngine:
    def __init__(self) -> None:
        self.expired: list[tuple[bytes, bool]] = []

    def ipsec_lifetime_expired(self, spi_in: bytes, now: float, *, hard: bool) -> bool:
        self.expired.append((spi_in, hard))
        return True

    def sas(self) -> list[object]:
        return []


class _FakeGateway:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.engine = _FakeEngine()
        self.esp_sink = None
        self.flushed = 0

    def _flush(self) -> None:
        self.flushed += 1


def test_two_drivers_talk_and_expiries_reach_the_engine() -> None:
    """Two drivers over detached planes: what one encapsulates the other takes back; the
    outbound byte lifetime reaches the engine as the paired inbound SPI."""
    a = UserlandDriver(dataplane=_core.EspDataplane.detached())
    b = UserlandDriver(dataplane=_core.EspDataplane.detached())
    a_to_b, b_to_a = keys(), keys()
    spi_b = b.get_spi("192.0.2.1", "192.0.2.2", 3)
    spi_a = a.get_spi("192.0.2.2", "192.0.2.1", 3)
    a.add_outbound(_sa_keys(spi_b, "192.0.2.1", "192.0.2.2", *a_to_b, "10.1.0.0/24", "10.2.0.0/24", kilobytes=1))
    a.update_inbound(_sa_keys(spi_a, "192.0.2.2", "192.0.2.1", *b_to_a, "10.1.0.0/24", "10.2.0.0/24"))
    b.add_outbound(_sa_keys(spi_a, "192.0.2.2", "192.0.2.1", *b_to_a, "10.2.0.0/24", "10.1.0.0/24"))
    b.update_inbound(_sa_keys(spi_b, "192.0.2.1", "192.0.2.2", *a_to_b, "10.2.0.0/24", "10.1.0.0/24"))
    ping = ipv4("10.1.0.1", "10.2.0.1", bytes(500))
    packet, destination, _port = a.dataplane.encapsulate(ping)
    assert destination == "192.0.2.2" and b.dataplane.receive(packet, "192.0.2.1") == ping
    reply = ipv4("10.2.0.1", "10.1.0.1", bytes(500))
    assert a.dataplane.receive(b.dataplane.encapsulate(reply)[0], "192.0.2.2") == reply
    counters = a.counters(spi_a, spi_b)
    assert counters is not None
    assert (counters["packets_out"], counters["bytes_out"], counters["packets_in"], counters["bytes_in"]) == \
        (1, 520, 1, 520)

    async def expire() -> list[tuple[bytes, bool]]:
        gateway = _FakeGateway(asyncio.get_running_loop())
        a.attach(gateway)
        assert gateway.esp_sink == a.receive_esp
        smaller = ipv4("10.1.0.1", "10.2.0.1", bytes(400))
        a.dataplane.encapsulate(smaller)  # 940 bytes: past 90% of 1 KiB
        assert a.poll_expiries() == 1
        a.dataplane.encapsulate(smaller)  # 1360: past 1 KiB
        assert a.poll_expiries() == 1
        assert a.poll_expiries() == 0
        assert gateway.flushed == 2
        a.close()
        assert gateway.esp_sink is None
        return gateway.engine.expired

    assert asyncio.run(expire()) == [(spi_a, False), (spi_a, True)]


def test_driver_delete_and_refusals() -> None:
    driver = UserlandDriver(dataplane=_core.EspDataplane.detached())
    from ikecore.driver import DriverError

    enc_key, auth_key = keys()
    with pytest.raises(DriverError, match="not allocated"):
        driver.update_inbound(_sa_keys(SPI, PEER, "192.0.2.1", enc_key, auth_key, "10.1.0.0/24", "10.2.0.0/24"))
    transport = _sa_keys(SPI, "192.0.2.1", PEER, enc_key, auth_key, "10.1.0.0/24", "10.2.0.0/24")
    with pytest.raises(DriverError, match="tunnel mode only"):
        driver.add_outbound(IpsecSaKeys(**{**{f: getattr(transport, f) for f in IpsecSaKeys.__dataclass_fields__},
                                           "mode": "transport"}))
    driver.add_outbound(transport)
    assert driver.dataplane.encapsulate(ipv4("10.1.0.1", "10.2.0.1")) is not None
    driver.delete(SPI, PEER, 3)
    assert driver.dataplane.encapsulate(ipv4("10.1.0.1", "10.2.0.1")) is None
    assert driver.counters(SPI, SPI) is None


def test_esp_sa_lines_are_wiresharks_table() -> None:
    sa = _sa_keys(bytes.fromhex("336b4ee5"), "192.0.2.1", "192.0.2.2", bytes(range(16)), bytes(range(32)),
                  "10.1.0.0/24", "10.2.0.0/24")
    assert esp_sa_lines(sa) == [
        '"IPv4","192.0.2.1","192.0.2.2","0x336b4ee5","AES-CBC [RFC3602]","0x000102030405060708090a0b0c0d0e0f",'
        '"HMAC-SHA-256-128 [RFC4868]","0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"']


def test_make_driver_names_the_flag() -> None:
    assert type(make_driver(None)).__name__ == "MemoryDriver"
    with pytest.raises(ConfigError, match="^--driver: unknown driver 'kernel'"):
        make_driver("kernel")
    with pytest.raises(ConfigError, match="^gateway.driver:"):
        make_driver("kernel", field_name="gateway.driver")


def test_userland_without_privileges_is_a_one_line_error() -> None:
    """Without CAP_NET_ADMIN and CAP_NET_RAW (as another user, or as root with them
    dropped from the bounding set) ``serve --driver userland`` is one line, exit 2."""
    argv = [sys.executable, "-m", "ikecore", "serve", "--listen", "127.0.0.1:0", "--psk", "x",
            "--driver", "userland", "--duration", "5"]
    if os.geteuid() == 0:
        argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("ikecore serve: --driver: userland: cannot open TUN device ikecore0")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


# --- with the engine: real Quick Mode keys ------------------------------------------------


def test_quick_mode_keys_carry_packets_both_ways_and_show_in_the_views() -> None:
    """Two engines negotiate; their userland drivers (detached planes) must agree on every
    key byte, or the ICV check fails. The Quick Mode view and Prometheus show the counters."""
    from helpers import Link, make_config

    from ikecore.monitor import listing
    from ikecore.monitor.counters import Monitor
    from ikecore.monitor.exporters import IkecoreCollector

    link = Link(make_config(local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24"),
                make_config(local_ts="10.2.0.0/24", remote_ts="10.1.0.0/24"))
    left = UserlandDriver(dataplane=_core.EspDataplane.detached())
    right = UserlandDriver(dataplane=_core.EspDataplane.detached())
    link.initiator.driver, link.responder.driver = left, right
    link.connect()
    (ipsec,) = link.initiator.sas()[0].ipsec_sas
    request, reply = ipv4("10.1.0.1", "10.2.0.1", bytes(64)), ipv4("10.2.0.1", "10.1.0.1", bytes(64))
    for _ in range(3):
        packet, destination, port = left.dataplane.encapsulate(request)
        assert packet[:4] == ipsec.spi_out and port == 0
        assert right.dataplane.receive(packet, "192.0.2.1") == request
        assert left.dataplane.receive(right.dataplane.encapsulate(reply)[0], destination) == reply
    assert right.dataplane.receive(packet, "192.0.2.1") is None  # a replay

    (row,) = [r for part in listing.quick_mode_slices(link.initiator, link.now, 0.0) for r in part]
    assert {k: row[k] for k in listing.ESP_COUNTER_COLUMNS} == {
        "bytes_in": 252, "bytes_out": 252, "packets_in": 3, "packets_out": 3, "replay_drops": 0, "icv_failures": 0}
    (peer_row,) = [r for part in listing.quick_mode_slices(link.responder, link.now, 0.0) for r in part]
    assert peer_row["replay_drops"] == 1
    families = {f.name: f for f in IkecoreCollector(Monitor(), link.responder, per_sa_limit=10).collect()}
    assert {(s.labels["direction"], s.value) for s in families["ikecore_esp_packets"].samples
            if s.name.endswith("_total")} == {("in", 3), ("out", 3)}
    replay = [s for s in families["ikecore_esp_drops"].samples if s.labels["reason"] == "replay"]
    assert [s.value for s in replay] == [1]
    per_sa = families["ikecore_ipsec_sa_esp_replay_drops"].samples
    assert [(s.labels["spi_in"], s.value) for s in per_sa] == [(ipsec.spi_out.hex(), 1)]

    link.initiator.delete(link.initiator.sas()[0].handle, link.now)
    link.pump()
    assert left.dataplane.encapsulate(request) is None and right.dataplane.encapsulate(reply) is None
    assert not left.outbound and not right.outbound


def test_memory_driver_views_have_empty_esp_columns() -> None:
    from helpers import Link

    from ikecore.monitor import listing

    link = Link()
    link.connect()
    (row,) = [r for part in listing.quick_mode_slices(link.initiator, link.now, 0.0) for r in part]
    assert all(row[k] is None for k in listing.ESP_COUNTER_COLUMNS)


def test_config_driver_key() -> None:
    from ikecore.config import config_from_dict

    assert config_from_dict({"gateway": {"driver": "userland"}}).driver == "userland"
    assert config_from_dict({}).driver is None
    with pytest.raises(ConfigError, match="^gateway.driver: unknown driver 'kernel'"):
        config_from_dict({"gateway": {"driver": "kernel"}})


def test_serve_refuses_a_packet_driver_with_workers(capsys: pytest.CaptureFixture[str]) -> None:
    from ikecore.cli.main import main

    assert main(["serve", "--listen", "127.0.0.1:0", "--psk", "x", "--driver", "userland", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--driver: the userland driver runs in one process: give --workers 1" in err


def test_a_rekeyed_sa_takes_over_and_the_old_one_goes_from_both_data_planes() -> None:
    from helpers import Link, make_config

    link = Link(make_config(local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24"),
                make_config(local_ts="10.2.0.0/24", remote_ts="10.1.0.0/24"))
    left = UserlandDriver(dataplane=_core.EspDataplane.detached())
    right = UserlandDriver(dataplane=_core.EspDataplane.detached())
    link.initiator.driver, link.responder.driver = left, right
    handle = link.connect()
    (old,) = link.initiator.sas()[0].ipsec_sas
    request = ipv4("10.1.0.1", "10.2.0.1")
    in_flight, _, _ = left.dataplane.encapsulate(request)  # sent on the old SA, arrives after the rekey
    link.initiator.rekey(handle, link.now, old.spi_in)
    link.pump()
    (new,) = link.initiator.sas()[0].ipsec_sas
    assert new.spi_in != old.spi_in
    packet, _, _ = left.dataplane.encapsulate(request)
    assert packet[:4] == new.spi_out, "the new outbound SA carries the traffic"
    assert right.dataplane.receive(packet, "192.0.2.1") == request
    assert right.dataplane.receive(in_flight, "192.0.2.1") is None, "the old inbound SA was deleted"
    assert right.dataplane.stats()["unknown_spi"] == 1
    assert list(left.outbound) == [(new.spi_out, "127.0.0.1")] and len(right.outbound) == 1


def test_esp_from_the_nat_t_socket_never_raises() -> None:
    driver = UserlandDriver(dataplane=_core.EspDataplane.detached())
    driver.receive_esp(b"\x01\x02\x03\x04" + bytes(60), ("192.0.2.1", 4500))
    driver.receive_esp(b"\xff" * 9, ("fe80::1%veth0", 4500))
    driver.receive_esp(b"\xff" * 9, ("not an address", 4500))
    assert driver.udp_dropped == 1
    assert driver.stats()["unknown_spi"] == 2  # counted and dropped by the data plane


_IN_NAMESPACE = r"""
import json, os, subprocess, sys
from ikecore.driver import IpsecSaKeys
from ikecore.gateway.userland import UserlandDriver

def routes():
    return subprocess.run(["ip", "route", "show", "dev", "ikecore0"], capture_output=True, text=True).stdout

def sa(spi, source, destination, local_ts, remote_ts):
    return IpsecSaKeys(spi=spi, protocol_id=3, source=source, destination=destination, encryption="aes256",
                       encryption_key=bytearray(32), integrity="sha512", integrity_key=bytearray(64), mode="tunnel",
                       lifetime=60, lifetime_kilobytes=None, local_ts=local_ts, remote_ts=remote_ts)

out = {}
driver = UserlandDriver()
out["mtu"] = open("/sys/class/net/ikecore0/mtu").read().strip()
driver.add_outbound(sa(b"\0\0\1\0", "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24"))
driver.add_outbound(sa(b"\0\0\1\1", "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24"))  # a rekey
driver.add_outbound(sa(b"\0\0\1\2", "192.0.2.1", "192.0.2.3", "10.7.0.9/32", "192.0.2.3/32"))  # host to host
out["two"] = routes()
driver.delete(b"\0\0\1\0", "192.0.2.2", 3)
out["one"] = routes()
driver.delete(b"\0\0\1\1", "192.0.2.2", 3)
out["none"] = routes()
out["unrouted"] = driver.unrouted
driver.close()
out["device"] = os.path.exists("/sys/class/net/ikecore0")
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a network namespace and a TUN device")
def test_routes_follow_the_sas_in_a_namespace() -> None:
    """The real TUN device and rtnetlink routes, in a namespace of this test's own."""
    import json
    import subprocess
    import sys

    name = f"ikecore-ul-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        for command in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", "10.1.0.1/32", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True, timeout=10)
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", _IN_NAMESPACE],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10, check=False)
    assert out["mtu"] == "1400"
    assert out["two"].split() == "10.2.0.0/24 proto static scope link src 10.1.0.1".split()
    assert out["one"] == out["two"], "the rekeyed SA still uses the route"
    assert out["none"] == ""
    assert out["unrouted"] == 1, "the host-to-host SA gets no route (its ESP would loop)"
    assert out["device"] is False


def test_longest_remote_selector_wins_and_deletes_fall_back() -> None:
    plane = _core.EspDataplane.detached()
    enc_key, auth_key = keys()
    spis = {net: bytes([0, 0, 2, i]) for i, net in enumerate(("0.0.0.0/0", "10.2.0.0/16", "10.2.3.0/24"))}
    for net, spi in spis.items():
        plane.add_outbound(spi, PEER, "aes128", enc_key, "sha256", auth_key, "10.1.0.0/24", net)
    chosen = {dst: plane.encapsulate(ipv4("10.1.0.1", dst))[0][:4] for dst in ("10.2.3.4", "10.2.9.9", "8.8.8.8")}
    assert chosen == {"10.2.3.4": spis["10.2.3.0/24"], "10.2.9.9": spis["10.2.0.0/16"], "8.8.8.8": spis["0.0.0.0/0"]}
    assert plane.delete_outbound(spis["10.2.3.0/24"], PEER)
    assert plane.encapsulate(ipv4("10.1.0.1", "10.2.3.4"))[0][:4] == spis["10.2.0.0/16"]
    assert plane.counters(spis["10.2.3.0/24"], True) is None
    assert plane.counters(spis["10.2.0.0/16"], True)["packets"] == 2  # type: ignore[index]
