"""Decrypting captured IKEv1 messages for ``ikecore decode --keylog FILE``.

The key file holds Wireshark's IKEv1 decryption table, one ``ICOOKIE,ENCKEY`` line per
ISAKMP SA (16 hex digits of the initiator cookie, the payload cipher key in hex; fields may
be quoted as in Wireshark's ``ikev1_decryption_table``), the lines ``serve --keylog`` and
``connect --keylog`` write. Other lines (comments, the ``"IPv4",...``/``"IPv6",...`` ESP SA
lines) are skipped.

Per ISAKMP SA (initiator cookie), what the capture shows in clear is remembered: the
initiator (the sender of the message with a zero responder cookie, else of the first KE),
the SA payloads (the responder's chosen transform, else the initiator's first) and the KE
payloads of phase 1. With them and the key, RFC 2409 appendix B gives every IV, as
Wireshark computes them:

* phase 1 (Message ID 0): IV = hash(g^xi | g^xr) truncated to the cipher block, then the
  last ciphertext block of each phase 1 message decrypted;
* any other Message ID (Quick Mode, Informational): IV = hash(last phase 1 block | M-ID)
  when first seen, then chained within that exchange.

``hash`` is the negotiated Hash Algorithm, the cipher the Encryption Algorithm and Key
Length (``ikecore.keymat.cipher_for``); ``ikecore.keymat.CryptoState`` keeps the chains.
A chain advances only over a message that decrypts to a sound payload chain (known payload
types, zero RESERVED octets, less than 256 bytes of padding); a wrong key or a foreign
message leaves it where it was. A retransmission (the same Message ID and ciphertext) is
answered from the result of its original, so it decrypts with the same IV.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ikecore import keymat, wire
from ikecore.errors import IkeError, RemoteProtocolError
from ikecore.protocol.messages import check_generic_headers

__all__ = ["read_keylog", "Opened", "Decryptor", "MAX_PADDING"]

#: More padding than this after the last payload is taken for a wrong key.
MAX_PADDING = 255
_KEY_LINE = re.compile(r'^"?([0-9A-Fa-f]{16})"?\s*,\s*"?([^",\s]*)"?\s*$')
_PHASE1 = (wire.ExchangeType.IDENTITY_PROTECTION, wire.ExchangeType.AGGRESSIVE, wire.ExchangeType.BASE)


def read_keylog(path: Path) -> dict[bytes, bytearray]:
    """Initiator cookie -> payload cipher key, from a Wireshark IKEv1 decryption table file.

    Raises:
        OSError: the file cannot be read.
        ValueError: a cookie line whose key is not hex of 8 to 64 bytes (names the line).
    """
    keys: dict[bytes, bytearray] = {}
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        match = _KEY_LINE.match(line.strip())
        if match is None:
            continue  # comments, ESP SA lines, anything else
        cookie, key = match.groups()
        try:
            value = bytearray.fromhex(key)
        except ValueError:
            value = bytearray()
        if not 8 <= len(value) <= 64:
            raise ValueError(f"{path} line {number}: the key after cookie {cookie.lower()} must be 16 to 128 "
                             "hex digits (the ENCKEY of an ICOOKIE,ENCKEY line)")
        keymat.wipe(keys.get(bytes.fromhex(cookie)))  # a later line for the same cookie wins
        keys[bytes.fromhex(cookie)] = value
    return keys


@dataclass(frozen=True, slots=True)
class Opened:
    """What became of one encrypted message.

    ``payloads`` is the decrypted chain (None when it could not be decrypted, ``note``
    says why); ``padding`` the bytes after the last payload; ``retransmission`` is True
    when the same ciphertext was seen before (decrypted like its original).
    """

    payloads: list[wire.Payload] | None
    note: str = ""
    padding: int = 0
    retransmission: bool = False
    failed: bool = False  # a key was there but did not give a sound payload chain


@dataclass(slots=True)
class _IsakmpSa:
    initiator: str | None = None
    offered: dict[int, int] | None = None      # attributes of the initiator's first transform
    chosen: dict[int, int] | None = None       # attributes of the responder's transform
    g_xi: bytes | None = None
    g_xr: bytes | None = None
    crypto: keymat.CryptoState | None = None
    seen: dict[tuple[int, bytes], Opened] = field(default_factory=dict)


def _attributes(payload: wire.SaPayload) -> dict[int, int] | None:
    for proposal in payload.proposals:
        if proposal.protocol_id == wire.ProtocolId.ISAKMP and proposal.transforms:
            return {a.type: a.int_value for a in proposal.transforms[0].attributes}
    return None


class Decryptor:
    """The decryption state of every ISAKMP SA in a capture (module docstring)."""

    def __init__(self, keys: dict[bytes, bytearray]) -> None:
        self._keys = keys
        self._sas: dict[bytes, _IsakmpSa] = {}

    def close(self) -> None:
        """Wipe the keys held (the key file's and the ciphers')."""
        for sa in self._sas.values():
            if sa.crypto is not None:
                sa.crypto.wipe()
        keymat.wipe(*self._keys.values())
        self._keys.clear()

    def observe(self, msg: wire.Message, src: str | None) -> None:
        """Learn from a message in clear: the initiator, SA and KE payloads of phase 1."""
        if msg.encrypted or msg.message_id != 0 or msg.exchange_type not in _PHASE1:
            return
        sa = self._sas.setdefault(msg.initiator_cookie, _IsakmpSa())
        if msg.responder_cookie == bytes(8) and sa.initiator is None:
            sa.initiator = src
        self._learn(sa, msg.payloads, src)

    def _learn(self, sa: _IsakmpSa, payloads: list[wire.Payload], src: str | None) -> None:
        for payload in payloads:
            if isinstance(payload, wire.KePayload):
                if sa.initiator is None and sa.g_xi is None:
                    sa.initiator = src
                if src == sa.initiator:
                    sa.g_xi = sa.g_xi or payload.data
                else:
                    sa.g_xr = sa.g_xr or payload.data
            elif isinstance(payload, wire.SaPayload):
                attributes = _attributes(payload)
                if attributes is None:
                    continue
                if sa.initiator is None or src == sa.initiator:
                    sa.offered = sa.offered or attributes
                else:
                    sa.chosen = sa.chosen or attributes

    def _crypto(self, cookie: bytes, sa: _IsakmpSa) -> keymat.CryptoState | str:
        """The SA's CryptoState, made on first use, or why there is none."""
        if sa.crypto is not None:
            return sa.crypto
        key = self._keys.get(cookie)
        if key is None:
            return f"encrypted, no key for cookie {cookie.hex()}"
        attributes = sa.chosen or sa.offered
        if attributes is None or sa.g_xi is None or sa.g_xr is None:
            return ("decryption failed: the phase 1 SA and KE payloads of cookie "
                    f"{cookie.hex()} are not in the capture")
        try:
            hash_name = keymat.hash_for(attributes.get(wire.OakleyAttribute.HASH_ALGORITHM, 0))
            cipher, size, block = keymat.cipher_for(attributes.get(wire.OakleyAttribute.ENCRYPTION_ALGORITHM, 0),
                                                    attributes.get(wire.OakleyAttribute.KEY_LENGTH))
        except IkeError as exc:
            return f"decryption failed: {exc}"
        if len(key) != size:
            return f"decryption failed: the key of cookie {cookie.hex()} has {len(key)} bytes, {cipher} takes {size}"
        sa.crypto = keymat.CryptoState(cipher, bytearray(key), hash_name, keymat.phase1_iv(hash_name, sa.g_xi, sa.g_xr, block))
        return sa.crypto

    def open(self, msg: wire.Message, src: str | None) -> Opened:
        """Decrypt an encrypted message (E flag set); never raises for what a capture holds."""
        cookie = msg.initiator_cookie
        sa = self._sas.setdefault(cookie, _IsakmpSa())
        seen_key = (msg.message_id, msg.body)
        earlier = sa.seen.get(seen_key)
        if earlier is not None:
            return Opened(earlier.payloads, earlier.note, earlier.padding, True, earlier.failed)
        crypto = self._crypto(cookie, sa)
        if isinstance(crypto, str):
            return Opened(None, crypto, failed=crypto.startswith("decryption failed"))
        opened = self._decrypt(crypto, msg)
        if opened.payloads is not None and msg.message_id == 0 and msg.exchange_type in _PHASE1:
            self._learn(sa, opened.payloads, src)
        if len(sa.seen) < 65536:
            sa.seen[seen_key] = opened
        return opened

    @staticmethod
    def _decrypt(crypto: keymat.CryptoState, msg: wire.Message) -> Opened:
        try:
            plaintext, next_iv = crypto.decrypt(msg.message_id, msg.body)
        except (IkeError, ValueError) as exc:
            return Opened(None, f"decryption failed: {exc}", failed=True)
        try:
            payloads = list(wire.parse_payloads(msg.next_payload, plaintext))
            check_generic_headers(payloads)
        except RemoteProtocolError as exc:
            return Opened(None, f"decryption failed (wrong key or IV?): {exc}", failed=True)
        padding = len(plaintext) - sum(len(p.raw) for p in payloads)
        if not payloads or padding < 0 or padding > MAX_PADDING:
            return Opened(None, f"decryption failed (wrong key or IV?): {padding} bytes after the payloads",
                          failed=True)
        crypto.commit(msg.message_id, next_iv)
        return Opened(payloads, padding=padding)
