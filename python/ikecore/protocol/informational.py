"""Informational exchanges: Notify and Delete, protected and unprotected (RFC 2409 5.7,
RFC 2408 sections 3.14, 3.15 and 4.8).

Design note
-----------
An informational exchange is one message, with its own random Message ID:

* protected (after phase 1): ``HDR*, HASH(1), N/D`` with
  ``HASH(1) = prf(SKEYID_a, M-ID | N/D)``; the IV is the phase 2 IV of that M-ID, which is
  forgotten once the message is processed (each informational M-ID is used once);
* unprotected (before keys exist, e.g. an error notify answering message 1 or 3):
  ``HDR, N`` with the cookies of the offending message.

``build_protected`` and ``build_unprotected`` produce datagrams; ``receive_protected``
verifies one and returns its Notify and Delete payloads for the engine to act on.
A Delete for ISAKMP carries SPI size 16 (CKY-I | CKY-R); for ESP, 4-byte SPIs: the
sender's inbound SPIs, which are the receiver's outbound ones.
"""

from __future__ import annotations

from ikecore import keymat, wire
from ikecore.errors import AuthenticationFailed, InvalidMessageId
from ikecore.protocol.messages import (
    constant_time_equal,
    leading_hash,
    open_encrypted,
    seal_hashed,
)
from ikecore.sa import IsakmpSa

__all__ = ["INFORMATIONAL", "build_protected", "build_unprotected", "receive_protected",
           "delete_isakmp", "delete_esp", "notify"]

INFORMATIONAL = wire.ExchangeType.INFORMATIONAL


def notify(notify_type: int, *, protocol_id: int = wire.ProtocolId.ISAKMP, spi: bytes = b"",
           data: bytes = b"") -> wire.NotifyPayload:
    return wire.NotifyPayload(int(notify_type), protocol_id=int(protocol_id), spi=spi, data=data)


def delete_isakmp(sa: IsakmpSa) -> wire.DeletePayload:
    return wire.DeletePayload(wire.ProtocolId.ISAKMP, [sa.initiator_cookie + sa.responder_cookie])


def delete_esp(spis: list[bytes]) -> wire.DeletePayload:
    return wire.DeletePayload(wire.ProtocolId.IPSEC_ESP, list(spis))


def build_protected(sa: IsakmpSa, payloads: list[wire.Payload], message_id: int) -> bytes:
    """``HDR*, HASH(1), N/D...`` under the SA's keys with a fresh Message ID."""
    datagram = seal_hashed(sa, INFORMATIONAL, payloads, message_id, lambda chain: keymat.informational_hash(
        sa.hash_name, sa.skeyids.skeyid_a, message_id, chain))
    sa.cipher.forget(message_id)
    return datagram


def build_unprotected(initiator_cookie: bytes, responder_cookie: bytes, payload: wire.Payload) -> bytes:
    """``HDR, N``: an error notify sent before keys exist (RFC 2408 section 5.1)."""
    return wire.Message(initiator_cookie, responder_cookie, INFORMATIONAL, [payload]).encode()


def receive_protected(sa: IsakmpSa, message: wire.Message) -> list[wire.NotifyPayload | wire.DeletePayload]:
    """Decrypt and verify a protected informational message; return its N and D payloads.

    Raises:
        RemoteProtocolError: not decryptable, no leading HASH, or HASH(1) does not verify.
    """
    if message.message_id == 0:
        raise InvalidMessageId("informational exchange with Message ID 0")
    try:
        opened = open_encrypted(sa, message)
    finally:
        sa.cipher.forget(message.message_id)
    payloads = opened.payloads
    received, after = leading_hash(payloads)
    expected = keymat.informational_hash(sa.hash_name, sa.skeyids.skeyid_a, message.message_id, after)
    if not constant_time_equal(received, expected):
        raise AuthenticationFailed("informational HASH(1) does not verify")
    return [p for p in payloads[1:] if isinstance(p, (wire.NotifyPayload, wire.DeletePayload))]
