"""ikecore decode --keylog: decryption checked against tshark, and IP fragments.

Independent truth: every capture in tests/vectors/captures with keys comes with
``NAME.tshark.json``, tshark's own decryption of it (Wireshark's IKEv1 decryption table
given the same ``ICOOKIE,KEY`` lines). Each encrypted message decode shows must carry the
payloads tshark found in it: types, lengths, hashes, nonces, KE values, IDs, SPIs, notify
types, delete SPIs and the padding after the chain. Fragmented and IPv6 versions of the
captures are made here with scapy and must decode like the originals; when tshark is on
PATH it also decrypts a fragmented capture live.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ikecore.cli import main as cli

scapy_all = pytest.importorskip("scapy.all")
Ether, IP, IPv6, UDP, Raw = scapy_all.Ether, scapy_all.IP, scapy_all.IPv6, scapy_all.UDP, scapy_all.Raw
IPv6ExtHdrFragment, fragment, fragment6 = scapy_all.IPv6ExtHdrFragment, scapy_all.fragment, scapy_all.fragment6
rdpcap, wrpcap = scapy_all.rdpcap, scapy_all.wrpcap

CAPTURES = Path(__file__).parent / "vectors" / "captures"
KEYED = sorted(p.name[:-5] for p in CAPTURES.glob("*.keys") if p.read_text().strip())


def hx(text: str) -> str:
    return text.replace(":", "")


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def decode_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    status = cli.main(["decode", "--json", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, [json.loads(line) for line in captured.out.splitlines()]


def compare_payload(ours: dict[str, Any], tree: dict[str, Any]) -> None:
    """One decrypted payload against tshark's tree of it."""
    assert ours["length"] == int(tree["isakmp.payloadlength"])
    kind = ours["type"]
    if kind == 8:
        assert ours["data"] == hx(tree["isakmp.hash"])
    elif kind == 10:
        assert ours["data"] == hx(tree["isakmp.nonce"])
    elif kind == 4:
        assert ours["data"] == hx(tree["isakmp.key_exchange.data"])
    elif kind in (20, 130):
        assert ours["data"] == hx(tree["isakmp.ike.nat_hash"])
    elif kind == 5:
        assert ours["id_type"] == int(tree["isakmp.id.type"])
        assert ours["protocol_id"] == int(tree["isakmp.id.protoid"]) and ours["port"] == int(tree["isakmp.id.port"])
        data = tree["isakmp.id.data"]
        if "isakmp.id.data.ipv4_addr" in data:
            assert ours["identification"] == data["isakmp.id.data.ipv4_addr"]
    elif kind == 1:
        proposals = as_list(tree["isakmp.typepayload_tree"])
        assert len(ours["proposals"]) == len(proposals)
        for prop, theirs in zip(ours["proposals"], proposals):
            assert prop["protocol_id"] == int(theirs["isakmp.prop.protoid"])
            assert prop["spi"] == hx(theirs.get("isakmp.spi", ""))
            transforms = as_list(theirs["isakmp.typepayload_tree"])
            assert [t["transform_id"] for t in prop["transforms"]] == [int(t["isakmp.trans.id"]) for t in transforms]
    elif kind == 11:
        assert ours["notify_type"] == int(tree["isakmp.notify.msgtype"])
        assert ours["spi"] == hx(tree.get("isakmp.spi", ""))
        assert ours["data"] == hx(tree.get("isakmp.notify.data", ""))
    elif kind == 12:
        assert ours["protocol_id"] == int(tree["isakmp.delete.protoid"])
        assert ours["spis"] == [hx(s) for s in as_list(tree["isakmp.delete.spi"])]
    else:
        pytest.fail(f"payload type {kind} not compared")


def compare_with_tshark(objs: list[dict[str, Any]], packets: list[dict[str, Any]]) -> int:
    """Every message tshark decrypted, against decode's JSON of the same frame; returns how many."""
    ours = {o["frame"]: o for o in objs if "initiator_cookie" in o}
    compared = 0
    for packet in packets:
        layers = packet["_source"]["layers"]
        isakmp = layers.get("isakmp")
        if not isinstance(isakmp, dict) or not isinstance(isakmp.get("isakmp.enc.data"), dict):
            continue
        enc = isakmp["isakmp.enc.data"]
        obj = ours[int(layers["frame"]["frame.number"])]
        assert obj["encrypted"] and obj["decrypted"], obj.get("decryption")
        assert obj["message_id"] == int(isakmp["isakmp.messageid"], 16)
        assert [p["type"] for p in obj["payloads"]] == [int(t) for t in as_list(enc["isakmp.typepayload"])]
        for payload, tree in zip(obj["payloads"], as_list(enc["isakmp.typepayload_tree"]), strict=True):
            compare_payload(payload, tree)
        assert obj["padding"] == len(bytes.fromhex(hx(enc.get("isakmp.extradata", ""))))
        compared += 1
    return compared


@pytest.mark.parametrize("name", KEYED)
def test_keylog_decrypts_what_tshark_decrypts(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, objs = decode_json(capsys, str(CAPTURES / f"{name}.pcapng"), "--keylog", str(CAPTURES / f"{name}.keys"))
    assert status == 0
    packets = json.loads((CAPTURES / f"{name}.tshark.json").read_text())
    encrypted = [o for o in objs if o.get("encrypted")]
    assert encrypted and all(o["decrypted"] for o in encrypted)
    assert compare_with_tshark(objs, packets) == len(encrypted)


def test_text_shows_decrypted_payloads(capsys: pytest.CaptureFixture[str]) -> None:
    name = "informational_delete"
    status = cli.main(["decode", str(CAPTURES / f"{name}.pcapng"), "--keylog", str(CAPTURES / f"{name}.keys")])
    out = capsys.readouterr().out
    frames = {block.split(":")[0]: block for block in out.strip().split("\n\n")}
    assert status == 0
    assert "Encrypted data (64 bytes), decrypted: 16 bytes of padding" in frames["Frame 5"]
    assert "Identification: 127.0.0.2" in frames["Frame 5"]
    assert "Proposal #1: IPSEC_ESP (3), SPI 01000000, 1 transform(s)" in frames["Frame 7"]
    assert "Transform #1: AES-CBC (12)" in frames["Frame 7"]
    assert "AUTHENTICATION_ALGORITHM (5) [TV]: HMAC-SHA2-256 (5)" in frames["Frame 7"]
    assert "Spis: ['01000000']" in frames["Frame 10"]
    assert "Spis: ['5015aadd26a4dac07886e5abe28e1744']" in frames["Frame 11"]


def test_missing_or_wrong_key_is_said_per_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "mm_qm_aes128_sha256_modp2048_port500"
    capture = str(CAPTURES / f"{name}.pcapng")
    cookie, key = (CAPTURES / f"{name}.keys").read_text().split()[0].split(",")
    other = tmp_path / "other.keys"
    other.write_text("0011223344556677,00112233445566778899aabbccddeeff\n")
    status, objs = decode_json(capsys, capture, "--keylog", str(other))
    encrypted = [o for o in objs if o["encrypted"]]
    assert status == 0 and len(encrypted) == 5
    assert {o["decryption"] for o in encrypted} == {f"encrypted, no key for cookie {cookie}"}
    wrong = tmp_path / "wrong.keys"
    wrong.write_text(f"{cookie},{key[:-1]}{'0' if key[-1] != '0' else '1'}\n")
    status, objs = decode_json(capsys, capture, "--keylog", str(wrong))
    encrypted = [o for o in objs if o["encrypted"]]
    assert status == 1 and len(encrypted) == 5
    assert all(not o["decrypted"] and o["decryption"].startswith("decryption failed") for o in encrypted)
    short = tmp_path / "short.keys"
    short.write_text(f"{cookie},{key[:16]}\n")
    status, objs = decode_json(capsys, capture, "--keylog", str(short))
    assert status == 1
    assert {o["decryption"] for o in objs if o["encrypted"]} == {
        f"decryption failed: the key of cookie {cookie} has 8 bytes, aes128-cbc takes 16"}


def test_keylog_file_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "qm_rekey"
    cookie, key = (CAPTURES / f"{name}.keys").read_text().split()[0].split(",")
    keylog = tmp_path / "mixed.keys"
    keylog.write_text(f'# written by ikecore serve --keylog\n"IPv4","127.0.0.1","127.0.0.2","0x01000000",'
                      f'"AES-CBC [RFC3602]","0x00","HMAC-SHA-256-128 [RFC4868]","0x00"\n\n'
                      f'"{cookie.upper()}","{key}"\n')
    status, objs = decode_json(capsys, str(CAPTURES / f"{name}.pcapng"), "--keylog", str(keylog))
    assert status == 0 and all(o["decrypted"] for o in objs if o["encrypted"])
    bad = tmp_path / "bad.keys"
    bad.write_text(f"{cookie},zz{key}\n")
    status = cli.main(["decode", str(CAPTURES / f"{name}.pcapng"), "--keylog", str(bad)])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == "" and captured.err.count("\n") == 1
    assert f"--keylog {bad}: {bad} line 1: the key after cookie {cookie}" in captured.err
    status = cli.main(["decode", str(CAPTURES / f"{name}.pcapng"), "--keylog", str(tmp_path / "none")])
    captured = capsys.readouterr()
    assert status == 2 and captured.err.strip() == f"ikecore decode: --keylog {tmp_path / 'none'}: No such file or directory"


# --- retransmissions ------------------------------------------------------------------

def test_retransmission_decrypts_like_its_original(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Frames 5 (MM5) and 7 (QM1) sent again later: same IV as the original, and the
    chains of the messages after them are not moved."""
    name = "informational_dpd"
    keys = str(CAPTURES / f"{name}.keys")
    packets = list(rdpcap(str(CAPTURES / f"{name}.pcapng")))
    again = packets[:8] + [packets[6], packets[4]] + packets[8:]  # QM1, MM5 again after QM2
    path = tmp_path / "again.pcap"
    wrpcap(str(path), again)
    status, original = decode_json(capsys, str(CAPTURES / f"{name}.pcapng"), "--keylog", keys)
    assert status == 0
    status, objs = decode_json(capsys, str(path), "--keylog", keys)
    assert status == 0 and len(objs) == len(original) + 2
    by_frame = {o["frame"]: o for o in objs}
    for resent, first in ((9, 7), (10, 5)):
        assert by_frame[resent]["retransmission"] is True and by_frame[first]["retransmission"] is False
        assert by_frame[resent]["payloads"] == by_frame[first]["payloads"]
    for o, before in zip(objs[10:], original[8:], strict=True):  # QM3, DPD: still decrypted, the same
        assert o["decrypted"] and o["payloads"] == before["payloads"]


def test_two_encrypted_messages_in_one_datagram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MM6 and an encrypted Informational (the DPD of frame 10) in one datagram, as some
    stacks send them: both decrypted, the Informational with the IV of its Message ID."""
    name = "informational_dpd"
    keys = str(CAPTURES / f"{name}.keys")
    packets = list(rdpcap(str(CAPTURES / f"{name}.pcapng")))
    mm6, dpd = packets[5], packets[9]
    both = Ether(src=mm6[Ether].src, dst=mm6[Ether].dst) / IP(src=mm6[IP].src, dst=mm6[IP].dst) / \
        UDP(sport=mm6[UDP].sport, dport=mm6[UDP].dport) / Raw(bytes(mm6[UDP].payload) + bytes(dpd[UDP].payload))
    path = tmp_path / "two.pcap"
    wrpcap(str(path), packets[:5] + [both] + packets[6:9] + packets[10:])
    status, original = decode_json(capsys, str(CAPTURES / f"{name}.pcapng"), "--keylog", keys)
    assert status == 0
    status, objs = decode_json(capsys, str(path), "--keylog", keys)
    assert status == 0
    in_six = [o for o in objs if o["frame"] == 6]
    assert [(o["message"], o["messages"]) for o in in_six] == [(1, 2), (2, 2)]
    assert in_six[0]["payloads"] == original[5]["payloads"]
    assert in_six[1]["decrypted"] and in_six[1]["payloads"] == original[9]["payloads"]
    assert [p["notify_name"] for p in in_six[1]["payloads"] if p["type"] == 11] == ["R_U_THERE (36136)"]


# --- IP fragments ----------------------------------------------------------------------

def without_place(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in o.items() if k not in ("frame", "time", "src", "dst")} for o in objs]


def fragmented_ipv4(name: str, size: int) -> list[Any]:
    out = []
    for packet in rdpcap(str(CAPTURES / f"{name}.pcapng")):
        ip = packet[IP]
        ip.id = (ip.id or 1)
        for piece in fragment(ip, fragsize=size):
            out.append(Ether(src=packet[Ether].src, dst=packet[Ether].dst) / piece)
    return out


def as_ipv6(name: str, size: int | None) -> list[Any]:
    """The capture with 127.0.0.X rewritten to fd00::X, each datagram cut in pieces of
    ``size`` bytes by an IPv6 Fragment header (or left whole)."""
    out = []
    for number, packet in enumerate(rdpcap(str(CAPTURES / f"{name}.pcapng")), 1):
        ip, udp = packet[IP], packet[UDP]
        src, dst = f"fd00::{ip.src.split('.')[-1]}", f"fd00::{ip.dst.split('.')[-1]}"
        whole = IPv6(src=src, dst=dst) / UDP(sport=udp.sport, dport=udp.dport) / Raw(bytes(udp.payload))
        # addresses given: scapy would otherwise look the MAC address up on the network
        link = Ether(src=packet[Ether].src, dst=packet[Ether].dst, type=0x86DD)
        if size is None:
            out.append(link / whole)
            continue
        pieces = fragment6(IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=number) /
                           UDP(sport=udp.sport, dport=udp.dport) / Raw(bytes(udp.payload)), size)
        out += [link / piece for piece in pieces]
    return out


@pytest.mark.parametrize("name", ["mm_qm_3des_sha1_modp1024_pfs", "mm_qm_aes128_sha256_modp2048_highports"])
def test_ipv4_fragments_decode_like_the_original(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = str(CAPTURES / f"{name}.keys")
    status, original = decode_json(capsys, str(CAPTURES / f"{name}.pcapng"), "--keylog", keys)
    assert status == 0
    pieces = fragmented_ipv4(name, 96)
    assert len(pieces) > 2 * len(original)
    path = tmp_path / "frag.pcap"
    wrpcap(str(path), pieces)
    status, objs = decode_json(capsys, str(path), "--keylog", keys)
    assert status == 0
    assert without_place(objs) == without_place(original)
    assert [o["src"] for o in objs] == [o["src"] for o in original]
    assert all(o["decrypted"] for o in objs if o["encrypted"])
    # the last piece of a datagram is where it shows
    assert [o["frame"] for o in objs] != [o["frame"] for o in original]


def test_ipv6_fragments_decode_like_the_original(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "mm_qm_aes256_sha384_ecp384"
    keys = str(CAPTURES / f"{name}.keys")
    whole, cut = tmp_path / "v6.pcap", tmp_path / "v6frag.pcap"
    wrpcap(str(whole), as_ipv6(name, None))
    wrpcap(str(cut), as_ipv6(name, 120))
    status, original = decode_json(capsys, str(CAPTURES / f"{name}.pcapng"), "--keylog", keys)
    assert status == 0
    status, unfragmented = decode_json(capsys, str(whole), "--keylog", keys)
    assert status == 0 and unfragmented[0]["src"] == "[fd00::2]:15600"
    status, objs = decode_json(capsys, str(cut), "--keylog", keys)
    assert status == 0
    assert without_place(objs) == without_place(unfragmented) == without_place(original)
    assert [o["dst"] for o in objs] == [o["dst"] for o in unfragmented]
    assert max(o["frame"] for o in objs) > 2 * len(objs)


def test_incomplete_datagram_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "mm_qm_3des_sha1_modp1024_pfs"
    pieces = fragmented_ipv4(name, 96)
    # MM1 and MM2 come in 2 pieces each, MM3 (244 bytes of ISAKMP, 252 of UDP) in 3: drop its middle one
    del pieces[5]
    path = tmp_path / "holes.pcap"
    wrpcap(str(path), pieces)
    status, objs = decode_json(capsys, str(path), "--keylog", str(CAPTURES / f"{name}.keys"))
    assert status == 1
    incomplete = [o for o in objs if "incomplete" in o]
    assert len(incomplete) == 1 and incomplete[0]["frame"] == 5
    assert incomplete[0]["incomplete"].startswith("incomplete IP datagram 127.0.0.2 -> 127.0.0.1 id=")
    assert incomplete[0]["incomplete"].endswith(": 156 of 252 bytes, first piece present, pieces in frame(s) 5, 6")
    # without MM3 there is no g^xi: the encrypted messages say why they are not decrypted
    assert {o["decryption"] for o in objs if o.get("encrypted")} == {
        "decryption failed: the phase 1 SA and KE payloads of cookie 37c9ef5fdc5ef609 are not in the capture"}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_live_on_fragments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tshark reassembles and decrypts a fragmented capture; decode agrees message by message."""
    from interop import tshark

    name = "am_qm_aes128_sha256_modp2048_psk"
    keys = CAPTURES / f"{name}.keys"
    path = tmp_path / "frag.pcap"
    wrpcap(str(path), fragmented_ipv4(name, 128))
    packets = tshark.dissect(path, keylog_lines=keys.read_text().splitlines())
    status, objs = decode_json(capsys, str(path), "--keylog", str(keys))
    assert status == 0
    assert compare_with_tshark(objs, packets) == sum(1 for o in objs if o["encrypted"]) == 4
