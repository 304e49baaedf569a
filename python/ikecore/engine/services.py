"""What the engine lends its helpers (``engine.acquire``, ``engine.rekey``).

Design note
-----------
The helpers act on many SAs at once but own none of them: they read the SAs, report
events, set timers, start and remove negotiations through :class:`EngineServices`,
which ``Engine`` implements. They never import the engine, so the engine can import
them without a circle, and they see only these public methods.
"""

from __future__ import annotations

from typing import Protocol

from ikecore import events as ev
from ikecore import wire
from ikecore.config import Config
from ikecore.engine.timers import TimerKind
from ikecore.events import Address
from ikecore.policy import GenericFilter
from ikecore.sa import IpsecSa, IsakmpSa

__all__ = ["EngineServices"]


class EngineServices(Protocol):
    """The engine as its helpers see it."""

    @property
    def config(self) -> Config: ...

    def random(self, size: int) -> bytes:
        """Bytes from the engine's random source."""
        ...

    def emit(self, event: ev.Event) -> None:
        """Queue ``event`` for ``Engine.next_event``."""
        ...

    def push_timer(self, deadline: float, handle: int, message_id: int, kind: TimerKind) -> None:
        """Fire the ``kind`` timer of SA ``handle`` (and Quick Mode ``message_id``) at ``deadline``."""
        ...

    def filter_for(self, local: Address, remote: Address, name: str | None) -> GenericFilter:
        """The filter named ``name``, else the one covering the address pair (ConfigError if none)."""
        ...

    def sa(self, handle: int) -> IsakmpSa | None: ...

    def sas(self) -> list[IsakmpSa]: ...

    def sas_with_identity(self, peer_id: wire.IdPayload) -> list[IsakmpSa]:
        """The established SAs whose peer identity may be ``peer_id`` (compare it in full),
        in the order of ``sas()``: found by an index, not a scan of every SA."""
        ...

    def initiate(self, remote: Address, *, local: Address, now: float, quick_mode: bool = True,
                 filter_name: str | None = None, natt_port: int | None = None) -> int: ...

    def initiate_quick_mode(self, handle: int, now: float, *, rekey_of: bytes | None = None) -> int: ...

    def remove_sa(self, sa: IsakmpSa, reason: str, *, notify_peer: bool) -> None:
        """Delete an ISAKMP SA and its IPsec SAs (Delete payloads to the peer if asked)."""
        ...

    def remove_ipsec(self, sa: IsakmpSa, ipsec: IpsecSa, reason: str, *, notify_peer: bool) -> None:
        """Delete one IPsec SA (a Delete payload to the peer if asked)."""
        ...
