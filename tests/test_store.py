"""The SA store (ikecore.gateway.store, ikecore.engine.persist): restart without loss."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import INITIATOR, RESPONDER, Link, make_config
from ikecore import events as ev
from ikecore.driver import MemoryDriver
from ikecore.engine.core import Engine
from ikecore.engine.persist import ChangeSet
from ikecore.gateway.store import SaStore, StoreError
from ikecore.monitor import listing
from ikecore.monitor.counters import Monitor

TESTS = Path(__file__).resolve().parent


def _restart_responder(link: Link, store: SaStore, now: float) -> Engine:
    link.responder_driver = MemoryDriver()
    link.responder = Engine(link.responder_config, driver=link.responder_driver, store=store, now=now)
    return link.responder


def test_restored_responder_keeps_sas_and_a_new_quick_mode_succeeds(tmp_path: Path) -> None:
    link = Link()
    store = SaStore(tmp_path / "sa.db")
    link.responder = Engine(link.responder_config, driver=link.responder_driver, store=store, now=link.now)
    link.connect()
    link.connect()
    before = {sa.handle: (sa.initiator_cookie, sa.responder_cookie, sa.crypto.iv(0), sa.skeyid.skeyid_d,
                          [(i.spi_in, i.spi_out) for i in sa.ipsec_sas]) for sa in link.responder.sas()}
    assert len(store) == 2
    store.close()
    # "kill": drop the engine and its driver; start again from the file
    restart = link.now + 5
    engine = _restart_responder(link, SaStore(tmp_path / "sa.db"), restart)
    restored = link.of("responder", ev.SasRestored)[-1]
    assert (restored.isakmp, restored.ipsec) == (2, 2)
    after = {sa.handle: (sa.initiator_cookie, sa.responder_cookie, sa.crypto.iv(0), sa.skeyid.skeyid_d,
                         [(i.spi_in, i.spi_out) for i in sa.ipsec_sas]) for sa in engine.sas()}
    assert after == before
    assert len(link.responder_driver.inbound) == 2 and len(link.responder_driver.outbound) == 2
    established = len(link.of("responder", ev.Phase2Established))
    for sa in link.initiator.sas():
        link.initiator.initiate_quick_mode(sa.handle, link.now)
    link.pump()
    # both new Quick Modes ran on restored ISAKMP SAs (the second connect's SA adopted the
    # first one's IPsec SA at establishment, as charon does; see ikecore.engine.rekey)
    assert len(link.of("responder", ev.Phase2Established)) == established + 2
    assert sum(len(sa.ipsec_sas) for sa in engine.sas()) == 4
    # the lifetime left is kept, not reset: the new engine's clock is unrelated to the old
    # one (here it reads 5 s more), the store's wall clock says how long it was down
    sa = engine.sas()[0]
    first = link.of("responder", ev.Phase1Established)[0]
    left = sa.expires - restart
    assert sa.chosen.lifetime - (restart - 5 - first.time) - 0.5 <= left < sa.chosen.lifetime


def test_replay_protection_and_deletes_survive_a_restart(tmp_path: Path) -> None:
    link = Link()
    store = SaStore(tmp_path / "sa.db")
    link.responder = Engine(link.responder_config, driver=link.responder_driver, store=store, now=link.now)
    link.connect()
    qm1 = next(d for s, d in link.sent if s == "initiator" and d[18] == 32)
    engine = _restart_responder(link, SaStore(tmp_path / "sa.db"), link.now + 1)
    engine.receive_datagram(qm1, INITIATOR, RESPONDER, link.now)
    assert link.of("responder", ev.ReplayDropped)
    link.initiator.delete(link.initiator.sas()[0].handle, link.now)
    link.pump()
    assert engine.sas() == []
    assert len(SaStore(tmp_path / "sa.db").load()) == 0


def test_store_files_are_private_and_key_file_encrypts(tmp_path: Path) -> None:
    link = Link()
    store = SaStore(tmp_path / "sa.db", key_file=tmp_path / "sa.key")
    link.responder = Engine(link.responder_config, driver=link.responder_driver, store=store, now=link.now)
    link.connect()
    for name in ("sa.db", "sa.db-wal", "sa.key"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    secret = link.responder.sas()[0].skeyid.skeyid_d.hex().encode()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("sa.db"))
    assert secret not in raw and b"skeyid" not in raw
    # the right key restores; another key is refused at opening, naming the key file
    assert len(SaStore(tmp_path / "sa.db", key_file=tmp_path / "sa.key").load()) == 1
    (tmp_path / "other.key").write_bytes(os.urandom(32))
    os.chmod(tmp_path / "other.key", 0o600)
    with pytest.raises(StoreError, match="other.key opens none of the 1 records"):
        SaStore(tmp_path / "sa.db", key_file=tmp_path / "other.key")
    # without a key the record is plain JSON: the file mode is the protection
    plain = SaStore(tmp_path / "plain.db")
    plain.write(ChangeSet(isakmp={bytes(16): b'{"format":2}'}))
    assert stat.S_IMODE((tmp_path / "plain.db").stat().st_mode) == 0o600
    (tmp_path / "loose.key").write_bytes(os.urandom(32))
    os.chmod(tmp_path / "loose.key", 0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        SaStore(tmp_path / "x.db", key_file=tmp_path / "loose.key")


class FailingStore:
    """A store whose disk is full for the first ``failures`` writes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.rows: dict[bytes, bytes] = {}

    def load(self) -> list[Any]:
        return []

    def write(self, changes: ChangeSet) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise StoreError("disk full")
        self.rows.update(changes.isakmp)
        for cookies in changes.deleted:
            self.rows.pop(cookies, None)


def test_store_write_failure_is_counted_and_retried_negotiation_continues() -> None:
    link = Link()
    store = FailingStore(failures=3)
    link.responder = Engine(link.responder_config, driver=link.responder_driver, store=store, now=link.now)
    link.connect()
    assert link.of("initiator", ev.Phase2Established)
    link.advance(5.0)
    monitor = Monitor()
    for event in link.events["responder"]:
        monitor.observe(event)
    assert monitor.extended["store_failures:write"] == 3 and store.attempts == 4
    # one try per second of engine time, through the engine's timer: not one per call
    failed = [e.time for e in link.of("responder", ev.StoreFailed)]
    assert all(later - earlier >= 1.0 for earlier, later in zip(failed, failed[1:]))
    sa = link.responder.sas()[0]
    assert list(store.rows) == [sa.initiator_cookie + sa.responder_cookie]


def test_kill_minus_9_at_random_moments_loses_no_established_sa(tmp_path: Path) -> None:
    """The make-test version of the documented 10,000 SAs x 20 kills run (README)."""
    result = subprocess.run(
        [sys.executable, str(TESTS / "killsim.py"), "--sas", "300", "--kills", "4", "--max-interval", "1.5",
         "--qm-sample", "0", "--workdir", str(tmp_path / "kill"), "--wall-limit", "120"],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: 4 kills" in result.stdout
    assert "'quick_modes_checked': 0" not in result.stdout.splitlines()[-2]


def test_serve_with_store_survives_kill_minus_9_over_real_sockets(tmp_path: Path) -> None:
    """``ikecore serve --store``: SIGKILL the process, start it again on the same store; the
    peer's ISAKMP SA still works (a Quick Mode on it succeeds) over loopback UDP."""
    import asyncio
    import signal
    import socket
    import time

    from ikecore.gateway.transport import Gateway

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "ikecore", "serve", "--psk", "secret", "--listen", f"127.0.0.1:{port}",
               "--ike", "aes128-sha256-modp2048", "--store", str(tmp_path / "gw.db"),
               "--store-key", str(tmp_path / "gw.key")]

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "listening" in line, line
        return process

    async def scenario() -> tuple[bool, bool]:
        gateway = Gateway(Engine(make_config()))
        first = start()
        try:
            result = await gateway.connect(("127.0.0.1", port), local=("127.0.0.2", 0), timeout=20, check=False)
            await asyncio.sleep(0.3)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        second = start()
        try:
            done = asyncio.get_running_loop().create_future()
            gateway.on_event = lambda e: (isinstance(e, (ev.Phase2Established, ev.Phase2Failed))
                                          and not done.done() and done.set_result(e))
            gateway.engine.initiate_quick_mode(result.handle, gateway.loop.time())
            gateway._flush()
            event = await asyncio.wait_for(done, 20)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=10)
            gateway.close()
        return result.ok, isinstance(event, ev.Phase2Established)

    started = time.monotonic()
    first_ok, restored_qm_ok = asyncio.run(scenario())
    assert first_ok and restored_qm_ok
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("kind", ["aggressive", "nat"])
def test_aggressive_mode_and_nat_t_sas_are_restored_with_their_state(tmp_path: Path, kind: str) -> None:
    if kind == "aggressive":
        config = make_config(aggressive=True)
        link = Link(initiator_config=config, responder_config=config)
    else:
        link = Link(nat="198.51.100.7")
    link.responder = Engine(link.responder_config, driver=link.responder_driver,
                            store=SaStore(tmp_path / "sa.db"), now=link.now)
    link.connect()
    (before,) = listing.main_mode_rows(link.responder.sas(), link.now)
    engine = _restart_responder(link, SaStore(tmp_path / "sa.db"), link.now)
    (after,) = listing.main_mode_rows(engine.sas(), link.now)
    for key in ("initiator_cookie", "responder_cookie", "peer", "peer_port", "local_port", "state"):
        assert after[key] == before[key], key
    sa = engine.sas()[0]
    assert sa.aggressive is (kind == "aggressive")
    if kind == "nat":
        assert sa.encapsulated and sa.nat == "remote" and sa.nat_t is not None
    link.initiator.initiate_quick_mode(link.initiator.sas()[0].handle, link.now)
    link.pump()
    assert len(engine.sas()[0].ipsec_sas) == 2
    if kind == "nat":
        assert all(k.udp_encapsulation for k in link.responder_driver.outbound.values())
