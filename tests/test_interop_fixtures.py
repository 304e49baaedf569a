"""Self-tests of the interop fixtures in tests/interop/.

The parsers are checked on recorded tool output everywhere; the ``interop``
tests run real charons (fake-kernel build), ike-scan and tshark on loopback and
are skipped without them (failed under IKECORE_REQUIRE_INTEROP=1, see conftest).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from interop import ikescan, netns, tshark
from interop.charon import (
    Charon,
    CharonError,
    free_udp_ports,
    key_lines,
    log_dumps,
    parse_vici_raw,
)

PSK = "fixture-test-psk"
CAPTURES = Path(__file__).resolve().parent / "vectors" / "captures"

# --- parsers, on recorded output (no tools needed) ------------------------------------

RAW_LIST_SA = (
    "list-sa event {ikev1 {uniqueid=3 version=1 state=ESTABLISHED local-host=127.0.0.2 "
    "local-port=15600 local-id=127.0.0.2 remote-host=127.0.0.1 remote-port=15500 "
    "remote-id=127.0.0.1 initiator=yes initiator-spi=88c34c6f82712300 "
    "responder-spi=ec2f2202aab373c4 encr-alg=AES_CBC encr-keysize=128 "
    "integ-alg=HMAC_SHA2_256_128 prf-alg=PRF_HMAC_SHA2_256 dh-group=MODP_2048 established=0 "
    "child-sas {net-7 {name=net uniqueid=7 reqid=1 state=INSTALLED mode=TUNNEL protocol=ESP "
    "spi-in=c1d2e3f4 spi-out=01000000 encr-alg=AES_CBC encr-keysize=128 "
    "integ-alg=HMAC_SHA2_256_128 local-ts=[127.0.0.2/32 10.1.0.0/16] remote-ts=[127.0.0.1/32]}}}}"
)

LOG = """\
22:42:41 04[IKE] <ikev1|3> SKEYID_e => 32 bytes @ 0x7fec340086a0
22:42:41 04[IKE] <ikev1|3>    0: D5 2F E4 69 1D 67 DD BB 3B 10 28 18 D2 93 C6 2E  ./.i.g..;.(.....
22:42:41 04[IKE] <ikev1|3>   16: 54 5C 3B 09 4E A3 B7 DB C8 20 D9 71 9A C2 33 F8  T\\;.N.... .q..3.
22:42:41 04[IKE] <ikev1|3> encryption key Ka => 24 bytes @ 0x7fec340086a0
22:42:41 04[IKE] <ikev1|3>    0: D5 2F E4 69 1D 67 DD BB 3B 10 28 18 D2 93 C6 2E  ./.i.g..;.(.....
22:42:41 04[IKE] <ikev1|3>   16: 54 5C 3B 09 4E A3 B7 DB                          T\\;.N...
22:42:41 04[IKE] <ikev1|4> encryption key Ka => 16 bytes @ 0x7fec340086a0
22:42:41 04[IKE] <ikev1|4>    0: 00 11 22 33 44 55 66 77 88 99 AA BB CC DD EE FF  ................
22:42:41 04[IKE] <ikev1|5> encryption key Ka => 16 bytes @ 0x7fec340086a0
22:42:41 09[NET] <ikev1|5> sending packet: from 127.0.0.2[15600] to 127.0.0.1[15500]
"""


def test_parse_vici_raw_list_sa() -> None:
    msg = parse_vici_raw(RAW_LIST_SA)
    ike = msg["ikev1"]
    assert ike["initiator-spi"] == "88c34c6f82712300"
    assert ike["responder-spi"] == "ec2f2202aab373c4"
    assert ike["dh-group"] == "MODP_2048"
    child = ike["child-sas"]["net-7"]
    assert child["spi-in"] == "c1d2e3f4"
    assert child["local-ts"] == ["127.0.0.2/32", "10.1.0.0/16"]
    assert child["remote-ts"] == ["127.0.0.1/32"]


def test_parse_vici_raw_rejects_garbage() -> None:
    with pytest.raises(CharonError):
        parse_vici_raw("no braces here")
    with pytest.raises(CharonError):
        parse_vici_raw("list-sa event {a {b=[1 2}")


def test_key_lines_join_cookies_and_complete_keys_only() -> None:
    sas: list[dict[str, Any]] = [
        {"uniqueid": "3", "initiator-spi": "88c34c6f82712300"},
        {"uniqueid": "4", "initiator-spi": "0102030405060708"},
        {"uniqueid": "5", "initiator-spi": "1111111111111111"},  # key dump cut short
    ]
    assert key_lines(sas, LOG) == [
        "88c34c6f82712300,d52fe4691d67ddbb3b102818d293c62e545c3b094ea3b7db",
        "0102030405060708,00112233445566778899aabbccddeeff",
    ]


def test_log_dumps_labels_in_order() -> None:
    dumps = log_dumps(LOG)
    assert [(d["ike_sa"], d["label"]) for d in dumps] == [
        ("3", "SKEYID_e"), ("3", "encryption key Ka"), ("4", "encryption key Ka")]
    assert dumps[0]["hex"].startswith("d52fe469") and len(dumps[0]["hex"]) == 64


IKESCAN_MAIN = """\
Starting ike-scan 1.9.5 with 1 hosts (http://www.nta-monitor.com/tools/ike-scan/)
127.0.0.1\tMain Mode Handshake returned
\tHDR=(CKY-R=cf2000e543f78fab)
\tSA=(Enc=AES KeyLength=128 Hash=SHA2-256 Group=14:modp2048 Auth=PSK LifeType=Seconds LifeDuration=28800)
\tVID=09002689dfd6b712 (XAUTH)
\tVID=afcad71368a1f1c96b8696fc77570100 (Dead Peer Detection v1.0)

Ending ike-scan 1.9.5: 1 hosts scanned in 0.007 seconds (140.71 hosts/sec).  1 returned handshake; 0 returned notify
"""
IKESCAN_NOTIFY = """\
Starting ike-scan 1.9.5 with 1 hosts (http://www.nta-monitor.com/tools/ike-scan/)
127.0.0.1\tNotify message 14 (NO-PROPOSAL-CHOSEN)
\tHDR=(CKY-R=bec127c51ee2c713, msgid=54b18528)

Ending ike-scan 1.9.5: 1 hosts scanned in 0.012 seconds (80.35 hosts/sec).  0 returned handshake; 1 returned notify
"""


def test_ikescan_parse_handshake() -> None:
    r = ikescan.parse_output(IKESCAN_MAIN, "127.0.0.1")
    assert r.status == "main" and r.handshake
    assert r.responder_cookie == "cf2000e543f78fab"
    assert r.sa == {"Enc": "AES", "KeyLength": "128", "Hash": "SHA2-256",
                    "Group": "14:modp2048", "Auth": "PSK", "LifeType": "Seconds",
                    "LifeDuration": "28800"}
    assert r.vendor_ids == [("09002689dfd6b712", "XAUTH"),
                            ("afcad71368a1f1c96b8696fc77570100", "Dead Peer Detection v1.0")]


def test_ikescan_parse_notify_and_other_host() -> None:
    r = ikescan.parse_output(IKESCAN_NOTIFY, "127.0.0.1")
    assert (r.status, r.notify_type, r.notify_name) == ("notify", 14, "NO-PROPOSAL-CHOSEN")
    assert not r.handshake and r.sa == {}
    assert ikescan.parse_output(IKESCAN_NOTIFY, "127.0.0.9").status == "none"


def test_tshark_dissect_args() -> None:
    args = tshark.dissect_args(udpencap_ports=[15500],
                               keylog_lines=["88c34c6f82712300,00112233445566778899aabbccddeeff"])
    assert args == ["-d", "udp.port==15500,udpencap", "-o",
                    "uat:ikev1_decryption_table:88c34c6f82712300,00112233445566778899aabbccddeeff"]
    with pytest.raises(ValueError):
        tshark.dissect_args(keylog_lines=["88c34c6f8271230,0011"])  # 15-digit cookie


def test_charon_refuses_non_loopback_without_netns() -> None:
    with pytest.raises(ValueError, match="not loopback"):
        Charon.start(addr="192.0.2.1", port=15500, natt_port=15501, psk=PSK)
    with pytest.raises(ValueError, match="not loopback"):
        Charon.start(addr="127.0.0.2", port=15500, natt_port=15501, psk=PSK,
                     remote="198.51.100.7")
    with pytest.raises(ValueError, match="single token"):
        Charon.start(addr="127.0.0.2", port=15500, natt_port=15501, psk=PSK,
                     ike="aes128 }")


# --- real tools -----------------------------------------------------------------------


def _pair(**kw: Any) -> tuple[Charon, Charon]:
    r_port, r_natt, i_port, i_natt = free_udp_ports(4)
    resp = Charon.start(addr="127.0.0.1", port=r_port, natt_port=r_natt, psk=PSK, **kw)
    try:
        init = Charon.start(addr="127.0.0.2", port=i_port, natt_port=i_natt, psk=PSK,
                            remote="127.0.0.1", remote_port=r_port, **kw)
    except BaseException:
        resp.stop()
        raise
    return resp, init


@pytest.mark.interop("charon")
def test_charon_pair_main_mode_and_quick_mode() -> None:
    resp, init = _pair(log_keys=True)
    with resp, init:
        out = init.initiate(timeout=15)
        assert out.returncode == 0, out.stdout + out.stderr
        [i_sa] = init.list_sas()
        [r_sa] = resp.wait_for(lambda: [sa for sa in resp.list_sas()
                                        if sa["child-sas"]], 5)
        for sa in (i_sa, r_sa):
            assert sa["state"] == "ESTABLISHED"
            assert (sa["encr-alg"], sa["encr-keysize"], sa["integ-alg"], sa["dh-group"]) == (
                "AES_CBC", "128", "HMAC_SHA2_256_128", "MODP_2048")
            assert len(sa["initiator-spi"]) == 16 and sa["initiator-spi"] != "0" * 16
        assert i_sa.get("initiator") == "yes" and r_sa.get("initiator") != "yes"
        assert (i_sa["initiator-spi"], i_sa["responder-spi"]) == (
            r_sa["initiator-spi"], r_sa["responder-spi"])
        assert (i_sa["local-host"], i_sa["local-port"]) == (r_sa["remote-host"],
                                                            r_sa["remote-port"])
        assert (r_sa["local-host"], r_sa["local-port"]) == ("127.0.0.1", str(resp.port))
        [i_child] = i_sa["child-sas"]
        [r_child] = r_sa["child-sas"]
        for c in (i_child, r_child):
            assert (c["state"], c["protocol"], c["mode"]) == ("INSTALLED", "ESP", "TUNNEL")
            assert (c["encr-alg"], c["integ-alg"]) == ("AES_CBC", "HMAC_SHA2_256_128")
        assert i_child["spi-in"] == r_child["spi-out"]
        assert i_child["spi-out"] == r_child["spi-in"]
        assert i_child["local-ts"] == r_child["remote-ts"] == ["127.0.0.2/32"]
        assert i_child["remote-ts"] == r_child["local-ts"] == ["127.0.0.1/32"]
        # both ends logged the same Phase 1 key for the same cookie
        keys = init.keys()
        assert keys == resp.keys()
        [line] = keys
        cookie, key = line.split(",")
        assert cookie == i_sa["initiator-spi"] and len(key) == 32
        directory = init.directory
    assert not directory.exists()
    assert not init.running() and not resp.running()


@pytest.mark.interop("charon")
def test_charon_aggressive_mode_and_terminate() -> None:
    resp, init = _pair(aggressive=True, ike="aes256-sha256-modp2048")
    with resp, init:
        out = init.initiate(timeout=15)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "AGGRESSIVE request 0" in init.log_text()
        resp.wait_for(lambda: resp.established(), 5)
        term = init.terminate(ike=True)
        assert term.returncode == 0, term.stdout + term.stderr
        resp.wait_for(lambda: not resp.list_sas(), 5)  # the peer processed the Delete
        assert init.list_sas() == []


@pytest.mark.interop("charon-netlink")
def test_debian_charon_netlink_pair_main_mode() -> None:
    # Debian's charon: Phase 1 works; a CHILD_SA would fail here (no ESP in the kernel)
    resp, init = _pair(kernel="netlink", ike="3des-sha1-modp1024")
    with resp, init:
        out = init.initiate(ike_only=True, timeout=15)
        assert out.returncode == 0, out.stdout + out.stderr
        [i_sa] = init.established()
        [r_sa] = resp.wait_for(resp.established, 5)
        assert i_sa["initiator-spi"] == r_sa["initiator-spi"]
        assert (r_sa["encr-alg"], r_sa["integ-alg"], r_sa["dh-group"]) == (
            "3DES_CBC", "HMAC_SHA1_96", "MODP_1024")
        assert "failed to load" not in init.log_text()


@pytest.mark.interop("charon", "ike-scan")
def test_ike_scan_main_mode_handshake_against_charon() -> None:
    port, natt = free_udp_ports(2)
    with Charon.start(addr="127.0.0.1", port=port, natt_port=natt, psk=PSK) as resp:
        result = ikescan.scan("127.0.0.1", port, trans=["(1=7,14=128,2=4,3=1,4=14)"])
        assert result.status == "main", result.text
        assert "Main Mode Handshake returned" in result.text
        assert result.sa["Enc"] == "AES" and result.sa["KeyLength"] == "128"
        assert (result.sa["Hash"], result.sa["Group"], result.sa["Auth"]) == (
            "SHA2-256", "14:modp2048", "PSK")
        assert ("afcad71368a1f1c96b8696fc77570100", "Dead Peer Detection v1.0") in \
            result.vendor_ids
        # the responder cookie ike-scan saw is the half-open SA's on charon's side
        sas = resp.list_sas()
        assert result.responder_cookie in {sa.get("responder-spi") for sa in sas}

        refused = ikescan.scan("127.0.0.1", port)  # ike-scan's DES/3DES defaults only
        assert (refused.status, refused.notify_type) == ("notify", 14), refused.text


@pytest.mark.interop("charon", "tshark")
def test_tshark_decrypts_main_mode_message_5_with_charon_keys(tmp_path: Path) -> None:
    resp, init = _pair(log_keys=True)
    with resp, init:
        pcap = tmp_path / "mm.pcapng"
        with tshark.capture("lo", [resp.port, init.port], path=pcap):
            out = init.initiate(ike_only=True, timeout=15)
            assert out.returncode == 0, out.stdout + out.stderr
        keys = init.keys()
    ports = (resp.port, init.port)
    plain = [tshark.isakmp_layers(p) for p in tshark.dissect(pcap, udpencap_ports=ports)]
    clear = [tshark.isakmp_layers(p) for p in tshark.dissect(pcap, udpencap_ports=ports,
                                                             keylog_lines=keys)]
    assert len(clear) == 6 and all(layer is not None for layer in clear)
    assert _cleanly_decrypted(clear[4]) and _cleanly_decrypted(clear[5])
    mm5, mm6 = clear[4], clear[5]
    assert mm5 is not None and mm6 is not None
    assert mm5["isakmp.exchangetype"] == "2" and mm5["isakmp.flags_tree"]["isakmp.flag_e"] == "1"
    enc = mm5["isakmp.enc.data"]
    assert enc["isakmp.typepayload"] == ["5", "8"]  # ID, HASH
    ident = enc["isakmp.typepayload_tree"][0]
    assert ipaddress.ip_address(ident["isakmp.id.data"]["isakmp.id.data.ipv4_addr"]) == \
        ipaddress.ip_address("127.0.0.2")
    assert mm6["isakmp.enc.data"]["isakmp.typepayload"] == ["5", "8"]
    # without the key the same message stays opaque
    assert plain[4] is not None and not isinstance(plain[4].get("isakmp.enc.data"), dict)


@pytest.mark.interop("charon-libipsec", "netns")
def test_libipsec_pair_in_namespaces_carries_esp() -> None:
    import subprocess
    with netns.veth_pair() as p:
        resp = Charon.start(netns=p.ns_b, addr=p.addr_b, port=500, natt_port=4500, psk=PSK,
                            kernel="libipsec", local_ts=p.subnet_b, remote_ts=p.subnet_a)
        with resp, Charon.start(netns=p.ns_a, addr=p.addr_a, port=500, natt_port=4500,
                                psk=PSK, kernel="libipsec", remote=p.addr_b,
                                local_ts=p.subnet_a, remote_ts=p.subnet_b) as init:
            out = init.initiate(timeout=15)
            assert out.returncode == 0, out.stdout + out.stderr
            [sa] = init.list_sas()
            [child] = sa["child-sas"]
            # libipsec fakes a NAT to force UDP encapsulation: IKE floats to 4500
            assert (sa["remote-port"], child["state"], child.get("encap")) == (
                "4500", "INSTALLED", "yes")
            assert child["local-ts"] == [p.subnet_a] and child["remote-ts"] == [p.subnet_b]
            # one datagram between the inner addresses goes through the tunnel
            send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    f"s.bind(('{p.inner_a}', 0)); s.sendto(b'x', ('{p.inner_b}', 9))")
            subprocess.run(["ip", "netns", "exec", p.ns_a, "python3", "-c", send],
                           check=True, timeout=10)

            def packets_in() -> int:
                return sum(int(c["packets-in"]) for s in resp.list_sas()
                           for c in s["child-sas"])
            assert resp.wait_for(packets_in, 5) >= 1
    assert not netns.exists(p.ns_a) and not netns.exists(p.ns_b)


def _cleanly_decrypted(layer: dict[str, Any] | None) -> bool:
    """The decrypted payload chain parses: RESERVED bytes zero, chain ends with 0, and
    the payload lengths fit the message (a wrong key gives garbage that does not)."""
    enc = layer.get("isakmp.enc.data") if layer else None
    if not isinstance(enc, dict) or "isakmp.typepayload_tree" not in enc:
        return False
    trees = enc["isakmp.typepayload_tree"]
    trees = trees if isinstance(trees, list) else [trees]
    total = sum(int(t["isakmp.payloadlength"]) for t in trees)
    assert layer is not None
    return (all(t["isakmp.reserved"] == "00" for t in trees)
            and trees[-1]["isakmp.nextpayload"] == "0"
            and 0 < total <= int(layer["isakmp.length"]) - 28)


def test_cleanly_decrypted_rejects_garbage() -> None:
    good = {"isakmp.length": "92", "isakmp.enc.data": {
        "isakmp.typepayload": ["5", "8"], "isakmp.typepayload_tree": [
            {"isakmp.nextpayload": "8", "isakmp.reserved": "00", "isakmp.payloadlength": "12"},
            {"isakmp.nextpayload": "0", "isakmp.reserved": "00", "isakmp.payloadlength": "36"}]}}
    garbage = {"isakmp.length": "92", "isakmp.enc.data": {
        "isakmp.typepayload": "5", "isakmp.typepayload_tree": {
            "isakmp.nextpayload": "234", "isakmp.reserved": "9c",
            "isakmp.payloadlength": "44246"}}}
    assert _cleanly_decrypted(good)
    assert not _cleanly_decrypted(garbage)
    assert not _cleanly_decrypted({"isakmp.length": "92", "isakmp.enc.data": ""})


def _capture_names() -> list[str]:
    return sorted(p.name[: -len(".keys")] for p in CAPTURES.glob("*.keys")
                  if p.read_text().strip())


@pytest.mark.interop("tshark")
@pytest.mark.parametrize("name", _capture_names())
def test_stored_capture_decrypts_with_its_keys(name: str) -> None:
    import json
    meta = json.loads((CAPTURES / f"{name}.meta.json").read_text())
    keys = (CAPTURES / f"{name}.keys").read_text().split()
    packets = tshark.dissect(CAPTURES / f"{name}.pcapng",
                             udpencap_ports=meta["udpencap_ports"], keylog_lines=keys)
    layers = [tshark.isakmp_layers(p) for p in packets]
    decrypted = [la for la in layers if _cleanly_decrypted(la)]
    encrypted = [la for la in layers if la and la["isakmp.flags_tree"]["isakmp.flag_e"] == "1"]
    assert encrypted and len(decrypted) == len(encrypted)
    stored = json.loads((CAPTURES / f"{name}.tshark.json").read_text())
    assert len(stored) == len(packets)
    assert os.path.getsize(CAPTURES / f"{name}.pcapng") > 0
