"""ISAKMP codec: ikecore against scapy (scapy.layers.isakmp) on the same bytes.

Messages: Main Mode 1 with 4 transforms and 3 vendor IDs (248 bytes), Main Mode 3
with a 256-byte KE, a nonce and two NAT-D payloads (372 bytes), and a Quick Mode
message 1 in its decrypted form (HASH, SA with an ESP proposal, nonce, two IDs).

Rows (rates in operations per second, median of several runs; ratio = ikecore/anchor):
  parse_<msg>        ikecore parse + every payload object and SA attribute materialised
                     vs scapy ISAKMP(data) (scapy dissects everything up front)
  parse_many_<msg>   ikecore.wire.parse_many on a batch of 10,000 datagrams (messages per
                     second, GIL released) vs scapy parse rate
  build_<msg>        payload objects -> Message -> bytes, both sides from scratch

``--quick`` shortens the runs (for CI smoke tests).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from scapy.layers.isakmp import (
    ISAKMP,
    ISAKMP_payload,
    ISAKMP_payload_Hash,
    ISAKMP_payload_ID,
    ISAKMP_payload_KE,
    ISAKMP_payload_Nonce,
    ISAKMP_payload_Proposal,
    ISAKMP_payload_SA,
    ISAKMP_payload_Transform,
    ISAKMP_payload_VendorID,
)

from ikecore import wire
from ikecore.wire import (
    Attribute,
    HashPayload,
    IdPayload,
    KePayload,
    Message,
    NatDPayload,
    NoncePayload,
    Proposal,
    SaPayload,
    Transform,
    VendorIdPayload,
)

QUICK = "--quick" in sys.argv
ICOOKIE = bytes.fromhex("8f3a5c7e91b2d4f6")
RCOOKIE = bytes.fromhex("1c2d3e4f5a6b7c8d")
VIDS = [wire.VID_DPD, wire.VID_NAT_T_RFC3947, bytes.fromhex("12f5f28c457168a9702d9fe274cc0100")]
# (encryption, key length or None, hash, group)
IKE_SUITES = [(7, 128, 2, 14), (7, 256, 4, 14), (7, 128, 4, 19), (5, None, 2, 2)]


def ikecore_mm1() -> Message:
    transforms = []
    for i, (enc, keylen, hsh, group) in enumerate(IKE_SUITES, 1):
        attrs = [Attribute(1, enc)]
        if keylen:
            attrs.append(Attribute(14, keylen))
        attrs += [Attribute(2, hsh), Attribute(3, 1), Attribute(4, group), Attribute(11, 1), Attribute(12, 28800)]
        transforms.append(Transform(i, 1, attrs))
    payloads = [SaPayload([Proposal(1, 1, transforms)])] + [VendorIdPayload(v) for v in VIDS]
    return Message(ICOOKIE, bytes(8), 2, payloads)


def ikecore_mm3() -> Message:
    return Message(ICOOKIE, RCOOKIE, 2, [
        KePayload(bytes(range(256))), NoncePayload(b"\x5a" * 32),
        NatDPayload(b"\x11" * 20), NatDPayload(b"\x22" * 20),
    ])


def ikecore_qm1() -> Message:
    esp = Transform(1, 12, [Attribute(1, 1), Attribute(2, 3600), Attribute(4, 1), Attribute(5, 5), Attribute(6, 128)])
    return Message(ICOOKIE, RCOOKIE, 32, [
        HashPayload(b"\x33" * 32),
        SaPayload([Proposal(1, 3, [esp], spi=b"\xc1\x00\x00\x01")]),
        NoncePayload(b"\x44" * 32),
        IdPayload(4, bytes([10, 1, 0, 0, 255, 255, 255, 0])),
        IdPayload(4, bytes([10, 2, 0, 0, 255, 255, 255, 0])),
    ], message_id=0x1234ABCD)


def scapy_mm1() -> ISAKMP:
    transforms = None
    for i, (enc, keylen, hsh, group) in enumerate(IKE_SUITES, 1):
        attrs = [("Encryption", enc)]
        if keylen:
            attrs.append(("KeyLength", keylen))
        attrs += [("Hash", hsh), ("Authentication", 1), ("GroupDesc", group), ("LifeType", 1), ("LifeDuration", 28800)]
        t = ISAKMP_payload_Transform(transform_count=i, transform_id=1, transforms=attrs)
        transforms = t if transforms is None else transforms / t
    sa = ISAKMP_payload_SA(prop=ISAKMP_payload_Proposal(proto=1, trans_nb=4, trans=transforms))
    pkt = ISAKMP(init_cookie=ICOOKIE, resp_cookie=bytes(8), exch_type=2) / sa
    for v in VIDS:
        pkt = pkt / ISAKMP_payload_VendorID(VendorID=v)
    return pkt


def scapy_mm3() -> ISAKMP:
    return (ISAKMP(init_cookie=ICOOKIE, resp_cookie=RCOOKIE, exch_type=2)
            / ISAKMP_payload_KE(ke=bytes(range(256))) / ISAKMP_payload_Nonce(next_payload=20, load=b"\x5a" * 32)
            / ISAKMP_payload(next_payload=20, load=b"\x11" * 20) / ISAKMP_payload(next_payload=0, load=b"\x22" * 20))


def scapy_qm1() -> ISAKMP:
    esp = ISAKMP_payload_Transform(transform_count=1, transform_id=12, transforms=[
        (1, 1), (2, 3600), (4, 1), (5, 5), (6, 128)])
    return (ISAKMP(init_cookie=ICOOKIE, resp_cookie=RCOOKIE, exch_type=32, id=0x1234ABCD)
            / ISAKMP_payload_Hash(load=b"\x33" * 32)
            / ISAKMP_payload_SA(prop=ISAKMP_payload_Proposal(proto=3, SPIsize=4, SPI=b"\xc1\x00\x00\x01", trans_nb=1, trans=esp))
            / ISAKMP_payload_Nonce(load=b"\x44" * 32)
            / ISAKMP_payload_ID(IDtype=4, IdentData=bytes([10, 1, 0, 0, 255, 255, 255, 0]))
            / ISAKMP_payload_ID(IDtype=4, IdentData=bytes([10, 2, 0, 0, 255, 255, 255, 0])))


def deep_parse(data: bytes) -> int:
    """ikecore: parse and build every Python object down to SA attributes."""
    n = 0
    for p in wire.parse(data).payloads:
        if type(p) is SaPayload:
            for prop in p.proposals:
                for t in prop.transforms:
                    n += len(t.attributes)
        n += 1
    return n


def rate(fn: Callable[[], object], batch: int = 1) -> float:
    """Operations per second: median over runs of at least 0.2 s each."""
    target = 0.05 if QUICK else 0.2
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        dt = time.perf_counter() - t0
        if dt >= target:
            break
        loops *= 2
    samples = []
    for _ in range(3 if QUICK else 7):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append(loops * batch / (time.perf_counter() - t0))
    return statistics.median(samples)


def row(name: str, ours: float, anchor: float) -> None:
    print(f"{name:<22} {ours:>14,.0f} {anchor:>12,.0f} {ours / anchor:>9.1f}x", flush=True)


def main() -> None:
    messages = {"mm1": (ikecore_mm1, scapy_mm1), "mm3": (ikecore_mm3, scapy_mm3), "qm1": (ikecore_qm1, scapy_qm1)}
    print(f"{'name':<22} {'ikecore/s':>14} {'scapy/s':>12} {'ratio':>10}")
    for name, (ours_build, scapy_build) in messages.items():
        data = ours_build().encode()
        scapy_bytes = bytes(scapy_build())
        assert len(scapy_bytes) == len(data), (name, len(scapy_bytes), len(data))
        assert wire.parse(scapy_bytes).payloads == wire.parse(data).payloads, name
        if name == "mm1":
            assert len(data) == 248
        if name == "mm3":
            assert len(data) == 372
        scapy_parse = rate(lambda: ISAKMP(data))
        row(f"parse_{name}", rate(lambda: deep_parse(data)), scapy_parse)
        batch = [bytes(data) for _ in range(1000 if QUICK else 10_000)]
        row(f"parse_many_{name}", rate(lambda: wire.parse_many(batch), len(batch)), scapy_parse)
        row(f"build_{name}", rate(lambda: ours_build().encode()), rate(lambda: bytes(scapy_build())))


if __name__ == "__main__":
    main()
