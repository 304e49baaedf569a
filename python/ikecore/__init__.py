"""ikecore: an IKEv1 (ISAKMP, RFC 2408/2407/2409) engine with a Rust core.

The package root re-exports the public surface; everything else is reachable as
``ikecore.<module>``. Importing ikecore is cheap: heavy modules load on use.
"""

from __future__ import annotations

from ikecore._core import __version__
from ikecore.errors import (
    AuthenticationFailed,
    ConfigError,
    CryptoError,
    IkeError,
    InvalidCookie,
    InvalidKeyInformation,
    InvalidPayloadType,
    LocalProtocolError,
    NegotiationFailed,
    NegotiationTimeout,
    NoProposalChosen,
    PayloadMalformed,
    ProtocolError,
    RemoteProtocolError,
)

__all__ = [
    "__version__",
    "AuthenticationFailed",
    "ConfigError",
    "CryptoError",
    "IkeError",
    "InvalidCookie",
    "InvalidKeyInformation",
    "InvalidPayloadType",
    "LocalProtocolError",
    "NegotiationFailed",
    "NegotiationTimeout",
    "NoProposalChosen",
    "PayloadMalformed",
    "ProtocolError",
    "RemoteProtocolError",
]
