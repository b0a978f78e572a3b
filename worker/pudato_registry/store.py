"""PostgreSQL: migrations, reading fold states and applying a batch of rows in one transaction.

This module knows SQL and psycopg, nothing of Kafka. The loop calls
:meth:`Store.apply` once per batch; everything the batch changes (rows and
fold states) commits together or not at all.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
# Any 64-bit number of our own; two `migrate` runs serialise on it.
MIGRATION_LOCK = 0x707564_61746F  # "pudato"
_MIGRATION = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration cannot be applied, or an applied one was edited."""


@dataclass(frozen=True)
class Migration:
    """One ``NNN_name.sql`` file of ``schema/``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text, recorded so that edits of applied files are caught."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = SCHEMA_DIR) -> list[Migration]:
    """The migrations in ``directory``, in version order."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migrations are named NNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version in {directory}")
    return found


def connect(dsn: str, **kwargs: object) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection with the settings every caller wants."""
    return psycopg.connect(dsn, application_name="pudato-registry", **kwargs)  # type: ignore[arg-type]


def create_database(admin_dsn: str, name: str) -> None:
    """Create database ``name`` if it does not exist (for the dev stack and tests)."""
    with connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name``, disconnecting its sessions (for tests)."""
    with connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def migrate(dsn: str, migrations: Sequence[Migration] | None = None) -> list[Migration]:
    """Apply pending migrations, each in its own transaction; return those applied now.

    Safe to run from several processes at once: each transaction takes an
    advisory lock before it looks at what was applied.
    """
    pending = list(load_migrations() if migrations is None else migrations)
    applied_now: list[Migration] = []
    with connect(dsn) as conn:
        # The bookkeeping table is created under the same lock, so that two
        # first runs do not race on CREATE TABLE.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pudato_schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        conn.commit()
        for migration in pending:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                row = conn.execute(
                    "SELECT checksum FROM pudato_schema_migrations WHERE version = %s",
                    (migration.version,),
                ).fetchone()
                if row is not None:
                    if row[0] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:03d}_{migration.name} was edited after "
                            "it was applied; add a new migration instead"
                        )
                    continue
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO pudato_schema_migrations (version, name, checksum)"
                    " VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
                applied_now.append(migration)
                log.info("applied migration %03d_%s", migration.version, migration.name)
    return applied_now

