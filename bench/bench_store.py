"""Benchmark: what the SA store costs a busy ISAKMP SA.

``qm_2000_one_sa``: 2,000 Quick Modes on one ISAKMP SA between two sans-IO engines
(``ikecore.engine.core.Engine``, 50 in flight), the responder with an SA store
(``ikecore.gateway.store.SaStore``, ``synchronous=FULL``) against the same run without
one (the anchor). Reported: process CPU seconds of each run (both engines; the DH of the
one Main Mode included) and ratio = with store / without. The store writes each IPsec
SA as a row of its own, so the ratio stays near 1 however many IPsec SAs the ISAKMP SA
carries.

Output lines: ``name  ikecore  anchor  ratio``.
Run: .venv/bin/python bench/bench_store.py [quick-modes]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import Link, seeded_random  # noqa: E402
from ikecore import events as ev  # noqa: E402
from ikecore.engine.core import Engine  # noqa: E402
from ikecore.gateway.store import SaStore  # noqa: E402


def _unlimited(link: Link) -> None:
    """No per-ISAKMP-SA limits (``[limits]``): this measures 2,000 IPsec SAs on one."""
    for side in ("initiator_config", "responder_config"):
        config = getattr(link, side)
        if hasattr(config, "limits"):
            setattr(link, side, dataclasses.replace(config, limits=dataclasses.replace(
                config.limits, quick_modes_in_flight=0, ipsec_sas_per_isakmp_sa=0)))
    link.initiator = Engine(link.initiator_config, driver=link.initiator_driver, random=seeded_random(1))


def quick_modes(count: int, store_dir: Path | None, in_flight: int = 50) -> tuple[float, int]:
    """CPU seconds for ``count`` Quick Modes on one ISAKMP SA, and how many the responder
    established (the one of Main Mode's ``connect`` included).

    Datagrams are delivered one at a time and the receiving engine is flushed after each
    (datagrams, then events), as the asyncio gateway does (``ikecore.gateway.transport``)."""
    link = Link()
    _unlimited(link)
    link.responder = Engine(link.responder_config, driver=link.responder_driver, random=seeded_random(2),
                            store=SaStore(store_dir / "sa.db") if store_dir is not None else None, now=link.now)
    started = time.process_time()
    handle = link.connect()
    established = len(link.of("responder", ev.Phase2Established))
    done = 0
    while done < count:
        batch = min(in_flight, count - done)
        for _ in range(batch):
            link.initiator.initiate_quick_mode(handle, link.now)
        queue = deque((link.responder, d) for d in link.initiator.datagrams_to_send())
        while queue:
            target, (data, remote, local) = queue.popleft()
            target.receive_datagram(data, local, remote, link.now)
            other = link.initiator if target is link.responder else link.responder
            queue.extend((other, d) for d in target.datagrams_to_send())
            while (event := target.next_event()) is not None:
                established += target is link.responder and isinstance(event, ev.Phase2Established)
        done += batch
    return time.process_time() - started, established


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 2000
    with tempfile.TemporaryDirectory() as tmp:
        with_store, established = quick_modes(count, Path(tmp))
    without, plain = quick_modes(count, None)
    assert established == plain == count + 1, (established, plain)
    print(f"qm_{count}_one_sa_cpu_seconds  {with_store:.2f}  {without:.2f}  {with_store / without:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
