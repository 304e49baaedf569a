"""Reading captures for ``ikecore decode``: pcap/pcapng frames, IP reassembly, and
what each UDP datagram carries.

Frames: classic pcap (either byte order, micro- or nanoseconds) and pcapng, read with
``struct``; link types Ethernet (with VLAN tags), Linux cooked SLL/SLL2, BSD
loopback/null and raw IP.

IP: IPv4 and IPv6 (hop-by-hop, routing, destination options and fragment headers).
Fragments are kept per (source, destination, protocol, identification) until the first
and last pieces and everything between have come (RFC 791 section 3.2, RFC 8200 section
4.5); the datagram then counts as seen in the frame of the piece that completed it, as
Wireshark shows it. What is still missing at the end of the capture is reported as an
``incomplete`` packet, never dropped in silence.

UDP (RFC 3948 section 2):

* port 500 (either side): ISAKMP, as is (other major versions, IKEv2, are not shown). Four leading zero bytes there are the start of
  an initiator cookie, not a non-ESP marker.
* any other port: four zero bytes and an IKEv1 header = the non-ESP marker and ISAKMP
  (the two endpoints are remembered as NAT-T endpoints); a single 0xff byte = a
  NAT-keepalive; anything else of at least 8 bytes between NAT-T endpoints (port 4500, or
  endpoints already seen with marked ISAKMP) = ESP. A bare IKEv1 message on another port
  is ISAKMP too (older peers); other UDP is not shown.

IP protocol 50 is ESP (RFC 4303) without UDP.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from ikecore import wire

__all__ = ["Datagram", "Reassembler", "packets_from_pcap", "datagrams_from_pcap", "pcap_frames",
           "looks_like_ikev1", "NAT_T_PORT"]

NAT_T_PORT = 4500
_ESP = 50
_UDP = 17
#: Datagrams being reassembled at once, and pieces per datagram: a capture full of
#: fragments that never complete cannot make the reader grow without bound.
MAX_PENDING = 4096
MAX_PIECES = 8192
_IPV6_SKIPPED = (0, 43, 60)  # hop-by-hop, routing, destination options


@dataclass(frozen=True, slots=True)
class Datagram:
    """One packet of interest and where it came from.

    ``kind`` is ``isakmp`` (``data`` = the ISAKMP bytes, marker removed), ``esp`` (``data``
    = the ESP packet from its SPI on), ``keepalive`` (NAT-keepalive, ``data`` empty) or
    ``incomplete`` (an IP datagram whose fragments did not all come; ``note`` says which).
    """

    data: bytes
    frame: int | None = None
    src: str | None = None
    dst: str | None = None
    time: float | None = None
    #: True when the ports say IKE (500, NAT-T, a marker): ISAKMP errors are reported, not skipped.
    ike_port: bool = True
    kind: str = "isakmp"
    note: str = ""


def looks_like_ikev1(data: bytes) -> bool:
    """An ISAKMP header with major version 1."""
    return len(data) >= wire.HEADER_LEN and data[17] >> 4 == 1


# --- frames ------------------------------------------------------------------------

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


def pcap_frames(raw: bytes) -> Iterator[tuple[int, float, bytes]]:
    """(linktype, timestamp, frame) for classic pcap and pcapng files.

    Raises:
        ValueError: not a pcap or pcapng file.
    """
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


# --- IP and reassembly ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Payload:
    """An IP datagram's upper-layer protocol and payload."""

    protocol: int
    src: str
    dst: str
    data: bytes


@dataclass(slots=True)
class _Pending:
    src: str
    dst: str
    ident: int
    protocol: int | None = None        # known once the first piece (offset 0) came (IPv6)
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None           # known once the last piece (no More Fragments) came
    frames: list[int] = field(default_factory=list)


def _ipv6_walk(next_header: int, data: bytes) -> tuple[int, bytes, tuple[int, int, int, int] | None]:
    """Skip IPv6 extension headers: (protocol, payload, fragment (offset, more, ident, inner
    protocol) or None). A bounded number of headers is looked at."""
    pos = 0
    for _ in range(8):
        if next_header in _IPV6_SKIPPED and len(data) >= pos + 8:
            next_header, pos = data[pos], pos + (data[pos + 1] + 1) * 8
        elif next_header == 44 and len(data) >= pos + 8:  # Fragment
            inner, field_, ident = data[pos], struct.unpack_from("!H", data, pos + 2)[0], \
                struct.unpack_from("!I", data, pos + 4)[0]
            return 44, data[pos + 8:], (field_ & 0xFFF8, field_ & 1, ident, inner)
        else:
            break
    return next_header, data[pos:], None


class Reassembler:
    """IPv4 and IPv6 datagrams from packets, fragments put back together.

    ``feed`` returns the whole datagram (or None while pieces are missing); ``leftovers``
    lists what never completed, with the frames its pieces came in.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[int, str, str, int, int], _Pending] = {}
        self.dropped = 0  # datagrams given up when MAX_PENDING were open at once

    def feed(self, packet: bytes, frame: int) -> _Payload | None:
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4:
            if len(packet) < 20:
                return None
            ihl = (packet[0] & 15) * 4
            total, ident, frag = struct.unpack_from("!HHH", packet, 2)
            if ihl < 20 or len(packet) < ihl:
                return None
            protocol = packet[9]
            src, dst = str(ip_address(packet[12:16])), str(ip_address(packet[16:20]))
            data = packet[ihl:total if total >= ihl else len(packet)]
            offset, more = (frag & 0x1FFF) * 8, frag & 0x2000
            if not offset and not more:
                return _Payload(protocol, src, dst, data)
            return self._piece((4, src, dst, protocol, ident), offset, bool(more), data, protocol, frame)
        if version == 6:
            if len(packet) < 40:
                return None
            length = struct.unpack_from("!H", packet, 4)[0]
            src, dst = f"[{ip_address(packet[8:24])}]", f"[{ip_address(packet[24:40])}]"
            body = packet[40:40 + length] if length else packet[40:]
            protocol, data, fragment = _ipv6_walk(packet[6], body)
            if fragment is None:
                return _Payload(protocol, src, dst, data)
            offset, more, ident, inner = fragment
            if not offset and not more:  # an atomic fragment (RFC 6946)
                protocol, data, _ = _ipv6_walk(inner, data)
                return _Payload(protocol, src, dst, data)
            return self._piece((6, src, dst, 0, ident), offset, bool(more), data,
                               inner if offset == 0 else None, frame)
        return None

    def _piece(self, key: tuple[int, str, str, int, int], offset: int, more: bool, data: bytes,
               protocol: int | None, frame: int) -> _Payload | None:
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
                self.dropped += 1
            pending = self._pending[key] = _Pending(key[1], key[2], key[4])
        if len(pending.pieces) >= MAX_PIECES:
            return None
        pending.frames.append(frame)
        pending.pieces.setdefault(offset, data)
        if protocol is not None:
            pending.protocol = protocol
        if not more:
            pending.total = offset + len(data)
        whole = self._whole(pending)
        if whole is None:
            return None
        del self._pending[key]
        protocol = pending.protocol
        if key[0] == 6:
            protocol, whole, _ = _ipv6_walk(protocol if protocol is not None else 59, whole)
        return _Payload(protocol if protocol is not None else 255, pending.src, pending.dst, whole)

    @staticmethod
    def _whole(pending: _Pending) -> bytes | None:
        if pending.total is None or 0 not in pending.pieces:
            return None
        parts: list[bytes] = []
        position = 0
        for offset in sorted(pending.pieces):
            if offset > position:
                return None  # a hole
            piece = pending.pieces[offset][position - offset:]
            parts.append(piece)
            position += len(piece)
            if position >= pending.total:
                break
        return b"".join(parts)[:pending.total] if position >= pending.total else None

    def leftovers(self) -> list[Datagram]:
        """An ``incomplete`` Datagram per IP datagram still missing pieces, in the frame
        order of their first piece."""
        out = []
        for pending in sorted(self._pending.values(), key=lambda p: p.frames[0]):
            have = sum(len(piece) for piece in pending.pieces.values())
            total = "?" if pending.total is None else str(pending.total)
            frames = ", ".join(str(f) for f in pending.frames)
            out.append(Datagram(b"", frame=pending.frames[0], src=pending.src, dst=pending.dst, kind="incomplete",
                                note=f"incomplete IP datagram {pending.src} -> {pending.dst} "
                                     f"id={pending.ident:#x}: {have} of {total} bytes, "
                                     f"first piece {'present' if 0 in pending.pieces else 'missing'}, "
                                     f"pieces in frame(s) {frames}"))
        self._pending.clear()
        return out


# --- UDP -----------------------------------------------------------------------------

class _Classifier:
    """What a UDP datagram carries (module docstring), remembering NAT-T endpoints."""

    def __init__(self) -> None:
        self.natt_endpoints: set[tuple[str, int]] = set()

    def classify(self, src: str, dst: str, sport: int, dport: int, payload: bytes) -> tuple[str, bytes, bool] | None:
        """(kind, data, ike_port) or None when it is none of ours."""
        if not wire.marker_allowed(sport, dport):  # port 500
            return None if _other_version(payload) else ("isakmp", payload, True)
        if payload[:4] == wire.NON_ESP_MARKER and looks_like_ikev1(payload[4:]):
            self.natt_endpoints.update(((src, sport), (dst, dport)))
            return "isakmp", payload[4:], True
        natt = NAT_T_PORT in (sport, dport) or (src, sport) in self.natt_endpoints \
            or (dst, dport) in self.natt_endpoints
        if natt and payload == b"\xff":
            return "keepalive", b"", True
        if natt and payload[:4] == wire.NON_ESP_MARKER:  # a marker before something broken: reported
            return None if _other_version(payload[4:]) else ("isakmp", payload[4:], True)
        if natt and len(payload) >= 8:
            return "esp", payload, True
        if looks_like_ikev1(payload):
            return "isakmp", payload, False
        return None


def _other_version(data: bytes) -> bool:
    """An IKEv2 header (major version 2 shares the ports): not ours."""
    return len(data) >= wire.HEADER_LEN and data[17] >> 4 == 2


def _udp(data: bytes) -> tuple[int, int, bytes] | None:
    if len(data) < 8:
        return None
    sport, dport, ulen = struct.unpack_from("!HHH", data)
    return sport, dport, data[8:ulen] if 8 <= ulen <= len(data) else data[8:]


def packets_from_pcap(path: Path) -> Iterator[Datagram]:
    """Every ISAKMP message, ESP packet, NAT-keepalive and incomplete IP datagram of a
    pcap/pcapng capture, in frame order (incomplete datagrams last).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a pcap or pcapng file.
    """
    reassembler = Reassembler()
    classifier = _Classifier()
    for number, (linktype, ts, frame) in enumerate(pcap_frames(path.read_bytes()), 1):
        ip = _link_to_ip(linktype, frame)
        if ip is None:
            continue
        datagram = reassembler.feed(ip, number)
        if datagram is None:
            continue
        if datagram.protocol == _ESP:
            if len(datagram.data) >= 8:
                yield Datagram(datagram.data, frame=number, src=datagram.src, dst=datagram.dst, time=ts, kind="esp")
            continue
        if datagram.protocol != _UDP:
            continue
        udp = _udp(datagram.data)
        if udp is None:
            continue
        sport, dport, payload = udp
        found = classifier.classify(datagram.src, datagram.dst, sport, dport, payload)
        if found is None:
            continue
        kind, data, ike_port = found
        yield Datagram(data, frame=number, src=f"{datagram.src}:{sport}", dst=f"{datagram.dst}:{dport}", time=ts,
                       ike_port=ike_port, kind=kind)
    yield from reassembler.leftovers()


def datagrams_from_pcap(path: Path) -> Iterator[Datagram]:
    """The ISAKMP datagrams of a pcap/pcapng capture (marker removed), nothing else."""
    return (d for d in packets_from_pcap(path) if d.kind == "isakmp" and looks_like_ikev1(d.data))
