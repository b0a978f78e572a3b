"""The publisher's durable local spool: events the broker has not taken yet, in SQLite.

Rows keep the moment and sequence of their ``emit`` call, and are re-sent in
that order, so one correlation's events keep their order. Several processes
may share a spool directory; SQLite serialises them, and a row that two of
them re-send reaches the topic twice, which the worker drops by event_id.
One connection per Spool, guarded by a lock: the publisher's background
thread writes and re-sends, its caller may count or close.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

SpooledRow = tuple[int, bytes | None, bytes]  # (rowid, key, value)


class Spool:
    """A SQLite file of (emitted_ns, seq, key, value) rows. Opened on first use."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "spool.sqlite3"
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                 check_same_thread=False)
            # WAL + NORMAL: a committed row survives a process crash; an OS
            # crash may lose the last moments, not corrupt the file.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " emitted_ns INTEGER NOT NULL, seq INTEGER NOT NULL, key BLOB, value BLOB NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS spool_order ON spool (emitted_ns, seq)")
            self._db = db
        return self._db

    def put(self, rows: Sequence[tuple[int, int, bytes | None, bytes]]) -> None:
        """Store (emitted_ns, seq, key, value) rows durably, in one transaction."""
        if not rows:
            return
        with self._lock, self._conn() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO spool (emitted_ns, seq, key, value) VALUES (?, ?, ?, ?)",
                           rows)

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

    def count(self) -> int:
        """How many events wait in the spool."""
        with self._lock:
            if self._db is None and not self.path.exists():
                return 0
            (n,) = self._conn().execute("SELECT count(*) FROM spool").fetchone()
            return int(n)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
