"""The SA store under stress and misuse (ikecore.gateway.store, ikecore.engine.persist).

A full disk degrades to negotiation without persistence (never a stall), writes are
incremental rows keyed by cookie pair, worker shards share one file, a key that does not
fit or a damaged file is a one-line error that leaves every byte as it was, restored SAs
are live at once, and the files stay owner-only whatever the umask. Real files, real
``ikecore serve`` processes on loopback, a real full tmpfs; every wait is bounded and
every process and mount is cleaned up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import INITIATOR, RESPONDER, Link, seeded_random
from ikecore import events as ev
from ikecore.driver import MemoryDriver
from ikecore.engine import persist
from ikecore.engine.core import Engine
from ikecore.gateway import store as sa_store
from ikecore.gateway.store import SaStore, StoreError
from ikecore.monitor.control_client import ControlError, request
from ikecore.monitor.counters import Monitor
from ikecore.steering import worker_of

PSK = "store-hardening-secret"


# --- helpers ------------------------------------------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _hashes(db: Path) -> dict[str, str | None]:
    """SHA-256 of the store file and its companions (None: absent)."""
    out: dict[str, str | None] = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(db) + suffix)
        out[suffix or "db"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return out


def _pump(link: Link, *, rounds: int = 200, events: int = 100_000) -> None:
    """Like ``Link.pump``, but every drain of events is bounded: an engine that emits
    forever makes this fail instead of hang."""
    for _ in range(rounds):
        batch = link.collect()
        if not batch:
            timer = min((t for t in (link.initiator.get_timer(), link.responder.get_timer()) if t is not None),
                        default=None)
            if timer is None or timer - link.now > 5.0:
                break
            link.now = max(link.now, timer)
            link.initiator.handle_timer(link.now)
            link.responder.handle_timer(link.now)
        for side, datagram in batch:
            link.deliver(side, datagram)
        link.now += 0.01
        for side in ("initiator", "responder"):
            engine = link.engine(side)
            for _ in range(events):
                event = engine.next_event()
                if event is None:
                    break
                link.events[side].append(event)
            else:
                raise AssertionError(f"the {side} engine emitted {events} events in one drain (a stall)")


def _store_engine(link: Link, store: Any, now: float | None = None) -> Engine:
    link.responder_driver = MemoryDriver()
    link.responder = Engine(link.responder_config, driver=link.responder_driver, store=store,
                            now=link.now if now is None else now, random=seeded_random(77))
    return link.responder


def _connect(link: Link, count: int = 1) -> list[int]:
    handles = []
    for _ in range(count):
        handles.append(link.initiator.initiate(RESPONDER, local=INITIATOR, now=link.now))
        _pump(link)
    return handles


class Serve:
    """An ``ikecore serve`` process; standard error collected by a thread."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "ikecore", "serve", *args], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text:
                return
            if self.process.poll() is not None:
                self._reader.join(2)
                raise AssertionError(f"serve exited {self.process.returncode}: {self.text[-2000:]}")
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} from serve: {self.text[-2000:]}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)
        return self.process.returncode


@contextlib.contextmanager
def serve(args: list[str]) -> Iterator[Serve]:
    running = Serve(args)
    try:
        running.wait_for("listening on")
        yield running
    finally:
        running.stop()


def _loadtest(port: int, *args: str, timeout: float = 180.0) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "ikecore", "loadtest", f"127.0.0.1:{port}", "--psk", PSK, "--json",
                          "--no-progress", *args], capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    assert out.stdout.strip(), out.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _monitor(control: str, mode: str, view: str) -> Any:
    """``ikecore monitor MODE VIEW --format json`` against a running gateway."""
    out = subprocess.run([sys.executable, "-m", "ikecore", "monitor", "--control", control, mode, view, "--format",
                          "json"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _counter(control: str, name: str) -> int:
    answer = request(control, {"op": "view", "mode": "main-mode", "view": "counters"}, timeout=10.0)
    return int(next((row["value"] for row in answer["rows"] if row["counter"] == name), 0))


# --- 1. store failures degrade, never stall -------------------------------------------------------


class BrokenDisk:
    """A store whose disk is full while ``full`` is set (it counts the tries)."""

    def __init__(self, full: bool = True) -> None:
        self.full = full
        self.tries = 0
        self.rows: dict[bytes, bytes] = {}

    def load(self) -> list[Any]:
        return []

    def write(self, changes: Any, *rest: Any) -> None:
        self.tries += 1
        if self.full:
            raise StoreError("database or disk is full")
        self.rows.update(changes.isakmp)


def test_a_full_disk_never_stalls_the_engine_and_writes_resume_when_it_works() -> None:
    link = Link()
    disk = BrokenDisk()
    engine = _store_engine(link, disk)
    start = link.now
    _connect(link, 5)
    assert len(link.of("initiator", ev.Phase2Established)) == 5
    failed = [e for e in link.events["responder"] if isinstance(e, ev.StoreFailed)]
    seconds = link.now - start
    # one try per second at most, each counted once, never one per call
    assert 1 <= len(failed) <= seconds + 1 and disk.tries == len(failed)
    assert all(e.operation == "write" for e in failed)
    assert engine.get_timer() is not None and engine.get_timer() <= link.now + 1.0
    disk.full = False
    link.advance(2.0)
    assert sorted(disk.rows) == sorted(sa.initiator_cookie + sa.responder_cookie for sa in engine.sas())
    assert len(disk.rows) == 5


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only); unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], check=True,
                   timeout=30)
    try:
        yield mount
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(mount)], timeout=30).returncode == 0:
                break
            time.sleep(0.5)


def _fill(mount: Path) -> Path:
    """Take every free byte of the file system ``mount``."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(size))
    finally:
        os.close(fd)
    assert os.statvfs(mount).f_bavail == 0
    return filler


def test_load_test_on_a_full_filesystem_establishes_all_and_the_store_catches_up(full_tmpfs: Path,
                                                                                  tmp_path: Path) -> None:
    port = _free_udp_port()
    control = str(tmp_path / "gw.sock")
    store = full_tmpfs / "sa.db"
    peers = 300
    with serve(["--psk", PSK, "--listen", f"127.0.0.1:{port}", "--store", str(store), "--control", control,
                "--quiet", "--dh-threads", "0"]) as running:
        running.wait_for("control socket")
        filler = _fill(full_tmpfs)
        answered: list[float] = []
        stop = threading.Event()

        def poll() -> None:   # the control socket must keep answering
            while not stop.is_set():
                started = time.monotonic()
                try:
                    request(control, {"op": "view", "mode": "main-mode", "view": "statistics"}, timeout=5.0)
                    answered.append(time.monotonic() - started)
                except Exception:  # noqa: BLE001 - counted as not answered
                    answered.append(float("inf"))
                stop.wait(0.25)

        poller = threading.Thread(target=poll, daemon=True)
        cpu_before, wall_before = running.cpu_seconds(), time.monotonic()
        poller.start()
        try:
            result = _loadtest(port, "--peers", str(peers), "--rate", "100", "--timeout", "15",
                               "--first-address", "127.31.0.1")
        finally:
            stop.set()
            poller.join(10)
        wall = time.monotonic() - wall_before
        cpu = running.cpu_seconds() - cpu_before
        failures = _counter(control, "store_failures:write")
        figures = f"gateway CPU {cpu:.2f} s in {wall:.2f} s, {failures} failed writes, control answers {answered}"
        assert result["established"] == peers, (result["failures"], figures)
        assert answered and max(answered) < 2.0, figures
        assert cpu < 0.8 * wall, figures   # not pegged (a stalled gateway spins at 100 %)
        assert 1 <= failures <= wall + 3, figures
        assert len(sa_store.read_records(store)) < peers   # the disk was full indeed
        filler.unlink()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(sa_store.read_records(store)) < peers:
            time.sleep(0.2)
        assert len(sa_store.read_records(store)) == peers
        # logged once per interval, not once per failure (FaultLog: first one, then a minute later)
        assert 1 <= sum("StoreFailed write" in line for line in running.lines) <= 2, running.text[-2000:]


# --- 2. incremental writes, keyed by cookie pair ---------------------------------------------------


class CountingStore(SaStore):
    """An SaStore that measures what each write carries."""

    sizes: list[int]
    isakmp_records: int

    def write(self, *args: Any) -> None:  # type: ignore[override]
        self.sizes.append(len(pickle.dumps(args)))
        changes = args[0]
        self.isakmp_records += len(getattr(changes, "isakmp", changes))
        super().write(*args)


def test_quick_modes_write_their_own_rows_not_the_whole_isakmp_sa(tmp_path: Path) -> None:
    link = Link()
    store = CountingStore(tmp_path / "sa.db")
    store.sizes, store.isakmp_records = [], 0
    _store_engine(link, store)
    (handle,) = _connect(link)
    assert store.isakmp_records == 1
    halves = []
    for _half in range(2):
        before = sum(store.sizes)
        for _ in range(150):
            link.initiator.initiate_quick_mode(handle, link.now)
            _pump(link)
        halves.append(sum(store.sizes) - before)
    assert len(link.responder.sas()[0].ipsec_sas) == 301
    # the second 150 cost what the first 150 did: nothing grows with the IPsec SAs already there
    assert halves[1] < 1.3 * halves[0], halves
    assert store.isakmp_records == 1   # the ISAKMP SA's own fields never changed
    db = sqlite3.connect(tmp_path / "sa.db")
    try:
        assert db.execute("SELECT count(*) FROM ipsec_sa").fetchone()[0] == 301
        assert db.execute("SELECT count(*) FROM isakmp_sa").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM spent_message_id").fetchone()[0] == 301
    finally:
        db.close()
    # an IPsec SA that goes is a row that goes
    sa = link.responder.sas()[0]
    link.responder.remove_ipsec(sa, sa.ipsec_sas[0], "test", notify_peer=False)
    link.responder.datagrams_to_send()
    stored = sa_store.read_records(tmp_path / "sa.db")[(sa.initiator_cookie + sa.responder_cookie).hex()]
    assert len(stored["ipsec"]) == 300


def _matches_store(engine: Engine, path: Path) -> None:
    """What the store holds is what the engine holds: the established ISAKMP SAs with their
    changing fields, each one's IPsec SAs (superseded or not) and spent Message IDs."""
    held = {(sa.initiator_cookie + sa.responder_cookie).hex(): sa for sa in engine.sas()
            if sa.state.value == "ESTABLISHED"}
    stored = sa_store.read_records(path)
    assert set(stored) == set(held)
    for cookies, record in stored.items():
        sa = held[cookies]
        assert (record["superseded"], record["remote"], record["dpd_sequence"]) == \
            (sa.superseded, list(sa.remote), sa.dpd_sequence)
        assert {i["spi_in"]: i["superseded"] for i in record["ipsec"]} == \
            {i.spi_in.hex(): i.superseded for i in sa.ipsec_sas}
        assert set(record["spent"]) == set(sa.spent_message_ids)


def test_rekeys_of_both_phases_keep_the_rows_right(tmp_path: Path) -> None:
    from ikecore.config import config_from_dict

    config = config_from_dict({
        "ike_policy": {"default": {"proposals": "aes128-sha256-modp2048", "lifetime": 1000}},
        "esp_policy": {"default": {"proposals": "aes128-sha256", "lifetime": 300}},
        "timing": {"retransmit_timeout": 1.0, "retransmit_tries": 3, "negotiation_timeout": 30.0,
                   "rekey_margin": 100},
        "filter": [{"name": "peer", "psk": "secret"}],
    })
    link = Link(config, config)
    paths = {side: tmp_path / f"{side}.db" for side in ("initiator", "responder")}
    link.initiator = Engine(config, driver=link.initiator_driver, store=SaStore(paths["initiator"]), now=link.now,
                            random=seeded_random(5))
    _store_engine(link, SaStore(paths["responder"]))
    _connect(link, 2)
    for _ in range(12):   # IPsec SAs rekeyed every ~200 s, the ISAKMP SAs once (adopting theirs)
        link.advance(100.0)
        for side, path in paths.items():
            _matches_store(link.engine(side), path)
    assert link.of("initiator", ev.Rekeyed) and any(e.phase == 1 for e in link.of("initiator", ev.Rekeyed))
    # and a restart from each file gives the same SAs back
    for side, path in paths.items():
        before = {(sa.initiator_cookie, sa.responder_cookie, tuple(sorted(i.spi_in for i in sa.ipsec_sas)))
                  for sa in link.engine(side).sas()}
        again = Engine(config, driver=MemoryDriver(), store=SaStore(path), now=link.now)
        assert {(sa.initiator_cookie, sa.responder_cookie, tuple(sorted(i.spi_in for i in sa.ipsec_sas)))
                for sa in again.sas()} == before


def _worker_link(k: int, n: int) -> Link:
    """A link whose initiator picks CKY-I for worker k of n (as a peer's cookie lands there)."""
    link = Link(seed=10 + k)
    link.initiator = Engine(link.initiator_config, driver=link.initiator_driver, random=seeded_random(20 + k),
                            worker=(k, n))
    return link


def test_two_workers_share_one_file_and_any_worker_count_brings_every_sa_back(tmp_path: Path) -> None:
    path = tmp_path / "sa.db"
    links = [_worker_link(k, 2) for k in range(2)]
    stores = [SaStore(path, shard=(k, 2)) for k in range(2)]
    for k, link in enumerate(links):
        link.responder = Engine(link.responder_config, driver=link.responder_driver, store=stores[k], now=link.now,
                                worker=(k, 2))
        _connect(link, 3)
        # the engine handles restart at 1 in every worker: rows keyed by them overwrote each other
        assert [sa.handle for sa in link.responder.sas()] == [1, 2, 3]
    cookies = {k: {sa.initiator_cookie + sa.responder_cookie for sa in link.responder.sas()}
               for k, link in enumerate(links)}
    assert all(worker_of(c[:8], 2) == k for k, found in cookies.items() for c in found)
    everything = cookies[0] | cookies[1]
    assert len(everything) == 6
    for store in stores:
        store.close()
    # one worker: every SA; three workers: each its own, together all of them
    assert {s.cookies for s in SaStore(path).load()} == everything
    shards = [{s.cookies for s in SaStore(path, shard=(k, 3)).load()} for k in range(3)]
    assert set().union(*shards) == everything and sum(map(len, shards)) == 6
    assert all(worker_of(c[:8], 3) == k for k, found in enumerate(shards) for c in found)
    # a restored worker of three serves a Quick Mode on an SA another worker made
    k = next(k for k, found in enumerate(shards) if found)
    engine = Engine(links[0].responder_config, driver=MemoryDriver(), store=SaStore(path, shard=(k, 3)),
                    now=links[0].now, worker=(k, 3))
    assert {sa.initiator_cookie + sa.responder_cookie for sa in engine.sas()} == shards[k]


def test_serve_with_any_worker_count_brings_every_stored_sa_back_to_its_worker(tmp_path: Path) -> None:
    port = _free_udp_port()
    control = str(tmp_path / "gw.sock")
    common = ["--psk", PSK, "--listen", f"127.0.0.1:{port}", "--store", str(tmp_path / "sa.db"), "--control",
              control, "--quiet", "--dh-threads", "0"]

    def listed() -> set[tuple[str, str, int]]:
        answer = request(control, {"op": "view", "mode": "main-mode", "view": "security-associations",
                                   "all_columns": True}, timeout=10.0)
        return {(row["initiator_cookie"], row["responder_cookie"], row.get("worker", 0)) for row in answer["rows"]}

    with serve([*common, "--workers", "2"]):
        result = _loadtest(port, "--peers", "60", "--first-address", "127.33.0.1")
        assert result["established"] == 60, result["failures"]
        first = listed()
    assert len(first) == 60
    for count in (3, 1):
        with serve([*common, "--workers", str(count)]) as running:
            deadline = time.monotonic() + 30
            rows: set[tuple[str, str, int]] = set()
            while len(rows) < 60 and time.monotonic() < deadline:
                with contextlib.suppress(ControlError):   # the parent's socket comes up after its workers
                    rows = listed()
                time.sleep(0.2)
            assert {(i, r) for i, r, _w in rows} == {(i, r) for i, r, _w in first}, running.text[-2000:]
            assert all(worker == worker_of(bytes.fromhex(i), count) for i, _r, worker in rows)


_WRITER = """
import os, sys
sys.path.insert(0, {python!r})
from ikecore.engine.persist import ChangeSet
from ikecore.gateway.store import SaStore
from ikecore.steering import steer_cookie
k, n, count = int(sys.argv[1]), 2, int(sys.argv[2])
store = SaStore({path!r}, shard=(k, n), synchronous="NORMAL")
mine = []
for i in range(count):
    cookies = steer_cookie(os.urandom(8), k, n) + os.urandom(8)
    mine.append(cookies)
    store.write(ChangeSet(isakmp={{cookies: b'{{"format":2,"i":%d}}' % i}},
                          ipsec={{(cookies, os.urandom(4)): b'{{"format":2}}'}}, spent=[(cookies, i + 1)]))
store.write(ChangeSet(deleted=mine[: count // 2]))
print(len(store))
"""


def test_two_processes_write_one_store_at_once(tmp_path: Path) -> None:
    path = tmp_path / "sa.db"
    SaStore(path).close()
    script = _WRITER.format(python=str(Path(__file__).resolve().parent.parent / "python"), path=str(path))
    writers = [subprocess.Popen([sys.executable, "-c", script, str(k), "300"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for k in range(2)]
    results = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err for _out, err in results]
    assert [out.strip() for out, _err in results] == ["150", "150"]   # each deleted only its own
    assert len(SaStore(path)) == 300
    for k in range(2):
        loaded = SaStore(path, shard=(k, 2)).load()
        assert len(loaded) == 150 and all(len(s.ipsec) == 1 and len(s.spent) == 1 for s in loaded)
        assert all(worker_of(s.cookies[:8], 2) == k for s in loaded)


# --- 4. the store key, damage, the old format ------------------------------------------------------


def _sealed_store(tmp_path: Path, killed: bool, count: int = 3) -> tuple[Path, Path]:
    """A store of ``count`` established SAs sealed with a key: closed cleanly, or left by a
    process killed with SIGKILL (its -wal and -shm still there)."""
    path, key = tmp_path / "sa.db", tmp_path / "sa.key"
    link = Link()
    store = SaStore(path, key_file=key)
    _store_engine(link, store)
    _connect(link, count)
    store.close()
    if killed:   # one more SA written by a process that then dies without closing anything
        code = (f"import os, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent / 'python')!r});"
                "from ikecore.gateway.store import SaStore; from ikecore.engine.persist import ChangeSet;"
                f"s = SaStore({str(path)!r}, key_file={str(key)!r}); s.load();"
                "s.write(ChangeSet(isakmp={os.urandom(16): b'{\"format\":2}'})); os.kill(os.getpid(), 9)")
        subprocess.run([sys.executable, "-c", code], timeout=60)
        assert Path(str(path) + "-wal").exists() and Path(str(path) + "-shm").exists()
    return path, key


@pytest.mark.parametrize("killed", [False, True], ids=["closed", "killed"])
def test_a_missing_or_wrong_key_is_refused_and_the_store_keeps_every_byte(tmp_path: Path, killed: bool) -> None:
    path, key = _sealed_store(tmp_path, killed)
    before = _hashes(path)
    missing = tmp_path / "missing.key"
    with pytest.raises(StoreError, match=f"key file {missing} is missing") as refused:
        SaStore(path, key_file=missing)
    assert refused.value.about == "key" and "\n" not in str(refused.value)
    assert not missing.exists() and _hashes(path) == before
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    with pytest.raises(StoreError, match=f"key file {wrong} opens none of the"):
        SaStore(path, key_file=wrong)
    assert _hashes(path) == before
    with pytest.raises(StoreError, match="encrypted records"):
        SaStore(path)
    assert _hashes(path) == before
    # the same through ikecore serve: one line naming the flag and the file, exit 2
    for key_file, flag in ((missing, "--store-key"), (wrong, "--store-key")):
        out = subprocess.run([sys.executable, "-m", "ikecore", "serve", "--psk", PSK, "--listen",
                              f"127.0.0.1:{_free_udp_port()}", "--store", str(path), "--store-key", str(key_file)],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0] and str(key_file) in lines[0], out.stderr
        assert "Traceback" not in out.stderr and _hashes(path) == before
    # the right key opens it
    assert len(SaStore(path, key_file=key).load()) == 3 + killed


def test_a_missing_key_file_is_created_for_an_empty_or_new_store(tmp_path: Path) -> None:
    for name in ("new", "empty"):
        path, key = tmp_path / f"{name}.db", tmp_path / f"{name}.key"
        if name == "empty":
            SaStore(path).close()
        store = SaStore(path, key_file=key)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
        link = Link()
        _store_engine(link, store)
        _connect(link)
        store.close()
        assert len(SaStore(path, key_file=key)) == 1


def _damage(path: Path) -> None:
    """Overwrite a page in the middle of the file (the header stays valid)."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2 // 4096 * 4096)
        handle.write(os.urandom(4096))


@pytest.mark.parametrize("kind", ["damaged page", "not a database"])
def test_a_corrupted_store_is_a_one_line_error_and_left_as_it_is(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "sa.db"
    if kind == "damaged page":
        link = Link()
        store = SaStore(path)
        _store_engine(link, store)
        _connect(link, 40)
        store.close()
        assert path.stat().st_size >= 8 * 4096
        _damage(path)
    else:
        path.write_bytes(os.urandom(16384))
    before = _hashes(path)
    with pytest.raises(StoreError, match=str(path)):
        SaStore(path)
    assert _hashes(path) == before
    out = subprocess.run([sys.executable, "-m", "ikecore", "serve", "--psk", PSK, "--listen",
                          f"127.0.0.1:{_free_udp_port()}", "--store", str(path)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "--store" in lines[0] and str(path) in lines[0], out.stderr
    assert "Traceback" not in out.stderr and _hashes(path) == before


def test_records_that_do_not_open_are_reported_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, key = _sealed_store(tmp_path, killed=False)
    db = sqlite3.connect(path)
    (cookies, blob), = db.execute("SELECT cookies, record FROM isakmp_sa ORDER BY rowid LIMIT 1").fetchall()
    damaged = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
    db.execute("UPDATE isakmp_sa SET record = ? WHERE cookies = ?", (damaged, cookies))
    db.commit()
    db.close()
    with caplog.at_level(logging.WARNING, logger="ikecore.gateway.store"):
        store = SaStore(path, key_file=key)
    assert store.unreadable == 1
    assert any("1 records do not open" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    link = Link()
    engine = _store_engine(link, store)
    assert len(engine.sas()) == 2
    monitor = Monitor()
    while (event := engine.next_event()) is not None:
        monitor.observe(event)
        if isinstance(event, ev.StoreFailed):
            assert bytes(cookies).hex() in event.reason and "left in the store" in event.reason
    assert monitor.extended["store_failures:load"] == 1
    _connect(link, 1)   # writing goes on (INITIAL-CONTACT replaces the restored two) and leaves the
    store.close()       # record that did not open alone
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT record FROM isakmp_sa WHERE cookies = ?", (cookies,)).fetchone()[0] == damaged
        assert db.execute("SELECT count(*) FROM isakmp_sa").fetchone()[0] == 1 + len(engine.sas())
    finally:
        db.close()


def _format1_store(path: Path, key: Path, sas: list[Any], now: float) -> None:
    """A store as ikecore wrote it before format 2: one sealed document per ISAKMP SA,
    its IPsec SAs and spent Message IDs inside, the row keyed by the engine handle."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(key.read_bytes())
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE isakmp_sa (handle INTEGER PRIMARY KEY, saved REAL NOT NULL, record BLOB NOT NULL)")
    for sa in sas:
        record = json.loads(persist.dump_isakmp(sa, now))
        record["format"] = 1
        record["ipsec"] = [{k: v for k, v in json.loads(persist.dump_ipsec(i, now)).items() if k != "format"}
                           for i in sa.ipsec_sas]
        record["spent"] = list(sa.spent_message_ids)
        nonce = os.urandom(12)
        blob = nonce + aead.encrypt(nonce, json.dumps(record).encode(), sa.handle.to_bytes(8, "big"))
        db.execute("INSERT INTO isakmp_sa VALUES (?, ?, ?)", (sa.handle, time.time(), blob))
    db.commit()
    db.close()


def test_a_store_of_the_old_handle_keyed_format_is_migrated(tmp_path: Path) -> None:
    link = Link()
    _connect(link, 2)
    key = tmp_path / "sa.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    old = link.responder.sas()
    _format1_store(tmp_path / "sa.db", key, old, link.now)
    db = sqlite3.connect(tmp_path / "sa.db")   # and one document that does not open
    db.execute("INSERT INTO isakmp_sa VALUES (99, ?, ?)", (time.time(), os.urandom(300)))
    db.commit()
    db.close()
    store = SaStore(tmp_path / "sa.db", key_file=key)
    assert store.unreadable == 1
    engine = _store_engine(link, store)
    assert {(sa.initiator_cookie, sa.responder_cookie, len(sa.ipsec_sas)) for sa in engine.sas()} == \
        {(sa.initiator_cookie, sa.responder_cookie, len(sa.ipsec_sas)) for sa in old}
    assert all(sa.spent_message_ids == o.spent_message_ids for sa, o in zip(engine.sas(), old))
    db = sqlite3.connect(tmp_path / "sa.db")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert db.execute("SELECT handle FROM isakmp_sa_v1").fetchall() == [(99,)]   # kept, not dropped
    finally:
        db.close()
    for sa in link.initiator.sas():
        link.initiator.initiate_quick_mode(sa.handle, link.now)
    _pump(link)
    assert sum(len(sa.ipsec_sas) for sa in engine.sas()) == sum(len(sa.ipsec_sas) for sa in old) + 2


# --- 5. restored SAs are live at once -------------------------------------------------------------


def test_restored_sas_are_listed_and_their_timers_run_right_after_a_restart(tmp_path: Path) -> None:
    port = _free_udp_port()
    control = str(tmp_path / "gw.sock")
    common = ["--psk", PSK, "--listen", f"127.0.0.1:{port}", "--store", str(tmp_path / "sa.db"), "--control",
              control, "--quiet", "--dh-threads", "0"]
    peers = 20
    with serve(common):
        result = _loadtest(port, "--peers", str(peers), "--first-address", "127.32.0.1")
        assert result["established"] == peers, result["failures"]
    # the peers are gone; the restarted gateway probes them (DPD) without any datagram first
    with serve([*common, "--dpd-delay", "1", "--dpd-timeout", "2"]) as running:
        running.wait_for("control socket")
        statistics = _monitor(control, "main-mode", "statistics")
        assert statistics["isadb_list_size"] == peers, statistics
        assert len(_monitor(control, "main-mode", "security-associations")) == peers
        assert len(_monitor(control, "quick-mode", "security-associations")) == peers
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _monitor(control, "main-mode", "security-associations"):
            time.sleep(0.5)
        assert _monitor(control, "main-mode", "security-associations") == [], running.text[-2000:]
        assert _counter(control, "dead_peers") == peers


# --- 6. owner-only whatever the umask ------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_store_files_are_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        store = SaStore(tmp_path / "sa.db", key_file=tmp_path / "sa.key")
        link = Link()
        _store_engine(link, store)
        _connect(link)
        names = ["sa.db", "sa.db-wal", "sa.db-shm", "sa.key"]
        for name in names:
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, (name, oct(umask))
        store.close()
        reopened = SaStore(tmp_path / "sa.db", key_file=tmp_path / "sa.key")
        assert len(reopened) == 1
        for name in names:
            path = tmp_path / name
            assert not path.exists() or stat.S_IMODE(path.stat().st_mode) == 0o600, (name, oct(umask))
        reopened.close()
    finally:
        os.umask(previous)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no check copies left behind
