"""Negotiation policy: proposals, IKE policies, filters; pure data and matching.

Proposals are written the way strongSwan users write them:

* IKE (Main Mode): ``aes128-sha256-modp2048``, ``3des-sha1-modp1024``, ``aes256-sha384-ecp384``
  (encryption, integrity/hash, Diffie-Hellman group), comma-separated lists allowed.
* ESP (Quick Mode): ``aes128-sha256``, or with PFS ``aes128-sha256-modp2048``.

Each proposal maps to exactly one ISAKMP Transform (RFC 2409 appendix A for IKE, RFC 2407
section 4.5 for ESP) and back. Choosing is the responder's job: the first transform of the
initiator's offer that the local policy accepts wins (the offer's order is the initiator's
preference, as RFC 2408 section 4.2 asks).

Generic filters are the Main Mode filters of the IP Security Monitor: Source, Destination
(an address, a CIDR network, ``any`` or a keyword such as ``me`` for "My IP Address"), the IKE
policy they use, their authentication methods in order of preference and the connection type.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ikecore import wire
from ikecore.errors import ConfigError, NoProposalChosen

__all__ = [
    "IkeProposal",
    "EspProposal",
    "IkePolicy",
    "EspPolicy",
    "AuthenticationMethod",
    "GenericFilter",
    "SpecificFilter",
    "TrafficSelector",
    "selector_parts",
    "host_text",
    "parse_ike_proposals",
    "parse_esp_proposals",
    "choose_ike_transform",
    "choose_esp_transform",
    "group_name",
    "GROUP_NAMES",
    "KEYWORDS",
    "same_family",
    "ike_policies_shown",
]

# --- algorithm vocabulary ----------------------------------------------------------------

#: strongSwan group names -> IKE group numbers (RFC 2409, 3526, 5903, 5114).
GROUP_NAMES: dict[str, int] = {
    "modp768": 1, "modp1024": 2, "modp1536": 5, "modp2048": 14, "modp3072": 15,
    "modp4096": 16, "modp6144": 17, "modp8192": 18, "ecp256": 19, "ecp384": 20,
    "ecp521": 21, "modp2048s256": 24,
}
_GROUP_BY_NUMBER = {number: name for name, number in GROUP_NAMES.items()}

#: encryption name -> (IKE Encryption Algorithm, ESP transform id, key length in bits or None)
_ENCRYPTION: dict[str, tuple[int, int, int | None]] = {
    "des": (wire.EncryptionAlgorithm.DES_CBC, wire.EspTransform.DES, None),
    "3des": (wire.EncryptionAlgorithm.TRIPLE_DES_CBC, wire.EspTransform.TRIPLE_DES, None),
    "aes128": (wire.EncryptionAlgorithm.AES_CBC, wire.EspTransform.AES_CBC, 128),
    "aes192": (wire.EncryptionAlgorithm.AES_CBC, wire.EspTransform.AES_CBC, 192),
    "aes256": (wire.EncryptionAlgorithm.AES_CBC, wire.EspTransform.AES_CBC, 256),
}
_ENCRYPTION_ALIASES = {"aes": "aes128", "3des-cbc": "3des"}

#: integrity name -> (IKE Hash Algorithm, ESP Authentication Algorithm, keymat hash name)
_INTEGRITY: dict[str, tuple[int, int, str]] = {
    "md5": (wire.HashAlgorithm.MD5, wire.AuthAlgorithm.HMAC_MD5, "md5"),
    "sha1": (wire.HashAlgorithm.SHA, wire.AuthAlgorithm.HMAC_SHA, "sha1"),
    "sha256": (wire.HashAlgorithm.SHA2_256, wire.AuthAlgorithm.HMAC_SHA2_256, "sha256"),
    "sha384": (wire.HashAlgorithm.SHA2_384, wire.AuthAlgorithm.HMAC_SHA2_384, "sha384"),
    "sha512": (wire.HashAlgorithm.SHA2_512, wire.AuthAlgorithm.HMAC_SHA2_512, "sha512"),
}
_INTEGRITY_ALIASES = {"sha": "sha1", "sha2_256": "sha256", "sha2_384": "sha384", "sha2_512": "sha512"}

#: IKE Hash Algorithm -> keymat hash name of the prf (read for every message of an SA).
_PRF_BY_HASH: dict[int, str] = {int(ike_id): name for ike_id, _esp, name in _INTEGRITY.values()}

#: ESP integrity key sizes in bytes (RFC 2403, 2404, 4868).
_AUTH_KEY_BYTES = {"md5": 16, "sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

_AUTH_METHOD_NAMES: dict[int, str] = {
    wire.AuthMethod.PRE_SHARED_KEY: "Preshared key",
    wire.AuthMethod.DSS: "DSS signature",
    wire.AuthMethod.RSA_SIG: "RSA signature",
    wire.AuthMethod.RSA_ENC: "RSA encryption",
    wire.AuthMethod.RSA_REV_ENC: "Revised RSA encryption",
}

#: Filter keywords of the IP Security Monitor (shown as such in generic filters).
KEYWORDS: dict[str, str] = {
    "me": "My IP Address",
    "any": "Any IP Address",
    "dns": "DNS Server",
    "dhcp": "DHCP Server",
    "wins": "WINS Servers",
    "gateway": "Default Gateway",
}

DEFAULT_IKE_LIFETIME = 28800  # RFC 2407 section 4.5 default, seconds
DEFAULT_ESP_LIFETIME = 3600


def group_name(group: int) -> str:
    """strongSwan's name for an IKE group number (``modp2048`` for 14)."""
    return _GROUP_BY_NUMBER.get(group, f"group{group}")


@functools.lru_cache(maxsize=256)  # pure; names are read for every message
def _encryption_name(algorithm: int, key_length: int | None) -> str:
    if algorithm == wire.EncryptionAlgorithm.AES_CBC:
        return f"aes{key_length or 128}"
    for name, (ike_id, _esp, _len) in _ENCRYPTION.items():
        if ike_id == algorithm:
            return name
    return f"encr{algorithm}"


@functools.lru_cache(maxsize=256)  # pure; names are read for every message
def _esp_encryption_name(transform_id: int, key_length: int | None) -> str:
    if transform_id == wire.EspTransform.AES_CBC:
        return f"aes{key_length or 128}"
    for name, (_ike, esp_id, _len) in _ENCRYPTION.items():
        if esp_id == transform_id:
            return name
    return f"esp{transform_id}"


@functools.lru_cache(maxsize=256)  # pure; names are read for every message
def _hash_name(algorithm: int) -> str:
    for name, (ike_id, _esp, _h) in _INTEGRITY.items():
        if ike_id == algorithm:
            return name
    return f"hash{algorithm}"


@functools.lru_cache(maxsize=256)  # pure; names are read for every message
def _auth_name(algorithm: int) -> str:
    for name, (_ike, esp_id, _h) in _INTEGRITY.items():
        if esp_id == algorithm:
            return name
    return f"auth{algorithm}"


def _duration_value(seconds: int) -> int | bytes:
    """A Life Duration as TV when it fits 16 bits, else a 4-byte TLV (RFC 2408 3.3)."""
    return seconds if seconds <= 0xFFFF else seconds.to_bytes(4, "big")


def _read_attributes(transform: wire.Transform, life_type_attr: int, duration_attr: int,
                     default_lifetime: int) -> tuple[dict[int, int], int, int | None]:
    """A transform's attributes as {type: value}, with the Life Type / Life Duration pairs
    (RFC 2407 4.5, RFC 2409 app. A: each duration applies to the type before it) read out
    as (seconds, kilobytes)."""
    values: dict[int, int] = {}
    lifetime, kilobytes, life_type = default_lifetime, None, None
    for attr in transform.attributes:
        if attr.type == life_type_attr:
            life_type = attr.int_value
        elif attr.type == duration_attr:
            if life_type == wire.LifeType.SECONDS:
                lifetime = attr.int_value
            elif life_type == wire.LifeType.KILOBYTES:
                kilobytes = attr.int_value
        else:
            values[attr.type] = attr.int_value
    return values, lifetime, kilobytes


# --- proposals ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IkeProposal:
    """One Main Mode protection suite: an ISAKMP Transform with KEY_IKE (RFC 2409 app. A)."""

    encryption: int
    key_length: int | None
    hash: int
    group: int
    auth_method: int = wire.AuthMethod.PRE_SHARED_KEY
    lifetime: int = DEFAULT_IKE_LIFETIME
    lifetime_kilobytes: int | None = None  # of ISAKMP traffic; the engine counts it

    @property
    def name(self) -> str:
        known = _NAMES.get(id(self))  # every established SA's event names its (shared) suite
        if known is not None and known[0] is self:
            return known[1]
        return _named(self, f"{self.encryption_name}-{self.hash_name}-{group_name(self.group)}")

    @property
    def encryption_name(self) -> str:
        return _encryption_name(self.encryption, self.key_length)

    @property
    def hash_name(self) -> str:
        return _hash_name(self.hash)

    @property
    def prf_hash(self) -> str:
        """The keymat hash name of the negotiated hash (prf = HMAC of it)."""
        name = _PRF_BY_HASH.get(self.hash)
        return name if name is not None else _INTEGRITY[self.hash_name][2]

    @property
    def auth_method_name(self) -> str:
        return _AUTH_METHOD_NAMES.get(self.auth_method, f"method {self.auth_method}")

    def to_transform(self, number: int) -> wire.Transform:
        attrs = [wire.Attribute(wire.OakleyAttribute.ENCRYPTION_ALGORITHM, int(self.encryption))]
        if self.key_length is not None:
            attrs.append(wire.Attribute(wire.OakleyAttribute.KEY_LENGTH, self.key_length))
        attrs += [
            wire.Attribute(wire.OakleyAttribute.HASH_ALGORITHM, int(self.hash)),
            wire.Attribute(wire.OakleyAttribute.AUTHENTICATION_METHOD, int(self.auth_method)),
            wire.Attribute(wire.OakleyAttribute.GROUP_DESCRIPTION, self.group),
            wire.Attribute(wire.OakleyAttribute.LIFE_TYPE, wire.LifeType.SECONDS),
            wire.Attribute(wire.OakleyAttribute.LIFE_DURATION, _duration_value(self.lifetime)),
        ]
        if self.lifetime_kilobytes:
            attrs += [wire.Attribute(wire.OakleyAttribute.LIFE_TYPE, wire.LifeType.KILOBYTES),
                      wire.Attribute(wire.OakleyAttribute.LIFE_DURATION, _duration_value(self.lifetime_kilobytes))]
        return wire.Transform(number, wire.TRANSFORM_KEY_IKE, attrs)

    @classmethod
    def from_transform(cls, transform: wire.Transform) -> IkeProposal:
        """Read a phase 1 Transform; raises NoProposalChosen for what we cannot use.

        A transform read before gives the same (immutable) suite again: peers answer every
        Main Mode with the same choice (transforms compare by value)."""
        return _read_once(_IKE_READ, transform, cls._read) if cls is IkeProposal else cls._read(transform)

    @classmethod
    def _read(cls, transform: wire.Transform) -> IkeProposal:
        values, lifetime, kilobytes = _read_attributes(
            transform, wire.OakleyAttribute.LIFE_TYPE, wire.OakleyAttribute.LIFE_DURATION, DEFAULT_IKE_LIFETIME)
        try:
            encryption = values[wire.OakleyAttribute.ENCRYPTION_ALGORITHM]
            hash_ = values[wire.OakleyAttribute.HASH_ALGORITHM]
            group = values[wire.OakleyAttribute.GROUP_DESCRIPTION]
            auth = values[wire.OakleyAttribute.AUTHENTICATION_METHOD]
        except KeyError as missing:
            raise NoProposalChosen(f"transform {transform.number} lacks attribute {missing}") from None
        key_length = values.get(wire.OakleyAttribute.KEY_LENGTH)
        if encryption == wire.EncryptionAlgorithm.AES_CBC and key_length is None:
            key_length = 128  # missing AES key length: 128, as strongSwan assumes
        return cls(encryption, key_length, hash_, group, auth, lifetime, kilobytes)

    def matches(self, other: IkeProposal) -> bool:
        """Same suite; lifetimes may differ (the responder keeps the shorter one)."""
        return (self.encryption, self.key_length, self.hash, self.group, self.auth_method) == (
            other.encryption, other.key_length, other.hash, other.group, other.auth_method)


@dataclass(frozen=True, slots=True)
class EspProposal:
    """One Quick Mode ESP suite: an ESP Transform with IPsec DOI attributes (RFC 2407 4.5)."""

    transform_id: int
    key_length: int | None
    auth_algorithm: int
    pfs_group: int | None = None
    lifetime: int = DEFAULT_ESP_LIFETIME
    lifetime_kilobytes: int | None = None

    @property
    def name(self) -> str:
        known = _NAMES.get(id(self))  # as IkeProposal.name
        if known is not None and known[0] is self:
            return known[1]
        parts = [_esp_encryption_name(self.transform_id, self.key_length), _auth_name(self.auth_algorithm)]
        if self.pfs_group:
            parts.append(group_name(self.pfs_group))
        return _named(self, "-".join(parts))

    @property
    def encryption_name(self) -> str:
        return _esp_encryption_name(self.transform_id, self.key_length)

    @property
    def integrity_name(self) -> str:
        return _auth_name(self.auth_algorithm)

    @property
    def encryption_key_bytes(self) -> int:
        if self.transform_id == wire.EspTransform.AES_CBC:
            return (self.key_length or 128) // 8
        if self.transform_id == wire.EspTransform.TRIPLE_DES:
            return 24
        if self.transform_id == wire.EspTransform.DES:
            return 8
        return 0

    @property
    def integrity_key_bytes(self) -> int:
        return _AUTH_KEY_BYTES.get(self.integrity_name, 0)

    def to_transform(self, number: int, encapsulation_mode: int) -> wire.Transform:
        attrs = [
            wire.Attribute(wire.IpsecAttribute.SA_LIFE_TYPE, wire.LifeType.SECONDS),
            wire.Attribute(wire.IpsecAttribute.SA_LIFE_DURATION, _duration_value(self.lifetime)),
        ]
        if self.lifetime_kilobytes:
            attrs += [
                wire.Attribute(wire.IpsecAttribute.SA_LIFE_TYPE, wire.LifeType.KILOBYTES),
                wire.Attribute(wire.IpsecAttribute.SA_LIFE_DURATION, _duration_value(self.lifetime_kilobytes)),
            ]
        if self.pfs_group:
            attrs.append(wire.Attribute(wire.IpsecAttribute.GROUP_DESCRIPTION, self.pfs_group))
        attrs.append(wire.Attribute(wire.IpsecAttribute.ENCAPSULATION_MODE, encapsulation_mode))
        attrs.append(wire.Attribute(wire.IpsecAttribute.AUTHENTICATION_ALGORITHM, int(self.auth_algorithm)))
        if self.key_length is not None:
            attrs.append(wire.Attribute(wire.IpsecAttribute.KEY_LENGTH, self.key_length))
        return wire.Transform(number, int(self.transform_id), attrs)

    @classmethod
    def from_transform(cls, transform: wire.Transform) -> tuple[EspProposal, int]:
        """Read an ESP Transform; returns (proposal, encapsulation mode), the same (immutable)
        pair again for a transform read before (every Quick Mode offers the same ones)."""
        return _read_once(_ESP_READ, transform, cls._read) if cls is EspProposal else cls._read(transform)

    @classmethod
    def _read(cls, transform: wire.Transform) -> tuple[EspProposal, int]:
        values, lifetime, kilobytes = _read_attributes(
            transform, wire.IpsecAttribute.SA_LIFE_TYPE, wire.IpsecAttribute.SA_LIFE_DURATION, DEFAULT_ESP_LIFETIME)
        if wire.IpsecAttribute.AUTHENTICATION_ALGORITHM not in values:
            raise NoProposalChosen(f"ESP transform {transform.number} has no authentication algorithm")
        key_length = values.get(wire.IpsecAttribute.KEY_LENGTH)
        mode = values.get(wire.IpsecAttribute.ENCAPSULATION_MODE, wire.EncapsulationMode.TUNNEL)
        proposal = cls(transform.transform_id, key_length, values[wire.IpsecAttribute.AUTHENTICATION_ALGORITHM],
                       values.get(wire.IpsecAttribute.GROUP_DESCRIPTION), lifetime, kilobytes)
        return proposal, mode

    def matches(self, other: EspProposal) -> bool:
        return (self.transform_id, self.key_length, self.auth_algorithm, self.pfs_group) == (
            other.transform_id, other.key_length, other.auth_algorithm, other.pfs_group)


#: Suite names already made, by the id of the (immutable) suite object, kept with it so that
#: a reused id never passes for it: SAs of one suite share one object. Bounded, cleared when full.
_NAMES: dict[int, tuple[Any, str]] = {}


def _named(suite: Any, name: str) -> str:
    if len(_NAMES) >= _READ_MAX:
        _NAMES.clear()
    _NAMES[id(suite)] = (suite, name)
    return name


#: Transforms already read, by value (``wire.Transform`` hashes and compares its contents);
#: bounded, cleared when full. Transforms we cannot use raise and are never kept.
_IKE_READ: dict[wire.Transform, IkeProposal] = {}
_ESP_READ: dict[wire.Transform, tuple[EspProposal, int]] = {}
_READ_MAX = 1024


def _read_once(table: dict[wire.Transform, Any], transform: wire.Transform,
               read: Callable[[wire.Transform], Any]) -> Any:
    """``read(transform)``, remembered in ``table`` (emptied when full): suites are immutable."""
    known = table.get(transform)
    if known is None:
        if len(table) >= _READ_MAX:
            table.clear()
        known = table[transform] = read(transform)
    return known


def _split_suite(text: str, field_name: str) -> list[str]:
    return [part.strip().lower() for part in text.split("-") if part.strip()] or _fail(
        field_name, "empty proposal; write e.g. aes128-sha256-modp2048")


def _fail(field_name: str, problem: str) -> list[str]:
    raise ConfigError(field_name, problem)


def _lookup_encryption(name: str, field_name: str) -> tuple[int, int, int | None]:
    name = _ENCRYPTION_ALIASES.get(name, name)
    if name not in _ENCRYPTION:
        raise ConfigError(field_name, f"unknown encryption '{name}'; use one of {', '.join(_ENCRYPTION)}")
    return _ENCRYPTION[name]


def _lookup_integrity(name: str, field_name: str) -> tuple[int, int, str]:
    name = _INTEGRITY_ALIASES.get(name, name)
    if name not in _INTEGRITY:
        raise ConfigError(field_name, f"unknown integrity '{name}'; use one of {', '.join(_INTEGRITY)}")
    return _INTEGRITY[name]


def _lookup_group(name: str, field_name: str) -> int:
    if name not in GROUP_NAMES:
        raise ConfigError(field_name, f"unknown DH group '{name}'; use one of {', '.join(GROUP_NAMES)}")
    return GROUP_NAMES[name]


def parse_ike_proposals(text: str, *, lifetime: int = DEFAULT_IKE_LIFETIME, lifetime_kilobytes: int | None = None,
                        auth_method: int = wire.AuthMethod.PRE_SHARED_KEY,
                        field_name: str = "ike") -> tuple[IkeProposal, ...]:
    """Parse ``aes128-sha256-modp2048[,3des-sha1-modp1024...]`` into IKE proposals.

    Raises:
        ConfigError: naming ``field_name`` and the fix.
    """
    proposals = []
    for suite in text.split(","):
        parts = _split_suite(suite, field_name)
        if len(parts) != 3:
            raise ConfigError(field_name, f"'{suite.strip()}' needs encryption-integrity-group, "
                                          "e.g. aes128-sha256-modp2048")
        encryption, _esp, key_length = _lookup_encryption(parts[0], field_name)
        hash_, _auth, _name = _lookup_integrity(parts[1], field_name)
        group = _lookup_group(parts[2], field_name)
        proposals.append(IkeProposal(encryption, key_length, hash_, group, auth_method, lifetime,
                                     lifetime_kilobytes or None))
    return tuple(proposals)


def parse_esp_proposals(text: str, *, lifetime: int = DEFAULT_ESP_LIFETIME,
                        lifetime_kilobytes: int | None = None,
                        field_name: str = "esp") -> tuple[EspProposal, ...]:
    """Parse ``aes128-sha256[-modp2048][,...]`` (a group means PFS) into ESP proposals."""
    proposals = []
    for suite in text.split(","):
        parts = _split_suite(suite, field_name)
        if len(parts) not in (2, 3):
            raise ConfigError(field_name, f"'{suite.strip()}' needs encryption-integrity[-group], "
                                          "e.g. aes128-sha256 or aes128-sha256-modp2048")
        _ike, transform_id, key_length = _lookup_encryption(parts[0], field_name)
        _hash, auth, _name = _lookup_integrity(parts[1], field_name)
        group = _lookup_group(parts[2], field_name) if len(parts) == 3 else None
        proposals.append(EspProposal(transform_id, key_length, auth, group, lifetime, lifetime_kilobytes))
    return tuple(proposals)


@dataclass(frozen=True, slots=True)
class IkePolicy:
    """A named, ordered list of Main Mode protection suites (the IP Security Monitor document's "IKE policy")."""

    name: str
    proposals: tuple[IkeProposal, ...]

    def offer(self) -> wire.SaPayload:
        """The initiator's SA payload: one ISAKMP proposal, one transform per suite.

        Built once per policy object (payloads are immutable): every Main Mode of a filter
        offers the same suites, and building the attributes was most of message 1's work."""
        known = _OFFERS.get(id(self))
        if known is not None and known[0] is self:
            return known[1]
        transforms = [p.to_transform(i + 1) for i, p in enumerate(self.proposals)]
        offer = wire.SaPayload([wire.Proposal(1, wire.ProtocolId.ISAKMP, transforms)])
        if len(_OFFERS) >= _CACHE_MAX:
            _OFFERS.clear()
        _OFFERS[id(self)] = (self, offer)
        return offer


#: Offers and transforms already built, by the id of the policy object that built them (kept
#: with it, so an id reused by a new object is never mistaken for the old one). Bounded:
#: cleared when full (a policy made per SA, as signature filters do, only rebuilds).
_OFFERS: dict[int, tuple[IkePolicy, wire.SaPayload]] = {}
_ESP_TRANSFORMS: dict[tuple[int, int], tuple[EspPolicy, list[wire.Transform]]] = {}
_CACHE_MAX = 256


@dataclass(frozen=True, slots=True)
class EspPolicy:
    """A named Quick Mode policy: ESP suites in order, mode, lifetimes."""

    name: str
    proposals: tuple[EspProposal, ...]
    mode: str = "tunnel"  # or "transport"

    @property
    def encapsulation_mode(self) -> int:
        return wire.EncapsulationMode.TRANSPORT if self.mode == "transport" else wire.EncapsulationMode.TUNNEL

    @property
    def pfs_group(self) -> int | None:
        return self.proposals[0].pfs_group if self.proposals else None

    def transforms(self, encapsulation_mode: int) -> list[wire.Transform]:
        """The initiator's ESP transforms, one per suite in order, asking for
        ``encapsulation_mode``; built once per policy and mode (every Quick Mode offers them)."""
        key = (id(self), encapsulation_mode)
        known = _ESP_TRANSFORMS.get(key)
        if known is None or known[0] is not self:
            if len(_ESP_TRANSFORMS) >= _CACHE_MAX:
                _ESP_TRANSFORMS.clear()
            known = _ESP_TRANSFORMS[key] = (
                self, [p.to_transform(i + 1, encapsulation_mode) for i, p in enumerate(self.proposals)])
        return list(known[1])


def choose_ike_transform(sa: wire.SaPayload, policy: IkePolicy) -> tuple[wire.Proposal, wire.Transform, IkeProposal]:
    """The responder's choice: the first offered transform our policy accepts.

    Raises:
        NoProposalChosen: nothing in the offer matches (or the offer is not ISAKMP).
    """
    if sa.doi != wire.DOI_IPSEC:
        raise NoProposalChosen(f"DOI {sa.doi} is not the IPsec DOI")
    for proposal in sa.proposals:
        if proposal.protocol_id != wire.ProtocolId.ISAKMP:
            continue
        for transform in proposal.transforms:
            if transform.transform_id != wire.TRANSFORM_KEY_IKE:
                continue
            try:
                offered = IkeProposal.from_transform(transform)
            except NoProposalChosen:
                continue
            for mine in policy.proposals:
                if mine.matches(offered):
                    lifetime = min(offered.lifetime, mine.lifetime) if offered.lifetime else mine.lifetime
                    limits = [k for k in (offered.lifetime_kilobytes, mine.lifetime_kilobytes) if k]
                    return proposal, transform, IkeProposal(
                        offered.encryption, offered.key_length, offered.hash, offered.group,
                        offered.auth_method, lifetime, min(limits) if limits else None)
    raise NoProposalChosen(f"no offered transform matches IKE policy '{policy.name}'")


def choose_esp_transform(sa: wire.SaPayload, policy: EspPolicy) -> tuple[wire.Proposal, wire.Transform, EspProposal, int]:
    """Quick Mode responder's choice; returns (proposal, transform, suite, encapsulation mode)."""
    for proposal in sa.proposals:
        if proposal.protocol_id != wire.ProtocolId.IPSEC_ESP or len(proposal.spi) != 4:
            continue
        for transform in proposal.transforms:
            key = (id(policy), transform)
            known = _ESP_CHOICES.get(key)
            if known is None or known[0] is not policy:
                if len(_ESP_CHOICES) >= _READ_MAX:
                    _ESP_CHOICES.clear()
                known = _ESP_CHOICES[key] = (policy, _esp_choice(transform, policy))
            if known[1] is not None:
                return proposal, transform, known[1][0], known[1][1]
    raise NoProposalChosen(f"no offered ESP transform matches policy '{policy.name}'")


def _esp_choice(transform: wire.Transform, policy: EspPolicy) -> tuple[EspProposal, int] | None:
    """The suite and encapsulation mode we accept for one offered ESP transform, or None."""
    try:
        offered, mode = EspProposal.from_transform(transform)
    except NoProposalChosen:
        return None
    if mode not in (policy.encapsulation_mode, wire.EncapsulationMode.UDP_TUNNEL,
                    wire.EncapsulationMode.UDP_TRANSPORT, wire.EncapsulationMode.UDP_TUNNEL_DRAFT,
                    wire.EncapsulationMode.UDP_TRANSPORT_DRAFT):
        return None
    for mine in policy.proposals:
        if mine.matches(offered):
            lifetime = min(offered.lifetime, mine.lifetime)
            limits = [k for k in (offered.lifetime_kilobytes, mine.lifetime_kilobytes) if k]
            kilobytes = min(limits) if limits else None
            chosen = EspProposal(offered.transform_id, offered.key_length, offered.auth_algorithm,
                                 offered.pfs_group, lifetime, kilobytes)
            return chosen, mode
    return None


#: The responder's answer to each ESP transform offered so far, by (policy object, transform):
#: every Quick Mode of a peer offers the same transforms (only its SPI differs). The policy
#: is kept with its answer, so a reused id never passes for it. Bounded, cleared when full.
_ESP_CHOICES: dict[tuple[int, wire.Transform], tuple[EspPolicy, tuple[EspProposal, int] | None]] = {}


# --- filters -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticationMethod:
    """One entry of a filter's Authentication Methods list (in order of preference)."""

    method: int = wire.AuthMethod.PRE_SHARED_KEY
    secret: bytes = field(default=b"", repr=False)  # the pre-shared key; never printed

    @property
    def display(self) -> str:
        return _AUTH_METHOD_NAMES.get(self.method, f"method {self.method}")


def _address_matches(pattern: str, address: str, local_addresses: Iterable[str]) -> bool:
    if pattern == "any":
        return True
    if pattern == "me":
        return address in local_addresses
    if pattern in KEYWORDS:
        return False  # server keywords only match once expanded into specific filters
    try:
        return ipaddress.ip_address(address) in _network(pattern)
    except ValueError:
        return False


def ike_policies_shown(policies: dict[str, Any], filters: Iterable[GenericFilter]) -> list[Any]:
    """The IKE policies to show, in configuration order: every policy a filter names, and
    every other policy the configuration defines by name. The implicit ``default`` policy
    (a configuration without policies gets one) is shown only when a filter uses it."""
    used = {flt.ike_policy for flt in filters}
    return [p for name, p in policies.items() if name in used or name != "default"]


def same_family(a: str, b: str) -> bool:
    """Whether two addresses or networks (``10.0.0.1``, ``fd00::/64``) are of one family,
    IPv4 or IPv6: a specific filter never pairs an IPv6 source with an IPv4 destination.
    True when either is no address (``any`` or a keyword), which fits both families."""
    try:
        return _network(a).version == _network(b).version
    except ValueError:
        return True


@functools.lru_cache(maxsize=65536)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parsed (immutable) network, cached: selectors repeat for every Quick Mode."""
    return ipaddress.ip_network(text, strict=False)


def host_text(data: bytes) -> str:
    """An ID_IPV4_ADDR/ID_IPV6_ADDR body as host CIDR text, as ``TrafficSelector.from_id``
    reads it (the same cached string; ValueError for other lengths)."""
    return _host_network(data)


@functools.lru_cache(maxsize=4096)  # pure; every Quick Mode reads two address IDs
def _host_network(data: bytes) -> str:
    """An ID_IPV4_ADDR/ID_IPV6_ADDR body as host CIDR text (ValueError for other lengths)."""
    if len(data) == 4:
        return "%d.%d.%d.%d/32" % tuple(data)
    return str(ipaddress.ip_network(ipaddress.ip_address(data)))


def subnet_text(data: bytes) -> str:
    """An ID_IPV4/IPV6_ADDR_SUBNET body (address then mask) as CIDR text.

    Raises:
        ValueError: odd length or a mask that is not contiguous ones.
    """
    half = len(data) // 2
    if len(data) not in (8, 32):
        raise ValueError(f"subnet ID of {len(data)} bytes")
    mask = int.from_bytes(data[half:], "big")
    prefix = bin(mask).count("1")
    if mask != ((1 << (half * 8)) - 1) ^ ((1 << (half * 8 - prefix)) - 1):
        raise ValueError("subnet mask is not contiguous")
    return str(ipaddress.ip_network((ipaddress.ip_address(data[:half]), prefix), strict=False))


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """A Quick Mode client ID (IDci/IDcr): a subnet, with protocol and port (0 = any)."""

    network: str
    protocol: int = 0
    port: int = 0

    def to_id(self) -> wire.IdPayload:
        net = _network(self.network)
        v6 = net.version == 6
        if net.prefixlen == net.max_prefixlen:
            id_type = wire.IdType.IPV6_ADDR if v6 else wire.IdType.IPV4_ADDR
            data = net.network_address.packed
        else:
            id_type = wire.IdType.IPV6_ADDR_SUBNET if v6 else wire.IdType.IPV4_ADDR_SUBNET
            data = net.network_address.packed + net.netmask.packed
        return wire.IdPayload(int(id_type), data, protocol_id=self.protocol, port=self.port)

    @classmethod
    def from_id(cls, payload: wire.IdPayload) -> TrafficSelector:
        """Read an IDci/IDcr; raises ValueError for types that are not address selectors."""
        data, id_type = payload.data, payload.id_type
        if id_type in (wire.IdType.IPV4_ADDR, wire.IdType.IPV6_ADDR):
            network = _host_network(data)
        elif id_type in (wire.IdType.IPV4_ADDR_SUBNET, wire.IdType.IPV6_ADDR_SUBNET):
            network = subnet_text(data)
        elif id_type in (wire.IdType.IPV4_ADDR_RANGE, wire.IdType.IPV6_ADDR_RANGE):
            half = len(data) // 2
            first, last = ipaddress.ip_address(data[:half]), ipaddress.ip_address(data[half:])
            nets = list(ipaddress.summarize_address_range(first, last))
            if len(nets) != 1:
                raise ValueError("address range is not a single subnet")
            network = str(nets[0])
        else:
            raise ValueError(f"ID type {id_type} is not a traffic selector")
        return cls(network, payload.protocol_id, payload.port)

    def __str__(self) -> str:
        suffix = f"[{self.protocol}/{self.port}]" if self.protocol or self.port else ""
        return self.network + suffix


def selector_parts(text: str) -> tuple[str, int, int]:
    """A traffic selector's text (``str(TrafficSelector)``: ``10.0.0.0/24`` or
    ``10.0.0.0/24[17/500]``) -> (network, protocol, port)."""
    network, _, rest = text.partition("[")
    protocol = port = 0
    if rest:
        proto_text, _, port_text = rest.rstrip("]").partition("/")
        protocol, port = int(proto_text or 0), int(port_text or 0)
    return network, protocol, port


@dataclass(frozen=True, slots=True)
class GenericFilter:
    """A Main Mode generic filter (the monitor document: Name, Source, Destination, IKE Policy,
    Authentication Methods, Connection Type), mirrored unless ``mirrored`` is False.

    ``source``/``destination`` are an address, a CIDR network, ``any`` or a keyword of
    KEYWORDS (``me`` = My IP Address). Seen from this host, outbound traffic goes from
    source to destination; a mirrored filter also matches the inbound direction.
    """

    name: str
    source: str
    destination: str
    ike_policy: str
    authentication_methods: tuple[AuthenticationMethod, ...]
    connection_type: str = "all"  # "lan", "remote-access" or "all"
    esp_policy: str = "default"
    local_id: str | None = None
    remote_id: str | None = None
    local_ts: str | None = None
    remote_ts: str | None = None
    mirrored: bool = True
    weight: int = 0
    credentials: Any = field(default=None, repr=False, compare=False)  # ikecore.credentials.Credentials
    fallback_to_clear: bool = False  # unanswered Main Mode -> soft SA (clear text)
    soft_sa_lifetime: int = 300      # seconds a soft SA lasts (Windows' default)
    quick_mode_window: int = 0       # our Quick Modes in flight per ISAKMP SA; 0 = no limit
    aggressive: bool = False       # allow (and initiate with) Aggressive Mode PSK; off by default
    nat_traversal: str = "auto"    # "auto" (RFC 3947 + drafts), "force" (charon's encap=yes), "off"
    dpd: bool = True               # announce RFC 3706 DPD and check the peer (Timing.dpd_delay)

    def matches(self, local: str, remote: str, local_addresses: Sequence[str] = ()) -> bool:
        """Does traffic between our ``local`` and the peer's ``remote`` address match?"""
        mine = tuple(local_addresses) or (local,)
        if _address_matches(self.source, local, mine) and _address_matches(self.destination, remote, mine):
            return True
        return self.mirrored and (_address_matches(self.destination, local, mine)
                                  and _address_matches(self.source, remote, mine))

    def psk(self) -> bytes | None:
        for method in self.authentication_methods:
            if method.method == wire.AuthMethod.PRE_SHARED_KEY and method.secret:
                return method.secret
        return None

    def specific(self, local: str, remote: str) -> tuple[SpecificFilter, SpecificFilter]:
        """Expand into the outbound and inbound specific filters of one connection."""
        out = SpecificFilter(self.name, local, remote, "outbound", self.ike_policy,
                             self.authentication_methods, self.weight)
        inbound = SpecificFilter(self.name, remote, local, "inbound", self.ike_policy,
                                 self.authentication_methods, self.weight)
        return out, inbound


@dataclass(frozen=True, slots=True)
class SpecificFilter:
    """A generic filter expanded with the actual addresses (the monitor document: plus Direction, Weight)."""

    name: str
    source: str
    destination: str
    direction: str
    ike_policy: str
    authentication_methods: tuple[AuthenticationMethod, ...]
    weight: int = 0
