"""What the exchanges may ask of their owner, the engine.

The state machines do no I/O and read no clock: randomness, Diffie-Hellman key pairs, the
key log, the wall-clock time for certificate validity, SPIs, SA installation and the
limits on Quick Modes are lent to them through these protocols, so that tests can make
every packet reproducible.
"""

from __future__ import annotations

import datetime
from typing import Protocol

from ikecore.dh import KeyPair
from ikecore.driver import IpsecSaKeys
from ikecore.sa import IsakmpSa, QuickModeExchange

__all__ = ["Services", "QuickModeServices"]


class Services(Protocol):
    """Capabilities the engine lends to the phase 1 state machines."""

    def random(self, size: int) -> bytes: ...
    def keypair(self, group: int) -> KeyPair: ...
    def keylog(self, line: str) -> None: ...

    def keylog_enabled(self) -> bool:
        """Whether ``keylog`` writes anywhere (the line holds a key: built only then)."""
        ...
    def wall_clock(self) -> datetime.datetime: ...


class QuickModeServices(Services, Protocol):
    """Phase 2 also allocates inbound SPIs and installs the negotiated IPsec SAs."""

    def get_spi(self, sa: IsakmpSa) -> bytes: ...
    def install(self, sa: IsakmpSa, qm: QuickModeExchange, inbound: IpsecSaKeys,
                outbound: IpsecSaKeys) -> None: ...

    def esp_answered(self, sa: IsakmpSa, qm: QuickModeExchange, offer: bytes, reply: bytes,
                     lifetime: bytes | None) -> None:
        """QM1's SA payload body ``offer`` was answered with ``reply`` (our SA payload body)
        without PFS, and with a RESPONDER-LIFETIME notify of data ``lifetime`` if not None:
        an express lane may answer its like."""
        ...

    def admit_quick_mode(self, sa: IsakmpSa) -> None:
        """The peer's QM1 verified: may it start one more Quick Mode on ``sa``?

        Raises:
            NoProposalChosen: a configured limit (``ikecore.config.Limits``) is reached.
        """
        ...
