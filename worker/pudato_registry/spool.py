"""The publisher's durable local spool: events the broker has not taken yet, in SQLite.

Rows keep the moment and sequence of their ``emit`` call, and are re-sent in
that order, so one correlation's events keep their order. Several processes
may share a spool directory; SQLite serialises them, and a row that two of
them re-send reaches the topic twice, which the worker drops by event_id.
One connection per Spool, guarded by a lock: the publisher's background
thread writes and re-sends, its caller may count or close.

What can go wrong with the file, and what happens:

* The directory and the file are the user's alone (0700 and 0600): spooled
  events may hold anything a pipeline reports.
* A file SQLite cannot read (truncated, overwritten, not a database) is
  renamed aside as ``spool.sqlite3.corrupt-<time>``, with a warning, and a
  fresh one is started: the pipeline goes on, the old file stays for a person.
* A row the broker refuses for good (too large for the topic, say) is moved
  to the table ``set_aside`` with the reason, never re-sent again.
* A directory that cannot be made or written (a container without a home, a
  read-only mount) is replaced by the user's own directory in the system's
  temporary one, with one warning naming both.
* The file grows no larger than ``max_bytes``: :meth:`Spool.put` takes the
  rows that fit and says how many it did not (the publisher counts and logs
  them). A full disk fails the whole transaction: what was spooled before
  stays, the new rows are the caller's to keep or drop.
* After ``fork()`` the child never touches the parent's connection (SQLite
  forbids it): :meth:`Spool.forked` drops it unclosed and the child opens its
  own on first use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pudato_registry.settings import GIB, fallback_spool_dir

log = logging.getLogger(__name__)
SpooledRow = tuple[int, bytes | None, bytes]  # (rowid, key, value)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " emitted_ns INTEGER NOT NULL, seq INTEGER NOT NULL, key BLOB, value BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS spool_order ON spool (emitted_ns, seq)",
    "CREATE TABLE IF NOT EXISTS set_aside (id INTEGER PRIMARY KEY, emitted_ns INTEGER NOT NULL,"
    " seq INTEGER NOT NULL, key BLOB, value BLOB NOT NULL, reason TEXT NOT NULL,"
    " set_aside_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
)


_ROW_OVERHEAD = 64  # bytes SQLite spends on a row besides its key and value
_LEFT_BEHIND: list[sqlite3.Connection] = []  # a forked child's copies, never closed


class Spool:
    """A SQLite file of (emitted_ns, seq, key, value) rows. Opened on first use."""

    def __init__(self, directory: Path, max_bytes: int = GIB) -> None:
        self.path = Path(directory) / "spool.sqlite3"
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self._db = self._open_here()
            except (OSError, sqlite3.OperationalError) as exc:
                fallback = fallback_spool_dir() / "spool.sqlite3"
                if self.path == fallback:
                    raise
                log.warning("cannot keep the spool in %s (%s); keeping it in %s instead",
                            self.path.parent, exc, fallback.parent)
                self.path = fallback
                self._db = self._open_here()
        return self._db

    def _open_here(self) -> sqlite3.Connection:
        self._private_directory()
        try:
            return self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # cannot open: not a bad file
                raise
            self._rename_aside(exc)
            return self._open()

    def forked(self) -> None:
        """In a child after ``fork()``: forget the parent's connection, unclosed."""
        self._lock = threading.RLock()  # another thread may have held it at the fork
        if self._db is not None:
            _LEFT_BEHIND.append(self._db)  # closing it here would disturb the parent's file
            self._db = None

    def _private_directory(self) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
            directory.chmod(0o700)  # ours, and readable by others: not for spooled events

    def _open(self) -> sqlite3.Connection:
        # Created 0600 before SQLite opens it; SQLite gives its -wal and -shm the same mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                             check_same_thread=False)
        try:
            # WAL + NORMAL: a committed row survives a process crash; an OS
            # crash may lose the last moments, not corrupt the file.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("SELECT count(*) FROM spool").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _rename_aside(self, exc: sqlite3.DatabaseError) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").rename(f"{aside}{suffix}")
        log.warning("the spool %s cannot be read (%s); it is kept as %s and a new one started",
                    self.path, exc, aside)

    def put(self, rows: Sequence[tuple[int, int, bytes | None, bytes]]) -> int:
        """Store (emitted_ns, seq, key, value) rows durably, in one transaction.

        Returns how many of the last rows did not fit under ``max_bytes`` (not stored).
        Raises if the file cannot be written (a full disk): then none is stored.
        """
        if not rows:
            return 0
        with self._lock, self._conn() as db:
            room = self.max_bytes - self._bytes(db)
            fits = 0
            for _ns, _seq, key, value in rows:
                room -= len(key or b"") + len(value) + _ROW_OVERHEAD
                if room < 0:
                    break
                fits += 1
            if fits:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO spool (emitted_ns, seq, key, value)"
                               " VALUES (?, ?, ?, ?)", rows[:fits])
            return len(rows) - fits

    @staticmethod
    def _bytes(db: sqlite3.Connection) -> int:
        """The bytes the file's pages take (free pages, reused first, not counted)."""
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
        return int(pages - free) * int(size)

    def oldest(self, limit: int) -> list[SpooledRow]:
        """The ``limit`` rows emitted first."""
        with self._lock:
            return self._conn().execute(
                "SELECT id, key, value FROM spool ORDER BY emitted_ns, seq LIMIT ?", (limit,)
            ).fetchall()

    def delete(self, ids: Sequence[int]) -> None:
        """Forget rows the broker has acknowledged."""
        if not ids:
            return
        with self._lock, self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])

    def set_aside(self, rows: Sequence[tuple[int, str]]) -> None:
        """Move (rowid, reason) rows the broker refuses for good out of the queue, kept."""
        if not rows:
            return
        with self._lock, self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO set_aside (id, emitted_ns, seq, key, value,"
                           " reason) SELECT id, emitted_ns, seq, key, value, ? FROM spool"
                           " WHERE id = ?", [(reason, i) for i, reason in rows])
            db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i, _reason in rows])

    def count(self) -> int:
        """How many events wait in the spool."""
        return self._count("spool")

    def set_aside_count(self) -> int:
        """How many events were set aside as undeliverable."""
        return self._count("set_aside")

    def _count(self, table: str) -> int:
        with self._lock:
            if self._db is None and not self.path.exists() \
                    and not (fallback_spool_dir() / self.path.name).exists():
                return 0  # nothing spooled here, nor where a publisher fell back to
            (n,) = self._conn().execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(n)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
