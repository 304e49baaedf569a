"""SA records: the state of one ISAKMP SA and of its Quick Mode exchanges.

These are plain mutable records owned by the engine; the state machines in
``main_mode``, ``quick_mode`` and ``informational`` change them, and the monitor reads
them into rows (``ikecore.monitor.listing``). Secrets live in ``crypto`` (keys inside the
Rust cipher), ``skeyid`` and the ``IpsecSaKeys`` of the IPsec SAs, all in bytearrays that
``wipe_keys`` zeroes when the SA ends (``ikecore.keymat`` says what Python cannot wipe);
rows never contain them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ikecore import keymat, policy, wire
from ikecore.dh import KeyPair
from ikecore.driver import IpsecSaKeys
from ikecore.events import Address

if TYPE_CHECKING:  # the class only: importing cryptography here would slow `ikecore monitor`
    from cryptography import x509

__all__ = ["Role", "Phase1State", "Phase2State", "IsakmpSa", "QuickModeExchange", "IpsecSa",
           "OrderedIds", "ExchangeTable", "id_to_text", "message_digest"]


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"

    # Members are singletons compared by identity: hashing by identity too spares the
    # Python-level Enum.__hash__ in every transition-table lookup of every message.
    __hash__ = object.__hash__


class Phase1State(enum.Enum):
    """Main Mode states, named for the message each one waits for (RFC 2409 section 5)."""

    I_EXPECT_MM2 = "I_EXPECT_MM2"
    I_EXPECT_MM4 = "I_EXPECT_MM4"
    I_EXPECT_MM6 = "I_EXPECT_MM6"
    R_EXPECT_MM1 = "R_EXPECT_MM1"
    R_EXPECT_MM3 = "R_EXPECT_MM3"
    R_EXPECT_MM5 = "R_EXPECT_MM5"
    I_EXPECT_AM2 = "I_EXPECT_AM2"  # Aggressive Mode (ikecore.protocol.aggressive_mode)
    R_EXPECT_AM1 = "R_EXPECT_AM1"
    R_EXPECT_AM3 = "R_EXPECT_AM3"
    ESTABLISHED = "ESTABLISHED"
    FAILED = "FAILED"
    DELETED = "DELETED"

    __hash__ = object.__hash__  # by identity, as Role


class Phase2State(enum.Enum):
    """Quick Mode states (RFC 2409 section 5.5)."""

    I_QUEUED = "I_QUEUED"          # held back by the filter's quick_mode_window
    I_EXPECT_QM2 = "I_EXPECT_QM2"
    R_EXPECT_QM1 = "R_EXPECT_QM1"
    R_EXPECT_QM3 = "R_EXPECT_QM3"
    ESTABLISHED = "ESTABLISHED"
    FAILED = "FAILED"

    __hash__ = object.__hash__  # by identity, as Role


def id_to_text(id_type: int, data: bytes) -> str:
    """Readable form of an identification payload's data (RFC 2407 section 4.6.2)."""
    import ipaddress

    if id_type == wire.IdType.IPV4_ADDR and len(data) == 4:
        return "%d.%d.%d.%d" % tuple(data)  # the monitor lists many SAs: skip ipaddress here
    try:
        if id_type in (wire.IdType.IPV4_ADDR, wire.IdType.IPV6_ADDR):
            return str(ipaddress.ip_address(data))
        if id_type in (wire.IdType.FQDN, wire.IdType.USER_FQDN):
            return data.decode("utf-8", "replace")
        if id_type in (wire.IdType.IPV4_ADDR_SUBNET, wire.IdType.IPV6_ADDR_SUBNET):
            return policy.subnet_text(data)
    except ValueError:
        pass
    return data.hex()


class OrderedIds(MutableMapping[int, None]):
    """An ordered set of ints (oldest first) with the interface of ``dict.fromkeys(ids)``:
    the finished Message IDs of an ISAKMP SA, the handles of the SAs between two addresses
    (``Engine``'s index).

    Nearly every such set in a gateway holds one int (the Message ID of the SA's Quick
    Mode, the one SA of a peer): that one is kept alone, and a dict is made for the
    second. A dict of one entry is about 220 bytes, this record 48; a gateway holds
    100,000 of each.
    """

    __slots__ = ("_ids",)

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._ids: int | dict[int, None] | None = None
        for value in ids:
            self[value] = None

    def __contains__(self, key: object) -> bool:
        ids = self._ids
        if ids is None:
            return False
        if isinstance(ids, int):
            return bool(key == ids)
        return key in ids

    def __getitem__(self, key: int) -> None:
        if key not in self:
            raise KeyError(key)

    def __setitem__(self, key: int, value: None) -> None:
        ids = self._ids
        if ids is None:
            self._ids = key
        elif isinstance(ids, int):
            if key != ids:
                self._ids = {ids: None, key: None}
        else:
            ids[key] = None

    def __delitem__(self, key: int) -> None:
        ids = self._ids
        if isinstance(ids, dict):
            del ids[key]
        elif ids is not None and key == ids:
            self._ids = None
        else:
            raise KeyError(key)

    def __iter__(self) -> Iterator[int]:
        ids = self._ids
        if ids is None:
            return iter(())
        if isinstance(ids, int):
            return iter((ids,))
        return iter(ids)

    def __len__(self) -> int:
        ids = self._ids
        if ids is None:
            return 0
        return 1 if isinstance(ids, int) else len(ids)

    def __repr__(self) -> str:
        return f"OrderedIds({list(self)!r})"


def message_digest(data: bytes) -> bytes:
    """What an exchange keeps of the last message it received, to know a repeat of it (RFC
    2408 section 5: a retransmission is answered with the reply already sent, or ignored):
    8 bytes of Python's keyed hash (SipHash) instead of the message, 100 to 300 bytes kept
    for a negotiation timeout by each SA a gateway sets up. Another message with the same
    8 bytes is only ever handled as that repeat would be (dropped, or answered with the
    reply already sent), which anyone can cause by sending the repeat itself."""
    return hash(data).to_bytes(8, "big", signed=True)


#: The vendor IDs of an SA that received none yet: one list shared by all (never changed).
_NO_VENDOR_IDS: list[bytes] = []

#: The unanswered R-U-THERE numbers of an SA that has none: one list shared by all (only
#: ever cleared, which leaves it as it is).
_NO_DPD_PENDING: list[int] = []


@dataclass(slots=True)
class IpsecSa:
    """One negotiated Quick Mode SA pair (inbound and outbound ESP SPIs)."""

    handle: int
    message_id: int
    spi_in: bytes
    spi_out: bytes
    proposal: policy.EspProposal
    mode: str
    local_ts: str
    remote_ts: str
    created: float
    expires: float
    started: float = 0.0               # when its Quick Mode began (rekey collision window)
    initiated: bool = False            # we sent its QM1
    rekey_of: bytes | None = None      # spi_in of the SA this one replaces (our rekey)
    tiebreak: bytes = b""              # Ni_b | Nr_b: both peers order colliding rekeys alike
    superseded: bool = False           # a newer SA with the same selectors is in place
    keys: tuple[IpsecSaKeys, ...] = ()  # (outbound, inbound), kept for the SA store

    def __post_init__(self) -> None:
        """Selectors equal to those of the keys become the keys' strings: one string per
        selector, not two (about 120 bytes of each of a gateway's 100,000 SAs)."""
        if self.keys:
            keys = self.keys[0]
            if keys.local_ts == self.local_ts:
                self.local_ts = keys.local_ts
            if keys.remote_ts == self.remote_ts:
                self.remote_ts = keys.remote_ts

    def wipe_keys(self) -> None:
        """Zero both directions' keys (the SA is deleted; the driver has let go of them)."""
        for keys in self.keys:
            keymat.wipe(keys.encryption_key, keys.integrity_key)


@dataclass(slots=True)
class QuickModeExchange:
    """The state of one Quick Mode exchange, keyed by its Message ID."""

    message_id: int
    role: Role
    state: Phase2State
    started: float
    esp_policy: policy.EspPolicy
    nonce_i: bytes = b""
    nonce_r: bytes = b""
    spi_in: bytes = b""
    spi_out: bytes = b""
    chosen: policy.EspProposal | None = None
    mode: int = wire.EncapsulationMode.TUNNEL
    dh: KeyPair | None = None      # single use, for PFS
    g_qm_xy: bytearray | None = None   # the PFS shared secret, kept until the SAs are installed
    id_ci: wire.IdPayload | None = None
    id_cr: wire.IdPayload | None = None
    last_received: bytes = b""     # message_digest of the last message received (a repeat is known by it)
    last_sent: bytes = b""
    retransmits: int = 0
    next_retransmit: float | None = None
    rekey_of: bytes | None = None  # spi_in of the IPsec SA this exchange rekeys
    lifetime_notify: tuple[int | None, int | None] | None = None  # RESPONDER-LIFETIME sent/honoured
    installed: tuple[IpsecSaKeys, ...] = ()  # (outbound, inbound) handed to the driver

    def forget_negotiation(self) -> None:
        """Drop what only the negotiation needed, once the IpsecSa is made (a gateway holds
        100,000 of these for the negotiation timeout): the nonces, the client IDs, the key
        tuple (the IpsecSa holds the keys) and, for the responder, its QM2 (a repeated QM3
        is ignored, never answered). Kept: the digest of the last message received, by which
        a repeat is known, and the initiator's QM3, sent again when QM2 is repeated."""
        self.nonce_i = self.nonce_r = b""
        self.id_ci = self.id_cr = None
        self.installed = ()
        if self.role is Role.RESPONDER:
            self.last_sent = b""


#: ``ExchangeTable``'s mark for "the exchanges are in a dict" (an object no key equals).
_MANY: Any = object()
_MISSING: Any = object()


class ExchangeTable(MutableMapping[int, QuickModeExchange]):
    """The Quick Mode exchanges of one ISAKMP SA by Message ID, with the interface of a
    dict (insertion order kept).

    Nearly always one exchange runs or is kept (for a repeated message): that one is held
    in the table itself, and a dict is made for the second. A dict of one entry is about
    220 bytes and this table 48, for each SA set up in the last negotiation timeout (a
    third of a gateway's 100,000 at 1,000 new SAs a second).
    """

    __slots__ = ("_key", "_value")

    def __init__(self) -> None:
        self._key: Any = None    # the one Message ID, _MANY, or None when empty
        self._value: Any = None  # its exchange, or the dict of them

    def get(self, key: int, default: Any = None) -> Any:
        own = self._key
        if own is None:
            return default
        if own is _MANY:
            return self._value.get(key, default)
        return self._value if own == key else default

    def __getitem__(self, key: int) -> QuickModeExchange:
        value: QuickModeExchange = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        own = self._key
        if own is _MANY:
            return key in self._value
        return own is not None and bool(own == key)

    def __setitem__(self, key: int, value: QuickModeExchange) -> None:
        own = self._key
        if own is _MANY:
            self._value[key] = value
        elif own is None or own == key:
            self._key, self._value = key, value
        else:
            self._key, self._value = _MANY, {own: self._value, key: value}

    def __delitem__(self, key: int) -> None:
        own = self._key
        if own is _MANY:
            del self._value[key]
            if not self._value:
                self._key = self._value = None
        elif own is not None and own == key:
            self._key = self._value = None
        else:
            raise KeyError(key)

    def pop(self, key: int, default: Any = _MISSING) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        del self[key]
        return value

    def __iter__(self) -> Iterator[int]:
        own = self._key
        if own is None:
            return iter(())
        if own is _MANY:
            return iter(self._value)
        return iter((own,))

    def __len__(self) -> int:
        own = self._key
        if own is None:
            return 0
        return len(self._value) if own is _MANY else 1

    def __repr__(self) -> str:
        return f"ExchangeTable({dict(self.items())!r})"


@dataclass(slots=True)
class IsakmpSa:
    """One ISAKMP SA: Main Mode negotiation state, keys, and its Quick Modes."""

    handle: int
    role: Role
    state: Phase1State
    initiator_cookie: bytes
    responder_cookie: bytes
    local: Address
    remote: Address
    generic_filter: policy.GenericFilter
    ike_policy: policy.IkePolicy
    esp_policy: policy.EspPolicy
    started: float
    non_esp_marker: bool = False
    chosen: policy.IkeProposal | None = None
    sa_b: bytes = b""              # SAi_b: the initiator's SA payload body (RFC 2409 section 5)
    dh: KeyPair | None = None      # single use
    g_xi: bytes = b""
    g_xr: bytes = b""
    nonce_i: bytes = b""
    nonce_r: bytes = b""
    skeyid: keymat.Skeyid | None = None
    crypto: keymat.CryptoState | None = None
    my_id: wire.IdPayload | None = None
    peer_id: wire.IdPayload | None = None
    established: float | None = None
    expires: float | None = None
    vendor_ids: list[bytes] = field(default_factory=lambda: _NO_VENDOR_IDS)  # replaced, never changed in place
    first_message: bytes = b""     # responder: message 1 as received (retransmit detection)
    last_received: bytes = b""     # message_digest of the last message received (a repeat is known by it)
    last_sent: bytes = b""
    retransmits: int = 0
    next_retransmit: float | None = None
    quick_modes: ExchangeTable = field(default_factory=ExchangeTable)
    ipsec_sas: list[IpsecSa] = field(default_factory=list)
    want_quick_mode: bool = False
    initial_contact: bool = False  # send / received INITIAL-CONTACT in MM5 (RFC 2407 4.6.3.3)
    failure: str | None = None
    peer_certificate: x509.Certificate | None = None  # the peer's validated certificate (signatures)
    rekey_of: int | None = None    # handle of the ISAKMP SA this one replaces
    superseded: bool = False       # a rekeyed ISAKMP SA took over its IPsec SAs
    octets: int = 0                # ISAKMP bytes sent and received once established
    aggressive: bool = False       # negotiated with Aggressive Mode instead of Main Mode
    nat_t: Any = None              # ikecore.protocol.nat_traversal.Variant agreed in the vendor IDs
    nat: str = "none"              # NAT-D outcome: none, local, remote or both
    encapsulated: bool = False     # floated to the NAT-T port: IKE with marker, ESP in UDP
    natt_port: int = 4500          # the peer's NAT-T port to float to (initiator)
    dpd: bool = False              # the peer announced RFC 3706 DPD
    dpd_sequence: int = 0          # our last R-U-THERE sequence number
    dpd_pending: list[int] = field(default_factory=lambda: _NO_DPD_PENDING)  # unanswered R-U-THERE (replaced)
    dpd_since: float | None = None  # when the oldest unanswered R-U-THERE left
    last_heard: float = 0.0        # the last authenticated message from the peer
    spent_message_ids: OrderedIds = field(default_factory=OrderedIds)  # finished M-IDs, oldest first
    limits_peer: str = ""           # the address engine.admission.SaLimits counted it under

    @property
    def hash_name(self) -> str:
        assert self.chosen is not None
        return self.chosen.prf_hash

    @property
    def skeyids(self) -> keymat.Skeyid:
        """SKEYID and its family: set by phase 1 keying (an internal error before)."""
        assert self.skeyid is not None, "no SKEYID before phase 1 keying"
        return self.skeyid

    @property
    def cipher(self) -> keymat.CryptoState:
        """The payload cipher and its IV chains: set by phase 1 keying (an internal error before)."""
        assert self.crypto is not None, "no cipher before phase 1 keying"
        return self.crypto

    def forget_negotiation(self) -> None:
        """Drop what only Main Mode needed, once the SA is established: the DH pair and
        public values, the nonces and SAi_b (about 0.7 KiB per SA with MODP-2048; a
        gateway holding 100,000 SAs keeps only keys, IDs and the last message pair).
        SKEYID itself and SKEYID_e (already expanded into the cipher) go too; Quick Mode
        and Informational exchanges need only SKEYID_d and SKEYID_a. The payload cipher
        lets go of its key schedule until the next message (``CryptoState.release``)."""
        self.dh = None
        self.sa_b = self.g_xi = self.g_xr = self.nonce_i = self.nonce_r = b""
        if self.skeyid is not None:
            self.skeyid.forget_skeyid_e()
        if self.crypto is not None:
            self.crypto.release()

    def wipe_keys(self) -> None:
        """The SA is gone: zero its SKEYID family, its payload cipher key, its Quick Modes'
        PFS secrets and the keys of the IPsec SAs still on it, and drop them (no message can
        be sealed or opened any more)."""
        self.dh = None
        if self.skeyid is not None:
            self.skeyid.wipe()
            self.skeyid = None
        if self.crypto is not None:
            self.crypto.wipe()
            self.crypto = None
        for qm in self.quick_modes.values():  # its installed keys belong to an IpsecSa
            qm.dh = None
            keymat.wipe(qm.g_qm_xy)
            qm.g_qm_xy = None
        for ipsec in self.ipsec_sas:
            ipsec.wipe_keys()
