"""ikecore decode: hex/file/pcap/pcapng input, text and JSON output.

Synthetic pcap files are built here with ``struct`` for every supported link type;
the pcapng files are the real captures of tests/vectors/captures (their frame
numbers and cookies are checked against tshark's JSON).
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
    assert "ENCRYPTION_ALGORITHM (1) [TV]: AES_CBC (7)" in out
    assert "HASH_ALGORITHM (2) [TV]: SHA2_256 (4)" in out
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
                            "value_name": "AES_CBC (7)"}
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
        link(linktype, ipv4_udp(b"\xff", 4500, 4500)),                                   # NAT keepalive: skipped
        link(linktype, ipv4_udp(b"\x00\x00\x10\x01" + bytes(60), 4500, 4500)),          # ESP: skipped
        link(linktype, ipv4_udp(wire.NON_ESP_MARKER + data, 4500, 4500)),               # marker stripped
        link(linktype, ipv6_udp(data, 15600, 15500)),                                    # any port, IPv6
    ]
    path = tmp_path / "cap.pcap"
    path.write_bytes(pcap(linktype, frames))
    status, out = run(capsys, "--json", "--pcap", str(path))
    assert status == 0
    objs = [json.loads(x) for x in out.splitlines()]
    assert [o["frame"] for o in objs] == [1, 5, 6]
    assert objs[0]["src"] == "10.0.0.1:500" and objs[2]["dst"] == "[::2]:15500"
    assert all(o["initiator_cookie"] == ICOOKIE.hex() for o in objs)


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
