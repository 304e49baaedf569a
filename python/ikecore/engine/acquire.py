"""Acquires and soft SAs (layer L4, the engine's helper): on-demand negotiation.

Design note
-----------
An *acquire* is the IPsec driver asking IKE for SAs because outbound traffic matched a
specific filter with no SA (``Engine.acquire(remote, local=..., now=...)``). Each acquire
enters the acquire heap (ordered by request time) and leaves it with exactly one result
event: ``AcquireSucceeded`` (Quick Mode SAs installed, or ``soft=True``) or
``AcquireFailed``.

::

    acquire ──no filter──────────────────────────────────────────> AcquireFailed
       │ soft SA to this peer still in force ────────────────────> AcquireSucceeded(soft)
       │ ISAKMP SA established ───> Quick Mode (active) ──ok────> AcquireSucceeded
       │                                                  └fail──> AcquireFailed
       │ our Main Mode to the peer in flight ──> queued ──MM up──> Quick Mode (active) ...
       └ otherwise ──> Main Mode (active) ──MM up──> Quick Mode ...
                                         └MM failed, peer never answered and the filter
                                          allows fallback_to_clear ──> SoftSaCreated +
                                          AcquireSucceeded(soft); other failures ──>
                                          AcquireFailed

*Active* acquires have their own negotiation in flight (the one that started the Main
Mode, or one whose Quick Mode runs); *queued* ones wait behind another acquire's Main Mode
to the same peer. The monitor counts every negotiation we run as an outstanding acquire
(``connect``/``initiate`` and rekeys are acquires too) and adds the queued ones from
``counts()``: Active Acquire = outstanding + queued (the seed: "the outstanding request and
the number of queued requests") = Acquire Heap Size. Acquire Failures count failed
negotiations of ours plus acquires that failed without one (no filter, queued behind a
Main Mode that failed, SA deleted); a
soft SA follows a failed (unanswered) Main Mode, which stays counted as such. Driver
failures (Get SPI, key addition, key update) fail the Quick Mode and so the acquire.

The heap follows the engine's events (``observe``), so every path that ends a negotiation
-- replies, timeouts, retransmission limits, deletes -- settles the acquires waiting on it.
A soft SA lasts ``soft_sa_lifetime`` seconds of the filter; afterwards a new acquire tries
Main Mode again.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ikecore import events as ev
from ikecore.errors import ConfigError
from ikecore.events import Address
from ikecore.sa import Phase1State, Role

if TYPE_CHECKING:
    from ikecore.engine.core import Engine

__all__ = ["Acquire", "AcquireHeap", "SoftSa"]

ZERO_COOKIE = bytes(8)


@dataclass(slots=True)
class Acquire:
    """One pending acquire."""

    ident: int
    local: Address
    remote: Address
    filter_name: str
    requested: float
    handle: int | None = None
    message_id: int | None = None
    active: bool = False


@dataclass(frozen=True, slots=True)
class SoftSa:
    """Clear text allowed to a peer that did not answer Main Mode."""

    local: Address
    remote: Address
    filter_name: str
    created: float
    expires: float


class AcquireHeap:
    """The acquire heap and the soft SAs of one engine."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._entries: dict[int, Acquire] = {}
        self._soft: list[SoftSa] = []
        self._next = 1

    @property
    def waiting(self) -> bool:
        return bool(self._entries)

    def counts(self) -> tuple[int, int]:
        """(acquires in the heap, of which queued: no negotiation of their own in flight)."""
        return len(self._entries), sum(1 for entry in self._entries.values() if not entry.active)

    def soft_snapshot(self, now: float) -> list[dict[str, Any]]:
        self._soft = [s for s in self._soft if s.expires > now]
        return [{"me": s.local[0], "peer": s.remote[0], "filter": s.filter_name, "encryption": "none",
                 "integrity": "none", "created": s.created, "lifetime_left": s.expires - now}
                for s in self._soft]

    # --- requests -----------------------------------------------------------------------

    def start(self, engine: Engine, remote: Address, local: Address, now: float, filter_name: str | None) -> int:
        ident = self._next
        self._next += 1
        engine._emit(ev.AcquireStarted(time=now, acquire=ident, local=local, remote=remote, filter=filter_name))
        try:
            flt = engine._filter(local, remote, filter_name)
        except ConfigError as exc:
            engine._emit(ev.AcquireFailed(time=now, acquire=ident, reason=str(exc), cause="filter"))
            return ident
        self._soft = [s for s in self._soft if s.expires > now]
        if any(s.remote[0] == remote[0] and s.filter_name == flt.name for s in self._soft):
            engine._emit(ev.AcquireSucceeded(time=now, acquire=ident, handle=0, spi_in=None, soft=True))
            return ident
        entry = Acquire(ident, local, remote, flt.name, now)
        self._entries[ident] = entry
        heapq.heappush(self._heap, (now, ident))
        sas = [sa for sa in engine.sas() if sa.remote[0] == remote[0] and sa.generic_filter.name == flt.name
               and not sa.superseded]
        established = next((sa for sa in sas if sa.state is Phase1State.ESTABLISHED), None)
        pending = next((sa for sa in sas if sa.role is Role.INITIATOR and sa.state.value.startswith("I_EXPECT")),
                       None)
        if established is not None:
            self._quick_mode(engine, entry, established.handle, now)
        elif pending is not None:
            entry.handle = pending.handle  # queued behind that Main Mode
        else:
            try:
                entry.handle = engine.initiate(remote, local=local, now=now, quick_mode=False, filter_name=flt.name)
            except ConfigError as exc:  # pragma: no cover - the filter was found above
                self._finish(engine, entry, now, failed=str(exc))
                return ident
            entry.active = True
        return ident

    def _quick_mode(self, engine: Engine, entry: Acquire, handle: int, now: float) -> None:
        entry.handle, entry.active = handle, True
        message_id = engine.initiate_quick_mode(handle, now)
        sa = engine.sa(handle)
        if sa is None or message_id not in sa.quick_modes:
            self._finish(engine, entry, now, failed="Quick Mode could not start (IPsec driver has no SPI?)")
            return
        entry.message_id = message_id

    def _finish(self, engine: Engine, entry: Acquire, now: float, *, failed: str | None = None,
                spi_in: bytes | None = None, soft: bool = False, cause: str = "negotiation") -> None:
        if self._entries.pop(entry.ident, None) is None:
            return
        self._heap = [item for item in self._heap if item[1] != entry.ident]
        heapq.heapify(self._heap)
        if failed is not None:
            engine._emit(ev.AcquireFailed(time=now, acquire=entry.ident, reason=failed, cause=cause))
        else:
            engine._emit(ev.AcquireSucceeded(time=now, acquire=entry.ident, handle=entry.handle or 0,
                                             spi_in=spi_in, soft=soft))

    def _ordered(self) -> list[Acquire]:
        return [self._entries[ident] for _t, ident in sorted(self._heap) if ident in self._entries]

    # --- engine events --------------------------------------------------------------------

    def observe(self, engine: Engine, event: ev.Event) -> None:
        """Advance the acquires waiting on the negotiation ``event`` reports."""
        now = event.time
        if isinstance(event, ev.Phase1Established):
            for entry in self._ordered():
                if entry.handle == event.handle and entry.message_id is None:
                    self._quick_mode(engine, entry, event.handle, now)
        elif isinstance(event, ev.Phase1Failed):
            waiting = [e for e in self._ordered() if e.handle == event.handle and event.handle]
            if waiting:
                self._phase1_failed(engine, waiting, event, now)
        elif isinstance(event, ev.Phase2Established):
            for entry in self._ordered():
                if (entry.handle, entry.message_id) == (event.handle, event.message_id):
                    self._finish(engine, entry, now, spi_in=event.spi_in)
        elif isinstance(event, ev.Phase2Failed):
            for entry in self._ordered():
                if (entry.handle, entry.message_id) == (event.handle, event.message_id):
                    self._finish(engine, entry, now, failed=event.reason)
        elif isinstance(event, ev.SaDeleted) and event.phase == 1:
            for entry in self._ordered():
                if entry.handle == event.handle:
                    self._finish(engine, entry, now, failed=f"ISAKMP SA deleted: {event.reason}", cause="deleted")

    def _phase1_failed(self, engine: Engine, waiting: list[Acquire], event: ev.Phase1Failed, now: float) -> None:
        sa = engine.sa(event.handle)
        unanswered = sa is not None and sa.responder_cookie == ZERO_COOKIE
        flt = sa.generic_filter if sa is not None else None
        if unanswered and flt is not None and flt.fallback_to_clear:
            first = waiting[0]
            soft = SoftSa(first.local, first.remote, flt.name, now, now + flt.soft_sa_lifetime)
            self._soft.append(soft)
            engine._emit(ev.SoftSaCreated(time=now, acquire=first.ident, local=soft.local, remote=soft.remote,
                                          expires=soft.expires))
            for entry in waiting:
                self._finish(engine, entry, now, soft=True)
            return
        for entry in waiting:  # queued ones had no negotiation of their own to count
            self._finish(engine, entry, now, failed=f"Main Mode failed: {event.reason}",
                         cause="negotiation" if entry.active else "queued")
