"""``ikecore decode``: dissect (and with ``--keylog``, decrypt) ISAKMP messages.

Input: capture files (pcap or pcapng; ``ikecore.cli.capture`` reads them, reassembles
IP fragments and tells ISAKMP from ESP and NAT-keepalives), files of datagrams (one hex
datagram per line, or one raw binary datagram) or hex strings, as arguments; ``--pcap``
and ``--file`` name the kind of file. With ``--keylog FILE`` (Wireshark's IKEv1
decryption table, the lines ``serve/connect --keylog`` write) encrypted messages are
decrypted (``ikecore.cli.decrypt``) and shown like messages in clear.

Output: a tree in the style of ``tshark -V`` with names and numbers (``modp2048 (14)``,
``AES-CBC (7)``: ``ikecore.cli.names``), or with ``--json`` one JSON object per message,
ESP packet, keepalive or incomplete IP datagram and line. Several ISAKMP messages in one
datagram are split by their header Length (``ikecore.wire.split_messages``).

Exit status: 0; 1 when a message was malformed, an IP datagram incomplete, a decryption
failed or a capture held no IKE or ESP packet at all; 2 for a usage error (no input, an
empty or unreadable file, a bad key file).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from enum import IntEnum
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from ikecore import wire
from ikecore.cli import names
from ikecore.cli.capture import Datagram, datagrams_from_pcap, looks_like_ikev1, packets_from_pcap
from ikecore.cli.decrypt import Decryptor, Opened, read_keylog
from ikecore.errors import RemoteProtocolError

__all__ = ["Datagram", "add_parser", "datagrams_from_pcap", "dissect", "main", "run"]

_PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
                b"\x0a\x0d\x0d\x0a")


# --- names -----------------------------------------------------------------------

def _name(enum: type[IntEnum], value: int) -> str:
    try:
        return f"{enum(value).name} ({value})"
    except ValueError:
        return f"unknown ({value})"


def _attribute(protocol_id: int, attr: wire.Attribute) -> dict[str, Any]:
    isakmp = protocol_id == wire.ProtocolId.ISAKMP
    types: type[IntEnum] = wire.OakleyAttribute if isakmp else wire.IpsecAttribute
    out: dict[str, Any] = {"type": attr.type, "type_name": _name(types, attr.type),
                           "format": "TV" if isinstance(attr.value, int) else "TLV"}
    if isinstance(attr.value, bytes):
        out["value_hex"] = attr.value.hex()
    out["value"] = attr.int_value
    value_name = names.attribute_value_name(protocol_id, attr.type, attr.int_value)
    if value_name is not None:
        out["value_name"] = value_name
    return out


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
                "transform_name": names.transform_id_name(prop.protocol_id, t.transform_id),
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
        out.update(doi=p.doi, protocol_id=p.protocol_id, protocol_name=_name(wire.ProtocolId, p.protocol_id),
                   spi_size=p.spi_size, spis=[s.hex() for s in p.spis])
    elif isinstance(p, wire.NatOaPayload):
        out.update(id_type=p.id_type, address=_id_data(p.id_type, p.data))
    else:
        out["body"] = p.body.hex()
    return out


def message_dict(msg: wire.Message, opened: Opened | None = None) -> dict[str, Any]:
    """A JSON-ready description of one message; ``opened`` is its decryption, if tried."""
    out: dict[str, Any] = {
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
    if opened is not None:
        out["decrypted"] = opened.payloads is not None
        if opened.payloads is not None:
            out["payloads"] = [payload_dict(p) for p in opened.payloads]
            out["padding"] = opened.padding
            out["retransmission"] = opened.retransmission
        else:
            out["decryption"] = opened.note
    return out


def _flag_text(flags: int) -> str:
    flag_names = [f.name.lower() for f in wire.Flag if flags & f]
    return f"{flags:#04x} ({', '.join(flag_names) if flag_names else 'none'})"


def _tree(d: dict[str, Any], indent: int, out: list[str]) -> None:
    pad = "    " * indent
    for key, value in d.items():
        if key in ("type", "type_name", "proposals", "transforms", "attributes"):
            continue
        if value is None:
            continue
        out.append(f"{pad}{key.replace('_', ' ').capitalize()}: {value}")


def _where(dg: Datagram) -> str:
    where = f"Frame {dg.frame}: " if dg.frame is not None else ""
    return where + (f"{dg.src} -> {dg.dst}, " if dg.src else "")


def render_text(dg: Datagram, msg: wire.Message, opened: Opened | None = None) -> str:
    """tshark -V style text for one message (decrypted when ``opened`` holds payloads)."""
    d = message_dict(msg, opened)
    out: list[str] = [f"{_where(dg)}{len(dg.data)} bytes",
                      "Internet Security Association and Key Management Protocol",
                      f"    Initiator cookie: {d['initiator_cookie']}",
                      f"    Responder cookie: {d['responder_cookie']}",
                      f"    Next payload: {_name(wire.PayloadType, msg.next_payload)}",
                      f"    Version: {d['version']}",
                      f"    Exchange type: {d['exchange_name']}",
                      f"    Flags: {_flag_text(msg.flags)}",
                      f"    Message ID: {msg.message_id:#010x}",
                      f"    Length: {msg.length}"]
    if msg.encrypted:
        line = f"    Encrypted data ({len(msg.body)} bytes)"
        if opened is None:
            line += ": give --keylog FILE to decrypt"
        elif opened.payloads is None:
            line += f": {opened.note}"
        else:
            again = " (retransmission: the IV of its original)" if opened.retransmission else ""
            line += f", decrypted{again}: {opened.padding} bytes of padding"
        out.append(line)
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


def esp_dict(data: bytes) -> dict[str, Any]:
    """SPI, sequence number and length of an ESP packet (RFC 4303 section 2)."""
    return {"spi": f"0x{data[:4].hex()}", "seq": int.from_bytes(data[4:8], "big"), "length": len(data)}


# --- input -----------------------------------------------------------------------

def _parse_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    return bytes.fromhex(cleaned)


def _unmark(data: bytes) -> bytes:
    """A datagram without ports: the non-ESP marker is taken off only when the datagram
    does not parse as it is and does after the four zero bytes."""
    if data[:4] != wire.NON_ESP_MARKER or not looks_like_ikev1(data[4:]):
        return data
    try:
        wire.parse(data)
        return data
    except RemoteProtocolError:
        return data[4:]


def datagrams_from_file(path: Path) -> Iterator[Datagram]:
    """One hex datagram per line, or one raw binary datagram."""
    raw = path.read_bytes()
    try:
        lines = [ln.strip() for ln in raw.decode("ascii").splitlines()]
        hex_lines = [ln for ln in lines if ln and not ln.startswith("#")]
        datagrams = [_parse_hex(ln) for ln in hex_lines]
    except (UnicodeDecodeError, ValueError):
        yield Datagram(_unmark(raw))
        return
    for i, data in enumerate(datagrams, 1):
        yield Datagram(_unmark(data), frame=i)


def _is_capture(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in _PCAP_MAGICS


class _Input:
    """The datagrams of one named input, and whether it was a capture."""

    def __init__(self, label: str, datagrams: list[Datagram], capture: bool) -> None:
        self.label, self.datagrams, self.capture = label, datagrams, capture


def _read_file(path: Path, kind: str | None) -> _Input:
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: give a pcap/pcapng capture or a file of hex datagrams")
    if kind == "pcap" or (kind is None and _is_capture(path)):
        return _Input(str(path), list(packets_from_pcap(path)), True)
    datagrams = list(datagrams_from_file(path))
    if not datagrams:
        raise ValueError(f"{path} holds no datagram: give a pcap/pcapng capture or a file of hex datagrams")
    return _Input(str(path), datagrams, False)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for a file: a long hex datagram
        return False


def _inputs(args: argparse.Namespace) -> list[_Input]:
    inputs: list[_Input] = []
    if args.pcap is not None:
        inputs.append(_read_file(args.pcap, "pcap"))
    if args.file is not None:
        inputs.append(_read_file(args.file, "file"))
    hexes: list[Datagram] = []
    for item in args.input:
        path = Path(item)
        if _exists(path):
            inputs.append(_read_file(path, None))
            continue
        try:
            data = _parse_hex(item)
        except ValueError:
            raise ValueError(f"{item}: no such file, and not a datagram in hex") from None
        if not data:
            raise ValueError(f"{item!r}: an empty datagram")
        hexes.append(Datagram(_unmark(data), frame=len(hexes) + 1))
    if hexes:
        inputs.append(_Input("the command line", hexes, False))
    if not inputs:
        raise ValueError("nothing to decode: give a capture file (or --pcap FILE), --file FILE or a datagram in hex")
    return inputs


# --- command ---------------------------------------------------------------------

def dissect(dg: Datagram) -> tuple[wire.Message | None, RemoteProtocolError | None]:
    """Parse one datagram holding one message: (message, None) or (None, error)."""
    try:
        return wire.parse(dg.data), None
    except RemoteProtocolError as exc:
        return None, exc


def add_parser(subparsers: Any) -> None:
    """Register ``decode`` on the CLI's sub-parsers."""
    p = subparsers.add_parser(
        "decode", help="dissect and decrypt ISAKMP messages (pcap/pcapng capture, file or hex)",
        description="Dissect ISAKMP messages of a pcap/pcapng capture, a file of datagrams or hex; "
                    "with --keylog, decrypt them.")
    p.add_argument("input", nargs="*", metavar="CAPTURE|HEX",
                   help="a pcap/pcapng capture, a file of hex datagrams, or a datagram in hex")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--file", type=Path, help="one hex datagram per line, or one raw binary datagram")
    src.add_argument("--pcap", type=Path, help="a pcap or pcapng capture")
    p.add_argument("--keylog", type=Path, metavar="FILE",
                   help="Wireshark IKEv1 decryption table (ICOOKIE,ENCKEY lines, as serve/connect --keylog "
                        "write them): decrypt the messages of those SAs")
    p.add_argument("--json", action="store_true", help="one JSON object per message and line")
    p.set_defaults(handler=run)


def _emit(args: argparse.Namespace, dg: Datagram, text: str, obj: dict[str, Any]) -> None:
    if args.json:
        head: dict[str, Any] = {"frame": dg.frame, "src": dg.src, "dst": dg.dst, "time": dg.time}
        print(json.dumps({k: v for k, v in head.items() if v is not None} | obj))
    else:
        print(text)
        print()


def _show(args: argparse.Namespace, dg: Datagram, decryptor: Decryptor | None) -> tuple[bool, bool]:
    """Print one datagram: (shown, fine)."""
    if dg.kind == "esp":
        esp = esp_dict(dg.data)
        _emit(args, dg, f"{_where(dg)}ESP spi={esp['spi']} seq={esp['seq']} len={esp['length']}", {"esp": esp})
        return True, True
    if dg.kind == "keepalive":
        _emit(args, dg, f"{_where(dg)}NAT-keepalive", {"keepalive": True})
        return True, True
    if dg.kind == "incomplete":
        _emit(args, dg, f"Frame {dg.frame}: {dg.note}", {"incomplete": dg.note})
        return False, False
    pieces, trailing = wire.split_messages(dg.data)
    if not pieces:  # no whole message: the parser says what is wrong with it
        pieces, trailing = [dg.data], 0
    fine = True
    shown = False
    for index, piece in enumerate(pieces, 1):
        part = Datagram(piece, dg.frame, dg.src, dg.dst, dg.time, dg.ike_port)
        msg, err = dissect(part)
        if err is not None and not dg.ike_port:
            continue
        shown = True
        extra: dict[str, Any] = {"message": index, "messages": len(pieces)} if len(pieces) > 1 else {}
        if msg is None:
            fine = False
            _emit(args, part, f"{_where(part)}malformed ISAKMP ({type(err).__name__}): {err}",
                  extra | {"error": str(err), "error_class": type(err).__name__,
                           "notify_type": err.notify_type if err else None})
            continue
        opened = None
        if decryptor is not None:
            if msg.encrypted:
                opened = decryptor.open(msg, dg.src)
                fine = fine and not opened.failed
            else:
                decryptor.observe(msg, dg.src)
        text = render_text(part, msg, opened)
        if extra:
            text = text.replace("\n", f"\n    (message {index} of {len(pieces)} in this datagram)\n", 1)
        _emit(args, part, text, extra | message_dict(msg, opened))
    if trailing and shown:
        _emit(args, dg, f"{_where(dg)}{trailing} bytes after the last ISAKMP message ignored",
              {"trailing_bytes": trailing})
    return shown, fine


def run(args: argparse.Namespace) -> int:
    """Run ``decode``; returns the exit status (module docstring)."""
    try:
        keys = read_keylog(args.keylog) if args.keylog is not None else None
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"ikecore decode: --keylog {args.keylog}: {detail}", file=sys.stderr)
        return 2
    try:
        inputs = _inputs(args)
    except (OSError, ValueError) as exc:
        print(f"ikecore decode: {exc}", file=sys.stderr)
        return 2
    decryptor = Decryptor(keys) if keys is not None else None
    status = 0
    try:
        for item in inputs:
            any_shown = False
            for dg in item.datagrams:
                shown, fine = _show(args, dg, decryptor)
                any_shown = any_shown or shown
                if not fine:
                    status = 1
            if item.capture and not any_shown:
                print(f"ikecore decode: no IKE or ESP packets in {item.label}", file=sys.stderr)
                status = 1
    finally:
        if decryptor is not None:
            decryptor.close()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m ikecore.cli.decode ...``."""
    parser = argparse.ArgumentParser(prog="ikecore")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["decode", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
