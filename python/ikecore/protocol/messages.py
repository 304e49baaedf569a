"""Encoding and opening the messages of one ISAKMP SA (RFC 2408 section 3, RFC 2409 section 5).

Design note
-----------
* Sealing: encode a payload chain and encrypt it under the SA's IV chain for a Message ID
  (``seal``), optionally behind a leading ``HASH`` computed over the chain that follows it
  (``seal_hashed``: Quick Mode and informational exchanges, RFC 2409 sections 5.5 and 5.7).
* Opening: decrypt a message without advancing its IV chain (``open_encrypted``,
  ``open_keyed``); ``run_handler`` commits the IV only when the handler accepts the message,
  so garbage, wrong-key messages and retransmissions never move it.
* Checking: ``check_generic_headers`` applies RFC 2408 section 5.2 to every payload of a
  chain (plain ones as parsed, encrypted ones once decrypted): a RESERVED octet that is not
  zero is PAYLOAD-MALFORMED, a payload type of the reserved range (neither RFC 2408's,
  RFC 3947's nor private use, 128-255) INVALID-PAYLOAD-TYPE; ``leading_hash`` splits off
  the HASH that protects a message; ``required`` indexes a payload chain by type and names
  the first missing one; ``nonce_ok`` and ``constant_time_equal`` check nonces and
  received hashes.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from ikecore import wire
from ikecore.errors import (
    AuthenticationFailed,
    InvalidKeyInformation,
    InvalidPayloadType,
    PayloadMalformed,
    RemoteProtocolError,
)
from ikecore.sa import IsakmpSa

__all__ = ["NONCE_SIZE", "Opened", "build_plain", "seal", "seal_hashed", "leading_hash", "run_handler",
           "open_encrypted", "open_keyed", "required", "nonce_ok", "constant_time_equal", "check_generic_headers",
           "TOP_LEVEL_PAYLOADS", "interned"]

#: The length of our nonces (RFC 2409 section 5 allows 8 to 256 bytes).
NONCE_SIZE = 32
T = TypeVar("T")
K = TypeVar("K")
#: Payload types that may appear in a message's chain below the private-use range:
#: RFC 2408 section 3.1 (Proposal and Transform live only inside SA) and RFC 3947.
TOP_LEVEL_PAYLOADS = frozenset(int(t) for t in wire.PayloadType
                               if t not in (wire.PayloadType.NONE, wire.PayloadType.PROPOSAL,
                                            wire.PayloadType.TRANSFORM) and t < 128)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def nonce_ok(nonce: bytes) -> bool:
    """RFC 2409 section 5: nonces are 8 to 256 bytes."""
    return 8 <= len(nonce) <= 256


def check_generic_headers(payloads: list[wire.Payload]) -> None:
    """RFC 2408 section 5.2 on every generic payload header of a chain.

    Raises:
        PayloadMalformed: a RESERVED octet is not zero.
        InvalidPayloadType: a payload type that is neither defined nor private use (128-255).
    """
    for payload in payloads:
        raw = payload.raw  # always the 4-byte generic header first
        if raw[1]:
            raise PayloadMalformed(f"payload type {payload.payload_type}: RESERVED octet is {raw[1]}, not 0")
        kind = payload.payload_type
        if kind < 128 and kind not in TOP_LEVEL_PAYLOADS:
            raise InvalidPayloadType(f"payload type {kind} is not defined")


def build_plain(sa: IsakmpSa, exchange_type: int, payloads: list[wire.Payload], message_id: int = 0) -> bytes:
    """An unencrypted message of this SA."""
    return wire.Message(sa.initiator_cookie, sa.responder_cookie, exchange_type, payloads,
                        message_id=message_id).encode()


def seal(sa: IsakmpSa, exchange_type: int, payloads: list[wire.Payload], message_id: int) -> bytes:
    """Encrypt ``payloads`` and return the whole datagram.

    Advances the IV chain of ``message_id`` (CryptoState.encrypt does).
    """
    ciphertext = sa.cipher.encrypt(message_id, wire.encode_payloads(payloads))
    first = payloads[0].payload_type
    return wire.Message(sa.initiator_cookie, sa.responder_cookie, exchange_type,
                        message_id=message_id, flags=wire.Flag.ENCRYPTION, next_payload=first,
                        body=ciphertext).encode()


def seal_hashed(sa: IsakmpSa, exchange_type: int, payloads: list[wire.Payload], message_id: int,
                compute: Callable[[bytes], bytes]) -> bytes:
    """``HDR*, HASH, payloads``: the HASH is ``compute`` over the payload chain that follows it
    (generic headers included), as Quick Mode and informational exchanges define it
    (RFC 2409 sections 5.5 and 5.7)."""
    digest = compute(wire.encode_payloads(payloads))
    return seal(sa, exchange_type, [wire.HashPayload(digest), *payloads], message_id)


def leading_hash(payloads: list[wire.Payload]) -> tuple[bytes, bytes]:
    """The data of a leading HASH payload, and the exact bytes of every payload after it:
    what that hash covers.

    Raises:
        InvalidPayloadType: the message does not start with HASH.
    """
    first = payloads[0] if payloads else None
    if not isinstance(first, wire.HashPayload):
        raise InvalidPayloadType("message must start with a HASH payload")
    return first.data, b"".join([p.raw for p in payloads[1:]])


def run_handler(sa: IsakmpSa, message_id: int, next_iv: bytes | None, handler: Callable[..., T],
                *args: Any) -> T:
    """Run a state-machine handler for a received message: ``handler(*args)``.

    With ``next_iv`` (the message was encrypted) the IV chain of ``message_id`` is first
    advanced past the message, since a reply is encrypted on from its last block, and
    rolled back if the handler rejects the message, so a bad message never moves the IV.
    A plain ValueError from the crypto core (a peer DH value it refused) becomes
    INVALID-KEY-INFORMATION.
    """
    previous = None
    if next_iv is not None:
        previous = sa.cipher.advance(message_id, next_iv)
    try:
        return handler(*args)
    except Exception as exc:
        if previous is not None:
            sa.cipher.commit(message_id, previous)
        if isinstance(exc, ValueError) and not isinstance(exc, RemoteProtocolError):
            raise InvalidKeyInformation(str(exc)) from exc
        raise


class Opened(NamedTuple):
    """A decrypted message: its payloads and the IV to commit once it is validated."""

    payloads: list[wire.Payload]
    next_iv: bytes


def open_encrypted(sa: IsakmpSa, message: wire.Message) -> Opened:
    """Decrypt an E-flagged message of this SA without advancing its IV chain.

    Raises:
        PayloadMalformed: not encrypted, not whole blocks, or no valid payload chain.
    """
    if not message.encrypted:
        raise PayloadMalformed("message must be encrypted", notify_type=wire.NotifyType.INVALID_FLAGS)
    if sa.crypto is None:
        raise PayloadMalformed("encrypted message before keys exist", notify_type=wire.NotifyType.INVALID_FLAGS)
    plaintext, next_iv = sa.crypto.decrypt(message.message_id, message.body)
    payloads = wire.parse_payloads(message.next_payload, plaintext)  # a new list
    check_generic_headers(payloads)
    return Opened(payloads, next_iv)


def open_keyed(sa: IsakmpSa, message: wire.Message, number: int, *types: int) -> Opened:
    """Decrypt phase 1 message ``number`` (MM5/MM6, AM3) and check it carries ``types``.

    Garbage after decryption is what a wrong pre-shared key gives (RFC 2409 section 5.4):
    it is an authentication failure, not a malformed message.

    Raises:
        AuthenticationFailed: it does not decrypt to a valid chain with those payloads.
    """
    try:
        opened = open_encrypted(sa, message)
        required(opened.payloads, *types)
    except RemoteProtocolError as exc:
        raise AuthenticationFailed(f"message {number} does not decrypt to a valid payload chain ({exc}); "
                                   "pre-shared keys differ?") from exc
    return opened


def required(payloads: list[wire.Payload], *types: int) -> dict[int, Any]:
    """Index payloads by type; raises when one of ``types`` is missing.

    Returns the first payload of each type. The values are ``Any``: each is the payload
    class its key names (``wire.SaPayload`` under ``PayloadType.SA``, ...), which a dict
    cannot express.
    """
    found: dict[int, Any] = {}
    for payload in reversed(payloads):  # the first of a type is written last
        found[payload.payload_type] = payload
    for payload_type in types:
        if payload_type not in found:
            raise InvalidPayloadType(f"missing {wire.PayloadType(payload_type).name} payload")
    return found


def interned(table: dict[K, T], key: K, value: T, limit: int) -> T:
    """``table[key]``, else ``value``, kept there while ``table`` has fewer than ``limit``
    entries: SAs that negotiated the same thing share one object instead of a copy each."""
    found = table.get(key)
    if found is None:
        if len(table) >= limit:
            return value
        found = table[key] = value
    return found
