"""Names of IKEv1 numbers as people read them: ``modp2048 (14)``, ``AES-CBC (7)``,
``SHA2-256 (4)``, ``PSK (1)``, ``HMAC-SHA2-256 (5)``.

The words follow ike-scan (``Hash=SHA2-256``, ``Auth=PSK``, ``Group=14:modp2048``) and
strongSwan's proposal keywords for the groups (``modp2048``, ``ecp256``, ``ecp256bp``);
the numbers are the IANA "IPsec DOI" and "IKE attributes" registries (RFC 2407 section
4.4.4 and 4.5, RFC 2409 appendix A, RFC 3526, RFC 4753, RFC 5114, RFC 5903, RFC 6932,
RFC 4868, RFC 4106, RFC 4309, RFC 3686). Every name is followed by its number in
parentheses, and a number without a name reads ``unknown (N)``.
"""

from __future__ import annotations

from ikecore import wire

__all__ = ["named", "attribute_value_name", "transform_id_name", "GROUPS"]

#: Diffie-Hellman groups (IKE attribute 4, IPsec attribute 3).
GROUPS: dict[int, str] = {
    1: "modp768", 2: "modp1024", 3: "ec2n155", 4: "ec2n185", 5: "modp1536",
    14: "modp2048", 15: "modp3072", 16: "modp4096", 17: "modp6144", 18: "modp8192",
    19: "ecp256", 20: "ecp384", 21: "ecp521", 22: "modp1024s160", 23: "modp2048s224",
    24: "modp2048s256", 25: "ecp192", 26: "ecp224", 27: "ecp224bp", 28: "ecp256bp",
    29: "ecp384bp", 30: "ecp512bp", 31: "curve25519", 32: "curve448",
}

#: IKE phase 1 encryption algorithms (attribute 1).
IKE_ENCRYPTION: dict[int, str] = {
    1: "DES-CBC", 2: "IDEA-CBC", 3: "Blowfish-CBC", 4: "RC5-R16-B64-CBC", 5: "3DES-CBC",
    6: "CAST-CBC", 7: "AES-CBC", 8: "Camellia-CBC",
}

#: IKE phase 1 hash algorithms (attribute 2) and PRFs (attribute 13).
IKE_HASH: dict[int, str] = {1: "MD5", 2: "SHA1", 3: "Tiger", 4: "SHA2-256", 5: "SHA2-384", 6: "SHA2-512"}

#: IKE phase 1 authentication methods (attribute 3; XAUTH and hybrid from the drafts).
IKE_AUTH: dict[int, str] = {
    1: "PSK", 2: "DSS", 3: "RSA-Sig", 4: "RSA-Enc", 5: "RSA-RevEnc", 6: "ElGamal-Enc",
    7: "ElGamal-RevEnc", 8: "ECDSA-Sig", 9: "ECDSA-256", 10: "ECDSA-384", 11: "ECDSA-521",
    64221: "HybridInitRSA", 64222: "HybridRespRSA", 64223: "HybridInitDSS", 64224: "HybridRespDSS",
    65001: "XAUTH-InitPSK", 65002: "XAUTH-RespPSK", 65003: "XAUTH-InitDSS", 65004: "XAUTH-RespDSS",
    65005: "XAUTH-InitRSA", 65006: "XAUTH-RespRSA", 65007: "XAUTH-InitRSAEnc", 65008: "XAUTH-RespRSAEnc",
    65009: "XAUTH-InitRSARevEnc", 65010: "XAUTH-RespRSARevEnc",
}

#: IKE group types (attribute 5).
GROUP_TYPES: dict[int, str] = {1: "MODP", 2: "ECP", 3: "EC2N"}

#: Life types (IKE attribute 11, IPsec attribute 1).
LIFE_TYPES: dict[int, str] = {1: "Seconds", 2: "Kilobytes"}

#: ESP transform IDs (RFC 2407 section 4.4.4 and the IANA registry).
ESP_TRANSFORMS: dict[int, str] = {
    1: "DES-IV64", 2: "DES", 3: "3DES", 4: "RC5", 5: "IDEA", 6: "CAST", 7: "Blowfish", 8: "3IDEA",
    9: "DES-IV32", 10: "RC4", 11: "NULL", 12: "AES-CBC", 13: "AES-CTR", 14: "AES-CCM-8",
    15: "AES-CCM-12", 16: "AES-CCM-16", 18: "AES-GCM-8", 19: "AES-GCM-12", 20: "AES-GCM-16",
    22: "Camellia-CBC", 23: "NULL-AES-GMAC",
}

#: AH transform IDs (RFC 2407 section 4.4.3).
AH_TRANSFORMS: dict[int, str] = {2: "AH-MD5", 3: "AH-SHA", 4: "AH-DES", 5: "AH-SHA2-256", 6: "AH-SHA2-384",
                                 7: "AH-SHA2-512"}

#: IPsec authentication algorithms (IPsec attribute 5).
IPSEC_AUTH: dict[int, str] = {
    1: "HMAC-MD5", 2: "HMAC-SHA1", 3: "DES-MAC", 4: "KPDK", 5: "HMAC-SHA2-256", 6: "HMAC-SHA2-384",
    7: "HMAC-SHA2-512", 8: "HMAC-RIPEMD", 9: "AES-XCBC-MAC", 10: "SIG-RSA", 11: "AES-128-GMAC",
    12: "AES-192-GMAC", 13: "AES-256-GMAC",
}

#: Encapsulation modes (IPsec attribute 4; RFC 3947 and the NAT-T draft numbers).
ENCAPSULATION: dict[int, str] = {
    1: "Tunnel", 2: "Transport", 3: "UDP-Tunnel", 4: "UDP-Transport",
    61443: "UDP-Tunnel-draft", 61444: "UDP-Transport-draft",
}

_IKE_VALUES: dict[int, dict[int, str]] = {
    wire.OakleyAttribute.ENCRYPTION_ALGORITHM: IKE_ENCRYPTION,
    wire.OakleyAttribute.HASH_ALGORITHM: IKE_HASH,
    wire.OakleyAttribute.AUTHENTICATION_METHOD: IKE_AUTH,
    wire.OakleyAttribute.GROUP_DESCRIPTION: GROUPS,
    wire.OakleyAttribute.GROUP_TYPE: GROUP_TYPES,
    wire.OakleyAttribute.LIFE_TYPE: LIFE_TYPES,
    wire.OakleyAttribute.PRF: IKE_HASH,
}
_IPSEC_VALUES: dict[int, dict[int, str]] = {
    wire.IpsecAttribute.SA_LIFE_TYPE: LIFE_TYPES,
    wire.IpsecAttribute.GROUP_DESCRIPTION: GROUPS,
    wire.IpsecAttribute.ENCAPSULATION_MODE: ENCAPSULATION,
    wire.IpsecAttribute.AUTHENTICATION_ALGORITHM: IPSEC_AUTH,
}


def named(table: dict[int, str], value: int) -> str:
    """``NAME (N)``, or ``unknown (N)`` when the table has no name for it."""
    return f"{table.get(value, 'unknown')} ({value})"


def attribute_value_name(protocol_id: int, attribute_type: int, value: int) -> str | None:
    """The name of an SA attribute's value, or None for attributes that are plain numbers
    (key length, life duration). ``protocol_id`` 1 (ISAKMP) reads IKE attributes,
    anything else IPsec attributes."""
    table = (_IKE_VALUES if protocol_id == wire.ProtocolId.ISAKMP else _IPSEC_VALUES).get(attribute_type)
    return None if table is None else named(table, value)


def transform_id_name(protocol_id: int, transform_id: int) -> str:
    """The name of a transform ID: ``KEY_IKE (1)`` in an ISAKMP proposal, the ESP or AH
    transform names in IPsec proposals."""
    if protocol_id == wire.ProtocolId.ISAKMP:
        return named({wire.TRANSFORM_KEY_IKE: "KEY_IKE"}, transform_id)
    if protocol_id == wire.ProtocolId.IPSEC_ESP:
        return named(ESP_TRANSFORMS, transform_id)
    if protocol_id == wire.ProtocolId.IPSEC_AH:
        return named(AH_TRANSFORMS, transform_id)
    return f"unknown ({transform_id})"
