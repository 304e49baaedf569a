"""Every exception ikecore raises (imports nothing from ikecore).

The hierarchy follows h11's split of protocol errors by who broke the rules:

    IkeError
    +-- ConfigError (ValueError)          bad user input: config file, CLI flag
    +-- NegotiationFailed                 ``Gateway.connect`` ended without the SAs asked for
    |   +-- NegotiationTimeout (TimeoutError)   ... because the peer never answered in time
    +-- CryptoError                       local crypto misuse (reused key pair, ...)
    +-- ProtocolError                     abstract: a rule of RFC 2408/2409 was broken
        +-- LocalProtocolError            our caller broke it (e.g. sent in wrong state)
        +-- RemoteProtocolError           the peer broke it (bad bytes, bad hash, ...)
            +-- PayloadMalformed (ValueError) ... one class per Notify Message Type

Each ``RemoteProtocolError`` subclass pins the Notify Message Type (RFC 2408
section 3.14.1) that a responder answers with; an instance may override it.
Errors about input bytes also subclass ``ValueError`` so that plain callers can
catch them without importing ikecore.
"""

from __future__ import annotations

__all__ = [
    "IkeError",
    "ConfigError",
    "NegotiationFailed",
    "NegotiationTimeout",
    "CryptoError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "InvalidPayloadType",
    "DoiNotSupported",
    "SituationNotSupported",
    "InvalidCookie",
    "InvalidMajorVersion",
    "InvalidMinorVersion",
    "InvalidExchangeType",
    "InvalidFlags",
    "InvalidMessageId",
    "InvalidProtocolId",
    "InvalidSpi",
    "InvalidTransformId",
    "AttributesNotSupported",
    "NoProposalChosen",
    "BadProposalSyntax",
    "PayloadMalformed",
    "InvalidKeyInformation",
    "InvalidIdInformation",
    "InvalidCertEncoding",
    "InvalidCertificate",
    "CertTypeUnsupported",
    "InvalidCertAuthority",
    "InvalidHashInformation",
    "AuthenticationFailed",
    "InvalidSignature",
    "UnsupportedExchangeType",
    "UnequalPayloadLengths",
    "NOTIFY_ERROR_CLASSES",
]


class IkeError(Exception):
    """Root of every ikecore exception."""


class ConfigError(IkeError, ValueError):
    """A configuration value or command-line flag is invalid.

    The message is one line naming the field and how to fix it. Raised by a library call
    (``Config``, ``config_from_flags``, ``load_config``, proposal parsing), ``key`` is the
    configuration key (``ike``, ``filter[2].local_ts``); the command line names its flag
    instead (``ikecore.config.flag_message``).
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.key = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class NegotiationFailed(IkeError):
    """A negotiation ended without the SAs asked for (``ikecore.gateway.Gateway.connect``).

    Attributes:
        reason: one line saying why (``peer sent NO-PROPOSAL-CHOSEN``).
        notify: the Notify Message Type that ended it (``ikecore.wire.NotifyType``, an
            ``int``: the one the peer sent, else the one we sent), or None.
        phase: 1 (Main or Aggressive Mode) or 2 (Quick Mode).
        handle: the engine's handle of the ISAKMP SA.
        result: what was negotiated before the failure (``ConnectResult``), or None.
    """

    def __init__(self, reason: str, *, notify: int | None = None, phase: int = 1, handle: int | None = None,
                 result: object = None) -> None:
        self.reason = reason
        self.notify = notify
        self.phase = phase
        self.handle = handle
        self.result = result
        name = getattr(notify, "name", None)
        told = f" ({name})" if name and name.replace("_", "-") not in reason else ""
        super().__init__(f"phase {phase}: {reason}{told}")


class NegotiationTimeout(NegotiationFailed, TimeoutError):
    """The peer did not answer before the deadline (``notify`` is None)."""


class CryptoError(IkeError):
    """Local misuse of a crypto object (e.g. a single-use DH key pair used twice)."""


class ProtocolError(IkeError):
    """A protocol rule was broken. Abstract: raise one of the subclasses.

    Attributes:
        notify_type: the Notify Message Type (RFC 2408 section 3.14.1) a
            responder should answer with, or None when nothing is sent back.
    """

    notify_type: int | None = None

    def __init__(self, message: str = "", *, notify_type: int | None = None) -> None:
        super().__init__(message)
        if notify_type is not None:
            self.notify_type = notify_type

    def __new__(cls, *args: object, **kwargs: object) -> "ProtocolError":
        if cls is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        return super().__new__(cls)


class LocalProtocolError(ProtocolError):
    """Our caller asked for something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


# RFC 2408 section 3.14.1 Notify Message Types - Errors (1-30).


class InvalidPayloadType(RemoteProtocolError, ValueError):
    """INVALID-PAYLOAD-TYPE (1)."""

    notify_type = 1


class DoiNotSupported(RemoteProtocolError, ValueError):
    """DOI-NOT-SUPPORTED (2)."""

    notify_type = 2


class SituationNotSupported(RemoteProtocolError, ValueError):
    """SITUATION-NOT-SUPPORTED (3)."""

    notify_type = 3


class InvalidCookie(RemoteProtocolError, ValueError):
    """INVALID-COOKIE (4)."""

    notify_type = 4


class InvalidMajorVersion(RemoteProtocolError, ValueError):
    """INVALID-MAJOR-VERSION (5)."""

    notify_type = 5


class InvalidMinorVersion(RemoteProtocolError, ValueError):
    """INVALID-MINOR-VERSION (6)."""

    notify_type = 6


class InvalidExchangeType(RemoteProtocolError, ValueError):
    """INVALID-EXCHANGE-TYPE (7)."""

    notify_type = 7


class InvalidFlags(RemoteProtocolError, ValueError):
    """INVALID-FLAGS (8)."""

    notify_type = 8


class InvalidMessageId(RemoteProtocolError, ValueError):
    """INVALID-MESSAGE-ID (9)."""

    notify_type = 9


class InvalidProtocolId(RemoteProtocolError, ValueError):
    """INVALID-PROTOCOL-ID (10)."""

    notify_type = 10


class InvalidSpi(RemoteProtocolError, ValueError):
    """INVALID-SPI (11)."""

    notify_type = 11


class InvalidTransformId(RemoteProtocolError, ValueError):
    """INVALID-TRANSFORM-ID (12)."""

    notify_type = 12


class AttributesNotSupported(RemoteProtocolError):
    """ATTRIBUTES-NOT-SUPPORTED (13)."""

    notify_type = 13


class NoProposalChosen(RemoteProtocolError):
    """NO-PROPOSAL-CHOSEN (14)."""

    notify_type = 14


class BadProposalSyntax(RemoteProtocolError, ValueError):
    """BAD-PROPOSAL-SYNTAX (15)."""

    notify_type = 15


class PayloadMalformed(RemoteProtocolError, ValueError):
    """PAYLOAD-MALFORMED (16)."""

    notify_type = 16


class InvalidKeyInformation(RemoteProtocolError, ValueError):
    """INVALID-KEY-INFORMATION (17)."""

    notify_type = 17


class InvalidIdInformation(RemoteProtocolError, ValueError):
    """INVALID-ID-INFORMATION (18)."""

    notify_type = 18


class InvalidCertEncoding(RemoteProtocolError, ValueError):
    """INVALID-CERT-ENCODING (19)."""

    notify_type = 19


class InvalidCertificate(RemoteProtocolError):
    """INVALID-CERTIFICATE (20)."""

    notify_type = 20


class CertTypeUnsupported(RemoteProtocolError):
    """CERT-TYPE-UNSUPPORTED (21)."""

    notify_type = 21


class InvalidCertAuthority(RemoteProtocolError):
    """INVALID-CERT-AUTHORITY (22)."""

    notify_type = 22


class InvalidHashInformation(RemoteProtocolError, ValueError):
    """INVALID-HASH-INFORMATION (23)."""

    notify_type = 23


class AuthenticationFailed(RemoteProtocolError):
    """AUTHENTICATION-FAILED (24)."""

    notify_type = 24


class InvalidSignature(RemoteProtocolError):
    """INVALID-SIGNATURE (25)."""

    notify_type = 25


class UnsupportedExchangeType(RemoteProtocolError):
    """UNSUPPORTED-EXCHANGE-TYPE (29)."""

    notify_type = 29


class UnequalPayloadLengths(RemoteProtocolError, ValueError):
    """UNEQUAL-PAYLOAD-LENGTHS (30)."""

    notify_type = 30


#: Notify Message Type -> the exception class that pins it.
NOTIFY_ERROR_CLASSES: dict[int | None, type[RemoteProtocolError]] = {
    cls.notify_type: cls
    for cls in (
        InvalidPayloadType, DoiNotSupported, SituationNotSupported, InvalidCookie,
        InvalidMajorVersion, InvalidMinorVersion, InvalidExchangeType, InvalidFlags,
        InvalidMessageId, InvalidProtocolId, InvalidSpi, InvalidTransformId,
        AttributesNotSupported, NoProposalChosen, BadProposalSyntax, PayloadMalformed,
        InvalidKeyInformation, InvalidIdInformation, InvalidCertEncoding, InvalidCertificate,
        CertTypeUnsupported, InvalidCertAuthority, InvalidHashInformation,
        AuthenticationFailed, InvalidSignature, UnsupportedExchangeType, UnequalPayloadLengths,
    )
}
