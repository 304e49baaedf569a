"""Diffie-Hellman benchmark: ikecore against OpenSSL through pyca/cryptography, one run.

"One side of a handshake" = make a key pair, export the public value, load the
peer's value (with validation), compute the shared secret. Prints one line per
case: ``name  ikecore  anchor  ratio`` (rates per second; ratio = ikecore/anchor).
The pool lines compare ``DhPool(2)`` (ikecore column) against ``DhPool(1)``
(anchor column) on the same jobs: wall-clock rate, then jobs per CPU-second. Seeded peers; no sockets.

Targets: group 14 ratio >= 1.0, group 19 >= 0.8, pool 2/1 >= 1.8.
Run: ``.venv/bin/python bench/bench_dh.py`` (or ``make bench``).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import dh as cdh
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ikecore import _core, dh
from ikecore.gateway.dh_pool import DhPool

warnings.filterwarnings("ignore", message="Diffie-Hellman over finite fields")

SECONDS = 0.6  # per measurement; the best of REPEATS is kept (shared, noisy machine)
REPEATS = 3


def _run(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline and n >= 3:
            return n / (now - start)


def rates(ours: Callable[[], object], theirs: Callable[[], object]) -> tuple[float, float]:
    """Calls per second of each: best of REPEATS runs of about SECONDS, the two
    alternating so that a noisy neighbour hurts both alike."""
    ours(), theirs()  # warm up (builds per-group tables)
    best = [0.0, 0.0]
    for _ in range(REPEATS):
        for i, fn in enumerate((ours, theirs)):
            best[i] = max(best[i], _run(fn, SECONDS))
    return best[0], best[1]


def modp_case(group: int) -> tuple[Callable[[], object], Callable[[], object]]:
    p_bytes, g_bytes, q_bytes = _core.dh_modp_params(group)
    p, g = int.from_bytes(p_bytes, "big"), int.from_bytes(g_bytes, "big")
    q = int.from_bytes(q_bytes, "big") if q_bytes else None
    size = len(p_bytes)
    pn = cdh.DHParameterNumbers(p, g, q)
    params = pn.parameters()
    peer_y = params.generate_private_key().public_key().public_numbers().y
    peer = peer_y.to_bytes(size, "big")

    def ours() -> object:
        kp = dh.keypair(group)
        _public = kp.public
        return kp.exchange(peer)

    def theirs() -> object:
        key = params.generate_private_key()
        _public = key.public_key().public_numbers().y.to_bytes(size, "big")
        return key.exchange(cdh.DHPublicNumbers(int.from_bytes(peer, "big"), pn).public_key())

    return ours, theirs


def ecp_case(group: int) -> tuple[Callable[[], object], Callable[[], object]]:
    curve = {19: ec.SECP256R1(), 20: ec.SECP384R1(), 21: ec.SECP521R1()}[group]
    peer_sec1 = ec.generate_private_key(curve).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint)
    peer = peer_sec1[1:]

    def ours() -> object:
        kp = dh.keypair(group)
        _public = kp.public
        return kp.exchange(peer)

    def theirs() -> object:
        key = ec.generate_private_key(curve)
        _public = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
        return key.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + peer))

    return ours, theirs


def pool_rates(group: int, jobs: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best wall-clock rate and jobs per CPU-second of DhPool(2) and DhPool(1),
    alternating the two so that a noisy neighbour hurts both alike."""
    peer = dh.keypair(group).public
    peers = [peer] * jobs
    pools = {2: DhPool(2), 1: DhPool(1)}
    wall = {2: 0.0, 1: 0.0}
    per_cpu = {2: 0.0, 1: 0.0}
    try:
        for pool in pools.values():
            pool.map_one_side(group, peers[:4])  # start threads, warm up
        for _ in range(REPEATS + 2):
            for threads, pool in pools.items():
                cpu, start = time.process_time(), time.perf_counter()
                pool.map_one_side(group, peers)
                elapsed, used = time.perf_counter() - start, time.process_time() - cpu
                wall[threads] = max(wall[threads], jobs / elapsed)
                per_cpu[threads] = max(per_cpu[threads], jobs / used)
    finally:
        for pool in pools.values():
            pool.close()
    return (wall[2], wall[1]), (per_cpu[2], per_cpu[1])


def machine_capacity() -> tuple[float, float]:
    """Calibration: MB/s of SHA-256 over 1 MiB buffers (hashlib releases the GIL)
    with 2 threads and with 1. Shows how many cores are free right now."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    buf = b"\x5a" * (1 << 20)
    jobs = 120
    best = {2: 0.0, 1: 0.0}
    for _ in range(REPEATS):
        for threads in (2, 1):
            with ThreadPoolExecutor(threads) as pool:
                start = time.perf_counter()
                list(pool.map(lambda _: hashlib.sha256(buf).digest(), range(jobs)))
                best[threads] = max(best[threads], jobs / (time.perf_counter() - start))
    return best[2], best[1]


def line(name: str, ours: float, anchor: float) -> str:
    return f"{name:<34} {ours:>10,.0f} {anchor:>10,.0f} {ours / anchor:>6.2f}"


def main() -> int:
    print(f"{'name':<34} {'ikecore':>10} {'anchor':>10} {'ratio':>6}")
    cases = [
        ("dh_one_side_modp2048_g14", 14),
        ("dh_one_side_ecp256_g19", 19),
        # For information. The group 2 anchor is slow because OpenSSL does not
        # recognise p and checks the parameters on every key load (33 ms).
        ("dh_one_side_modp1024_g2", 2),
        ("dh_one_side_modp1536_g5", 5),
        ("dh_one_side_modp2048s256_g24", 24),
        ("dh_one_side_ecp384_g20", 20),
        ("dh_one_side_ecp521_g21", 21),
    ]
    for name, group in cases:
        ours_fn, theirs_fn = modp_case(group) if group < 19 or group == 24 else ecp_case(group)
        ours, theirs = rates(ours_fn, theirs_fn)
        print(line(name, ours, theirs), flush=True)
    # Free-core calibration first: the pool ratio cannot exceed this one.
    cal_two, cal_one = machine_capacity()
    print(line("calibration_sha256_2threads_vs_1", cal_two, cal_one), flush=True)
    (two, one), (two_cpu, one_cpu) = pool_rates(14, 400)
    print(line("dh_pool_g14_2threads_vs_1", two, one), flush=True)
    # Jobs per CPU-second (2 threads vs 1): about 1.0 when the threads do not
    # contend; then the wall-clock ratio above is bounded only by free cores.
    print(line("dh_pool_g14_jobs_per_cpu_second", two_cpu, one_cpu), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
