"""Helpers shared by the exchanges of one ISAKMP SA (layer L3).

* ``Services``: what a state machine may ask of its owner (randomness, Diffie-Hellman, the
  IPsec driver, a key log) -- injected so that tests can make packets reproducible.
* Message sealing and opening: encode a payload chain, encrypt it under the SA's IV chain
  for a Message ID, and the reverse (without advancing the IV until the caller commits).
* Phase 1 keying: SKEYID family, encryption key, phase 1 IV (RFC 2409 section 5, app. B).
* Identification payloads for phase 1 (RFC 2407 section 4.6.2).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ikecore import keymat, wire
from ikecore.errors import (AuthenticationFailed, InvalidKeyInformation, InvalidPayloadType, PayloadMalformed,
                            RemoteProtocolError)
from ikecore.sa import IsakmpSa

__all__ = ["Services", "Opened", "seal", "seal_hashed", "after_hash", "run_handler", "open_encrypted", "open_keyed", "build_plain", "phase1_keys",
           "my_identification", "required", "nonce_ok", "constant_time_equal"]

NONCE_SIZE = 32
T = TypeVar("T")


class Services(Protocol):
    """Capabilities the engine lends to the state machines."""

    def random(self, size: int) -> bytes: ...
    def keypair(self, group: int) -> Any: ...
    def keylog(self, line: str) -> None: ...


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def nonce_ok(nonce: bytes) -> bool:
    """RFC 2409 section 5: nonces are 8 to 256 bytes."""
    return 8 <= len(nonce) <= 256


def build_plain(sa: IsakmpSa, exchange_type: int, payloads: list[Any], message_id: int = 0) -> bytes:
    """An unencrypted message of this SA."""
    return wire.Message(sa.initiator_cookie, sa.responder_cookie, exchange_type, payloads,
                        message_id=message_id).encode()


def seal(sa: IsakmpSa, exchange_type: int, payloads: list[Any], message_id: int) -> bytes:
    """Encrypt ``payloads`` and return the whole datagram.

    Advances the IV chain of ``message_id`` (CryptoState.encrypt does).
    """
    ciphertext = sa.crypto.encrypt(message_id, wire.encode_payloads(payloads))
    first = payloads[0].payload_type
    return wire.Message(sa.initiator_cookie, sa.responder_cookie, exchange_type,
                        message_id=message_id, flags=wire.Flag.ENCRYPTION, next_payload=first,
                        body=ciphertext).encode()


def seal_hashed(sa: IsakmpSa, exchange_type: int, payloads: list[Any], message_id: int,
                compute: Callable[[bytes], bytes]) -> bytes:
    """``HDR*, HASH, payloads``: the HASH is ``compute`` over the payload chain that follows it
    (generic headers included), as Quick Mode and informational exchanges define it
    (RFC 2409 sections 5.5 and 5.7)."""
    digest = compute(wire.encode_payloads(payloads))
    return seal(sa, exchange_type, [wire.HashPayload(digest), *payloads], message_id)


def after_hash(payloads: list[Any]) -> bytes:
    """The exact bytes of every payload after a leading HASH payload, what its hash covers.

    Raises:
        InvalidPayloadType: the message does not start with HASH.
    """
    if not payloads or payloads[0].payload_type != wire.PayloadType.HASH:
        raise InvalidPayloadType("message must start with a HASH payload")
    return b"".join(p.raw for p in payloads[1:])


def run_handler(sa: IsakmpSa, message_id: int, next_iv: bytes | None, handler: Callable[[], T]) -> T:
    """Run a state-machine handler for a received message.

    With ``next_iv`` (the message was encrypted) the IV chain of ``message_id`` is first
    advanced past the message, since a reply is encrypted on from its last block, and
    rolled back if the handler rejects the message, so a bad message never moves the IV.
    A plain ValueError from the crypto core (a peer DH value it refused) becomes
    INVALID-KEY-INFORMATION.
    """
    previous = None
    if next_iv is not None:
        previous = sa.crypto.iv(message_id)
        sa.crypto.commit(message_id, next_iv)
    try:
        return handler()
    except Exception as exc:
        if previous is not None:
            sa.crypto.commit(message_id, previous)
        if isinstance(exc, ValueError) and not isinstance(exc, RemoteProtocolError):
            raise InvalidKeyInformation(str(exc)) from exc
        raise


@dataclass(frozen=True, slots=True)
class Opened:
    """A decrypted message: its payloads and the IV to commit once it is validated."""

    payloads: list[Any]
    next_iv: bytes


def open_encrypted(sa: IsakmpSa, message: Any) -> Opened:
    """Decrypt an E-flagged message of this SA without advancing its IV chain.

    Raises:
        PayloadMalformed: not encrypted, not whole blocks, or no valid payload chain.
    """
    if not message.encrypted:
        raise PayloadMalformed("message must be encrypted", notify_type=wire.NotifyType.INVALID_FLAGS)
    if sa.crypto is None:
        raise PayloadMalformed("encrypted message before keys exist", notify_type=wire.NotifyType.INVALID_FLAGS)
    plaintext, next_iv = sa.crypto.decrypt(message.message_id, message.body)
    payloads = wire.parse_payloads(message.next_payload, plaintext)
    return Opened(list(payloads), next_iv)


def open_keyed(sa: IsakmpSa, message: Any, number: int, *types: int) -> Opened:
    """Decrypt phase 1 message ``number`` (MM5/MM6, AM3) and check it carries ``types``.

    Garbage after decryption is what a wrong pre-shared key gives (RFC 2409 5.4): it is an
    authentication failure, not a malformed message.

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


def required(payloads: list[Any], *types: int) -> dict[int, Any]:
    """Index payloads by type; raises when one of ``types`` is missing.

    Returns the first payload of each type.
    """
    found: dict[int, Any] = {}
    for payload in payloads:
        found.setdefault(payload.payload_type, payload)
    for payload_type in types:
        if payload_type not in found:
            raise InvalidPayloadType(f"missing {wire.PayloadType(payload_type).name} payload")
    return found


def phase1_keys(sa: IsakmpSa, services: Services, g_xy: bytes) -> None:
    """Derive SKEYID, SKEYID_d/a/e, the encryption key and the phase 1 IV (RFC 2409 5, B)."""
    chosen = sa.chosen
    assert chosen is not None
    # Signatures: SKEYID = prf(Ni_b | Nr_b, g^xy) (RFC 2409 5.1), keymat's psk=None.
    psk = None if chosen.auth_method == wire.AuthMethod.RSA_SIG else (sa.generic_filter.psk() or b"")
    hash_name = chosen.prf_hash
    sa.skeyid = keymat.derive_skeyid(hash_name, sa.nonce_i, sa.nonce_r, g_xy,
                                     sa.initiator_cookie, sa.responder_cookie, psk=psk)
    cipher_name, key_size, block_size = keymat.cipher_for(chosen.encryption, chosen.key_length)
    key = keymat.encryption_key(hash_name, sa.skeyid.skeyid_e, key_size)
    iv = keymat.phase1_iv(hash_name, sa.g_xi, sa.g_xr, block_size)
    sa.crypto = keymat.CryptoState(cipher_name, key, hash_name, iv)
    services.keylog(keymat.keylog_line(sa.initiator_cookie, key))


def my_identification(sa: IsakmpSa, configured: str | None) -> wire.IdPayload:
    """IDii/IDir: the configured ID (address, FQDN, or user@FQDN) or our IKE address.

    Protocol and port are zero, as RFC 2407 section 4.6.2 allows in phase 1.
    """
    text = configured or sa.local[0]
    try:
        packed = keymat.packed_address(text)
    except ValueError:
        id_type = wire.IdType.USER_FQDN if "@" in text else wire.IdType.FQDN
        return wire.IdPayload(int(id_type), text.encode())
    id_type = wire.IdType.IPV6_ADDR if len(packed) == 16 else wire.IdType.IPV4_ADDR
    return wire.IdPayload(int(id_type), packed)
