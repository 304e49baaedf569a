"""Diffie-Hellman on threads: a pool for DH operations and a reserve of ready key pairs.

All big-number and curve arithmetic runs in Rust (``ikecore._core``) with the GIL
released, so :class:`DhPool` spreads DH work over every core while the event loop's
thread goes on parsing and answering messages. :class:`KeypairReserve` is the key-pair
provider the gateway, the demo and the load generator hand to ``Engine(keypair=...)``:
key pairs are made ahead of use on the pool, and the engine itself stays sans-IO (it
only ever calls the provider). The pure groups and key pairs live in ``ikecore.dh``.

>>> with DhPool(2) as pool:
...     a = pool.keypair(14).result()
...     public, secret = pool.one_side(14, a.public).result()
...     a.exchange(public) == secret
True
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from ikecore import _core
from ikecore.dh import SUPPORTED_GROUPS, KeyPair

__all__ = ["DhPool", "KeypairReserve"]


class DhPool:
    """Runs Diffie-Hellman operations on a pool of threads (default: one per core).

    The Rust core releases the GIL for the whole computation, so ``threads``
    operations proceed in parallel. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, threads: int | None = None) -> None:
        if threads is None:
            threads = os.cpu_count() or 1
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ikecore-dh")

    def keypair(self, group: int) -> Future[KeyPair]:
        """A fresh key pair for ``group``, made on the pool."""
        return self._executor.submit(_core.dh_keypair, group, None)

    def exchange(self, kp: KeyPair, peer: bytes) -> Future[bytes]:
        """``kp.exchange(peer)`` on the pool (consumes ``kp``)."""
        return self._executor.submit(kp.exchange, peer)

    def one_side(self, group: int, peer_public: bytes) -> Future[tuple[bytes, bytes]]:
        """One side of a handshake: a fresh key pair and its secret with
        ``peer_public``; the future's result is ``(public, secret)``."""
        return self._executor.submit(_core.dh_one_side, group, peer_public)

    def map_one_side(self, group: int, peers: list[bytes]) -> list[tuple[bytes, bytes]]:
        """:meth:`one_side` for every peer value; results in input order. The
        first failure (e.g. InvalidKeyInformation) is raised after all finish."""
        futures = [self._executor.submit(_core.dh_one_side, group, p) for p in peers]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Finish queued work and stop the threads."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> DhPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class KeypairReserve:
    """A key-pair provider for ``Engine(keypair=...)`` that makes key pairs ahead of use.

    Key generation (one modular exponentiation, about half of a side's DH cost) runs on
    ``pool`` threads, which release the GIL, while the engine's thread parses and
    answers messages. Up to ``depth`` pairs per group are kept in flight. A call takes
    the oldest finished pair; when none is finished yet it makes one inline rather than
    wait, so the reserve never slows the caller down. Each pair is handed out once.
    """

    def __init__(self, pool: DhPool, depth: int | None = None) -> None:
        self.pool = pool
        self.depth = depth if depth is not None else 16 * pool.threads
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1, got {self.depth}")
        self._queues: dict[int, deque[Future[KeyPair]]] = {}
        self.hits = 0
        self.misses = 0

    def __call__(self, group: int) -> KeyPair:
        queue = self._queues.get(group)
        if queue is None:
            if group not in SUPPORTED_GROUPS:
                raise ValueError(f"unsupported Diffie-Hellman group {group}")
            queue = self._queues[group] = deque()
        pair: KeyPair | None = None
        if queue and queue[0].done():
            future = queue.popleft()
            if future.exception() is None:
                pair = future.result()
        while len(queue) < self.depth:
            queue.append(self.pool.keypair(group))
        if pair is None:
            self.misses += 1
            return _core.dh_keypair(group, None)
        self.hits += 1
        return pair
