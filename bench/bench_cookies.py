"""Benchmark: the Rust cookie table against a Python dict, 1M ISAKMP SAs.

ikecore: ``CookieTable.lookup(datagram)`` reads the two cookies from the datagram in
Rust (with the half-open fallback available). Anchor: a Python dict keyed by the
16-byte slice ``datagram[:16]`` (what a pure-Python engine would do). Both tables
hold the same 1M (CKY-I, CKY-R) -> handle entries; lookups hit random entries in a
shuffled order, so both pay their cache misses.

Output lines: `name  ikecore  anchor  ratio`. Lookup lines are nanoseconds per
lookup, ratio = anchor / ikecore (x faster). Memory lines are bytes per entry,
ratio = anchor / ikecore (x smaller); ikecore's figure is the hash map's own
allocation (``memory_bytes``), the dict's is the dict plus its key and value objects.

Run: .venv/bin/python bench/bench_cookies.py [entries]
"""

from __future__ import annotations

import random
import statistics
import struct
import sys
import time
from collections.abc import Callable

from ikecore._core import CookieTable

ENTRIES = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
LOOKUPS = 200_000


def datagram(pair: bytes) -> bytes:
    """A Main Mode message 5 header + a 60-byte encrypted body."""
    return pair + struct.pack("!BBBBII", 5, 0x10, 2, 1, 0, 88) + bytes(60)


def timed_ns(fn: Callable[[], object], count: int, repeats: int = 5) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) / count * 1e9)
    return statistics.median(samples)


def main() -> None:
    rng = random.Random(2408)
    pairs = [rng.randbytes(16) for _ in range(ENTRIES)]
    handles = list(range(1_000_000_000, 1_000_000_000 + ENTRIES))  # real int objects, not cached

    # An engine holds the two cookies separately (parsed header fields): both sides
    # start from them, the dict has to join them into its key.
    split = [(pair[:8], pair[8:], handle) for pair, handle in zip(pairs, handles)]
    table = CookieTable()
    insert = table.insert
    t0 = time.perf_counter()
    for cky_i, cky_r, handle in split:
        insert(cky_i, cky_r, handle)
    insert_ours = (time.perf_counter() - t0) / ENTRIES * 1e9
    anchor: dict[bytes, int] = {}
    t0 = time.perf_counter()
    for cky_i, cky_r, handle in split:
        anchor[cky_i + cky_r] = handle
    insert_anchor = (time.perf_counter() - t0) / ENTRIES * 1e9
    del split

    probes = [datagram(pairs[rng.randrange(ENTRIES)]) for _ in range(LOOKUPS)]
    half_open = CookieTable()
    miss_probes = [datagram(rng.randbytes(16)) for _ in range(LOOKUPS)]

    lookup = table.lookup
    get = anchor.get

    def ours() -> None:
        for d in probes:
            lookup(d)

    def theirs() -> None:
        for d in probes:
            get(d[:16])

    def ours_miss() -> None:
        # A miss costs two probes: the full pair, then the half-open (CKY-I, 0).
        for d in miss_probes:
            lookup(d)

    def theirs_miss() -> None:
        for d in miss_probes:
            if get(d[:16]) is None:
                get(d[:8] + bytes(8))

    assert all(lookup(d) == get(d[:16]) for d in probes[:1000])
    assert half_open.lookup(miss_probes[0]) is None
    rows = [
        ("cookies.lookup_hit_ns_1M", timed_ns(ours, LOOKUPS), timed_ns(theirs, LOOKUPS)),
        ("cookies.lookup_miss_with_half_open_ns_1M", timed_ns(ours_miss, LOOKUPS), timed_ns(theirs_miss, LOOKUPS)),
        ("cookies.insert_ns_1M", insert_ours, insert_anchor),
    ]
    for name, mine, anchor_ns in rows:
        print(f"{name:44s} {mine:10.1f} {anchor_ns:10.1f} {anchor_ns / mine:8.2f}")

    ours_bytes = table.memory_bytes / len(table)
    dict_bytes = (
        sys.getsizeof(anchor)
        + sum(sys.getsizeof(k) for k in anchor)
        + sum(sys.getsizeof(v) for v in anchor.values())
    ) / len(anchor)
    print(f"{'cookies.bytes_per_entry_1M':44s} {ours_bytes:10.1f} {dict_bytes:10.1f} {dict_bytes / ours_bytes:8.2f}")


if __name__ == "__main__":
    main()
