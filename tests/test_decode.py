"""ikecore decode: hex/file/pcap/pcapng input, text and JSON output, names, UDP
classification (ISAKMP, non-ESP marker, ESP, NAT-keepalive) and usage errors.

Synthetic pcap files are built here with ``struct`` for every supported link type;
the pcapng files are the real captures of tests/vectors/captures (their frame
numbers and cookies are checked against tshark's JSON). Decryption and IP fragments:
tests/test_decode_keylog.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ikecore import wire
from ikecore.cli import main as cli
from ikecore.cli.decode import datagrams_from_pcap

CAPTURES = Path(__file__).parent / "vectors" / "captures"
ICOOKIE = bytes.fromhex("0011223344556677")


def mm1() -> bytes:
    t = wire.Transform(1, 1, [wire.Attribute(1, 7), wire.Attribute(14, 128), wire.Attribute(2, 4),
                              wire.Attribute(3, 1), wire.Attribute(4, 14), wire.Attribute(11, 1),
                              wire.Attribute(12, b"\x00\x00\x70\x80")])
    return wire.Message(ICOOKIE, bytes(8), 2, [
        wire.SaPayload([wire.Proposal(1, 1, [t])]),
        wire.VendorIdPayload(wire.VID_DPD),
        wire.NotifyPayload(wire.NotifyType.INITIAL_CONTACT, spi=ICOOKIE + bytes(8)),
        wire.IdPayload(wire.IdType.IPV4_ADDR, bytes([192, 0, 2, 7])),
    ]).encode()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = cli.main(["decode", *argv])
    return status, capsys.readouterr().out


def test_hex_text(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, mm1().hex())
    assert status == 0
    assert "Initiator cookie: 0011223344556677" in out
    assert "Exchange type: IDENTITY_PROTECTION (2)" in out
    assert "ENCRYPTION_ALGORITHM (1) [TV]: AES-CBC (7)" in out
    assert "HASH_ALGORITHM (2) [TV]: SHA2-256 (4)" in out
    assert "AUTHENTICATION_METHOD (3) [TV]: PSK (1)" in out
    assert "GROUP_DESCRIPTION (4) [TV]: modp2048 (14)" in out
    assert "LIFE_TYPE (11) [TV]: Seconds (1)" in out
    assert "LIFE_DURATION (12) [TLV]: 28800" in out
    assert "Vendor: Dead Peer Detection v1.0" in out
    assert "Notify name: INITIAL_CONTACT (24578)" in out
    assert "Identification: 192.0.2.7" in out


def test_hex_json_and_marker(capsys: pytest.CaptureFixture[str]) -> None:
    data = mm1()
    status, out = run(capsys, "--json", data.hex(), (wire.NON_ESP_MARKER + data).hex())
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and lines[0]["frame"] == 1
    for obj in lines:
        assert obj["initiator_cookie"] == ICOOKIE.hex() and obj["length"] == len(data)
        assert [p["type"] for p in obj["payloads"]] == [1, 13, 11, 5]
        attrs = obj["payloads"][0]["proposals"][0]["transforms"][0]["attributes"]
        assert attrs[0] == {"type": 1, "type_name": "ENCRYPTION_ALGORITHM (1)", "format": "TV", "value": 7,
                            "value_name": "AES-CBC (7)"}
        assert attrs[-1]["value"] == 28800 and attrs[-1]["value_hex"] == "00007080"


def test_malformed_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    data = mm1()
    status, out = run(capsys, "--json", data[:-1].hex())
    assert status == 1
    obj = json.loads(out)
    assert obj["error_class"] == "UnequalPayloadLengths" and obj["notify_type"] == 30
    status, out = run(capsys, data[:40].hex())
    assert status == 1 and "malformed ISAKMP" in out
    status, out = run(capsys, "zz")
    assert status == 2


def test_file_hex_lines_and_binary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = mm1()
    hex_file = tmp_path / "msgs.txt"
    hex_file.write_text(f"# two messages\n{data.hex()}\n\n{data.hex(':')}\n")
    status, out = run(capsys, "--json", "--file", str(hex_file))
    assert status == 0 and [json.loads(x)["frame"] for x in out.splitlines()] == [1, 2]
    bin_file = tmp_path / "msg.bin"
    bin_file.write_bytes(data)
    status, out = run(capsys, "--json", "--file", str(bin_file))
    assert status == 0 and json.loads(out)["length"] == len(data)


# --- synthetic pcap files ------------------------------------------------------------

def ipv4_udp(payload: bytes, sport: int, dport: int, src: bytes = bytes([10, 0, 0, 1]), dst: bytes = bytes([10, 0, 0, 2])) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst) + udp


def ipv6_udp(payload: bytes, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    # one hop-by-hop extension header before UDP
    hbh = bytes([17, 0]) + bytes(6)
    return struct.pack("!IHBB16s16s", 0x60000000, len(hbh) + len(udp), 0, 64, src, dst) + hbh + udp


def link(linktype: int, ip: bytes) -> bytes:
    proto = struct.pack("!H", 0x86DD if ip[0] >> 4 == 6 else 0x0800)
    if linktype == 1:
        return bytes(6) + bytes(5) + b"\x01" + b"\x81\x00\x00\x05" + proto + ip  # with a VLAN tag
    if linktype == 113:
        return struct.pack("!HHH8s", 0, 1, 6, bytes(8)) + proto + ip
    if linktype == 276:
        return proto + bytes(18) + ip
    if linktype == 0:
        return struct.pack("<I", 2 if ip[0] >> 4 == 4 else 30) + ip
    return ip


def pcap(linktype: int, frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i, frame in enumerate(frames):
        out += struct.pack("<IIII", 1700000000 + i, 0, len(frame), len(frame)) + frame
    return out


@pytest.mark.parametrize("linktype", [1, 101, 113, 276, 0])
def test_pcap_link_types(linktype: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = mm1()
    frames = [
        link(linktype, ipv4_udp(data, 500, 500)),
        link(linktype, ipv4_udp(b"\x12\x34" + bytes(30), 5353, 53)),                    # DNS-ish: skipped
        link(linktype, ipv4_udp(b"\xff", 4500, 4500)),                                   # NAT keepalive
        link(linktype, ipv4_udp(b"\x00\x00\x10\x01" + bytes(60), 4500, 4500)),          # ESP
        link(linktype, ipv4_udp(wire.NON_ESP_MARKER + data, 4500, 4500)),               # marker stripped
        link(linktype, ipv6_udp(data, 15600, 15500)),                                    # any port, IPv6
    ]
    path = tmp_path / "cap.pcap"
    path.write_bytes(pcap(linktype, frames))
    status, out = run(capsys, "--json", "--pcap", str(path))
    assert status == 0
    objs = [json.loads(x) for x in out.splitlines()]
    assert [o["frame"] for o in objs] == [1, 3, 4, 5, 6]
    assert objs[0]["src"] == "10.0.0.1:500" and objs[4]["dst"] == "[::2]:15500"
    assert objs[1]["keepalive"] is True
    assert objs[2]["esp"] == {"spi": "0x00001001", "seq": 0, "length": 64}
    assert all(o["initiator_cookie"] == ICOOKIE.hex() for o in (objs[0], objs[3], objs[4]))


def test_pcap_big_endian_and_nanoseconds(tmp_path: Path) -> None:
    data = mm1()
    frame = ipv4_udp(data, 500, 500)
    raw = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101)
    raw += struct.pack(">IIII", 5, 500_000_000, len(frame), len(frame)) + frame
    path = tmp_path / "be.pcap"
    path.write_bytes(raw)
    (dg,) = datagrams_from_pcap(path)
    assert dg.data == data and dg.time == pytest.approx(5.5)


def test_garbage_capture_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"not a capture file at all")
    status, _ = run(capsys, "--pcap", str(path))
    assert status == 2


# --- real pcapng captures --------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name[:-7] for p in CAPTURES.glob("*.pcapng")))
def test_pcapng_captures_match_tshark_frames(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    packets = json.loads((CAPTURES / f"{name}.tshark.json").read_text())
    want = {int(p["_source"]["layers"]["frame"]["frame.number"]): p["_source"]["layers"]
            for p in packets if "isakmp" in p["_source"]["layers"]}
    status, out = run(capsys, "--json", "--pcap", str(CAPTURES / f"{name}.pcapng"))
    assert status == 0
    objs = [json.loads(x) for x in out.splitlines()]
    assert [o["frame"] for o in objs] == sorted(want)
    for o in objs:
        layers = want[o["frame"]]
        assert o["initiator_cookie"] == layers["isakmp"]["isakmp.ispi"].replace(":", "")
        assert o["exchange_type"] == int(layers["isakmp"]["isakmp.exchangetype"])
        assert o["src"] == f"{layers['ip']['ip.src']}:{layers['udp']['udp.srcport']}"
        assert o["time"] == pytest.approx(float(layers["frame"]["frame.time_epoch"]), abs=1e-5)
    status, text = run(capsys, "--pcap", str(CAPTURES / f"{name}.pcapng"))
    assert status == 0 and text.count("Internet Security Association and Key Management Protocol") == len(want)


# --- usage errors, empty captures ------------------------------------------------------

def test_no_input_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["decode"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.strip() == ("ikecore decode: nothing to decode: give a capture file (or --pcap FILE), "
                                    "--file FILE or a datagram in hex")
    empty = tmp_path / "empty.pcapng"
    empty.touch()
    for argv in ([str(empty)], ["--pcap", str(empty)], ["--file", str(empty)]):
        status = cli.main(["decode", *argv])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and f"{empty} is empty" in err
    status = cli.main(["decode", str(tmp_path / "missing.pcap")])
    err = capsys.readouterr().err
    assert status == 2 and "missing.pcap: no such file, and not a datagram in hex" in err


def test_capture_without_ike(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dns.pcap"
    path.write_bytes(pcap(101, [ipv4_udp(b"\x12\x34" + bytes(30), 5353, 53)]))
    status = cli.main(["decode", str(path)])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert captured.err.strip() == f"ikecore decode: no IKE or ESP packets in {path}"


def test_capture_as_positional_argument(capsys: pytest.CaptureFixture[str]) -> None:
    name = CAPTURES / "ikescan_main_mode.pcapng"
    status, by_flag = run(capsys, "--pcap", str(name))
    status2, positional = run(capsys, str(name))
    assert status == status2 == 0 and by_flag == positional and "Frame 2:" in positional


# --- UDP classification (RFC 3948) --------------------------------------------------------

def zero_prefix_message() -> bytes:
    """An MM1 whose initiator cookie starts with four zero bytes."""
    return wire.Message(bytes(4) + b"\x11\x22\x33\x44", bytes(8), 2,
                        [wire.VendorIdPayload(wire.VID_DPD)]).encode()


def test_port_500_never_strips_a_marker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = zero_prefix_message()
    path = tmp_path / "zero.pcap"
    path.write_bytes(pcap(101, [ipv4_udp(data, 500, 500), ipv4_udp(data, 4500, 4500)]))
    status, out = run(capsys, "--json", str(path))
    objs = [json.loads(x) for x in out.splitlines()]
    # port 500: the ISAKMP message as is; port 4500: the same bytes read as marker + message,
    # which leaves 24 bytes where the header wants 28: reported as malformed
    assert objs[0]["frame"] == 1 and objs[0]["initiator_cookie"] == "0000000011223344"
    assert [p["type"] for p in objs[0]["payloads"]] == [13]
    assert objs[1]["frame"] == 2 and "error" in objs[1]
    assert status == 1


def test_nat_t_port_esp_keepalive_and_raw_esp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = mm1()
    esp = bytes.fromhex("01000000") + (7).to_bytes(4, "big") + bytes(range(40))
    raw_esp = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(esp), 9, 0, 64, 50, 0,
                          bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + esp
    frames = [
        ipv4_udp(wire.NON_ESP_MARKER + data, 4500, 4500),  # IKE after the marker
        ipv4_udp(esp, 4500, 4500),                          # ESP in UDP
        ipv4_udp(b"\xff", 4500, 4500),                      # NAT-keepalive
        raw_esp,                                            # ESP, IP protocol 50
        ipv4_udp(wire.NON_ESP_MARKER + data, 15600, 15500),  # marker on high ports: NAT-T endpoints
        ipv4_udp(esp, 15600, 15500),                        # so this is ESP
        ipv4_udp(esp, 15601, 15501),                        # other high ports: neither IKE nor ESP
    ]
    path = tmp_path / "natt.pcap"
    path.write_bytes(pcap(101, frames))
    status, out = run(capsys, str(path))
    assert status == 0
    blocks = out.strip().split("\n\n")
    assert [b.split(":")[0] for b in blocks] == ["Frame 1", "Frame 2", "Frame 3", "Frame 4", "Frame 5", "Frame 6"]
    assert "Initiator cookie: 0011223344556677" in blocks[0]
    assert blocks[1] == "Frame 2: 10.0.0.1:4500 -> 10.0.0.2:4500, ESP spi=0x01000000 seq=7 len=48"
    assert blocks[2] == "Frame 3: 10.0.0.1:4500 -> 10.0.0.2:4500, NAT-keepalive"
    assert blocks[3] == "Frame 4: 10.0.0.1 -> 10.0.0.2, ESP spi=0x01000000 seq=7 len=48"
    assert blocks[5] == "Frame 6: 10.0.0.1:15600 -> 10.0.0.2:15500, ESP spi=0x01000000 seq=7 len=48"


def test_ikev2_on_port_500_is_not_ours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ikev2 = bytearray(mm1())
    ikev2[17] = 0x20  # major version 2
    path = tmp_path / "v2.pcap"
    path.write_bytes(pcap(101, [ipv4_udp(bytes(ikev2), 500, 500), ipv4_udp(mm1(), 500, 500)]))
    status, out = run(capsys, "--json", str(path))
    assert status == 0 and [json.loads(x)["frame"] for x in out.splitlines()] == [2]


def test_two_messages_in_one_datagram(capsys: pytest.CaptureFixture[str]) -> None:
    first, second = mm1(), zero_prefix_message()
    status, out = run(capsys, "--json", (first + second + b"\x01\x02").hex())
    objs = [json.loads(x) for x in out.splitlines()]
    assert status == 0
    assert [(o.get("message"), o.get("initiator_cookie")) for o in objs[:2]] == [
        (1, ICOOKIE.hex()), (2, "0000000011223344")]
    assert objs[0]["length"] == len(first) and objs[1]["length"] == len(second)
    assert objs[2] == {"frame": 1, "trailing_bytes": 2}


# --- names and numbers ---------------------------------------------------------------

def test_quick_mode_names(capsys: pytest.CaptureFixture[str]) -> None:
    esp = wire.Transform(1, 12, [wire.Attribute(6, 256), wire.Attribute(5, 5), wire.Attribute(4, 3),
                                 wire.Attribute(3, 19), wire.Attribute(1, 1)])
    sa = wire.SaPayload([wire.Proposal(1, 3, [esp], spi=bytes.fromhex("c0ffee01"))])
    ike = wire.Transform(1, 1, [wire.Attribute(1, 5), wire.Attribute(2, 6), wire.Attribute(3, 65001),
                                wire.Attribute(4, 20), wire.Attribute(13, 99)])
    sa1 = wire.SaPayload([wire.Proposal(1, 1, [ike])])
    status, out = run(capsys, wire.Message(ICOOKIE, bytes(8), 32, [sa], message_id=5).encode().hex(),
                      wire.Message(ICOOKIE, bytes(8), 2, [sa1]).encode().hex())
    assert status == 0
    for line in ("Proposal #1: IPSEC_ESP (3), SPI c0ffee01, 1 transform(s)",
                 "Transform #1: AES-CBC (12)",
                 "KEY_LENGTH (6) [TV]: 256",
                 "AUTHENTICATION_ALGORITHM (5) [TV]: HMAC-SHA2-256 (5)",
                 "ENCAPSULATION_MODE (4) [TV]: UDP-Tunnel (3)",
                 "GROUP_DESCRIPTION (3) [TV]: ecp256 (19)",
                 "SA_LIFE_TYPE (1) [TV]: Seconds (1)",
                 "ENCRYPTION_ALGORITHM (1) [TV]: 3DES-CBC (5)",
                 "HASH_ALGORITHM (2) [TV]: SHA2-512 (6)",
                 "AUTHENTICATION_METHOD (3) [TV]: XAUTH-InitPSK (65001)",
                 "GROUP_DESCRIPTION (4) [TV]: ecp384 (20)",
                 "PRF (13) [TV]: unknown (99)"):
        assert line in out, line


def test_file_without_datagrams_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    comments = tmp_path / "comments.txt"
    comments.write_text("# nothing here\n\n")
    status = cli.main(["decode", "--file", str(comments)])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == "" and captured.err.count("\n") == 1
    assert f"{comments} holds no datagram" in captured.err


@pytest.mark.parametrize("name", ["ikescan_main_mode", "ikescan_main_mode_natt"])
def test_names_agree_with_ike_scan(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """ike-scan's own words for the SA charon returned (recorded in NAME.meta.json)."""
    sa = json.loads((CAPTURES / f"{name}.meta.json").read_text())["ike_scan"]["sa"]
    status, out = run(capsys, "--json", str(CAPTURES / f"{name}.pcapng"))
    reply = [json.loads(x) for x in out.splitlines()][1]
    attributes = {a["type"]: a for a in reply["payloads"][0]["proposals"][0]["transforms"][0]["attributes"]}
    number, group = sa["Group"].split(":")
    assert status == 0
    assert attributes[4]["value_name"] == f"{group} ({number})"
    assert attributes[2]["value_name"].startswith(f"{sa['Hash']} (")
    assert attributes[3]["value_name"].startswith(f"{sa['Auth']} (")
    assert attributes[11]["value_name"].startswith(f"{sa['LifeType']} (")
    assert attributes[1]["value_name"].startswith(f"{sa['Enc']}-CBC (")  # ike-scan leaves the mode out
    assert attributes[14]["value"] == int(sa["KeyLength"])
