"""Acting on the SAs a listing selects: ``matching`` and ``terminate``.

Design note. An action selects ISAKMP SAs with the same conditions as the Main Mode
security-associations view (``where``: ``["COLUMN=VALUE", ...]``, every one must hold;
``ikecore.monitor.listing.Condition``), so what ``ikecore monitor main-mode
security-associations --where ...`` lists is exactly what ``ikecore terminate --where ...``
deletes. Deleting goes through the gateway (``Gateway.delete``): the engine deletes the
ISAKMP SA and its IPsec SAs and sends the peer Delete notifications (RFC 2408 section
3.15), and the gateway sends them out at once. An action without any condition is refused:
deleting every SA of a gateway takes an explicit condition that holds for all of them.

``terminating`` does the work a slice of SAs at a time (the control socket lets the event
loop turn between two slices); ``terminate`` does it in one go.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from ikecore.monitor import listing as sa_listing
from ikecore.monitor.text import MM, ViewError
from ikecore.monitor.views import parse_where
from ikecore.sa import IsakmpSa

__all__ = ["conditions", "matching", "terminating", "terminate"]


def conditions(where: Sequence[str] | str | None) -> list[sa_listing.Condition]:
    """``where`` as conditions on the Main Mode SA view's columns; raises ViewError for an
    unknown column or a malformed condition, and when there is none at all."""
    parsed = parse_where(MM, "security-associations", where)
    if not parsed:
        raise ViewError("terminate needs at least one COLUMN=VALUE condition (where), e.g. peer=ADDR")
    return parsed


def matching(engine: Any, where: Sequence[str] | str | None, *, now: float | None = None,
             wall: float | None = None) -> list[IsakmpSa]:
    """The ISAKMP SAs of ``engine`` whose Main Mode row satisfies every condition of
    ``where`` (``now``: the engine's clock, by default ``time.monotonic()`` as a gateway's
    loop uses; ``wall``: the same instant as Unix time). An empty ``where`` selects all."""
    parsed = parse_where(MM, "security-associations", where)
    now = time.monotonic() if now is None else now
    wall = time.time() if wall is None else wall
    return [sa for part in sa_listing.select_sas(engine, parsed, now, wall) for sa in part]


def terminating(gateway: Any, where: Sequence[str] | str | None, *, slice_size: int = sa_listing.SLICE,
                now: float | None = None) -> Iterator[int]:
    """Delete the ISAKMP SAs of ``gateway`` that match ``where`` with their IPsec SAs,
    yielding how many each slice of ``slice_size`` SAs deleted (0 for a slice without a
    match). ``gateway`` is a ``Gateway`` (its ``delete`` sends the Delete notifications at
    once) or a bare engine (its ``delete(handle, now)``; the datagrams wait in the engine
    for whoever sends them). Raises ViewError before deleting anything when ``where`` is
    empty or names an unknown column."""
    parsed = conditions(where)
    engine = getattr(gateway, "engine", None)
    if engine is not None:
        delete = gateway.delete
        loop = getattr(gateway, "loop", None)
        clock = loop.time if loop is not None else time.monotonic
    else:
        engine = gateway
        clock = time.monotonic if now is None else (lambda: now)

        def delete(handle: int) -> None:
            engine.delete(handle, clock())
    for part in sa_listing.select_sas(engine, parsed, clock() if now is None else now, time.time(), slice_size):
        deleted = 0
        for sa in part:
            if engine.sa(sa.handle) is sa:  # not deleted meanwhile
                delete(sa.handle)
                deleted += 1
        yield deleted


def terminate(gateway: Any, where: Sequence[str] | str | None) -> int:
    """Delete the ISAKMP SAs of ``gateway`` that match every ``COLUMN=VALUE`` of ``where``,
    with their IPsec SAs, telling each peer with Delete notifications; returns how many
    ISAKMP SAs were deleted. Raises ViewError when ``where`` is empty or names an unknown
    column (nothing is deleted then)."""
    return sum(terminating(gateway, where))
