"""ISAKMP wire codec: the Rust classes of ``ikecore._core`` plus the
RFC number spaces as IntEnums.

Parsing and encoding happen in Rust (``rust/wire/``); this module only re-exports
them and adds names for numbers (RFC 2407, 2408, 2409, 3947, 3706), the
NAT-T framing function :func:`split_udp_encap` (RFC 3948) and the framing of a datagram
into ISAKMP messages.

Framing: ``parse`` takes exactly one message (its header Length must equal the bytes
given). A datagram may carry more than one: some stacks send Main Mode message 6 and an
encrypted Informational in one datagram. :func:`split_messages` cuts a datagram into its
complete messages by their header Length (RFC 2408 section 3.1), in order, and says how
many bytes are left after the last one; :func:`header_problem` checks the header fields
that make a message invalid whatever its cookies (RFC 2408 section 5.1: version, exchange
type, flags). The non-ESP marker (RFC 3948 section 2.2) exists only off port 500:
:func:`marker_allowed`.

Example::

    msg = parse(datagram)
    for payload in msg.payloads:
        if isinstance(payload, SaPayload):
            ...
"""

from __future__ import annotations

import struct
from enum import IntEnum

from ikecore._core import (
    Attribute,
    CertPayload,
    CrPayload,
    DeletePayload,
    HashPayload,
    IdPayload,
    KePayload,
    Message,
    NatDPayload,
    NatOaPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    SigPayload,
    Transform,
    UnknownPayload,
    VendorIdPayload,
    encode_payloads,
    parse,
    parse_many,
    parse_payloads,
)

__all__ = [
    "Attribute", "CertPayload", "CrPayload", "DeletePayload", "HashPayload", "IdPayload",
    "KePayload", "Message", "NatDPayload", "NatOaPayload", "NoncePayload", "NotifyPayload",
    "Payload", "Proposal", "SaPayload", "SigPayload", "Transform", "UnknownPayload",
    "VendorIdPayload", "encode_payloads", "parse", "parse_many", "parse_payloads",
    "split_udp_encap", "PayloadType", "ExchangeType", "Flag", "NotifyType", "ProtocolId",
    "IdType", "OakleyAttribute", "IpsecAttribute", "EncryptionAlgorithm", "HashAlgorithm",
    "AuthMethod", "LifeType", "EspTransform", "AuthAlgorithm", "EncapsulationMode",
    "DOI_IPSEC", "SIT_IDENTITY_ONLY", "TRANSFORM_KEY_IKE", "NON_ESP_MARKER", "VENDOR_IDS",
    "VID_DPD", "VID_NAT_T_RFC3947", "HEADER_LEN", "vendor_id_name", "split_messages", "framing_problem",
    "header_problem", "marker_allowed", "VALID_EXCHANGE_TYPES", "IKE_PORT",
]

#: Size of the ISAKMP header (RFC 2408 section 3.1).
HEADER_LEN = 28
#: IPsec Domain of Interpretation (RFC 2407 section 4.2).
DOI_IPSEC = 1
#: IPsec situation bit SIT_IDENTITY_ONLY (RFC 2407 section 4.2).
SIT_IDENTITY_ONLY = 1
#: Transform ID of an ISAKMP proposal (RFC 2407 section 4.4.1).
TRANSFORM_KEY_IKE = 1
#: Prefix of IKE datagrams on the NAT-T port (RFC 3948 section 2.2).
NON_ESP_MARKER = b"\0\0\0\0"
#: The IKE port: datagrams to or from it never carry a non-ESP marker (RFC 3948 section 2.2).
IKE_PORT = 500


class PayloadType(IntEnum):
    """Next Payload Types (RFC 2408 section 3.1, RFC 3947; drafts 130/131)."""

    NONE = 0
    SA = 1
    PROPOSAL = 2
    TRANSFORM = 3
    KE = 4
    ID = 5
    CERT = 6
    CR = 7
    HASH = 8
    SIG = 9
    NONCE = 10
    N = 11
    D = 12
    VID = 13
    NAT_D = 20
    NAT_OA = 21
    NAT_D_DRAFT = 130
    NAT_OA_DRAFT = 131


class ExchangeType(IntEnum):
    """Exchange Types (RFC 2408 section 3.1, RFC 2409 section 9)."""

    BASE = 1
    IDENTITY_PROTECTION = 2
    AUTH_ONLY = 3
    AGGRESSIVE = 4
    INFORMATIONAL = 5
    TRANSACTION = 6
    QUICK_MODE = 32
    NEW_GROUP_MODE = 33


class Flag(IntEnum):
    """ISAKMP header flags (RFC 2408 section 3.1)."""

    ENCRYPTION = 1
    COMMIT = 2
    AUTH_ONLY = 4


class NotifyType(IntEnum):
    """Notify Message Types (RFC 2408 section 3.14.1, RFC 2407 4.6.3, RFC 3706)."""

    INVALID_PAYLOAD_TYPE = 1
    DOI_NOT_SUPPORTED = 2
    SITUATION_NOT_SUPPORTED = 3
    INVALID_COOKIE = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_MINOR_VERSION = 6
    INVALID_EXCHANGE_TYPE = 7
    INVALID_FLAGS = 8
    INVALID_MESSAGE_ID = 9
    INVALID_PROTOCOL_ID = 10
    INVALID_SPI = 11
    INVALID_TRANSFORM_ID = 12
    ATTRIBUTES_NOT_SUPPORTED = 13
    NO_PROPOSAL_CHOSEN = 14
    BAD_PROPOSAL_SYNTAX = 15
    PAYLOAD_MALFORMED = 16
    INVALID_KEY_INFORMATION = 17
    INVALID_ID_INFORMATION = 18
    INVALID_CERT_ENCODING = 19
    INVALID_CERTIFICATE = 20
    CERT_TYPE_UNSUPPORTED = 21
    INVALID_CERT_AUTHORITY = 22
    INVALID_HASH_INFORMATION = 23
    AUTHENTICATION_FAILED = 24
    INVALID_SIGNATURE = 25
    ADDRESS_NOTIFICATION = 26
    NOTIFY_SA_LIFETIME = 27
    CERTIFICATE_UNAVAILABLE = 28
    UNSUPPORTED_EXCHANGE_TYPE = 29
    UNEQUAL_PAYLOAD_LENGTHS = 30
    CONNECTED = 16384
    RESPONDER_LIFETIME = 24576
    REPLAY_STATUS = 24577
    INITIAL_CONTACT = 24578
    R_U_THERE = 36136
    R_U_THERE_ACK = 36137


class ProtocolId(IntEnum):
    """Protocol IDs (RFC 2407 section 4.4.1)."""

    ISAKMP = 1
    IPSEC_AH = 2
    IPSEC_ESP = 3
    IPCOMP = 4


class IdType(IntEnum):
    """Identification types (RFC 2407 section 4.6.2.1)."""

    IPV4_ADDR = 1
    FQDN = 2
    USER_FQDN = 3
    IPV4_ADDR_SUBNET = 4
    IPV6_ADDR = 5
    IPV6_ADDR_SUBNET = 6
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11


class OakleyAttribute(IntEnum):
    """Phase 1 SA attribute classes (RFC 2409 Appendix A)."""

    ENCRYPTION_ALGORITHM = 1
    HASH_ALGORITHM = 2
    AUTHENTICATION_METHOD = 3
    GROUP_DESCRIPTION = 4
    GROUP_TYPE = 5
    GROUP_PRIME = 6
    GROUP_GENERATOR_ONE = 7
    GROUP_GENERATOR_TWO = 8
    GROUP_CURVE_A = 9
    GROUP_CURVE_B = 10
    LIFE_TYPE = 11
    LIFE_DURATION = 12
    PRF = 13
    KEY_LENGTH = 14
    FIELD_SIZE = 15
    GROUP_ORDER = 16


class IpsecAttribute(IntEnum):
    """Phase 2 SA attribute classes (RFC 2407 section 4.5)."""

    SA_LIFE_TYPE = 1
    SA_LIFE_DURATION = 2
    GROUP_DESCRIPTION = 3
    ENCAPSULATION_MODE = 4
    AUTHENTICATION_ALGORITHM = 5
    KEY_LENGTH = 6
    KEY_ROUNDS = 7
    COMPRESS_DICTIONARY_SIZE = 8
    COMPRESS_PRIVATE_ALGORITHM = 9


class EncryptionAlgorithm(IntEnum):
    """Phase 1 encryption algorithms (RFC 2409 Appendix A, RFC 3602)."""

    DES_CBC = 1
    IDEA = 2
    BLOWFISH = 3
    RC5 = 4
    TRIPLE_DES_CBC = 5
    CAST = 6
    AES_CBC = 7


class HashAlgorithm(IntEnum):
    """Phase 1 hash algorithms (RFC 2409 Appendix A, RFC 4868 IANA registry)."""

    MD5 = 1
    SHA = 2
    TIGER = 3
    SHA2_256 = 4
    SHA2_384 = 5
    SHA2_512 = 6


class AuthMethod(IntEnum):
    """Phase 1 authentication methods (RFC 2409 Appendix A, RFC 4754, XAUTH draft)."""

    PRE_SHARED_KEY = 1
    DSS = 2
    RSA_SIG = 3
    RSA_ENC = 4
    RSA_REV_ENC = 5
    ECDSA_256 = 9
    ECDSA_384 = 10
    ECDSA_521 = 11
    XAUTH_INIT_PSK = 65001
    XAUTH_RESP_PSK = 65002
    XAUTH_INIT_DSS = 65003
    XAUTH_RESP_DSS = 65004
    XAUTH_INIT_RSA = 65005
    XAUTH_RESP_RSA = 65006


class LifeType(IntEnum):
    """Life types (RFC 2409 Appendix A, RFC 2407 section 4.5)."""

    SECONDS = 1
    KILOBYTES = 2


class EspTransform(IntEnum):
    """IPsec ESP transform IDs (RFC 2407 section 4.4.4, RFC 3602)."""

    DES = 2
    TRIPLE_DES = 3
    NULL = 11
    AES_CBC = 12


class AuthAlgorithm(IntEnum):
    """IPsec authentication algorithms (RFC 2407 section 4.5, RFC 4868)."""

    HMAC_MD5 = 1
    HMAC_SHA = 2
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class EncapsulationMode(IntEnum):
    """Encapsulation modes (RFC 2407 section 4.5, RFC 3947; drafts 61443/61444)."""

    TUNNEL = 1
    TRANSPORT = 2
    UDP_TUNNEL = 3
    UDP_TRANSPORT = 4
    UDP_TUNNEL_DRAFT = 61443
    UDP_TRANSPORT_DRAFT = 61444


#: Vendor ID of Dead Peer Detection (RFC 3706).
VID_DPD = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")
#: Vendor ID of RFC 3947 NAT traversal.
VID_NAT_T_RFC3947 = bytes.fromhex("4a131c81070358455c5728f20e95452f")

#: Well-known vendor IDs (ike-scan ike-vendor-ids, libreswan vendorid.c): prefix -> name.
#: Some IDs (MS NT5) carry a version after the prefix; match with :func:`vendor_id_name`.
VENDOR_IDS: dict[bytes, str] = {
    VID_NAT_T_RFC3947: "RFC 3947 NAT-T",
    bytes.fromhex("90cb80913ebb696e086381b5ec427b1f"): "draft-ietf-ipsec-nat-t-ike-02\\n",
    bytes.fromhex("cd60464335df21f87cfdb2fc68b6a448"): "draft-ietf-ipsec-nat-t-ike-02",
    bytes.fromhex("7d9419a65310ca6f2c179d9215529d56"): "draft-ietf-ipsec-nat-t-ike-03",
    bytes.fromhex("09002689dfd6b712"): "XAUTH",
    bytes.fromhex("12f5f28c457168a9702d9fe274cc0100"): "Cisco Unity",
    bytes.fromhex("4048b7d56ebce88525e7de7f00d6c2d3"): "IKE fragmentation",
    bytes.fromhex("1e2b516905991c7d7c96fcbfb587e461"): "MS NT5 ISAKMPOAKLEY",
    bytes.fromhex("26244d38eddb61b3172a36e3d0cfb819"): "MS Initial-Contact",
    VID_DPD: "Dead Peer Detection v1.0",
}


def vendor_id_name(vid: bytes) -> str | None:
    """Name of a well-known vendor ID (exact match or known prefix), else None."""
    name = VENDOR_IDS.get(vid)
    if name is not None:
        return name
    for prefix, prefix_name in VENDOR_IDS.items():
        if vid.startswith(prefix):
            return prefix_name
    return None


def split_udp_encap(data: bytes) -> tuple[str, bytes]:
    """Classify a datagram received on the NAT-T port (RFC 3948 section 2).

    Returns ``("ike", message)`` with the 4-byte non-ESP marker removed,
    ``("keepalive", b"")`` for the single 0xFF NAT-keepalive byte, and
    ``("esp", data)`` for anything else (an ESP packet, SPI never zero).
    """
    if data == b"\xff":
        return ("keepalive", b"")
    if data[:4] == NON_ESP_MARKER:
        return ("ike", data[4:])
    return ("esp", data)


def marker_allowed(local_port: int, remote_port: int) -> bool:
    """Whether a datagram between these ports may carry the non-ESP marker (RFC 3948):
    only when neither is port 500, where four zero bytes are the start of a cookie."""
    return local_port != IKE_PORT and remote_port != IKE_PORT


_length_at = struct.Struct(">I").unpack_from   # the header's Length field (offset 24)


def split_messages(data: bytes) -> tuple[list[bytes], int]:
    """The complete ISAKMP messages of a datagram (without a non-ESP marker), in order,
    and the number of bytes left after the last one.

    A message is taken while a whole header remains and its Length is at least a header
    and at most what remains. ``([], len(data))`` when the first header is short or its
    Length does not fit (see :func:`framing_problem`); the usual datagram is
    ``([data], 0)``.
    """
    size = len(data)
    if size >= HEADER_LEN and _length_at(data, 24)[0] == size:
        return [data], 0
    messages: list[bytes] = []
    pos = 0
    while size - pos >= HEADER_LEN:     # bounded: every message is at least a header long
        length = _length_at(data, pos + 24)[0]
        if length < HEADER_LEN or length > size - pos:
            break
        messages.append(data[pos:pos + length])
        pos += length
    return messages, size - pos


def framing_problem(data: bytes) -> tuple[str, NotifyType]:
    """Why a datagram holds no complete ISAKMP message (:func:`split_messages` found none):
    the reason and the Notify it earns."""
    if len(data) < HEADER_LEN:
        return (f"datagram of {len(data)} bytes is shorter than an ISAKMP header", NotifyType.PAYLOAD_MALFORMED)
    length = int.from_bytes(data[24:28], "big")
    return (f"ISAKMP header Length is {length} but the datagram has {len(data)} bytes",
            NotifyType.UNEQUAL_PAYLOAD_LENGTHS)


#: Exchange types a header may carry: ISAKMP's (1-5, RFC 2408 section 3.1), Transaction
#: (6, Mode Config), Quick Mode and New Group Mode (32, 33, RFC 2409) and private use
#: (240-255); the other values are reserved.
VALID_EXCHANGE_TYPES = frozenset((1, 2, 3, 4, 5, 6, 32, 33, *range(240, 256)))
_RESERVED_FLAGS = 0xFF & ~(Flag.ENCRYPTION | Flag.COMMIT | Flag.AUTH_ONLY)


def header_problem(message: bytes) -> tuple[str, NotifyType] | None:
    """The first invalid field of a message's ISAKMP header (RFC 2408 section 5.1), as
    (reason, Notify), or None. ``message`` is at least a header long; its Length was
    checked by :func:`split_messages`."""
    version = message[17]
    if version >> 4 != 1:
        return (f"ISAKMP major version {version >> 4} is not supported (version octet {version:#04x})",
                NotifyType.INVALID_MAJOR_VERSION)
    if message[18] not in VALID_EXCHANGE_TYPES:
        return (f"ISAKMP header: exchange type {message[18]} is reserved", NotifyType.INVALID_EXCHANGE_TYPE)
    if message[19] & _RESERVED_FLAGS:
        return (f"ISAKMP header: flags {message[19]:#04x} set reserved bits", NotifyType.INVALID_FLAGS)
    return None
