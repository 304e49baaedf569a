"""The IKEv1 key schedule, IVs and payload encryption (sans-IO).

Everything here is RFC 2409 section 5 and appendix B, with the formulas below.
``prf`` is HMAC with the negotiated hash (computed in Rust, ``ikecore._core.prf``:
4x faster than ``hmac`` per call); ``digest`` is the plain hash (used for IVs, NAT-D
and public-key SKEYID).

Phase 1 (section 5)::

    SKEYID   = prf(pre-shared-key, Ni_b | Nr_b)        pre-shared key (5.4)
             = prf(Ni_b | Nr_b, g^xy)                  signatures (5.1)
             = prf(hash(Ni_b | Nr_b), CKY-I | CKY-R)   public-key encryption (5.2, 5.3)
    SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0)
    SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1)
    SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2)
    HASH_I   = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)
    HASH_R   = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b)

Appendix B: the cipher key is the first bytes of SKEYID_e, or, when SKEYID_e is
too short, of K1 | K2 | ... with K1 = prf(SKEYID_e, 0x00), Kn = prf(SKEYID_e, Kn-1).
The phase 1 IV is hash(g^xi | g^xr); every later message of an exchange chains from
the last ciphertext block of the previous one, and each phase 2 / informational
Message ID starts from hash(last phase-1 block | M-ID). ``CryptoState`` keeps these
chains and only advances one after the caller has validated a message, so
garbage, wrong-key messages and retransmissions never move it.

Quick Mode (5.5) and informational exchanges (5.7)::

    HASH(1) = prf(SKEYID_a, M-ID | <payloads after HASH>)
    HASH(2) = prf(SKEYID_a, M-ID | Ni_b | <payloads after HASH>)
    HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)
    HASH    = prf(SKEYID_a, M-ID | N/D payload)          informational
    KEYMAT  = K1 | K2 | ...,  K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b)
                              Kn = prf(SKEYID_d, Kn-1 | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b)

Key material that an SA keeps lives in ``bytearray`` objects that are zeroed when the SA
ends (``wipe``, ``Skeyid.wipe``, ``CryptoState.wipe``; the engine calls them when an
ISAKMP or IPsec SA is deleted or fails): SKEYID and its family, the payload cipher key
(the Rust ``Cipher`` zeroizes its key schedule when dropped) and KEYMAT. What Python
cannot wipe: the ``bytes`` that the Rust prf, cipher and Diffie-Hellman code return (each
is copied into a bytearray and dropped at once) and the short-lived ``bytes`` copies
handed back to Rust, which takes only ``bytes``; their memory is freed, not zeroed. No
object here puts key material in its repr.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from ikecore._core import Cipher
from ikecore._core import prf as _core_prf
from ikecore._core import prf_expand as _core_prf_expand
from ikecore._core import skeyid_family as _core_skeyid_family
from ikecore.errors import (
    AttributesNotSupported,
    CryptoError,
    InvalidMessageId,
    NoProposalChosen,
    PayloadMalformed,
)

__all__ = [
    "HASHES",
    "prf",
    "digest",
    "digest_size",
    "hash_for",
    "Skeyid",
    "derive_skeyid",
    "skeyid_pke",
    "derive_skeyid_family",
    "encryption_key",
    "phase1_iv",
    "phase2_iv",
    "hash_i",
    "hash_r",
    "qm_hash1",
    "qm_hash2",
    "qm_hash3",
    "informational_hash",
    "keymat",
    "nat_d",
    "cipher_for",
    "pad",
    "CryptoState",
    "keylog_line",
    "wipe",
]

#: Hash names accepted everywhere a ``hash_name`` is taken.
HASHES = ("md5", "sha1", "sha256", "sha384", "sha512")

_CONSTRUCTORS: dict[str, Callable[[bytes], "hashlib._Hash"]] = {
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

#: IKE phase 1 Hash Algorithm attribute values (RFC 2409 appendix A, RFC 4868 s.2.3).
_HASH_IDS = {1: "md5", 2: "sha1", 4: "sha256", 5: "sha384", 6: "sha512"}


def wipe(*buffers: bytes | bytearray | None) -> None:
    """Zero every ``bytearray`` given, in place (``bytes`` are immutable: skipped)."""
    for buffer in buffers:
        if isinstance(buffer, bytearray):
            buffer[:] = bytes(len(buffer))


def _prf(hash_name: str, key: bytes | bytearray, data: bytes | bytearray) -> bytes:
    """The Rust prf, which takes ``bytes``: a key kept in a bytearray goes as a short-lived copy."""
    return _core_prf(hash_name, key if type(key) is bytes else bytes(key),
                     data if type(data) is bytes else bytes(data))


def _check_hash(hash_name: str) -> None:
    if hash_name not in _SIZES:
        raise CryptoError(f"unknown hash {hash_name!r}: expected one of {', '.join(HASHES)}")


#: The largest Message ID (32 bits); the IV chains check it inline, once per message.
_MAX_MESSAGE_ID = 0xFFFFFFFF


def _message_id(message_id: int) -> bytes:
    if not 0 <= message_id <= _MAX_MESSAGE_ID:
        raise InvalidMessageId(f"message ID {message_id} does not fit 32 bits")
    return message_id.to_bytes(4, "big")


def prf(hash_name: str, key: bytes | bytearray, data: bytes | bytearray) -> bytes:
    """HMAC of ``data`` under ``key`` with ``hash_name`` (the IKEv1 prf).

    Raises:
        CryptoError: ``hash_name`` is not in :data:`HASHES`.
    """
    return _prf(hash_name, key, data)


def digest(hash_name: str, data: bytes) -> bytes:
    """The plain hash of ``data`` (IVs, NAT-D, public-key SKEYID)."""
    try:
        constructor = _CONSTRUCTORS[hash_name]
    except KeyError:
        _check_hash(hash_name)  # raises CryptoError
        raise
    return constructor(data).digest()


def digest_size(hash_name: str) -> int:
    """Output size in bytes of ``hash_name`` (and of its prf)."""
    _check_hash(hash_name)
    return _SIZES[hash_name]


def hash_for(hash_algorithm: int) -> str:
    """The hash name of an IKE phase 1 Hash Algorithm attribute value.

    1 = MD5, 2 = SHA-1, 4/5/6 = SHA2-256/384/512 (RFC 4868 section 2.3 numbering).

    Raises:
        NoProposalChosen: the algorithm is not supported (3 = Tiger, unknown values).
    """
    try:
        return _HASH_IDS[hash_algorithm]
    except KeyError:
        raise NoProposalChosen(f"hash algorithm {hash_algorithm} not supported") from None


#: What a forgotten key is: empty, so zeroing it is nothing (never grown: nothing writes it).
_EMPTY = bytearray()

#: One string per cipher name for every CryptoState (the Rust cipher makes a new one each time).
_CIPHER_NAMES: dict[str, str] = {}


def _shared_name(name: str) -> str:
    return _CIPHER_NAMES.setdefault(name, name)


@dataclass(frozen=True, slots=True, repr=False, init=False)
class Skeyid:
    """SKEYID and the three keys derived from it (RFC 2409 section 5), each in a bytearray
    that ``wipe`` zeroes (a bytearray given is taken over, not copied).

    The repr shows only lengths, never key bytes.
    """

    skeyid: bytearray
    skeyid_d: bytearray
    skeyid_a: bytearray
    skeyid_e: bytearray

    def __init__(self, skeyid: bytes | bytearray, skeyid_d: bytes | bytearray, skeyid_a: bytes | bytearray,
                 skeyid_e: bytes | bytearray) -> None:
        for name, value in (("skeyid", skeyid), ("skeyid_d", skeyid_d), ("skeyid_a", skeyid_a),
                            ("skeyid_e", skeyid_e)):
            object.__setattr__(self, name, value if isinstance(value, bytearray) else bytearray(value))

    def wipe(self) -> None:
        """Zero all four keys in place."""
        wipe(self.skeyid, self.skeyid_d, self.skeyid_a, self.skeyid_e)

    def forget_skeyid_e(self) -> None:
        """Zero SKEYID and SKEYID_e and drop them (Quick Mode and Informational need only
        SKEYID_d and SKEYID_a): both become one empty bytearray shared by every SA."""
        wipe(self.skeyid, self.skeyid_e)
        object.__setattr__(self, "skeyid", _EMPTY)
        object.__setattr__(self, "skeyid_e", _EMPTY)

    def __repr__(self) -> str:
        return f"Skeyid(<{len(self.skeyid)}-byte keys>)"


def derive_skeyid_family(
    hash_name: str, skeyid: bytes | bytearray, g_xy: bytes, cky_i: bytes, cky_r: bytes
) -> Skeyid:
    """SKEYID_d, SKEYID_a and SKEYID_e from SKEYID (any authentication method).

    Args:
        g_xy: the DH shared secret, left-padded to the group size.
        cky_i, cky_r: the initiator and responder cookies (8 bytes each).
    """
    # the three chained prf calls in one Rust call (``_core.skeyid_family``)
    skeyid_d, skeyid_a, skeyid_e = _core_skeyid_family(
        hash_name, skeyid if type(skeyid) is bytes else bytes(skeyid), bytes(g_xy), bytes(cky_i), bytes(cky_r))
    return Skeyid(bytearray(skeyid), skeyid_d, skeyid_a, skeyid_e)


def derive_skeyid(
    hash_name: str,
    ni: bytes,
    nr: bytes,
    g_xy: bytes,
    cky_i: bytes,
    cky_r: bytes,
    psk: bytes | None = None,
) -> Skeyid:
    """The SKEYID family for pre-shared-key (``psk`` given) or signature
    authentication (``psk`` None).

    Args:
        ni, nr: the nonce payload bodies Ni_b and Nr_b.
        g_xy: the DH shared secret, left-padded to the group size.
    """
    if psk is None:
        skeyid = _prf(hash_name, ni + nr, g_xy)
    else:
        skeyid = _prf(hash_name, psk, ni + nr)
    return derive_skeyid_family(hash_name, skeyid, g_xy, cky_i, cky_r)


def skeyid_pke(hash_name: str, ni: bytes, nr: bytes, cky_i: bytes, cky_r: bytes) -> bytes:
    """SKEYID for public-key encryption authentication (RFC 2409 5.2 and 5.3):
    prf(hash(Ni_b | Nr_b), CKY-I | CKY-R)."""
    return _prf(hash_name, digest(hash_name, ni + nr), cky_i + cky_r)


def encryption_key(hash_name: str, skeyid_e: bytes | bytearray, key_size: int) -> bytearray:
    """The payload cipher key from SKEYID_e (RFC 2409 appendix B).

    Truncates SKEYID_e when it is long enough; otherwise expands it as
    Ka = K1 | K2 | ..., K1 = prf(SKEYID_e, 0x00), Kn = prf(SKEYID_e, Kn-1), and
    takes the first ``key_size`` bytes (3DES or AES-192/256 with SHA-1, anything
    over 16 bytes with MD5).
    """
    if key_size < 0:
        raise CryptoError(f"negative key size {key_size}")
    if len(skeyid_e) >= key_size:
        return bytearray(skeyid_e[:key_size])
    blocks: list[bytes] = []
    block = _prf(hash_name, skeyid_e, b"\x00")
    blocks.append(block)
    total = len(block)
    while total < key_size:
        block = _prf(hash_name, skeyid_e, block)
        blocks.append(block)
        total += len(block)
    return bytearray(b"".join(blocks)[:key_size])


def phase1_iv(hash_name: str, g_xi: bytes, g_xr: bytes, block_size: int) -> bytes:
    """The IV of the first encrypted phase 1 message: hash(g^xi | g^xr), truncated."""
    return digest(hash_name, g_xi + g_xr)[:block_size]


def phase2_iv(hash_name: str, last_phase1_block: bytes, message_id: int, block_size: int) -> bytes:
    """The first IV of a phase 2 or informational exchange:
    hash(last phase 1 CBC block | M-ID), truncated (RFC 2409 appendix B)."""
    return digest(hash_name, last_phase1_block + _message_id(message_id))[:block_size]


def hash_i(
    hash_name: str,
    skeyid: bytes | bytearray,
    g_xi: bytes,
    g_xr: bytes,
    cky_i: bytes,
    cky_r: bytes,
    sai_b: bytes,
    idii_b: bytes,
) -> bytes:
    """HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b).

    ``sai_b`` is the initiator's SA payload body from message 1 and ``idii_b`` the
    initiator's ID payload body, both without their generic payload headers.
    """
    return _prf(hash_name, skeyid, g_xi + g_xr + cky_i + cky_r + sai_b + idii_b)


def hash_r(
    hash_name: str,
    skeyid: bytes | bytearray,
    g_xi: bytes,
    g_xr: bytes,
    cky_i: bytes,
    cky_r: bytes,
    sai_b: bytes,
    idir_b: bytes,
) -> bytes:
    """HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b).

    Takes its arguments in the same order as :func:`hash_i` and swaps them itself;
    ``sai_b`` is still the *initiator's* SA body.
    """
    return _prf(hash_name, skeyid, g_xr + g_xi + cky_r + cky_i + sai_b + idir_b)


def qm_hash1(hash_name: str, skeyid_a: bytes | bytearray, message_id: int, after_hash: bytes) -> bytes:
    """Quick Mode HASH(1) = prf(SKEYID_a, M-ID | SA | Ni [| KE] [| IDci | IDcr]).

    ``after_hash`` is every payload after the HASH payload, exactly as sent,
    generic headers included.
    """
    return _prf(hash_name, skeyid_a, _message_id(message_id) + after_hash)


def qm_hash2(
    hash_name: str, skeyid_a: bytes | bytearray, message_id: int, ni_b: bytes, after_hash: bytes
) -> bytes:
    """Quick Mode HASH(2) = prf(SKEYID_a, M-ID | Ni_b | SA | Nr [| KE] [| IDci | IDcr])."""
    return _prf(hash_name, skeyid_a, _message_id(message_id) + ni_b + after_hash)


def qm_hash3(hash_name: str, skeyid_a: bytes | bytearray, message_id: int, ni_b: bytes, nr_b: bytes) -> bytes:
    """Quick Mode HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)."""
    return _prf(hash_name, skeyid_a, b"\x00" + _message_id(message_id) + ni_b + nr_b)


def informational_hash(hash_name: str, skeyid_a: bytes | bytearray, message_id: int, after_hash: bytes) -> bytes:
    """Informational exchange HASH(1) = prf(SKEYID_a, M-ID | N/D) (RFC 2409 5.7)."""
    return _prf(hash_name, skeyid_a, _message_id(message_id) + after_hash)


def keymat(
    hash_name: str,
    skeyid_d: bytes | bytearray,
    protocol_id: int,
    spi: bytes,
    ni_b: bytes,
    nr_b: bytes,
    length: int,
    g_qm_xy: bytes | bytearray | None = None,
) -> bytearray:
    """KEYMAT for one IPsec SA in one direction (RFC 2409 section 5.5), in a bytearray
    the caller wipes once the keys are cut from it.

    Args:
        protocol_id: 2 = AH, 3 = ESP, 4 = IPCOMP (RFC 2407 section 4.4.1).
        spi: the SPI chosen by the receiver of this SA (4 bytes for ESP/AH).
        length: bytes wanted (encryption key first, then integrity key).
        g_qm_xy: the Quick Mode DH secret with PFS, else None.
    """
    if not 0 <= protocol_id <= 255:
        raise CryptoError(f"protocol ID {protocol_id} does not fit one octet")
    if length < 0:
        raise CryptoError(f"negative KEYMAT length {length}")
    seed = bytes(g_qm_xy or b"") + bytes((protocol_id,)) + spi + ni_b + nr_b
    # the whole chain in one Rust call (at most 4096 bytes: CryptoError above, which no suite asks)
    return bytearray(_core_prf_expand(hash_name, skeyid_d if type(skeyid_d) is bytes else bytes(skeyid_d),
                                      seed, length))


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


@functools.lru_cache(maxsize=4096)  # pure; a handshake packs the same two addresses several times
def packed_address(address: str) -> bytes:
    """The 4 or 16 network-order bytes of an IP address (ValueError if it is not one)."""
    # dotted-quad IPv4 without ipaddress objects (every handshake packs its addresses, and a
    # gateway's peers outnumber the cache): one match of the canonical form (four decimal
    # octets, no leading zeros); anything else (IPv6, garbage) goes the strict way
    if _DOTTED_QUAD.fullmatch(address):
        return bytes(map(int, address.split(".")))
    return ipaddress.ip_address(address).packed


def nat_d(hash_name: str, cky_i: bytes, cky_r: bytes, address: str, port: int) -> bytes:
    """NAT-D payload data (RFC 3947 section 3.2): hash(CKY-I | CKY-R | IP | port),
    with the IPv4 (4 bytes) or IPv6 (16 bytes) address and a 2-byte port."""
    packed = packed_address(address)
    if not 0 <= port <= 0xFFFF:
        raise CryptoError(f"port {port} out of range")
    return digest(hash_name, cky_i + cky_r + packed + port.to_bytes(2, "big"))


def cipher_for(encryption_algorithm: int, key_length_bits: int | None) -> tuple[str, int, int]:
    """``(cipher name, key size in bytes, block size)`` of an IKE phase 1
    Encryption Algorithm attribute (RFC 2409 appendix A) and Key Length attribute.

    1 = DES-CBC, 5 = 3DES-CBC, 7 = AES-CBC with 128, 192 or 256-bit keys; AES without
    a Key Length attribute is AES-128, as strongSwan does.

    Raises:
        NoProposalChosen: the algorithm is not supported.
        AttributesNotSupported: the key length does not fit the algorithm.
    """
    if encryption_algorithm == 1:
        name, bits = "des-cbc", 64
    elif encryption_algorithm == 5:
        name, bits = "3des-cbc", 192
    elif encryption_algorithm == 7:
        bits = 128 if key_length_bits is None else key_length_bits
        if bits not in (128, 192, 256):
            raise AttributesNotSupported(f"AES key length {bits} not supported")
        name = f"aes{bits}-cbc"
        return name, bits // 8, 16
    else:
        raise NoProposalChosen(f"encryption algorithm {encryption_algorithm} not supported")
    if key_length_bits is not None and key_length_bits != bits:
        raise AttributesNotSupported(f"key length {key_length_bits} for a fixed {bits}-bit cipher")
    return name, bits // 8, 8


def pad(plaintext: bytes, block_size: int) -> bytes:
    """Zero bytes up to the next block boundary (nothing when already aligned)."""
    if block_size <= 0:
        raise CryptoError(f"block size {block_size} must be positive")
    return plaintext + bytes(-len(plaintext) % block_size)


class CryptoState:
    """The payload cipher and the per-Message-ID CBC IV chains of one ISAKMP SA.

    M-ID 0 is the phase 1 chain, started at ``phase1_iv``. Any other M-ID starts,
    when first used, at ``phase2_iv(hash, current IV of M-ID 0, M-ID)``; after Main
    Mode message 6 that IV is the last ciphertext block of phase 1.

    Sending: :meth:`encrypt` pads, encrypts and advances the chain. Receiving:
    :meth:`decrypt` returns the plaintext and the would-be next IV without touching
    the chain; the caller validates the message (payload chain, HASH) and then
    calls :meth:`commit`. A retransmission is sent again as the same bytes, never
    re-encrypted. :meth:`wipe` ends it: the key is zeroed, the Rust cipher dropped
    (which zeroizes its key schedule) and any later use raises CryptoError.

    The Rust cipher (its key schedule: about 0.7 KiB outside Python's heap for AES) is
    made from the key when a message is sealed or opened and dropped again when no
    phase 2 or informational exchange is left running (:meth:`forget`): an idle SA, most
    of the 100,000 a gateway holds, keeps only the key. Making it again costs far less
    than one HMAC.
    """

    # the phase 1 chain in a slot of its own, the others in a dict made only while a phase 2
    # or informational exchange runs (an established SA holds 100,000 of these in a gateway)
    __slots__ = ("_cipher", "_name", "_hash_name", "_block_size", "_iv0", "_ivs", "_key")

    def __init__(self, cipher_name: str, key: bytes | bytearray, hash_name: str, phase1_iv: bytes) -> None:
        _check_hash(hash_name)
        cipher = Cipher(cipher_name, bytes(key))
        self._cipher: Cipher | None = cipher
        self._name = _shared_name(cipher.name)
        # the cipher is made again from it; also read by export_state (the SA store), never in
        # a repr; a bytearray given is taken over. Empty once wiped.
        self._key = key if isinstance(key, bytearray) else bytearray(key)
        self._hash_name = hash_name
        self._block_size = cipher.block_size
        if len(phase1_iv) != self._block_size:
            raise CryptoError(f"phase 1 IV must be {self._block_size} bytes")
        self._iv0 = bytes(phase1_iv)
        self._ivs: dict[int, bytes] | None = None

    def _live(self) -> Cipher:
        cipher = self._cipher
        if cipher is None:
            if not self._key:
                raise CryptoError("the keys of this SA were wiped")
            cipher = self._cipher = Cipher(self._name, bytes(self._key))
        return cipher

    def wipe(self) -> None:
        """Zero the key and drop the cipher; the state cannot be used afterwards."""
        wipe(self._key)
        self._key = _EMPTY
        self._cipher = None

    @property
    def cipher_name(self) -> str:
        """The cipher's name, e.g. ``aes128-cbc``."""
        return self._name

    @property
    def block_size(self) -> int:
        """The cipher's block size in bytes."""
        return self._block_size

    def _current(self, message_id: int) -> bytes:
        if message_id == 0:
            return self._iv0
        ivs = self._ivs
        iv = ivs.get(message_id) if ivs is not None else None
        if iv is None:
            iv = phase2_iv(self._hash_name, self._iv0, message_id, self._block_size)
        return iv

    def _set(self, message_id: int, iv: bytes) -> None:
        if message_id == 0:
            self._iv0 = iv
        elif self._ivs is None:
            self._ivs = {message_id: iv}
        else:
            self._ivs[message_id] = iv

    def iv(self, message_id: int) -> bytes:
        """The IV the next message of ``message_id`` uses. For an M-ID not used yet
        this counts as its first use: its start IV is fixed now."""
        if not 0 <= message_id <= _MAX_MESSAGE_ID:
            _message_id(message_id)  # raises InvalidMessageId
        iv = self._current(message_id)
        self._set(message_id, iv)
        return iv

    def encrypt(self, message_id: int, plaintext: bytes) -> bytes:
        """Zero-pads and encrypts ``plaintext`` (the payloads after the ISAKMP
        header) with the current IV of ``message_id``, then advances that chain to
        the last ciphertext block."""
        if not plaintext:
            self.iv(message_id)  # fixes the chain's start as a first use does, then refuses
            raise CryptoError("nothing to encrypt")
        if not 0 <= message_id <= _MAX_MESSAGE_ID:
            _message_id(message_id)  # raises InvalidMessageId
        size = self._block_size
        ciphertext = self._live().encrypt(self._current(message_id), plaintext + bytes(-len(plaintext) % size))
        self._set(message_id, ciphertext[-size:])  # zero padding inline (``pad``)
        return ciphertext

    def decrypt(self, message_id: int, ciphertext: bytes) -> tuple[bytes, bytes]:
        """Decrypts with the current IV of ``message_id`` and returns
        ``(plaintext, next_iv)``; the chain is NOT advanced (see :meth:`commit`).
        The plaintext keeps its padding: the payload chain tells where it ends.

        Raises:
            PayloadMalformed: ``ciphertext`` is empty or not whole blocks.
        """
        if not 0 <= message_id <= _MAX_MESSAGE_ID:
            _message_id(message_id)  # raises InvalidMessageId
        size = self._block_size
        if not ciphertext or len(ciphertext) % size:
            raise PayloadMalformed(f"encrypted body of {len(ciphertext)} bytes is not whole {size}-byte blocks")
        plaintext = self._live().decrypt(self._current(message_id), ciphertext)
        return plaintext, ciphertext[-size:]

    def advance(self, message_id: int, next_iv: bytes) -> bytes:
        """:meth:`iv` then :meth:`commit` in one step: returns the IV the chain had (to
        :meth:`commit` back if the message turns out unacceptable) and moves it to ``next_iv``."""
        if not 0 <= message_id <= _MAX_MESSAGE_ID:
            _message_id(message_id)  # raises InvalidMessageId
        if len(next_iv) != self._block_size:
            raise CryptoError(f"IV must be {self._block_size} bytes")
        previous = self._current(message_id)
        self._set(message_id, bytes(next_iv))
        return previous

    def commit(self, message_id: int, next_iv: bytes) -> None:
        """Advances the chain of ``message_id`` to ``next_iv`` (from :meth:`decrypt`)
        once the received message has been validated."""
        if not 0 <= message_id <= _MAX_MESSAGE_ID:
            _message_id(message_id)  # raises InvalidMessageId
        if len(next_iv) != self._block_size:
            raise CryptoError(f"IV must be {self._block_size} bytes")
        self._set(message_id, bytes(next_iv))

    def export_state(self) -> tuple[str, bytearray, bytes]:
        """(cipher name, key, phase 1 IV chain) for the SA store (``ikecore.engine.persist``): what
        rebuilds this state after a restart. Contains the key (the state's own buffer, not a
        copy): handle as a secret."""
        if not self._key:
            raise CryptoError("the keys of this SA were wiped")
        return self._name, self._key, self._iv0

    def release(self) -> None:
        """Drop the key schedule while no exchange runs (the SA is established and idle); the
        next message sealed or opened makes it again from the key."""
        if self._ivs is None:
            self._cipher = None

    def forget(self, message_id: int) -> None:
        """Drops the chain of a finished phase 2 or informational exchange, and the key
        schedule once no such exchange is left (the next message makes it again)."""
        if message_id == 0:
            raise CryptoError("the phase 1 chain (M-ID 0) cannot be forgotten")
        ivs = self._ivs
        if ivs is not None:
            ivs.pop(message_id, None)
            if not ivs:
                self._ivs = None
        self.release()

    def __repr__(self) -> str:
        return f"CryptoState({self._name!r}, {self._hash_name!r}, chains={1 + len(self._ivs or ())})"


def keylog_line(cky_i: bytes, enc_key: bytes | bytearray) -> str:
    """A line of Wireshark's IKEv1 decryption table: ``<16 hex CKY-I>,<hex key>``."""
    if len(cky_i) != 8:
        raise CryptoError("the initiator cookie must be 8 bytes")
    return f"{cky_i.hex()},{enc_key.hex()}"
