"""The SA store: established SAs in SQLite, so a restarted gateway keeps its tunnels.

Design note
-----------
``Engine(config, store=SaStore(path), now=...)`` loads every stored ISAKMP SA at start
and, at the end of every call that changed SAs (a datagram, a timer, a local request),
writes the changed ones in ONE SQLite transaction: upsert the established, delete the
gone. Atomicity and kill -9 safety are SQLite's: write-ahead log, a transaction is
either wholly in the file or not at all, and the engine hands its datagrams and events
out only after that call returned, so whatever a peer or the application has seen
established is on disk. ``synchronous="FULL"`` (default) also survives power loss;
``"NORMAL"`` survives a process kill (not power loss) and is faster.

At rest: the file and its WAL/SHM companions are created 0600 (SQLite gives the
companions the database file's mode). With ``key_file`` every record is sealed with
AES-256-GCM under a 32-byte key read from that file (created 0600 with random bytes if
missing); the record's row key is the associated data, so rows cannot be swapped.
A record that does not open (wrong key, damage) is skipped and reported, never loaded.

The store records wall-clock time of each write so a restarted engine can count the
lifetime that passed while it was down (``time.time``: the only clock read here).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SaStore", "StoreError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS isakmp_sa (
    handle INTEGER PRIMARY KEY,
    saved REAL NOT NULL,
    record BLOB NOT NULL
);
"""


class StoreError(Exception):
    """The store cannot be opened or written (the message says why and what to do)."""


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (then tighten its mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        os.chmod(path, 0o600)


class SaStore:
    """SQLite file of established ISAKMP and IPsec SAs (see the module design note).

    Args:
        path: the database file (created 0600).
        key_file: optional; encrypt every record with the 32-byte key in this file.
        synchronous: SQLite ``synchronous`` pragma, ``"FULL"`` or ``"NORMAL"``.
    """

    def __init__(self, path: str | os.PathLike[str], *, key_file: str | os.PathLike[str] | None = None,
                 synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise StoreError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = Path(path)
        self.skipped = 0
        self._aead = None
        if key_file is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aead = AESGCM(_load_key(Path(key_file)))
        try:
            _create_private(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SA store {self.path}: {exc}") from None
        for companion in ("-wal", "-shm"):
            extra = Path(str(self.path) + companion)
            if extra.exists():
                os.chmod(extra, 0o600)

    def _seal(self, handle: int, record: bytes) -> bytes:
        if self._aead is None:
            return record
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, record, handle.to_bytes(8, "big"))

    def _open(self, handle: int, blob: bytes) -> bytes | None:
        if self._aead is None:
            return blob
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(blob[:12], blob[12:], handle.to_bytes(8, "big"))
        except (InvalidTag, ValueError):
            return None

    def write(self, upserts: Iterable[tuple[int, bytes]], deletes: Iterable[int]) -> None:
        """Apply one change set atomically."""
        now = time.time()
        rows = [(handle, now, self._seal(handle, record)) for handle, record in upserts]
        gone = [(handle,) for handle in deletes]
        if not rows and not gone:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if rows:
                self._db.executemany("INSERT OR REPLACE INTO isakmp_sa(handle, saved, record) VALUES (?, ?, ?)",
                                     rows)
            if gone:
                self._db.executemany("DELETE FROM isakmp_sa WHERE handle = ?", gone)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreError(f"cannot write SA store {self.path}: {exc}") from None

    def load(self) -> list[tuple[int, bytes, float]]:
        """Every stored record as (handle, record, wall seconds since it was saved)."""
        now = time.time()
        out = []
        for handle, saved, blob in self._db.execute("SELECT handle, saved, record FROM isakmp_sa ORDER BY handle"):
            record = self._open(handle, bytes(blob))
            if record is None:
                self.skipped += 1
                continue
            out.append((int(handle), record, max(0.0, now - saved)))
        return out

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM isakmp_sa").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"SaStore({str(self.path)!r}, encrypted={self._aead is not None})"


def _load_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
    if path.stat().st_mode & 0o077:
        raise StoreError(f"key file {path} is readable by others; chmod 600 it")
    key = path.read_bytes()
    if len(key) != 32:
        raise StoreError(f"key file {path} must hold exactly 32 bytes, not {len(key)}")
    return key
