"""The coverage-guided engine fuzz harness (tests/fuzz/engine_fuzz.py): its seeds pass, its
oracle catches what it must, and every input it ever found stays fixed.

``make fuzz`` runs the harness under atheris (bounded); these tests run inputs through it
directly, so they need no fuzzing engine and are deterministic.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import engine_fuzz  # noqa: E402
from ikecore import wire  # noqa: E402
from ikecore.engine.core import Engine  # noqa: E402

REGRESSIONS = Path(__file__).resolve().parent / "fuzz" / "regressions"


def test_seed_corpus_covers_every_scenario_and_passes_the_oracle() -> None:
    seeds = engine_fuzz.seeds()
    captured = sum(1 for path in (Path(__file__).parent / "vectors" / "captures").glob("*.pcapng"))
    assert captured >= 10 and len(seeds) > 10 * len(engine_fuzz.SCENARIOS)
    for seed in seeds:
        engine_fuzz.run_input(seed)


def test_scenarios_reach_the_states_they_name() -> None:
    """The deterministic prefixes really get both engines where the fuzzer starts."""
    want = {(False, 1): ("I_EXPECT_MM2", "R_EXPECT_MM3"), (False, 4): ("I_EXPECT_MM6", "R_EXPECT_MM5"),
            (False, 9): ("ESTABLISHED", "ESTABLISHED"), (True, 1): ("I_EXPECT_AM2", "R_EXPECT_AM3"),
            (True, 6): ("ESTABLISHED", "ESTABLISHED")}
    for (aggressive, prefix), states in want.items():
        world = engine_fuzz.World(aggressive)
        for _ in range(prefix):
            assert world.deliver_next()
        got = tuple(world.engines[side].sas()[0].state.value for side in ("initiator", "responder"))
        assert got == states
        if prefix >= 6:
            assert all(len(world.engines[side].sas()[0].ipsec_sas) == 1 for side in world.engines)


def test_runs_are_deterministic_so_saved_inputs_replay() -> None:
    """Seeded random bytes, fixed DH values, deterministic responder cookies and SPIs: two
    runs of the negotiation are the same bytes (and the module's recorded transcript)."""
    for aggressive in (False, True):
        runs = []
        for _ in range(2):
            world = engine_fuzz.World(aggressive)
            while world.deliver_next():
                pass
            runs.append(world.sent)
        assert runs[0] == runs[1] == engine_fuzz._TRANSCRIPTS[aggressive]
        assert len(runs[0]) == (6 if aggressive else 9)


def test_sealed_real_main_mode_5_establishes_the_responder() -> None:
    """The ``sealed`` operation with the decrypted real MM5 chain is a valid MM5: fuzzed
    variants of it start from a message the responder accepts."""
    delivered, exchange_type, next_payload, message_id, chain = engine_fuzz._RECORDED[False][1][0]
    assert (delivered, exchange_type, message_id) == (4, wire.ExchangeType.IDENTITY_PROTECTION, 0)
    world = engine_fuzz.World(False)
    for _ in range(delivered):
        world.deliver_next()
    sa = world.keyed_sa("responder")
    world.inject("responder", engine_fuzz._seal(sa, exchange_type, next_payload, 0, chain, hashed=False))
    assert world.engines["responder"].sas()[0].state.value == "ESTABLISHED"
    assert world.monitors["responder"].extended["phase1_established:responder"] == 1


def test_sealed_hashed_operation_is_a_message_the_engine_accepts() -> None:
    """The ``hashed`` operation seals with the real keys and a correct HASH(1): a DPD
    R-U-THERE built that way is answered, so fuzzed payloads reach the decrypted paths."""
    world = engine_fuzz.World(False)
    for _ in range(9):
        world.deliver_next()
    sa = world.keyed_sa("responder")
    notify = wire.NotifyPayload(int(wire.NotifyType.R_U_THERE), protocol_id=int(wire.ProtocolId.ISAKMP),
                                spi=sa.initiator_cookie + sa.responder_cookie, data=(7).to_bytes(4, "big"))
    datagram = engine_fuzz._seal(sa, wire.ExchangeType.INFORMATIONAL, wire.PayloadType.N, 77,
                                 wire.encode_payloads([notify]), hashed=True)
    world.inject("responder", datagram)
    assert world.monitors["responder"].extended["dpd:r_u_there_ack:out"] == 1
    assert len(world.in_flight) == 1


def test_provider_reads_bytes_exactly_like_atheris() -> None:
    """Saved crash inputs replay without atheris only if the fallback provider agrees."""
    atheris = pytest.importorskip("atheris")
    rng = random.Random(5)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 64))
        ours, theirs = engine_fuzz._Provider(data), atheris.FuzzedDataProvider(data)
        for _ in range(12):
            kind = rng.randrange(3)
            if kind == 0:
                low, high = sorted((rng.randrange(0, 1 << rng.choice((4, 8, 16, 32))), rng.randrange(0, 300)))
                assert ours.ConsumeIntInRange(low, high) == theirs.ConsumeIntInRange(low, high)
            elif kind == 1:
                assert ours.ConsumeBool() == theirs.ConsumeBool()
            else:
                count = rng.randrange(0, 20)
                assert ours.ConsumeBytes(count) == theirs.ConsumeBytes(count)


def test_seed_encoding_round_trips_through_the_provider() -> None:
    program = engine_fuzz._encode_program(3, [(0, True, b"\x01\x02\x03"), (5, False, b""), (0, False, b"xyz!")])
    fdp = engine_fuzz._Provider(program)
    assert fdp.ConsumeIntInRange(0, len(engine_fuzz.SCENARIOS) - 1) == 3
    assert fdp.ConsumeIntInRange(0, engine_fuzz.MAX_OPS) == 3
    assert fdp.ConsumeIntInRange(0, 7) == 0 and fdp.ConsumeBool() is True
    assert fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, engine_fuzz.MAX_DATAGRAM)) == b"\x01\x02\x03"
    assert fdp.ConsumeIntInRange(0, 7) == 5 and fdp.ConsumeBool() is False
    assert fdp.ConsumeIntInRange(0, 7) == 0 and fdp.ConsumeBool() is False
    assert fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, engine_fuzz.MAX_DATAGRAM)) == b"xyz!"


def _garbage_to_established_responder() -> bytes:
    return engine_fuzz._encode_program(7, [(0, True, bytes(40))])


def test_oracle_reports_an_exception_out_of_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    engine_fuzz.run_input(_garbage_to_established_responder())
    original = Engine._receive

    def broken(self: Engine, data: bytes, remote: object, local: object, now: float) -> None:
        if data == bytes(40):
            raise KeyError("a bug")
        original(self, data, remote, local, now)

    monkeypatch.setattr(Engine, "_receive", broken)
    with pytest.raises(engine_fuzz.Finding, match="internal error"):
        engine_fuzz.run_input(_garbage_to_established_responder())


def test_oracle_reports_an_established_sa_lost_to_unauthenticated_input(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Engine._receive

    def forgetful(self: Engine, data: bytes, remote: object, local: object, now: float) -> None:
        if data == bytes(40):   # a bug: garbage makes the engine forget its SAs
            self._sas.clear()
        original(self, data, remote, local, now)

    monkeypatch.setattr(Engine, "_receive", forgetful)
    with pytest.raises(engine_fuzz.Finding, match="unauthenticated input"):
        engine_fuzz.run_input(_garbage_to_established_responder())


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*")) if REGRESSIONS.exists() else [],
                         ids=lambda p: p.name)
def test_inputs_the_fuzzer_found_stay_fixed(path: Path) -> None:
    engine_fuzz.run_input(path.read_bytes())
