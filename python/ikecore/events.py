"""Events: frozen facts the engine reports; they carry no behaviour.

The monitor counts them; applications read them with ``Engine.next_event()``.
Addresses are ``(ip, port)`` tuples; cookies and SPIs are bytes.

``event_fields(event)`` is the one outside representation of an event (logs, JSON, docs):
``event`` (the class name in snake case, ``phase1_established``) and every field, with
bytes as lower-case hex, enums by name (``INITIAL_CONTACT``), addresses as ``ADDR:PORT``
text (``[v6]:PORT``), tuples as lists, numbers and strings as they are.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields
from typing import Any

Address = tuple[str, int]

__all__ = [
    "Address", "Event", "DatagramReceived", "DatagramSent", "InvalidPacketReceived",
    "InvalidCookieReceived", "RetransmitSent", "DuplicateReceived", "Phase1Started",
    "Phase1Established", "Phase1Failed", "AuthenticationFailed", "Phase2Started",
    "Phase2Established", "Phase2Failed", "SpiAllocated", "KeyAdded", "KeyUpdated",
    "DriverFailed", "NotifyReceived", "NotifySent", "SaDeleted", "DeleteReceived",
    "RekeyStarted", "Rekeyed", "RekeyCollision", "ResponderLifetime", "AcquireStarted",
    "AcquireSucceeded", "AcquireFailed", "SoftSaCreated",
    "DeadPeerDetected", "NatKeepaliveSent", "DeleteSent",
    "StatelessCookieSent", "StatelessCookieVerified", "HalfOpenRefused", "HalfOpenDropped",
    "ReplayDropped", "LimitReached", "SasRestored", "StoreFailed", "event_fields", "event_name",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of every engine event."""

    time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DatagramReceived(Event):
    exchange_type: int
    message_number: int  # 1-based within its exchange, 0 when unknown
    length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DatagramSent(Event):
    exchange_type: int
    message_number: int
    length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InvalidPacketReceived(Event):
    """An IKE message with invalid header fields, lengths, payloads or unexpected state."""

    remote: Address
    reason: str
    notify_type: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class InvalidCookieReceived(Event):
    """A message whose cookies match no active negotiation or SA."""

    remote: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class RetransmitSent(Event):
    handle: int
    exchange_type: int
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DuplicateReceived(Event):
    """A retransmitted request that we answered by resending our last reply."""

    handle: int
    exchange_type: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase1Started(Event):
    handle: int
    role: str
    remote: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase1Established(Event):
    handle: int
    role: str
    local: Address
    remote: Address
    initiator_cookie: bytes
    responder_cookie: bytes
    proposal: str
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase1Failed(Event):
    handle: int
    role: str
    remote: Address
    reason: str
    notify_type: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationFailed(Event):
    """Identity authentication failed in Main Mode (e.g. mismatched pre-shared keys)."""

    handle: int
    remote: Address
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase2Started(Event):
    handle: int
    message_id: int
    role: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase2Established(Event):
    handle: int
    message_id: int
    role: str
    spi_in: bytes
    spi_out: bytes
    proposal: str
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase2Failed(Event):
    handle: int
    message_id: int
    role: str
    reason: str
    notify_type: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpiAllocated(Event):
    """A Get SPI request to the IPsec driver (succeeded or not)."""

    spi: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyAdded(Event):
    """An outbound Quick Mode SA added to the IPsec driver."""

    spi: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyUpdated(Event):
    """An inbound Quick Mode SA added (updated) in the IPsec driver."""

    spi: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverFailed(Event):
    operation: str  # "get_spi", "add_outbound", "update_inbound", "delete"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyReceived(Event):
    handle: int | None
    remote: Address
    notify_type: int
    protected: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifySent(Event):
    handle: int | None
    remote: Address
    notify_type: int
    protected: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteReceived(Event):
    handle: int
    protocol_id: int
    spis: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SaDeleted(Event):
    """An ISAKMP SA (phase 1, ``spi`` None) or an IPsec SA left the SA database."""

    handle: int
    phase: int
    spi: bytes | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RekeyStarted(Event):
    """A rekey began: phase 1 (new Main Mode, ``spi`` None) or phase 2 (``spi`` = old spi_in)."""

    handle: int
    phase: int
    spi: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rekeyed(Event):
    """A new SA is in place and the old one (``old_handle``/``old_spi``) is being retired."""

    handle: int
    phase: int
    old_handle: int
    old_spi: bytes | None
    new_spi: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RekeyCollision(Event):
    """Both peers rekeyed the same IPsec SA at once; ``loser_spi`` (our spi_in) is deleted."""

    handle: int
    winner_spi: bytes
    loser_spi: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponderLifetime(Event):
    """RESPONDER-LIFETIME (RFC 2407 4.6.3.1) sent or honoured for a Quick Mode."""

    handle: int
    message_id: int
    sent: bool
    seconds: int | None
    kilobytes: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireStarted(Event):
    """``Engine.acquire`` took a flow into the acquire heap."""

    acquire: int
    local: Address
    remote: Address
    filter: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireSucceeded(Event):
    """The acquire's Quick Mode SA is installed (or ``soft`` = it falls back to clear)."""

    acquire: int
    handle: int
    spi_in: bytes | None
    soft: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireFailed(Event):
    """An acquire ended without SAs. ``cause``: "negotiation" (its own Main or Quick Mode
    failed, already reported and counted as such), "queued" (it waited behind another
    acquire's Main Mode, which failed), "filter" (no filter for the flow) or "deleted" (the
    ISAKMP SA it waited on went away)."""

    acquire: int
    reason: str
    cause: str = "negotiation"


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftSaCreated(Event):
    """The peer never answered Main Mode and the filter allows clear text: a soft SA."""

    acquire: int
    local: Address
    remote: Address
    expires: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadPeerDetected(Event):
    """RFC 3706: no R-U-THERE-ACK within the DPD timeout; the peer's SAs are deleted."""

    handle: int
    remote: Address
    unanswered: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NatKeepaliveSent(Event):
    """A NAT keepalive (RFC 3948 section 2.3) left for the peer of ISAKMP SA ``handle``."""

    handle: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteSent(Event):
    """We told the peer, in a protected Informational, that SAs are gone."""

    handle: int
    protocol_id: int
    spis: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StatelessCookieSent(Event):
    """Message 1 answered without state (the half-open threshold is passed; ikecore.engine.admission)."""

    remote: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class StatelessCookieVerified(Event):
    """Message 3 proved its source with a stateless cookie; the SA was created now."""

    handle: int
    remote: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class HalfOpenRefused(Event):
    """Message 1 (or a stateless message 3) refused by a half-open limit; nothing kept."""

    remote: Address
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HalfOpenDropped(Event):
    """The oldest half-open SA was dropped to make room for a new one."""

    handle: int
    remote: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayDropped(Event):
    """A protected message that was already processed: no effect (the SA's endpoint stays).

    ``reason``: ``message_id`` (its Message ID is used and finished) or ``endpoint`` (a
    repeat of a message already processed, arriving from another address or port)."""

    handle: int
    remote: Address
    message_id: int
    reason: str = "message_id"


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitReached(Event):
    """A peer asked for more than a configured limit allows (``ikecore.config.Limits``);
    the request was refused and nothing was kept.

    ``limit``: the ``[limits]`` key that was reached (``quick_modes_in_flight``,
    ``ipsec_sas_per_isakmp_sa``, ``isakmp_sas_per_peer`` or ``isakmp_sas``); ``handle``:
    the ISAKMP SA the refused Quick Mode came on, None for a refused ISAKMP SA."""

    limit: str
    remote: Address
    handle: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SasRestored(Event):
    """The SA store was loaded at start: ISAKMP and IPsec SAs back in the engine."""

    isakmp: int
    ipsec: int
    sas: tuple[tuple[int, int], ...] = ()  # (handle, IPsec SA pairs) of each restored ISAKMP SA


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreFailed(Event):
    """The SA store could not be written (retried at the next change) or a record loaded."""

    operation: str  # "write" or "load"
    reason: str


#: Integer fields that name an ISAKMP enumeration (``ikecore.wire``): shown by name.
_ENUM_FIELDS = {"notify_type": "NotifyType", "exchange_type": "ExchangeType", "protocol_id": "ProtocolId"}
_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def event_name(event: Event | type[Event]) -> str:
    """The event's class name in snake case: ``Phase1Established`` -> ``phase1_established``."""
    kind = event if isinstance(event, type) else type(event)
    return _plan(kind)[0]


#: class -> (snake-case name, field names): computed once per class, since a busy gateway
#: turns an event into its outside form for every log line
_PLANS: dict[type, tuple[str, tuple[str, ...]]] = {}


def _plan(kind: type) -> tuple[str, tuple[str, ...]]:
    plan = _PLANS.get(kind)
    if plan is None:
        names = tuple(item.name for item in fields(kind)) if hasattr(kind, "__dataclass_fields__") else ()
        plan = _PLANS[kind] = (_WORD.sub("_", kind.__name__).lower(), names)
    return plan


def _outside(value: Any, field_name: str = "") -> Any:
    """One value in its outside representation (see the module docstring)."""
    kind = type(value)
    if kind is str or kind is float or value is None:  # the usual cases first
        return value
    if kind is bytes:
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        enum_name = _ENUM_FIELDS.get(field_name)
        if enum_name is not None:
            from ikecore import wire

            try:
                return getattr(wire, enum_name)(value).name
            except ValueError:
                return value
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int) \
            and not isinstance(value[1], bool):
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(value, (tuple, list, set, frozenset)):
        return [_outside(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _outside(v) for k, v in value.items()}
    return str(value)


def event_fields(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict: ``event`` (``event_name``), then each field in
    its outside representation (the module docstring); ``time`` stays the engine's clock."""
    name, names = _plan(type(event))
    out: dict[str, Any] = {"event": name}
    for field_name in names:
        out[field_name] = _outside(getattr(event, field_name), field_name)
    return out
