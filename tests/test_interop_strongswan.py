"""Interop with a real strongSwan charon (Debian's 5.9.8 build with the fake kernel).

Both directions, Main Mode and Quick Mode, for the IKE and ESP suites of the README:
ikecore (``ikecore connect``) initiating to a charon responder, and charon initiating to
an ikecore gateway running in this process. charon's own view (``swanctl --list-sas``) must
show the same cookies and the same SPIs; a Delete from either side removes the SA on the
other. Then ike-scan against the ikecore responder, and tshark decrypting an exchange with
the key ikecore exports. Skipped on a laptop without the tools; required in CI.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ikecore.config import Config, Timing, config_from_flags
from ikecore.engine.core import Engine
from ikecore.monitor.counters import Monitor
from ikecore.monitor import listing
from ikecore.gateway.transport import Gateway
from interop import ikescan, tshark
from interop.charon import Charon, free_udp_ports

T = TypeVar("T")

PSK = "interop-secret-4711"
IKECORE = "127.0.0.1"
CHARON = "127.0.0.2"

MATRIX = [
    ("aes128-sha1-modp2048", "aes128-sha1"),
    ("aes256-sha256-modp2048", "aes256-sha256-modp2048"),  # PFS
    ("3des-sha1-modp1024", "3des-sha1"),
    ("aes128-sha256-ecp256", "aes128-sha256"),
    ("aes256-sha384-modp3072", "aes256-sha256"),
]


class IkecoreGateway:
    """An ikecore gateway on its own event loop thread, for charon to talk to."""

    def __init__(self, config: Config) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.engine = Engine(config)
        self.monitor = Monitor()
        self.gateway = Gateway(self.engine, monitor=self.monitor)
        self.addresses = self.call(lambda: self.gateway.listen(config.listen))

    def call(self, make: Callable[[], Any], timeout: float = 30.0) -> Any:
        async def run() -> Any:
            result = make()
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def main_mode(self) -> list[dict[str, Any]]:
        return self.call(lambda: listing.main_mode_rows(self.engine.sas(), self.loop.time()))

    def quick_mode(self) -> list[dict[str, Any]]:
        return self.call(lambda: listing.quick_mode_rows(self.engine.sas(), self.loop.time()))

    def close(self) -> None:
        self.call(self.gateway.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _wait(predicate: Callable[[], T], timeout: float = 10.0) -> T:
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., IkecoreGateway]]:
    made: list[IkecoreGateway] = []

    def make(ike: str, esp: str, port: int) -> IkecoreGateway:
        config = config_from_flags(psk=PSK, ike=ike, esp=esp, listen=((IKECORE, port),),
                                   timing=Timing(retransmit_timeout=1.0, negotiation_timeout=20.0))
        gateway = IkecoreGateway(config)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.close()


def _hex(value: Any) -> str:
    return str(value).lower().removeprefix("0x")


def _ikecore_connect(port: int, ike: str, esp: str, *extra: str, keylog: Path | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "ikecore", "connect", f"{CHARON}:{port}", "--local", f"{IKECORE}:0",
            "--psk", PSK, "--ike", ike, "--esp", esp, "--json", "--timeout", "20", *extra]
    if keylog is not None:
        argv += ["--keylog", str(keylog)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.stdout, f"no output; stderr: {done.stderr}"
    result = json.loads(done.stdout)
    assert done.returncode == 0, f"connect failed: {result.get('reason')} / {done.stderr}"
    return result


@pytest.mark.interop("charon")
@pytest.mark.parametrize(("ike", "esp"), MATRIX)
def test_ikecore_initiator_to_charon_responder(ike: str, esp: str) -> None:
    port, natt = free_udp_ports(2)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, ike=ike, esp=esp) as charon:
        result = _ikecore_connect(port, ike, esp, "--keep")
        main = result["main_mode"]
        assert main["encryption"] == ike.split("-")[0] and main["diffie_hellman"] == ike.split("-")[2]
        (sa,) = charon.wait_for(charon.established, 10)
        assert (_hex(sa["initiator-spi"]), _hex(sa["responder-spi"])) == (
            main["initiator_cookie"], main["responder_cookie"])
        (quick,) = result["quick_mode"]
        child = charon.wait_for(lambda: [c for s in charon.established() for c in s["child-sas"]
                                         if c.get("state") == "INSTALLED"], 10)[0]
        assert (_hex(child["spi-in"]), _hex(child["spi-out"])) == (quick["spi_out"], quick["spi_in"])
        if esp.count("-") == 2:
            assert quick["diffie_hellman"] == esp.split("-")[2]


@pytest.mark.interop("charon")
@pytest.mark.parametrize(("ike", "esp"), MATRIX)
def test_charon_initiator_to_ikecore_responder(ike: str, esp: str, gateway_factory: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateway_factory(ike, esp, gw_port)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK, ike=ike, esp=esp,
                      remote=IKECORE, remote_port=gw_port) as charon:
        done = charon.initiate(timeout=20)
        assert done.returncode == 0, done.stdout[-2000:]
        (sa,) = charon.established()
        (ours,) = _wait(lambda: [r for r in gateway.main_mode() if r["state"] == "ESTABLISHED"])
        assert (_hex(sa["initiator-spi"]), _hex(sa["responder-spi"])) == (
            ours["initiator_cookie"], ours["responder_cookie"])
        assert ours["peer"] == CHARON and ours["peer_id"] == CHARON
        (child,) = [c for c in sa["child-sas"] if c.get("state") == "INSTALLED"]
        (quick,) = _wait(gateway.quick_mode)
        assert (_hex(child["spi-in"]), _hex(child["spi-out"])) == (quick["spi_out"], quick["spi_in"])


@pytest.mark.interop("charon")
def test_delete_from_charon_removes_the_sa_in_ikecore(gateway_factory: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateway_factory("aes128-sha256-modp2048", "aes128-sha256", gw_port)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK,
                      remote=IKECORE, remote_port=gw_port) as charon:
        assert charon.initiate(timeout=20).returncode == 0
        assert _wait(gateway.quick_mode)
        charon.terminate(child=True)
        assert _wait(lambda: not gateway.quick_mode())
        assert gateway.main_mode()
        charon.terminate(ike=True)
        assert _wait(lambda: not gateway.main_mode())


@pytest.mark.interop("charon")
def test_delete_from_ikecore_removes_the_sa_in_charon() -> None:
    port, natt = free_udp_ports(2)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK) as charon:
        _ikecore_connect(port, "aes128-sha256-modp2048", "aes128-sha256")  # no --keep: deletes on exit
        assert _wait(lambda: not charon.list_sas(), 10) is True


@pytest.mark.interop("charon")
def test_wrong_psk_fails_with_authentication_failed(gateway_factory: Any) -> None:
    port, natt, gw_port = free_udp_ports(3)
    gateway = gateway_factory("aes128-sha256-modp2048", "aes128-sha256", gw_port)
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk="not-the-" + PSK,
                      remote=IKECORE, remote_port=gw_port) as charon:
        assert charon.initiate(timeout=10).returncode != 0
        stats = gateway.call(lambda: gateway.monitor.statistics(gateway.engine))
        assert stats["authentication_failures"] >= 1
        assert not [r for r in gateway.main_mode() if r["state"] == "ESTABLISHED"]


@pytest.mark.interop("ike-scan")
def test_ike_scan_main_mode_handshake_returned(gateway_factory: Any) -> None:
    (gw_port,) = free_udp_ports(1)
    gateway_factory("aes128-sha256-modp2048", "aes128-sha256", gw_port)
    result = ikescan.scan(IKECORE, gw_port, trans=["(1=7,14=128,2=4,3=1,4=14)"])
    assert result.handshake, result.text
    assert result.sa.get("Enc") == "AES" and result.sa.get("Hash") == "SHA2-256", result.sa
    assert result.sa.get("Group", "").startswith("14"), result.sa


def _decrypted_payload_types(layer: dict[str, Any] | None) -> list[str] | None:
    """Payload types inside a cleanly decrypted message (RESERVED zero, chain ends, lengths
    fit), else None: a wrong key yields garbage that fails these checks."""
    enc = layer.get("isakmp.enc.data") if layer else None
    if not isinstance(enc, dict) or "isakmp.typepayload_tree" not in enc:
        return None
    trees = enc["isakmp.typepayload_tree"]
    trees = trees if isinstance(trees, list) else [trees]
    total = sum(int(t["isakmp.payloadlength"]) for t in trees)
    assert layer is not None
    if not (all(t["isakmp.reserved"] == "00" for t in trees) and trees[-1]["isakmp.nextpayload"] == "0"
            and 0 < total <= int(layer["isakmp.length"]) - 28):
        return None
    types = enc["isakmp.typepayload"]
    return types if isinstance(types, list) else [types]


@pytest.mark.interop("charon", "tshark")
def test_tshark_decrypts_main_mode_5_6_and_quick_mode_with_ikecore_keylog(tmp_path: Path) -> None:
    port, natt = free_udp_ports(2)
    keylog = tmp_path / "ike.keys"
    with Charon.start(addr=CHARON, port=port, natt_port=natt, psk=PSK) as charon:
        with tshark.capture("lo", [port, natt], path=tmp_path / "ike.pcapng") as pcap:
            result = _ikecore_connect(port, "aes128-sha256-modp2048", "aes128-sha256", "--keep", keylog=keylog)
        lines = [line for line in keylog.read_text().splitlines() if not line.startswith('"')]  # not ESP SAs
        assert len(lines) == 1 and lines[0].startswith(result["main_mode"]["initiator_cookie"] + ",")
        charon.stop()
    layers = [tshark.isakmp_layers(p) for p in tshark.dissect(pcap, udpencap_ports=[port], keylog_lines=lines)]
    opaque = [tshark.isakmp_layers(p) for p in tshark.dissect(pcap, udpencap_ports=[port])]
    types = [_decrypted_payload_types(layer) for layer in layers]
    # MM1-4 in clear; MM5 ID (5), HASH (8), INITIAL-CONTACT (11); MM6 ID, HASH;
    # QM1/QM2 HASH, SA, Nonce, IDci, IDcr; QM3 HASH.
    assert types[4] == ["5", "8", "11"] and types[5] == ["5", "8"], types
    assert types[6] == ["8", "1", "10", "5", "5"] and types[7] == ["8", "1", "10", "5", "5"], types
    assert types[8] == ["8"], types
    ident = layers[4]["isakmp.enc.data"]["isakmp.typepayload_tree"][0]  # type: ignore[index]
    assert ident["isakmp.id.data"]["isakmp.id.data.ipv4_addr"] == IKECORE
    assert all(_decrypted_payload_types(layer) is None for layer in opaque[4:9])
