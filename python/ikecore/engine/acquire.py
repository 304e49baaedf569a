"""Acquires and soft SAs: on-demand negotiation, a helper of the engine (``EngineServices``).

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
``counts()``: Active Acquire = outstanding + queued (the IP Security Monitor document: "the
outstanding request and the number of queued requests") = Acquire Heap Size. Acquire
Failures count failed negotiations of ours plus acquires that failed without one (no
filter, queued behind a Main Mode that failed, SA deleted); a soft SA follows a failed
(unanswered) Main Mode, which stays counted as such. Driver failures (Get SPI, key
addition, key update) fail the Quick Mode and so the acquire.

The engine tells the heap where a negotiation ends, right after it queues the event that
reports it: ``phase1_established``, ``phase1_failed``, ``quick_mode_ended`` (established or
failed) and ``isakmp_deleted``. Every path that ends a negotiation -- replies, timeouts,
retransmission limits, deletes -- passes through one of them, so it settles the acquires
waiting on it; their own events follow the event that settled them. A soft SA lasts ``soft_sa_lifetime`` seconds of the filter; afterwards a new acquire tries
Main Mode again.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from ikecore import events as ev
from ikecore.engine.services import EngineServices
from ikecore.errors import ConfigError
from ikecore.events import Address
from ikecore.sa import Phase1State, Role

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

    def counts(self) -> tuple[int, int]:
        """(acquires in the heap, of which queued: no negotiation of their own in flight)."""
        return len(self._entries), sum(1 for entry in self._entries.values() if not entry.active)

    def soft_snapshot(self, now: float) -> list[dict[str, Any]]:
        """The soft SAs still in force at ``now``, one row (JSON-ready) each."""
        self._soft = [s for s in self._soft if s.expires > now]
        return [{"me": s.local[0], "peer": s.remote[0], "filter": s.filter_name, "encryption": "none",
                 "integrity": "none", "created": s.created, "lifetime_left": s.expires - now}
                for s in self._soft]

    # --- requests -----------------------------------------------------------------------

    def start(self, engine: EngineServices, remote: Address, local: Address, now: float,
              filter_name: str | None) -> int:
        """A new acquire; returns its id (its result event may already be queued)."""
        ident = self._next
        self._next += 1
        engine.emit(ev.AcquireStarted(time=now, acquire=ident, local=local, remote=remote, filter=filter_name))
        try:
            flt = engine.filter_for(local, remote, filter_name)
        except ConfigError as exc:
            engine.emit(ev.AcquireFailed(time=now, acquire=ident, reason=str(exc), cause="filter"))
            return ident
        self._soft = [s for s in self._soft if s.expires > now]
        if any(s.remote[0] == remote[0] and s.filter_name == flt.name for s in self._soft):
            engine.emit(ev.AcquireSucceeded(time=now, acquire=ident, handle=0, spi_in=None, soft=True))
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

    def _quick_mode(self, engine: EngineServices, entry: Acquire, handle: int, now: float) -> None:
        entry.handle, entry.active = handle, True
        message_id = engine.initiate_quick_mode(handle, now)
        sa = engine.sa(handle)
        if sa is None or message_id not in sa.quick_modes:
            self._finish(engine, entry, now, failed="Quick Mode could not start (IPsec driver has no SPI?)")
            return
        entry.message_id = message_id

    def _finish(self, engine: EngineServices, entry: Acquire, now: float, *, failed: str | None = None,
                spi_in: bytes | None = None, soft: bool = False, cause: str = "negotiation") -> None:
        if self._entries.pop(entry.ident, None) is None:
            return
        self._heap = [item for item in self._heap if item[1] != entry.ident]
        heapq.heapify(self._heap)
        if failed is not None:
            engine.emit(ev.AcquireFailed(time=now, acquire=entry.ident, reason=failed, cause=cause))
        else:
            engine.emit(ev.AcquireSucceeded(time=now, acquire=entry.ident, handle=entry.handle or 0,
                                             spi_in=spi_in, soft=soft))

    def _ordered(self) -> list[Acquire]:
        return [self._entries[ident] for _t, ident in sorted(self._heap) if ident in self._entries]

    # --- where negotiations end (the engine calls these) -----------------------------------

    def phase1_established(self, engine: EngineServices, handle: int, now: float) -> None:
        """ISAKMP SA ``handle`` is up: start the Quick Mode of every acquire waiting on it."""
        if not self._entries:
            return
        for entry in self._ordered():
            if entry.handle == handle and entry.message_id is None:
                self._quick_mode(engine, entry, handle, now)

    def phase1_failed(self, engine: EngineServices, handle: int, reason: str, now: float) -> None:
        """The Main Mode of ISAKMP SA ``handle`` failed (the SA is not forgotten yet)."""
        if not self._entries or not handle:
            return
        waiting = [e for e in self._ordered() if e.handle == handle]
        if not waiting:
            return
        sa = engine.sa(handle)
        unanswered = sa is not None and sa.responder_cookie == ZERO_COOKIE
        flt = sa.generic_filter if sa is not None else None
        if unanswered and flt is not None and flt.fallback_to_clear:
            first = waiting[0]
            soft = SoftSa(first.local, first.remote, flt.name, now, now + flt.soft_sa_lifetime)
            self._soft.append(soft)
            engine.emit(ev.SoftSaCreated(time=now, acquire=first.ident, local=soft.local, remote=soft.remote,
                                         expires=soft.expires))
            for entry in waiting:
                self._finish(engine, entry, now, soft=True)
            return
        for entry in waiting:  # queued ones had no negotiation of their own to count
            self._finish(engine, entry, now, failed=f"Main Mode failed: {reason}",
                         cause="negotiation" if entry.active else "queued")

    def quick_mode_ended(self, engine: EngineServices, event: ev.Phase2Established | ev.Phase2Failed) -> None:
        """A Quick Mode was established or failed: settle the acquire that started it."""
        if not self._entries:
            return
        key = (event.handle, event.message_id)
        for entry in self._ordered():
            if (entry.handle, entry.message_id) == key:
                if isinstance(event, ev.Phase2Established):
                    self._finish(engine, entry, event.time, spi_in=event.spi_in)
                else:
                    self._finish(engine, entry, event.time, failed=event.reason)

    def isakmp_deleted(self, engine: EngineServices, handle: int, reason: str, now: float) -> None:
        """ISAKMP SA ``handle`` is gone: the acquires waiting on it fail."""
        if not self._entries:
            return
        for entry in self._ordered():
            if entry.handle == handle:
                self._finish(engine, entry, now, failed=f"ISAKMP SA deleted: {reason}", cause="deleted")
