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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ikecore import keymat, policy, wire
from ikecore.dh import KeyPair
from ikecore.driver import IpsecSaKeys
from ikecore.events import Address

if TYPE_CHECKING:  # the class only: importing cryptography here would slow `ikecore monitor`
    from cryptography import x509

__all__ = ["Role", "Phase1State", "Phase2State", "IsakmpSa", "QuickModeExchange", "IpsecSa",
           "id_to_text"]


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


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


class Phase2State(enum.Enum):
    """Quick Mode states (RFC 2409 section 5.5)."""

    I_QUEUED = "I_QUEUED"          # held back by the filter's quick_mode_window
    I_EXPECT_QM2 = "I_EXPECT_QM2"
    R_EXPECT_QM1 = "R_EXPECT_QM1"
    R_EXPECT_QM3 = "R_EXPECT_QM3"
    ESTABLISHED = "ESTABLISHED"
    FAILED = "FAILED"


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


#: The vendor IDs of an SA that received none yet: one list shared by all (never changed).
_NO_VENDOR_IDS: list[bytes] = []


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
    last_received: bytes = b""
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
        is ignored, never answered). Kept: the last message received, by which a repeat is
        known, and the initiator's QM3, sent again when QM2 is repeated."""
        self.nonce_i = self.nonce_r = b""
        self.id_ci = self.id_cr = None
        self.installed = ()
        if self.role is Role.RESPONDER:
            self.last_sent = b""


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
    last_received: bytes = b""
    last_sent: bytes = b""
    retransmits: int = 0
    next_retransmit: float | None = None
    quick_modes: dict[int, QuickModeExchange] = field(default_factory=dict)
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
    dpd_pending: list[int] = field(default_factory=list)  # unanswered R-U-THERE numbers
    dpd_since: float | None = None  # when the oldest unanswered R-U-THERE left
    last_heard: float = 0.0        # the last authenticated message from the peer
    spent_message_ids: dict[int, None] = field(default_factory=dict)  # finished M-IDs, oldest first

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
        and Informational exchanges need only SKEYID_d and SKEYID_a."""
        self.dh = None
        self.sa_b = self.g_xi = self.g_xr = self.nonce_i = self.nonce_r = b""
        if self.skeyid is not None:
            self.skeyid.forget_skeyid_e()

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
