"""What a gateway pays per SA held: the responder engine's Python allocations per settled
SA, the payload cipher's key schedule let go while an SA is idle, and the compact tables
(spent Message IDs and the address-pair index, an SA's Quick Modes) against dicts."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest

from ikecore import keymat, wire
from ikecore.config import config_from_flags
from ikecore.engine import Engine
from ikecore.errors import CryptoError, IkeError
from ikecore.loadtest import LoadSpec, LoadTest, run_in_memory
from ikecore.protocol import dpd
from ikecore.sa import ExchangeTable, OrderedIds, Phase1State, Phase2State, QuickModeExchange, Role, message_digest

from helpers import Link

PSK = "memory-per-sa"
IKE = "aes128-sha256-modp2048"
ESP = "aes128-sha256"

#: Measured 3,632 bytes per settled SA for 400 SAs on CPython 3.11.7 (tracemalloc counts
#: the same bytes on every run; 4,235 with a dict per spent Message ID and per address pair,
#: two copies of each selector text and a local ID payload per SA). The margin (4.6%) is
#: less than one dict of one entry per SA (about 180 bytes).
SETTLED_BYTES_PER_SA = 3_800


def _responder_after(peers: int) -> tuple[Engine, int, int]:
    """A responder that set up ``peers`` Main Mode + Quick Mode SAs on a fake clock and saw
    their negotiation state time out: (engine, traced bytes it grew by, SAs established)."""
    spec = LoadSpec(target=("127.0.0.1", 500), peers=peers, psk=PSK, ike=IKE, esp=ESP, concurrency=50)
    load = LoadTest(spec)
    tracemalloc.start(1)
    try:
        gc.collect()
        responder = Engine(config_from_flags(psk=PSK, ike=IKE, esp=ESP), now=1000.0)
        before = tracemalloc.get_traced_memory()[0]
        report, now = run_in_memory(load, responder)
        del load
        responder.handle_timer(now + 61.0)  # past the negotiation timeout and the Quick Mode retention
        while responder.next_event() is not None:
            pass
        responder.datagrams_to_send()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return responder, grown, report.established


def test_a_settled_sa_costs_the_responder_less_than_the_bound() -> None:
    peers = 400
    responder, grown, established = _responder_after(peers)
    assert established == peers
    sas = responder.sas()
    assert len(sas) == peers and all(sa.state is Phase1State.ESTABLISHED and len(sa.ipsec_sas) == 1 for sa in sas)
    assert all(not sa.quick_modes and not sa.last_received and not sa.last_sent for sa in sas)
    per_sa = grown / peers
    assert 1_000 < per_sa <= SETTLED_BYTES_PER_SA, per_sa


def test_an_idle_sa_holds_its_cipher_key_but_not_its_key_schedule() -> None:
    link = Link()
    link.connect()
    for side in ("initiator", "responder"):
        (sa,) = link.engine(side).sas()
        assert sa.crypto is not None and sa.crypto._cipher is None, side  # the Rust schedule (0.7 KiB)
        assert len(sa.crypto.export_state()[1]) == 16
    # an Informational exchange after that makes it again, and both ends still agree
    (i_sa,) = link.initiator.sas()
    link.initiator.delete(i_sa.handle, link.now)
    link.pump()
    assert link.initiator.sas() == [] and link.responder.sas() == []


def test_a_released_cipher_seals_and_opens_as_one_never_released() -> None:
    key, iv = bytes(range(16)), bytes(range(100, 116))
    steady = keymat.CryptoState("aes128-cbc", key, "sha256", iv)
    sender = keymat.CryptoState("aes128-cbc", bytearray(key), "sha256", iv)
    receiver = keymat.CryptoState("aes128-cbc", bytearray(key), "sha256", iv)
    for message_id, text in ((0, b"phase one"), (7, b"quick mode one"), (7, b"quick mode two"), (0, b"later")):
        sender.release()
        sealed = steady.encrypt(message_id, text)
        assert sender.encrypt(message_id, text) == sealed
        receiver.release()
        plain, next_iv = receiver.decrypt(message_id, sealed)
        assert plain.rstrip(b"\0") == text and next_iv == sealed[-16:]
        receiver.commit(message_id, next_iv)
    for state in (steady, sender, receiver):
        state.forget(7)
    assert steady.encrypt(0, b"end") == sender.encrypt(0, b"end")
    sender.wipe()
    with pytest.raises(CryptoError):
        sender.encrypt(0, b"after the end")
    with pytest.raises(CryptoError):
        sender.export_state()


def test_the_schedule_stays_while_an_exchange_runs() -> None:
    state = keymat.CryptoState("aes128-cbc", bytes(16), "sha256", bytes(16))
    state.encrypt(5, b"qm1")
    state.release()
    assert state._cipher is not None  # M-ID 5 still has a chain: not idle
    state.forget(5)
    assert state._cipher is None


def test_ordered_ids_behave_as_dict_fromkeys() -> None:
    rng = random.Random(7)
    for _round in range(200):
        model: dict[int, None] = {}
        ids = OrderedIds()
        for _step in range(rng.randrange(1, 12)):
            key = rng.choice((0, 1, 2, 0xFFFFFFFF, rng.randrange(1 << 32)))
            action = rng.randrange(4)
            if action < 2:
                model[key] = None
                ids[key] = None
            elif action == 2 and model:
                oldest = next(iter(model))
                assert next(iter(ids)) == oldest
                del model[oldest]
                del ids[oldest]
            else:
                with pytest.raises(KeyError) if key not in model else _nothing():
                    del ids[key]
                model.pop(key, None)
            assert list(ids) == list(model) and len(ids) == len(model)
            assert all(k in ids for k in model) and (key in ids) == (key in model)
            assert ids == model and ids == OrderedIds(model)
    assert "x" not in OrderedIds([1]) and 2 not in OrderedIds()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_ordered_ids_keep_one_int_in_less_than_a_dict() -> None:
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [OrderedIds([n + 1_000_000]) for n in range(2_000)]
        compact = tracemalloc.get_traced_memory()[0] - before
        before = tracemalloc.get_traced_memory()[0]
        dicts = [dict.fromkeys([n + 1_000_000]) for n in range(2_000)]
        plain = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(held) == len(dicts)
    assert compact < plain / 2, (compact, plain)


def test_dpd_pending_numbers_never_change_the_shared_empty_list() -> None:
    link = Link()
    link.connect()
    (i_sa,) = link.initiator.sas()
    (r_sa,) = link.responder.sas()
    assert i_sa.dpd_pending == [] and i_sa.dpd_pending is r_sa.dpd_pending  # one shared empty list
    dpd.r_u_there(i_sa)
    dpd.r_u_there(i_sa)
    assert i_sa.dpd_pending == [1, 2] and r_sa.dpd_pending == []
    dpd.on_traffic(i_sa, link.now)
    assert i_sa.dpd_pending == [] and r_sa.dpd_pending == []


def test_exchange_tables_behave_as_dicts() -> None:
    rng = random.Random(11)
    exchanges = {m: QuickModeExchange(m, Role.RESPONDER, Phase2State.R_EXPECT_QM1, 0.0, None)  # type: ignore[arg-type]
                 for m in (1, 2, 3, 0xFFFFFFFF)}
    for _round in range(200):
        model: dict[int, QuickModeExchange] = {}
        table = ExchangeTable()
        for _step in range(rng.randrange(1, 12)):
            key = rng.choice(list(exchanges))
            action = rng.randrange(4)
            if action < 2:
                model[key] = table[key] = exchanges[rng.choice(list(exchanges))]
            elif action == 2:
                assert table.pop(key, None) is model.pop(key, None)
            else:
                with pytest.raises(KeyError) if key not in model else _nothing():
                    del table[key]
                model.pop(key, None)
            assert list(table) == list(model) and len(table) == len(model) and bool(table) == bool(model)
            assert list(table.values()) == list(model.values()) and list(table.items()) == list(model.items())
            assert (key in table) == (key in model) and table.get(key) is model.get(key)
            if key in model:
                assert table[key] is model[key]
            else:
                with pytest.raises(KeyError):
                    table[key]  # noqa: B018
                with pytest.raises(KeyError):
                    table.pop(key)
            assert table == model
    assert 5 not in ExchangeTable() and ExchangeTable().get(5, "none") == "none"


def test_a_repeated_mm5_gets_the_same_mm6_though_only_its_digest_is_kept() -> None:
    link = Link()
    link.connect(quick_mode=False)
    mm = [(side, d) for side, d in link.sent if d[18] == wire.ExchangeType.IDENTITY_PROTECTION]
    mm5 = [d for side, d in mm if side == "initiator"][-1]
    mm6 = [d for side, d in mm if side == "responder"][-1]
    (r_sa,) = link.responder.sas()
    assert r_sa.last_received == message_digest(mm5) and len(r_sa.last_received) == 8
    link.responder.receive_datagram(mm5, r_sa.remote, r_sa.local, link.now)
    assert [d for d, _to, _frm in link.responder.datagrams_to_send()] == [mm6]
    # another message of the same length is no repeat: it is read (and refused), never answered with MM6
    other = mm5[:-1] + bytes([mm5[-1] ^ 1])
    assert message_digest(other) != r_sa.last_received
    try:
        link.responder.receive_datagram(other, r_sa.remote, r_sa.local, link.now)
    except IkeError:
        pass
    assert mm6 not in [d for d, _to, _frm in link.responder.datagrams_to_send()]
