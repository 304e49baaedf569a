"""Which worker of a gateway holds an ISAKMP SA: a function of the initiator cookie.

A gateway of N worker processes shares its UDP ports (SO_REUSEPORT). Every datagram of
an ISAKMP SA carries the initiator cookie (CKY-I) first (after the four-byte non-ESP
marker on the NAT-T port, RFC 3948 section 2.2), and CKY-I never changes during the
SA's life, whatever the peer's address and port do (NAT-T floating, a NAT that
rebinds). So the worker is chosen from CKY-I alone, the way QUIC servers route by
connection ID:

    worker_of(CKY-I, N) = (first four bytes of CKY-I, big-endian) mod N

The kernel applies the same formula before any worker sees the datagram (a classic BPF
program on the socket group, ``ikecore.gateway.reuseport``); the SA store gives each
worker the records it holds by it; a worker that initiates picks a CKY-I that maps to
itself (:func:`steer_cookie`), so the peer's answers come back to it.
"""

from __future__ import annotations

__all__ = ["worker_of", "steer_cookie"]


def worker_of(initiator_cookie: bytes, workers: int) -> int:
    """The index (0 .. workers-1) of the worker that holds the SA with this CKY-I."""
    if workers <= 1:
        return 0
    return int.from_bytes(initiator_cookie[:4], "big") % workers


def steer_cookie(cookie: bytes, worker: int, workers: int) -> bytes:
    """``cookie`` (8 random bytes) changed as little as needed so that
    ``worker_of(result, workers) == worker`` (its first word moved down to the nearest
    value of that class; the other four bytes stay random)."""
    if workers <= 1:
        return cookie
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is not in 0..{workers - 1}")
    word = int.from_bytes(cookie[:4], "big")
    word -= (word - worker) % workers
    return word.to_bytes(4, "big") + cookie[4:]
