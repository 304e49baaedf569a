"""``ikecore decode``: dissect ISAKMP messages.

Input: hex strings on the command line, a file (one hex datagram per line, or
one raw binary datagram), or a capture file (pcap or pcapng, read here with
``struct``: Ethernet, Linux cooked SLL/SLL2, BSD loopback/null and raw IP link
types; IPv4/IPv6; UDP on any port). The non-ESP marker of NAT-T (RFC 3948) is
stripped; UDP datagrams that are not IKEv1 are skipped.

Output: a tree in the style of ``tshark -V`` with names for numbers, or with
``--json`` one JSON object per message and line.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from ikecore import wire
from ikecore.errors import RemoteProtocolError

__all__ = ["Datagram", "add_parser", "datagrams_from_pcap", "dissect", "main", "run"]

IKE_PORTS = {500, 4500}


@dataclass(frozen=True, slots=True)
class Datagram:
    """One candidate ISAKMP datagram and where it came from."""

    data: bytes
    frame: int | None = None
    src: str | None = None
    dst: str | None = None
    time: float | None = None
    #: True when the UDP ports say IKE (500/4500): errors are reported, not skipped.
    ike_port: bool = True


# --- names -----------------------------------------------------------------------

def _name(enum: type[IntEnum], value: int) -> str:
    try:
        return f"{enum(value).name} ({value})"
    except ValueError:
        return f"unknown ({value})"


PAYLOAD_CLASS_NAMES = {
    wire.SaPayload: "Security Association",
    wire.KePayload: "Key Exchange",
    wire.IdPayload: "Identification",
    wire.CertPayload: "Certificate",
    wire.CrPayload: "Certificate Request",
    wire.HashPayload: "Hash",
    wire.SigPayload: "Signature",
    wire.NoncePayload: "Nonce",
    wire.NotifyPayload: "Notification",
    wire.DeletePayload: "Delete",
    wire.VendorIdPayload: "Vendor ID",
    wire.NatDPayload: "NAT-D",
    wire.NatOaPayload: "NAT-OA",
    wire.UnknownPayload: "Unknown",
}

_OAKLEY_VALUES: dict[int, type[IntEnum]] = {
    wire.OakleyAttribute.ENCRYPTION_ALGORITHM: wire.EncryptionAlgorithm,
    wire.OakleyAttribute.HASH_ALGORITHM: wire.HashAlgorithm,
    wire.OakleyAttribute.AUTHENTICATION_METHOD: wire.AuthMethod,
    wire.OakleyAttribute.LIFE_TYPE: wire.LifeType,
    wire.OakleyAttribute.PRF: wire.HashAlgorithm,
}
_IPSEC_VALUES: dict[int, type[IntEnum]] = {
    wire.IpsecAttribute.SA_LIFE_TYPE: wire.LifeType,
    wire.IpsecAttribute.ENCAPSULATION_MODE: wire.EncapsulationMode,
    wire.IpsecAttribute.AUTHENTICATION_ALGORITHM: wire.AuthAlgorithm,
}


def _attribute(protocol_id: int, attr: wire.Attribute) -> dict[str, Any]:
    isakmp = protocol_id == wire.ProtocolId.ISAKMP
    types: type[IntEnum] = wire.OakleyAttribute if isakmp else wire.IpsecAttribute
    values = (_OAKLEY_VALUES if isakmp else _IPSEC_VALUES).get(attr.type)
    out: dict[str, Any] = {"type": attr.type, "type_name": _name(types, attr.type),
                           "format": "TV" if isinstance(attr.value, int) else "TLV"}
    if isinstance(attr.value, bytes):
        out["value_hex"] = attr.value.hex()
    out["value"] = attr.int_value
    if values is not None:
        out["value_name"] = _name(values, attr.int_value)
    return out


def _transform_id_name(protocol_id: int, transform_id: int) -> str:
    if protocol_id == wire.ProtocolId.ISAKMP:
        return "KEY_IKE (1)" if transform_id == wire.TRANSFORM_KEY_IKE else f"unknown ({transform_id})"
    if protocol_id == wire.ProtocolId.IPSEC_ESP:
        return _name(wire.EspTransform, transform_id)
    return str(transform_id)


def _id_data(id_type: int, data: bytes) -> str:
    try:
        if id_type in (wire.IdType.IPV4_ADDR, wire.IdType.IPV6_ADDR):
            return str(ip_address(data))
        if id_type in (wire.IdType.IPV4_ADDR_SUBNET, wire.IdType.IPV4_ADDR_RANGE) and len(data) == 8:
            return f"{ip_address(data[:4])}/{ip_address(data[4:])}"
        if id_type in (wire.IdType.IPV6_ADDR_SUBNET, wire.IdType.IPV6_ADDR_RANGE) and len(data) == 32:
            return f"{ip_address(data[:16])}/{ip_address(data[16:])}"
        if id_type in (wire.IdType.FQDN, wire.IdType.USER_FQDN):
            return data.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        pass
    return data.hex()


def payload_dict(p: wire.Payload) -> dict[str, Any]:
    """A JSON-ready description of one payload."""
    ptype = p.payload_type
    out: dict[str, Any] = {"type": ptype, "type_name": _name(wire.PayloadType, ptype), "length": len(p.raw)}
    if isinstance(p, wire.SaPayload):
        out["doi"] = p.doi
        out["situation"] = p.situation
        out["proposals"] = [{
            "number": prop.number,
            "protocol_id": prop.protocol_id,
            "protocol_name": _name(wire.ProtocolId, prop.protocol_id),
            "spi": prop.spi.hex(),
            "transforms": [{
                "number": t.number,
                "transform_id": t.transform_id,
                "transform_name": _transform_id_name(prop.protocol_id, t.transform_id),
                "attributes": [_attribute(prop.protocol_id, a) for a in t.attributes],
            } for t in prop.transforms],
        } for prop in p.proposals]
    elif isinstance(p, (wire.KePayload, wire.HashPayload, wire.SigPayload, wire.NoncePayload, wire.NatDPayload)):
        out["data"] = p.data.hex()
        out["data_length"] = len(p.data)
    elif isinstance(p, wire.VendorIdPayload):
        out["data"] = p.data.hex()
        out["vendor"] = wire.vendor_id_name(p.data)
    elif isinstance(p, wire.IdPayload):
        out.update(id_type=p.id_type, id_type_name=_name(wire.IdType, p.id_type), protocol_id=p.protocol_id,
                   port=p.port, data=p.data.hex(), identification=_id_data(p.id_type, p.data))
    elif isinstance(p, (wire.CertPayload, wire.CrPayload)):
        out.update(encoding=p.encoding, data=p.data.hex())
    elif isinstance(p, wire.NotifyPayload):
        out.update(doi=p.doi, protocol_id=p.protocol_id, notify_type=p.notify_type,
                   notify_name=_name(wire.NotifyType, p.notify_type), spi=p.spi.hex(), data=p.data.hex())
    elif isinstance(p, wire.DeletePayload):
        out.update(doi=p.doi, protocol_id=p.protocol_id, spi_size=p.spi_size, spis=[s.hex() for s in p.spis])
    elif isinstance(p, wire.NatOaPayload):
        out.update(id_type=p.id_type, address=_id_data(p.id_type, p.data))
    else:
        out["body"] = p.body.hex()
    return out


def message_dict(msg: wire.Message) -> dict[str, Any]:
    """A JSON-ready description of one message."""
    return {
        "initiator_cookie": msg.initiator_cookie.hex(),
        "responder_cookie": msg.responder_cookie.hex(),
        "next_payload": msg.next_payload,
        "version": f"{msg.version >> 4}.{msg.version & 15}",
        "exchange_type": msg.exchange_type,
        "exchange_name": _name(wire.ExchangeType, msg.exchange_type),
        "flags": msg.flags,
        "message_id": msg.message_id,
        "length": msg.length,
        "encrypted": msg.encrypted,
        "encrypted_body_length": len(msg.body) if msg.encrypted else None,
        "payloads": [payload_dict(p) for p in msg.payloads],
    }


def _flag_text(flags: int) -> str:
    names = [f.name.lower() for f in wire.Flag if flags & f]
    return f"{flags:#04x} ({', '.join(names) if names else 'none'})"


def _tree(d: dict[str, Any], indent: int, out: list[str]) -> None:
    pad = "    " * indent
    for key, value in d.items():
        if key in ("type", "type_name", "proposals", "transforms", "attributes"):
            continue
        if value is None:
            continue
        out.append(f"{pad}{key.replace('_', ' ').capitalize()}: {value}")


def render_text(dg: Datagram, msg: wire.Message) -> str:
    """tshark -V style text for one message."""
    d = message_dict(msg)
    out: list[str] = []
    where = f"Frame {dg.frame}: " if dg.frame is not None else ""
    route = f"{dg.src} -> {dg.dst}, " if dg.src else ""
    out.append(f"{where}{route}{len(dg.data)} bytes")
    out.append("Internet Security Association and Key Management Protocol")
    out.append(f"    Initiator cookie: {d['initiator_cookie']}")
    out.append(f"    Responder cookie: {d['responder_cookie']}")
    out.append(f"    Next payload: {_name(wire.PayloadType, msg.next_payload)}")
    out.append(f"    Version: {d['version']}")
    out.append(f"    Exchange type: {d['exchange_name']}")
    out.append(f"    Flags: {_flag_text(msg.flags)}")
    out.append(f"    Message ID: {msg.message_id:#010x}")
    out.append(f"    Length: {msg.length}")
    if msg.encrypted:
        out.append(f"    Encrypted data ({len(msg.body)} bytes)")
    for p in d["payloads"]:
        out.append(f"    Payload: {p['type_name']}")
        _tree({k: v for k, v in p.items() if k != "length"} | {"length": p["length"]}, 2, out)
        for prop in p.get("proposals", []):
            out.append(f"        Proposal #{prop['number']}: {prop['protocol_name']}, SPI {prop['spi'] or '-'}, "
                       f"{len(prop['transforms'])} transform(s)")
            for t in prop["transforms"]:
                out.append(f"            Transform #{t['number']}: {t['transform_name']}")
                for a in t["attributes"]:
                    value = a.get("value_name", a["value"])
                    out.append(f"                {a['type_name']} [{a['format']}]: {value}")
    return "\n".join(out)


# --- input -----------------------------------------------------------------------

def _strip_marker(data: bytes) -> bytes:
    if len(data) >= 4 + wire.HEADER_LEN and data[:4] == wire.NON_ESP_MARKER:
        return data[4:]
    return data


def _looks_like_ikev1(data: bytes) -> bool:
    return len(data) >= wire.HEADER_LEN and data[17] >> 4 == 1


def _parse_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    return bytes.fromhex(cleaned)


def datagrams_from_file(path: Path) -> Iterator[Datagram]:
    """One hex datagram per line, or one raw binary datagram."""
    raw = path.read_bytes()
    try:
        lines = [ln.strip() for ln in raw.decode("ascii").splitlines()]
        hex_lines = [ln for ln in lines if ln and not ln.startswith("#")]
        datagrams = [_parse_hex(ln) for ln in hex_lines]
    except (UnicodeDecodeError, ValueError):
        yield Datagram(_strip_marker(raw))
        return
    for i, data in enumerate(datagrams, 1):
        yield Datagram(_strip_marker(data), frame=i)


def _ip_udp(packet: bytes) -> tuple[str, str, int, int, bytes] | None:
    """(src, dst, sport, dport, payload) of a UDP-in-IP packet, else None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            return None
        ihl = (packet[0] & 15) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        frag = struct.unpack_from("!H", packet, 6)[0]
        if packet[9] != 17 or frag & 0x3FFF or ihl < 20:
            return None  # not UDP, or a fragment
        src, dst = str(ip_address(packet[12:16])), str(ip_address(packet[16:20]))
        l4 = packet[ihl:total if total >= ihl else len(packet)]
    elif version == 6:
        if len(packet) < 40:
            return None
        next_header = packet[6]
        pos = 40
        for _ in range(8):  # skip a bounded number of extension headers
            if next_header in (0, 43, 60) and len(packet) >= pos + 8:
                next_header, pos = packet[pos], pos + (packet[pos + 1] + 1) * 8
            else:
                break
        if next_header != 17:
            return None
        src, dst = f"[{ip_address(packet[8:24])}]", f"[{ip_address(packet[24:40])}]"
        l4 = packet[pos:]
    else:
        return None
    if len(l4) < 8:
        return None
    sport, dport, ulen = struct.unpack_from("!HHH", l4)
    payload = l4[8:ulen] if 8 <= ulen <= len(l4) else l4[8:]
    return src, dst, sport, dport, payload


def _link_to_ip(linktype: int, frame: bytes) -> bytes | None:
    if linktype == 1:  # Ethernet, with up to two VLAN tags
        pos, ethertype = 12, 0
        for _ in range(3):
            if len(frame) < pos + 2:
                return None
            ethertype = struct.unpack_from("!H", frame, pos)[0]
            if ethertype in (0x8100, 0x88A8):
                pos += 4
                continue
            break
        return frame[pos + 2:] if ethertype in (0x0800, 0x86DD) else None
    if linktype in (101, 228, 229, 12, 14):  # raw IP
        return frame
    if linktype in (0, 108):  # BSD loopback / null: 4-byte family in either byte order
        return frame[4:]
    if linktype == 113:  # Linux cooked SLL
        return frame[16:] if len(frame) >= 16 and struct.unpack_from("!H", frame, 14)[0] in (0x0800, 0x86DD) else None
    if linktype == 276:  # Linux cooked SLL2
        return frame[20:] if len(frame) >= 20 and struct.unpack_from("!H", frame, 0)[0] in (0x0800, 0x86DD) else None
    return None


def _pcap_frames(raw: bytes) -> Iterator[tuple[int, float, bytes]]:
    """(linktype, timestamp, frame) for classic pcap and pcapng files."""
    if len(raw) < 24:
        raise ValueError("capture file too short")
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        endian = "<" if magic[0] in (0xD4, 0x4D) else ">"
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        linktype = struct.unpack_from(endian + "I", raw, 20)[0] & 0x0FFFFFFF
        pos = 24
        while pos + 16 <= len(raw):
            sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", raw, pos)
            pos += 16
            frame = raw[pos:pos + incl]
            pos += incl
            yield linktype, sec + frac / (1e9 if nano else 1e6), frame
        return
    if magic != b"\x0a\x0d\x0d\x0a":
        raise ValueError("not a pcap or pcapng file")
    endian = "<"
    interfaces: list[tuple[int, float]] = []
    pos = 0
    while pos + 12 <= len(raw):
        block_type = struct.unpack_from(endian + "I", raw, pos)[0]
        if block_type == 0x0A0D0D0A:
            endian = "<" if raw[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            interfaces = []
        block_len = struct.unpack_from(endian + "I", raw, pos + 4)[0]
        if block_len < 12 or pos + block_len > len(raw):
            break
        body = raw[pos + 8:pos + block_len - 4]
        if block_type == 1 and len(body) >= 8:  # Interface Description Block
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            resolution = 1e-6
            opt = 8
            while opt + 4 <= len(body):
                code, length = struct.unpack_from(endian + "HH", body, opt)
                if code == 0:
                    break
                if code == 9 and length >= 1:  # if_tsresol
                    v = body[opt + 4]
                    resolution = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
                opt += 4 + (length + 3) // 4 * 4
            interfaces.append((linktype, resolution))
        elif block_type == 6 and len(body) >= 20:  # Enhanced Packet Block
            iface, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(endian + "IIIII", body, 0)
            if iface < len(interfaces):
                linktype, resolution = interfaces[iface]
                yield linktype, ((ts_hi << 32) | ts_lo) * resolution, body[20:20 + caplen]
        elif block_type == 3 and len(body) >= 4 and interfaces:  # Simple Packet Block
            yield interfaces[0][0], 0.0, body[4:]
        pos += block_len


def datagrams_from_pcap(path: Path) -> Iterator[Datagram]:
    """Every UDP datagram of a pcap/pcapng file that could be IKEv1."""
    for number, (linktype, ts, frame) in enumerate(_pcap_frames(path.read_bytes()), 1):
        ip = _link_to_ip(linktype, frame)
        if ip is None:
            continue
        udp = _ip_udp(ip)
        if udp is None:
            continue
        src, dst, sport, dport, payload = udp
        data = _strip_marker(payload)
        if not _looks_like_ikev1(data):
            continue
        yield Datagram(data, frame=number, src=f"{src}:{sport}", dst=f"{dst}:{dport}", time=ts,
                       ike_port=bool({sport, dport} & IKE_PORTS) or data is not payload)


# --- command ---------------------------------------------------------------------

def dissect(dg: Datagram) -> tuple[wire.Message | None, RemoteProtocolError | None]:
    """Parse one datagram: (message, None) or (None, error)."""
    try:
        return wire.parse(dg.data), None
    except RemoteProtocolError as exc:
        return None, exc


def add_parser(subparsers: Any) -> None:
    """Register ``decode`` on the CLI's sub-parsers."""
    p = subparsers.add_parser("decode", help="dissect ISAKMP messages (hex, file or pcap/pcapng)")
    p.add_argument("hex", nargs="*", metavar="HEX", help="a datagram in hex")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--file", type=Path, help="one hex datagram per line, or one raw binary datagram")
    src.add_argument("--pcap", type=Path, help="a pcap or pcapng capture")
    p.add_argument("--json", action="store_true", help="one JSON object per message and line")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``decode``; returns the exit status (1 when any datagram was malformed)."""
    try:
        if args.pcap is not None:
            datagrams: list[Datagram] = list(datagrams_from_pcap(args.pcap))
        elif args.file is not None:
            datagrams = list(datagrams_from_file(args.file))
        else:
            datagrams = [Datagram(_strip_marker(_parse_hex(h)), frame=i) for i, h in enumerate(args.hex, 1)]
    except (OSError, ValueError) as exc:
        print(f"ikecore decode: {exc}", file=sys.stderr)
        return 2
    status = 0
    for dg in datagrams:
        msg, err = dissect(dg)
        if err is not None and not dg.ike_port:
            continue
        if args.json:
            obj: dict[str, Any] = {"frame": dg.frame, "src": dg.src, "dst": dg.dst, "time": dg.time}
            obj = {k: v for k, v in obj.items() if v is not None}
            if msg is not None:
                obj.update(message_dict(msg))
            else:
                obj.update(error=str(err), error_class=type(err).__name__, notify_type=err.notify_type if err else None)
            print(json.dumps(obj))
        elif msg is not None:
            print(render_text(dg, msg))
            print()
        else:
            where = f"Frame {dg.frame}: " if dg.frame is not None else ""
            print(f"{where}malformed ISAKMP ({type(err).__name__}): {err}\n")
        if err is not None:
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m ikecore.cli.decode ...``."""
    parser = argparse.ArgumentParser(prog="ikecore")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["decode", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
