"""The SA store: established SAs in SQLite, so a restarted gateway keeps its tunnels.

Design note
-----------
``Engine(config, store=SaStore(path), now=...)`` loads the stored SAs at start and, at
the end of every call that changed SAs (a datagram, a timer, a local request), writes
what changed in ONE SQLite transaction (an ``ikecore.engine.persist.ChangeSet``). The
engine hands its datagrams and events out only after that call returned, so whatever a
peer or the application has seen established is on disk; when a write fails (a full
disk) the engine goes on without the store and tries again once a second
(``ikecore.engine.core``). Atomicity and kill -9 safety are SQLite's: write-ahead log, a
transaction is either wholly in the file or not at all. ``synchronous="FULL"`` (default)
also survives power loss; ``"NORMAL"`` survives a process kill (not power loss).

Rows (format 2, ``PRAGMA user_version``): ``isakmp_sa`` (one per ISAKMP SA),
``ipsec_sa`` (one per IPsec SA) and ``spent_message_id``, all keyed by the ISAKMP SA's
cookie pair (``ikecore.engine.persist`` says what goes in each). The column ``steer``
holds the first four bytes of CKY-I, so ``SaStore(path, shard=(k, n))`` loads exactly
the SAs that ``ikecore.steering.worker_of`` gives worker k of n: the worker processes
of one gateway share one file, and a restart with any number of workers brings every SA
back to the worker that now receives its datagrams. A worker writes and deletes only
the rows of SAs it holds. Several processes write at once: WAL, and a busy timeout
(a write waits at most ``busy_timeout`` seconds for another worker's transaction).
A store of format 1 (one document per ISAKMP SA, keyed by the engine handle) is
migrated in place at the first start, after the checks below.

Opening checks before anything is written: the existing file is read through a
read-only snapshot that changes no byte of the database, its ``-wal`` or its ``-shm``
(``immutable`` when there is no write-ahead log; else the log is copied next to a hard
link of the database in a private directory). A damaged file, a missing key file while
the store holds sealed records, a key that opens none of them, or encrypted records
without a key raise :class:`StoreError` (one line naming the file and the fix) and
leave every file as it was. Records that do not open while others do are kept in the
file, counted (``unreadable``), logged, and reported by the engine (``StoreFailed``
"load"), never silently skipped.

At rest: the file and its WAL/SHM companions are 0600 whatever the umask (SQLite gives
the companions the database file's mode). With ``key_file`` every record is sealed with
AES-256-GCM under a 32-byte key read from that file (created 0600 with random bytes when
missing and the store holds no record); the table and row key are the associated data,
so rows cannot be swapped.

The store records wall-clock time of each write so a restarted engine can count the
lifetime that passed while it was down (``time.time``: the only clock read here).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ikecore.engine.persist import ChangeSet, StoredIpsec, StoredSa, split_v1

__all__ = ["SaStore", "StoreError", "read_records"]

LOG = logging.getLogger("ikecore.gateway.store")

FORMAT = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS isakmp_sa (
    cookies BLOB PRIMARY KEY,
    steer INTEGER NOT NULL,
    saved REAL NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ipsec_sa (
    cookies BLOB NOT NULL,
    spi_in BLOB NOT NULL,
    steer INTEGER NOT NULL,
    saved REAL NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (cookies, spi_in)
);
CREATE TABLE IF NOT EXISTS spent_message_id (
    cookies BLOB NOT NULL,
    message_id INTEGER NOT NULL,
    steer INTEGER NOT NULL,
    PRIMARY KEY (cookies, message_id)
);
"""
_PLAIN = b'{"format":'  # how every unsealed record starts (sealed ones start with a random nonce)
_KEY_SAMPLE = 16         # records of other shards tried when this shard holds none


#: Seconds opening a store waits for other processes' transactions (a write waits ``busy_timeout``).
OPEN_BUSY_TIMEOUT = 30.0
def _locked(exc: sqlite3.Error) -> bool:
    """SQLite's "database is locked" / "busy": another process holds the file for now."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


#: Snapshots taken to check a store before a damaged one is refused.
SNAPSHOT_TRIES = 3


class StoreError(Exception):
    """The store cannot be opened or written (the message says why and what to do).

    ``about``: ``"store"`` or ``"key"``, the file the message is about (``ikecore serve``
    names ``--store`` or ``--store-key``)."""

    def __init__(self, message: str, about: str = "store") -> None:
        super().__init__(message)
        self.about = about


def _steer(cookies: bytes) -> int:
    return int.from_bytes(cookies[:4], "big")


class _Seal:
    """AES-256-GCM sealing of records (or none), the row's identity as associated data."""

    def __init__(self, key: bytes | None) -> None:
        self.aead: Any = None
        if key is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self.aead = AESGCM(key)

    def seal(self, aad: bytes, record: bytes) -> bytes:
        if self.aead is None:
            return record
        nonce = os.urandom(12)
        return nonce + bytes(self.aead.encrypt(nonce, record, aad))

    def open(self, aad: bytes, blob: bytes) -> bytes | None:
        if self.aead is None:
            return blob if blob.startswith(_PLAIN) else None
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(self.aead.decrypt(blob[:12], blob[12:], aad))
        except (InvalidTag, ValueError):
            return None


def _isakmp_aad(cookies: bytes) -> bytes:
    return b"isakmp_sa" + cookies


def _ipsec_aad(cookies: bytes, spi_in: bytes) -> bytes:
    return b"ipsec_sa" + cookies + spi_in


def _v1_aad(handle: int) -> bytes:
    return handle.to_bytes(8, "big")


class SaStore:
    """SQLite file of established ISAKMP and IPsec SAs (see the module design note).

    Args:
        path: the database file (created 0600).
        key_file: optional; encrypt every record with the 32-byte key in this file.
        synchronous: SQLite ``synchronous`` pragma, ``"FULL"`` or ``"NORMAL"``.
        shard: (k, n): this is worker k of n (``ikecore.steering.worker_of``); only its SAs
            are loaded. (0, 1): every SA.
        busy_timeout: seconds a write waits for another process's transaction.

    Raises:
        StoreError: the file is damaged or not a store, or the key does not fit it.
    """

    def __init__(self, path: str | os.PathLike[str], *, key_file: str | os.PathLike[str] | None = None,
                 synchronous: str = "FULL", shard: tuple[int, int] = (0, 1), busy_timeout: float = 2.0) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise StoreError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        if not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
            raise StoreError(f"shard {shard[0]}/{shard[1]} is not one of 0/{shard[1]} .. {shard[1] - 1}/{shard[1]}")
        self.path = Path(path)
        self.shard = shard
        #: records of this shard that could not be opened at start (left in the file)
        self.unreadable = 0
        key_path = Path(key_file) if key_file is not None else None
        key = _read_key(key_path) if key_path is not None and os.path.lexists(key_path) else None
        loaded: list[StoredSa] | None = None
        migrate = False
        if self.path.exists() and self.path.stat().st_size > 0:
            for attempt in range(SNAPSHOT_TRIES):
                try:
                    with _snapshot(self.path) as snapshot:
                        loaded, migrate = _check(snapshot, self.path, shard, key_path, key)
                    break
                except sqlite3.Error as exc:
                    # another worker may have written while the snapshot was taken: look again
                    # before calling the file damaged
                    if attempt + 1 == SNAPSHOT_TRIES:
                        raise StoreError(f"cannot read SA store {self.path} ({exc}): is it an SA store?") from None
                    time.sleep(0.2)
        if key_path is not None and key is None:
            key = _create_key(key_path)
        self._seal = _Seal(key)
        # Every worker of a gateway opens the file at once (switching it to WAL, creating or
        # migrating the tables): SQLite answers one of two such openers "locked" at once,
        # without waiting, to break the deadlock; that one tries again a moment later.
        give_up = time.monotonic() + OPEN_BUSY_TIMEOUT
        while True:
            try:
                _create_private(self.path)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                           timeout=max(busy_timeout, OPEN_BUSY_TIMEOUT))
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open SA store {self.path}: {exc}") from None
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={synchronous}")
                kept = self._prepare()
                self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                break
            except sqlite3.Error as exc:
                self._db.close()
                if not _locked(exc) or time.monotonic() > give_up:
                    raise StoreError(f"cannot open SA store {self.path}: {exc}") from None
                time.sleep(0.02 + random.random() * 0.08)
        for companion in ("-wal", "-shm"):
            extra = Path(str(self.path) + companion)
            if extra.exists():
                os.chmod(extra, 0o600)
        self._inode: tuple[int, int] | None = _inode(self.path)
        _OPEN[self._inode] = _OPEN.get(self._inode, 0) + 1
        if loaded is None or migrate:
            loaded = _read_rows(self._db, self._seal, self.shard)
        self._loaded: list[StoredSa] | None = loaded
        self.unreadable = _unreadable(loaded) + kept
        if self.unreadable:
            LOG.warning("SA store %s: %d records do not open (another key, or damage); left in the file, "
                        "not loaded", self.path, self.unreadable)

    @staticmethod
    def check(path: str | os.PathLike[str], *, key_file: str | os.PathLike[str] | None = None) -> None:
        """Check an existing store and its key file as opening does, writing nothing (a
        gateway's parent does it before starting its workers). Raises StoreError."""
        store, key_path = Path(path), Path(key_file) if key_file is not None else None
        key = _read_key(key_path) if key_path is not None and os.path.lexists(key_path) else None
        if store.exists() and store.stat().st_size > 0:
            try:
                with _snapshot(store) as snapshot:
                    _check(snapshot, store, (0, 1), key_path, key, load=False)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read SA store {store} ({exc}): is it an SA store?") from None

    # --- opening ----------------------------------------------------------------------------

    def _prepare(self) -> int:
        """Create the tables of a new store, or migrate one of format 1 (in one transaction).
        Returns how many format 1 records could not be migrated."""
        kept = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = _format(self._db)
            if version is None:
                _create_schema(self._db)
            elif version == 1:
                kept = self._migrate()
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return kept

    def _migrate(self) -> int:
        """Format 1 -> 2: split every document into rows keyed by its cookie pair; documents
        that do not open stay in the table ``isakmp_sa_v1``, logged and counted (returned)."""
        db = self._db
        db.execute("ALTER TABLE isakmp_sa RENAME TO isakmp_sa_v1")
        _create_schema(db)
        kept = 0
        for handle, saved, blob in db.execute("SELECT handle, saved, record FROM isakmp_sa_v1").fetchall():
            data = self._seal.open(_v1_aad(int(handle)), bytes(blob))
            try:
                if data is None:
                    raise ValueError("does not open")
                isakmp, ipsec, spent = split_v1(data)
                cookies = bytes.fromhex(json.loads(isakmp)["cookies"])
            except (ValueError, KeyError, TypeError) as exc:
                kept += 1
                LOG.warning("SA store %s: format 1 record %s not migrated (%s); kept in table isakmp_sa_v1",
                            self.path, handle, exc)
                continue
            steer = _steer(cookies)
            db.execute("INSERT OR REPLACE INTO isakmp_sa VALUES (?, ?, ?, ?)",
                       (cookies, steer, saved, self._seal.seal(_isakmp_aad(cookies), isakmp)))
            db.executemany("INSERT OR REPLACE INTO ipsec_sa VALUES (?, ?, ?, ?, ?)",
                           [(cookies, spi, steer, saved, self._seal.seal(_ipsec_aad(cookies, spi), record))
                            for spi, record in ipsec])
            db.executemany("INSERT OR IGNORE INTO spent_message_id VALUES (?, ?, ?)",
                           [(cookies, m, steer) for m in spent])
            db.execute("DELETE FROM isakmp_sa_v1 WHERE handle = ?", (handle,))
        if not kept:
            db.execute("DROP TABLE isakmp_sa_v1")
        LOG.warning("SA store %s: migrated from format 1 to %d (rows keyed by cookie pair)", self.path, FORMAT)
        return kept

    # --- the engine's side (ikecore.engine.persist.RecordStore) ------------------------------

    def load(self) -> list[StoredSa]:
        """This shard's ISAKMP SAs with their rows (read at opening; a second call reads again)."""
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            loaded = _read_rows(self._db, self._seal, self.shard)
        return loaded

    def write(self, changes: ChangeSet) -> None:
        """Apply one change set atomically: deletes first, then inserts."""
        if not changes:
            return
        now = time.time()
        seal = self._seal.seal
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            if changes.deleted:
                gone = [(cookies,) for cookies in changes.deleted]
                db.executemany("DELETE FROM isakmp_sa WHERE cookies = ?", gone)
                db.executemany("DELETE FROM ipsec_sa WHERE cookies = ?", gone)
                db.executemany("DELETE FROM spent_message_id WHERE cookies = ?", gone)
            if changes.ipsec_deleted:
                db.executemany("DELETE FROM ipsec_sa WHERE cookies = ? AND spi_in = ?", changes.ipsec_deleted)
            if changes.spent_deleted:
                db.executemany("DELETE FROM spent_message_id WHERE cookies = ? AND message_id = ?",
                               changes.spent_deleted)
            if changes.isakmp:
                db.executemany("INSERT OR REPLACE INTO isakmp_sa VALUES (?, ?, ?, ?)",
                               [(cookies, _steer(cookies), now, seal(_isakmp_aad(cookies), record))
                                for cookies, record in changes.isakmp.items()])
            if changes.ipsec:
                db.executemany("INSERT OR REPLACE INTO ipsec_sa VALUES (?, ?, ?, ?, ?)",
                               [(cookies, spi, _steer(cookies), now, seal(_ipsec_aad(cookies, spi), record))
                                for (cookies, spi), record in changes.ipsec.items()])
            if changes.spent:
                db.executemany("INSERT OR IGNORE INTO spent_message_id VALUES (?, ?, ?)",
                               [(cookies, m, _steer(cookies)) for cookies, m in changes.spent])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise StoreError(f"cannot write SA store {self.path}: {exc}") from None

    def __len__(self) -> int:
        """ISAKMP SAs stored for this shard."""
        k, n = self.shard
        return int(self._db.execute("SELECT count(*) FROM isakmp_sa WHERE steer % ? = ?", (n, k)).fetchone()[0])

    def close(self) -> None:
        if self._inode is not None and self._inode in _OPEN:
            _OPEN[self._inode] -= 1
            if not _OPEN[self._inode]:
                del _OPEN[self._inode]
        self._inode = None
        self._db.close()

    def __repr__(self) -> str:
        return (f"SaStore({str(self.path)!r}, encrypted={self._seal.aead is not None}, "
                f"shard={self.shard[0]}/{self.shard[1]})")


def read_records(path: str | os.PathLike[str], key_file: str | os.PathLike[str] | None = None,
                 shard: tuple[int, int] = (0, 1)) -> dict[str, dict[str, Any]]:
    """The stored ISAKMP SAs as JSON records by cookie pair (hex), each with its IPsec SA
    records under ``"ipsec"`` and its spent Message IDs under ``"spent"``, read through a
    snapshot that changes no file (for inspection and tests; a gateway may be running on
    the file). Records that do not open are left out."""
    key = _read_key(Path(key_file)) if key_file is not None else None
    out: dict[str, dict[str, Any]] = {}
    with _snapshot(Path(path)) as db:
        if _format(db) != FORMAT:
            return out
        for stored in _read_rows(db, _Seal(key), shard):
            if stored.record is None:
                continue
            record = json.loads(stored.record)
            record["ipsec"] = [json.loads(row.record) for row in stored.ipsec if row.record is not None]
            record["spent"] = stored.spent
            out[stored.cookies.hex()] = record
    return out


def _check(db: sqlite3.Connection, path: Path, shard: tuple[int, int], key_path: Path | None,
           key: bytes | None, load: bool = True) -> tuple[list[StoredSa] | None, bool]:
    """Check the existing store ``path`` through a read-only snapshot. Returns the shard's SAs
    (None when not loaded here) and whether the file needs migrating from format 1.
    Raises StoreError."""
    try:
        check = db.execute("PRAGMA quick_check").fetchall()
        if [tuple(row) for row in check] != [("ok",)]:
            raise StoreError(f"SA store {path} is damaged ({check[0][0]}): move it away to start with "
                             "an empty store (its SAs will be negotiated again)")
        version = _format(db)
        if version is None:
            return [], False
        seal = _Seal(key)
        if version == 1:
            blobs = [(_v1_aad(int(handle)), bytes(blob))
                     for handle, blob in db.execute("SELECT handle, record FROM isakmp_sa")]
            _check_key(path, [b for _a, b in blobs], len(blobs), key_path, key,
                            lambda: any(seal.open(aad, blob) is not None for aad, blob in blobs))
            return None, True
        total = int(db.execute("SELECT count(*) FROM isakmp_sa").fetchone()[0])
        sample = [(_isakmp_aad(bytes(c)), bytes(r)) for c, r in db.execute(
            "SELECT cookies, record FROM isakmp_sa LIMIT ?", (_KEY_SAMPLE,))]
        loaded = _read_rows(db, seal, shard) if load else None

        def opens() -> bool:
            if loaded:   # this shard's records: does any open?
                return any(stored.record is not None for stored in loaded)
            return any(seal.open(aad, blob) is not None for aad, blob in sample)

        _check_key(path, [b for _a, b in sample], total, key_path, key, opens)
        return loaded, False
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"SA store {path} is damaged or not an SA store ({exc}): move it away to start "
                         "with an empty store (its SAs will be negotiated again)") from None

def _check_key(path: Path, blobs: list[bytes], count: int, key_path: Path | None, key: bytes | None,
               opens: Callable[[], bool]) -> None:
    """The key fits the ``count`` records (``blobs``: some of them as stored): some open
    with it, or they are plain when there is no key file."""
    if not count:
        return
    sealed = any(not blob.startswith(_PLAIN) for blob in blobs)
    if key_path is None:
        if sealed:
            raise StoreError(f"SA store {path} holds {count} encrypted records: give the key file they "
                             "were sealed with (--store-key)")
        return
    if not sealed:
        raise StoreError(f"SA store {path} holds {count} unencrypted records: drop the key file "
                         f"{key_path} (or move the store away to start an encrypted one)", "key")
    if key is None:
        raise StoreError(f"key file {key_path} is missing, and SA store {path} holds {count} records "
                         "sealed with a key: give the key file they were sealed with (or move the store "
                         "away to start with an empty one)", "key")
    if not opens():
        raise StoreError(f"key file {key_path} opens none of the {count} records in SA store {path}: "
                         "give the key file they were sealed with", "key")


def _create_schema(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(f"PRAGMA user_version={FORMAT}")


def _format(db: sqlite3.Connection) -> int | None:
    """The store format of an open database: None when it has no tables yet."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == FORMAT and {"isakmp_sa", "ipsec_sa", "spent_message_id"} <= tables:
        return FORMAT
    if version == 0 and "isakmp_sa" in tables:
        columns = {row[1] for row in db.execute("PRAGMA table_info(isakmp_sa)")}
        if {"handle", "saved", "record"} <= columns:
            return 1
    raise sqlite3.DatabaseError(f"tables {sorted(tables)} of format {version} are not those of an SA store")


def _read_rows(db: sqlite3.Connection, seal: _Seal, shard: tuple[int, int]) -> list[StoredSa]:
    """Every ISAKMP SA of ``shard`` with its IPsec SA rows and spent Message IDs."""
    now = time.time()
    k, n = shard
    out: dict[bytes, StoredSa] = {}
    for cookies, saved, blob in db.execute(
            "SELECT cookies, saved, record FROM isakmp_sa WHERE steer % ? = ? ORDER BY rowid", (n, k)):
        cookies = bytes(cookies)
        record = seal.open(_isakmp_aad(cookies), bytes(blob))
        out[cookies] = StoredSa(cookies, record, max(0.0, now - saved),
                                error="" if record is not None else _why_not(seal))
    for cookies, spi, saved, blob in db.execute(
            "SELECT cookies, spi_in, saved, record FROM ipsec_sa WHERE steer % ? = ? ORDER BY rowid", (n, k)):
        owner = out.get(bytes(cookies))
        if owner is not None:
            record = seal.open(_ipsec_aad(owner.cookies, bytes(spi)), bytes(blob))
            owner.ipsec.append(StoredIpsec(bytes(spi), record, max(0.0, now - saved),
                                           "" if record is not None else _why_not(seal)))
    for cookies, message_id in db.execute(
            "SELECT cookies, message_id FROM spent_message_id WHERE steer % ? = ? ORDER BY rowid", (n, k)):
        owner = out.get(bytes(cookies))
        if owner is not None:
            owner.spent.append(int(message_id))
    return list(out.values())


def _why_not(seal: _Seal) -> str:
    return ("does not open with the key file (another key, or damage)" if seal.aead is not None
            else "is encrypted or damaged")


def _unreadable(loaded: list[StoredSa]) -> int:
    return sum((sa.record is None) + sum(row.record is None for row in sa.ipsec) for sa in loaded)


# (device, inode) of the store files this process has open: SQLite shares one -shm index
# per inode within a process, so a hard link of one of them would be read through the
# live index; such a file is copied instead.
_OPEN: dict[tuple[int, int], int] = {}


def _inode(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


@contextmanager
def _snapshot(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the store as it is, that changes none of its files.

    Without a write-ahead log the file is opened ``immutable`` (no lock, no -shm). With
    one, SQLite would rebuild the -shm index and could checkpoint: the log is copied
    next to a hard link of the database in a private directory beside it (a copy of
    both in the system's temporary directory when that fails or this process has the
    file open), and that pair is opened read-only."""
    wal = Path(str(path) + "-wal")
    open_here = bool(_OPEN.get(_inode(path)))
    if not open_here and (not wal.exists() or wal.stat().st_size == 0):
        db = sqlite3.connect(f"file:{_uri_path(path)}?immutable=1", uri=True)
        try:
            yield db
        finally:
            db.close()
        return
    private = _private_pair(path, wal, beside=not open_here)
    try:
        db = sqlite3.connect(f"file:{_uri_path(private / path.name)}?mode=ro", uri=True)
        try:
            yield db
        finally:
            db.close()
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _private_pair(path: Path, wal: Path, beside: bool) -> Path:
    """A private directory holding the database (hard link when ``beside``) and a copy of its log."""
    for near in ((True, False) if beside else (False,)):
        private = None
        try:
            private = Path(tempfile.mkdtemp(prefix=f".{path.name}.check-", dir=path.parent) if near
                           else tempfile.mkdtemp(prefix="ikecore-store-check-"))
            copy = private / path.name
            if near:
                os.link(path, copy)
            else:
                shutil.copyfile(path, copy)
            if wal.exists():
                shutil.copyfile(wal, Path(str(copy) + "-wal"))
            return private
        except OSError as exc:
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)
            if not near:
                raise StoreError(f"cannot check SA store {path} (a private copy of it failed: "
                                 f"{exc.strerror})") from None
    raise AssertionError("unreachable")


def _uri_path(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path.resolve()))


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (whatever the umask) unless it exists (then tighten its mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken the owner's write bit
    finally:
        os.close(fd)


def _read_key(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read key file {path}: {exc.strerror}", "key") from None
    if mode & 0o077:
        raise StoreError(f"key file {path} is readable by others; chmod 600 it", "key")
    if len(key) != 32:
        raise StoreError(f"key file {path} must hold exactly 32 bytes, not {len(key)}", "key")
    return key


def _create_key(path: Path) -> bytes:
    """A new random key in ``path``, created 0600 (whatever the umask) with its content at
    once: written to a private temporary name, then linked in place (another worker of
    the gateway may be making it at the same moment: then its key is used)."""
    key = os.urandom(32)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read_key(path)
    except OSError as exc:
        raise StoreError(f"cannot create key file {path}: {exc.strerror}", "key") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return key
