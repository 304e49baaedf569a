"""An async stream of SA events for programs that import ikecore.

``async for event in gateway.sa_events(): ...`` yields the SA lifecycle events of one
``Gateway`` as they happen: phase 1 and phase 2 started, established, failed,
authentication failures and deletions (the vici ``ike-updown``/``child-updown`` and racoon
``show-event`` set). The stream is a bounded queue filled by a gateway listener on the
event loop: a slow reader never slows the negotiations; when the queue is full the oldest
event is dropped and ``dropped`` counts it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ikecore import events as ev

__all__ = ["SaEventStream", "SA_EVENTS"]

#: The event classes a stream yields.
SA_EVENTS: tuple[type[ev.Event], ...] = (
    ev.Phase1Started, ev.Phase1Established, ev.Phase1Failed, ev.AuthenticationFailed,
    ev.Phase2Started, ev.Phase2Established, ev.Phase2Failed, ev.SaDeleted,
)


class SaEventStream:
    """Async iterator over a gateway's SA events; ``close()`` (or ``async with``) ends it.

    Args:
        gateway: the ``ikecore.gateway.transport.Gateway`` to listen to.
        kinds: the event classes to keep (default ``SA_EVENTS``).
        maxsize: events kept for a slow reader before the oldest are dropped.
    """

    def __init__(self, gateway: Any, *, kinds: tuple[type[ev.Event], ...] = SA_EVENTS,
                 maxsize: int = 10000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._gateway = gateway
        self._kinds = kinds
        self._queue: deque[ev.Event] = deque()
        self._maxsize = maxsize
        self._wakeup: asyncio.Event = asyncio.Event()
        self._closed = False
        self.dropped = 0
        gateway.add_listener(self._on_event)

    def _on_event(self, event: ev.Event) -> None:
        if self._closed or not isinstance(event, self._kinds):
            return
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._wakeup.set()

    def close(self) -> None:
        """Stop listening; a waiting ``__anext__`` ends the iteration."""
        if not self._closed:
            self._closed = True
            self._gateway.remove_listener(self._on_event)
            self._wakeup.set()

    def __aiter__(self) -> SaEventStream:
        return self

    async def __anext__(self) -> ev.Event:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    async def __aenter__(self) -> SaEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
