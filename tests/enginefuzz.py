"""Mutation fuzzing of the whole engine: datagrams into a responder and an initiator mid-exchange.

Each round runs one negotiation (Main Mode or Aggressive Mode, then Quick Mode, then a
DPD exchange) between two engines step by step. Before a real datagram is delivered,
``--per-step`` mutants of it and of earlier datagrams (bit flips, byte sets, truncation,
extension, splices of two datagrams, length-field and header-field edits, random bytes
behind real cookies) go into the engine about to receive it, so every state of both roles
sees hostile input (one real datagram per round, chosen at random, gets the mutants, so
that every state is reached in some round). A finding is a datagram that reached the engine's "internal error"
path (peer bytes must only ever be counted and dropped) or an exception out of
``receive_datagram``; it is written to ``--artifacts`` and the run fails. Not
coverage-guided (the Rust codec targets are, see ``make fuzz``); bounded by count.

Long run (documented in bench/README.md)::

    .venv/bin/python tests/enginefuzz.py --datagrams 10000000
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from helpers import INITIATOR, RESPONDER, Link, make_config  # noqa: E402
from ikecore import events as ev  # noqa: E402
from ikecore import wire  # noqa: E402


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        choice = rng.randrange(9)
        if choice == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[rng.randrange(len(out))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif choice == 2:
            del out[rng.randrange(len(out) + 1):]
        elif choice == 3:
            out += rng.randbytes(rng.randrange(1, 64))
        elif choice == 4 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(out) + 1)
            out = out[:cut] + other[rng.randrange(len(other) + 1):]
        elif choice == 5 and len(out) >= 28:
            struct.pack_into(">I", out, 24, rng.choice((0, 28, len(out) - 1, len(out) + 1, 0xFFFFFFFF)))
        elif choice == 6 and len(out) >= 28:
            out[rng.choice((16, 17, 18, 19))] = rng.randrange(256)
        elif choice == 7 and len(out) >= 32:
            offset = rng.randrange(28, len(out) - 3)
            struct.pack_into(">H", out, offset + 2, rng.choice((0, 1, 4, 0xFFFF, rng.randrange(65536))))
        elif choice == 8:
            out = bytearray(data[:16] + rng.randbytes(rng.randrange(0, 200)))
    return bytes(out)


def run(datagrams: int, seed: int, per_step: int, artifacts: Path, wall_limit: float) -> tuple[int, int, list[str]]:
    """Returns (datagrams injected, negotiations completed, findings)."""
    rng = random.Random(seed)
    injected = completed = 0
    findings: list[str] = []
    started = time.monotonic()
    round_number = 0
    while injected < datagrams and time.monotonic() - started < wall_limit:
        round_number += 1
        aggressive = round_number % 4 == 0
        config = make_config(aggressive=aggressive, esp="aes128-sha256-modp2048" if round_number % 2 else "aes128-sha256")
        link = Link(initiator_config=config, responder_config=config, seed=rng.randrange(1 << 30))
        handle = link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now)
        pool: list[bytes] = []
        dpd_sent = False
        # one real datagram per round is preceded by the mutants, so that every state of
        # the exchange is reached in some round (mutants in an encrypted state may end
        # the negotiation: a wrong-PSK-like garbage message is an authentication failure)
        fuzz_at = rng.randrange(12)
        delivered = 0
        for _step in range(40):
            batch = link.collect()
            if not batch:
                sa = link.initiator.sa(handle)
                if sa is not None and sa.state.value == "ESTABLISHED" and not dpd_sent:
                    dpd_sent = True
                    link.initiator._notify_protected(sa, wire.NotifyType.R_U_THERE)
                    continue
                break
            for side, (data, remote, local) in batch:
                pool.append(data)
                target = link.responder if side == "initiator" else link.initiator
                delivered += 1
                for _ in range(per_step if delivered - 1 == fuzz_at else 0):
                    mutant = mutate(rng, rng.choice(pool) if rng.random() < 0.3 else data, pool)
                    try:
                        target.receive_datagram(mutant, local, remote, link.now)
                    except Exception as exc:  # noqa: BLE001 - the finding itself
                        findings.append(f"exception {exc!r}")
                        _save(artifacts, mutant)
                    injected += 1
                    while (event := target.next_event()) is not None:
                        if isinstance(event, ev.InvalidPacketReceived) and event.reason.startswith("internal"):
                            findings.append(event.reason)
                            _save(artifacts, mutant)
                target.datagrams_to_send()       # provoked replies are not delivered
                link.deliver(side, (data, remote, local))
            link.now += 0.01
        if link.of("initiator", ev.Phase2Established):
            completed += 1
        if findings:
            break
    return injected, completed, findings


def _save(artifacts: Path, data: bytes) -> None:
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / f"crash-{len(list(artifacts.iterdir())):04d}.bin").write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datagrams", type=int, default=10_000_000)
    parser.add_argument("--per-step", type=int, default=200, help="mutants before the chosen real datagram")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--artifacts", default="fuzz/artifacts/engine")
    parser.add_argument("--wall-limit", type=float, default=7200.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    injected, completed, findings = run(args.datagrams, args.seed, args.per_step, Path(args.artifacts),
                                        args.wall_limit)
    elapsed = time.monotonic() - started
    print(f"engine fuzz: {injected} hostile datagrams into responders and initiators mid-exchange, "
          f"{completed} negotiations completed despite them, {len(findings)} findings, "
          f"{elapsed:.0f} s ({injected / max(elapsed, 1e-9):.0f} datagrams/s)")
    for finding in findings[:10]:
        print("  finding:", finding)
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
