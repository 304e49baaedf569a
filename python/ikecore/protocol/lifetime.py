"""SA lifetimes on the wire: life attributes and the RESPONDER-LIFETIME notify.

RFC 2407 section 4.6.3.1: a Quick Mode responder that accepts a proposal but wants a
shorter lifetime (seconds or kilobytes) than the initiator offered returns the offered
transform unchanged and adds a RESPONDER-LIFETIME notify (24576, protocol ESP, SPI of the
SA) whose data are SA Life Type / SA Life Duration attributes. The initiator then uses the
responder's values, so both ends expire (and rekey) at the same time -- the "tunnel drops
every N minutes" cause when peers ignore it.

Attributes are RFC 2408 section 3.3 data attributes: AF=1 (TV, 2-byte value) when the value
fits 16 bits, else AF=0 (TLV, 4-byte value).
"""

from __future__ import annotations

import dataclasses

from ikecore import policy, wire
from ikecore.errors import PayloadMalformed

__all__ = ["encode_life", "decode_life", "responder_lifetime_notify", "read_responder_lifetime",
           "apply_responder_lifetime"]

_LIFE_TYPE = int(wire.IpsecAttribute.SA_LIFE_TYPE)
_LIFE_DURATION = int(wire.IpsecAttribute.SA_LIFE_DURATION)


def _attribute(kind: int, value: int) -> bytes:
    if value <= 0xFFFF:
        return (0x8000 | kind).to_bytes(2, "big") + value.to_bytes(2, "big")
    return kind.to_bytes(2, "big") + (4).to_bytes(2, "big") + value.to_bytes(4, "big")


def encode_life(seconds: int | None, kilobytes: int | None) -> bytes:
    """Life type/duration attribute pairs for the given limits (None = not limited)."""
    out = b""
    if seconds:
        out += _attribute(_LIFE_TYPE, int(wire.LifeType.SECONDS)) + _attribute(_LIFE_DURATION, seconds)
    if kilobytes:
        out += _attribute(_LIFE_TYPE, int(wire.LifeType.KILOBYTES)) + _attribute(_LIFE_DURATION, kilobytes)
    return out


def decode_life(data: bytes) -> tuple[int | None, int | None]:
    """(seconds, kilobytes) from life attributes; raises PayloadMalformed on bad framing."""
    seconds = kilobytes = None
    life_type = None
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise PayloadMalformed("truncated attribute in RESPONDER-LIFETIME")
        head = int.from_bytes(data[offset:offset + 2], "big")
        kind = head & 0x7FFF
        if head & 0x8000:
            value = int.from_bytes(data[offset + 2:offset + 4], "big")
            offset += 4
        else:
            length = int.from_bytes(data[offset + 2:offset + 4], "big")
            if length == 0 or length > 8 or offset + 4 + length > len(data):
                raise PayloadMalformed("bad attribute length in RESPONDER-LIFETIME")
            value = int.from_bytes(data[offset + 4:offset + 4 + length], "big")
            offset += 4 + length
        if kind == _LIFE_TYPE:
            life_type = value
        elif kind == _LIFE_DURATION:
            if life_type == wire.LifeType.SECONDS:
                seconds = value
            elif life_type == wire.LifeType.KILOBYTES:
                kilobytes = value
    return seconds, kilobytes


def responder_lifetime_notify(offered: policy.EspProposal, chosen: policy.EspProposal,
                              spi: bytes) -> wire.NotifyPayload | None:
    """The notify a responder adds to QM2 when ``chosen`` limits are shorter than offered."""
    shorter_seconds = chosen.lifetime < offered.lifetime
    shorter_kb = bool(chosen.lifetime_kilobytes) and (
        not offered.lifetime_kilobytes or chosen.lifetime_kilobytes < offered.lifetime_kilobytes)  # type: ignore[operator]
    if not (shorter_seconds or shorter_kb):
        return None
    return wire.NotifyPayload(int(wire.NotifyType.RESPONDER_LIFETIME), protocol_id=int(wire.ProtocolId.IPSEC_ESP),
                              spi=spi, data=encode_life(chosen.lifetime, chosen.lifetime_kilobytes))


def read_responder_lifetime(payloads: list[wire.Payload]) -> tuple[int | None, int | None] | None:
    """The (seconds, kilobytes) of a RESPONDER-LIFETIME notify among ``payloads``, if any."""
    for payload in payloads:
        if isinstance(payload, wire.NotifyPayload) and payload.notify_type == wire.NotifyType.RESPONDER_LIFETIME:
            return decode_life(payload.data)
    return None


def apply_responder_lifetime(chosen: policy.EspProposal,
                             limits: tuple[int | None, int | None]) -> policy.EspProposal:
    """Honour the responder's limits: never longer than what we offered."""
    seconds, kilobytes = limits
    lifetime = min(chosen.lifetime, seconds) if seconds else chosen.lifetime
    if kilobytes:
        kilobytes = min(chosen.lifetime_kilobytes, kilobytes) if chosen.lifetime_kilobytes else kilobytes
    else:
        kilobytes = chosen.lifetime_kilobytes
    return dataclasses.replace(chosen, lifetime=lifetime, lifetime_kilobytes=kilobytes)
