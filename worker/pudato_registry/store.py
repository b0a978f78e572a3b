"""PostgreSQL: migrations, reading fold states and applying a batch of rows in one transaction.

This module knows SQL and psycopg, nothing of Kafka. The loop calls
:meth:`Store.apply` once per batch; everything the batch changes (rows and
fold states) commits together or not at all.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps

from pudato_registry import edges

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


# A connection that cannot be opened in this time, or a peer that stops
# answering keepalives, is a failed attempt (retried), never a wait forever.
# The database URL may set any of these itself; it wins.
CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",  # ms that sent data may stay unacknowledged
}


def connection_options(dsn: str, **kwargs: object) -> dict[str, object]:
    """The options :func:`connect` adds to ``dsn``: our defaults, unless ``dsn`` sets them."""
    given = conninfo_to_dict(dsn)
    return {"application_name": "pudato-registry",
            **{k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}, **kwargs}


def connect(dsn: str, **kwargs: object) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection with the settings every caller wants (timeouts, keepalives)."""
    conn = psycopg.connect(dsn, **connection_options(dsn, **kwargs))  # type: ignore[arg-type]
    # msgspec, not the json module: fast, and JSON numbers may be integers of any size.
    set_json_dumps(msgspec.json.encode, conn)
    return conn


def create_database(admin_dsn: str, name: str) -> None:
    """Create database ``name`` if it does not exist (for the dev stack and tests)."""
    with connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name``, disconnecting its sessions (for tests)."""
    with connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


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


# --- error classification: the one place that decides what a failure means --------


class Failure(enum.Enum):
    """What a PostgreSQL failure means for the work that met it."""

    TRANSIENT = "transient"  # the same work can succeed if tried again: retry
    DATA = "data"  # refused for the data of what was written: isolate and dead-letter it
    FATAL = "fatal"  # would refuse every write alike (missing table, privilege): stop


# SQLSTATE classes and codes after which the same work can succeed if tried
# again: the connection or the server went away, the transaction lost a race,
# the server is short of something for now (53: disk full, out of memory).
_TRANSIENT_CLASSES = ("08", "40", "53", "58")
_TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03", "55P03", "55006"})
# Data exceptions (22: a value out of range, too long for a column a DBA
# narrowed ...), program limits (54: an index entry over the btree maximum)
# and integrity constraints (23: a CHECK or unique index a DBA added).
_DATA_CLASSES = ("22", "23", "54")
UNIQUE_VIOLATION = "23505"


def classify(exc: BaseException) -> Failure:
    """What a failure means: by its psycopg class and SQLSTATE, never by its text."""
    if not isinstance(exc, psycopg.Error):
        return Failure.FATAL
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: the client lost or could not open the connection.
        transient = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        return Failure.TRANSIENT if transient else Failure.FATAL
    if state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES or _key_race(exc):
        return Failure.TRANSIENT
    if state[:2] in _DATA_CLASSES:
        return Failure.DATA
    return Failure.FATAL


def _key_race(exc: psycopg.Error) -> bool:
    """A unique violation on a projection table's primary key.

    A batch COPYs the rows of entities it found no state for straight in; the
    key then fails if another worker inserted the same entity first, or if a
    row exists without a state (a restored table, a manual insert). Either
    way the retry reads states afresh and upserts every row.
    """
    table = exc.diag.table_name
    return (exc.sqlstate == UNIQUE_VIOLATION and table in PROJECTION_TABLES
            and exc.diag.constraint_name == f"{table}_pkey")


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may pass if the work is tried again."""
    return classify(exc) is Failure.TRANSIENT


def describe(exc: BaseException) -> str:
    """The SQLSTATE and the server's own message: what a dead letter's ``error`` says."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:
        message = exc.diag.message_primary or str(exc)
        constraint = exc.diag.constraint_name
        where = f" (constraint {constraint})" if constraint else ""
        return f"PostgreSQL refused it: SQLSTATE {exc.sqlstate}: {message}{where}"
    return str(exc)


# --- the projection tables ---------------------------------------------------------

JOB_COLUMNS = ("job_id", "pipeline", "environment", "namespace", "status", "logic_version",
               "request", "parameters", "dag_run_id", "created_at", "started_at",
               "completed_at", "error", "metadata")
STEP_COLUMNS = ("step_id", "job_id", "step_name", "handler_type", "action", "status",
                "correlation_id", "inputs", "outputs", "executions", "started_at",
                "completed_at", "duration_ms", "error", "metadata")
# The type of each column that is not TEXT: binary COPY sends values as the
# server stores them, so the client formats no timestamps and the server
# parses none (about half the client's COPY time, measured).
_COLUMN_TYPES = {
    "request": "jsonb", "parameters": "jsonb", "metadata": "jsonb", "inputs": "jsonb",
    "outputs": "jsonb", "executions": "jsonb", "created_at": "timestamptz",
    "started_at": "timestamptz", "completed_at": "timestamptz", "duration_ms": "int4",
    "runs": "int8", "first_seen": "timestamptz", "last_seen": "timestamptz",  # the edges
}


def column_types(columns: Sequence[str]) -> list[str]:
    """The PostgreSQL type of each of these columns, for a binary COPY."""
    return [_COLUMN_TYPES.get(c, "text") for c in columns]


@dataclass(frozen=True)
class _Target:
    """One table a batch writes, and the statements it takes."""

    columns: Sequence[str]
    types: Sequence[str]  # of the columns, for binary COPY
    create_stage: str  # a temp table like it, per connection
    copy_in: str  # COPY new entities' rows straight into the table
    copy_stage: str  # COPY known entities' rows into the stage ...
    upsert: str  # ... and upsert them from there


def _target(table: str, key: str, columns: Sequence[str]) -> _Target:
    stage = f"pudato_stage_{table.removeprefix('pudato_')}"
    cols = ", ".join(columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
    return _Target(
        columns=columns,
        types=column_types(columns),
        create_stage=f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) "
                     "ON COMMIT DELETE ROWS",
        copy_in=f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)",
        copy_stage=f"COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)",
        upsert=f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} "
               f"ON CONFLICT ({key}) DO UPDATE SET {updates}",
    )


def copy_rows(cur: psycopg.Cursor[tuple[object, ...]], statement: str,
              rows: Sequence[Sequence[object]], types: Sequence[str]) -> None:
    """Run a binary ``COPY ... FROM STDIN`` of ``rows``, whose columns have ``types``."""
    with cur.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


_JOBS = _target("pudato_jobs", "job_id", JOB_COLUMNS)
_STEPS = _target("pudato_job_steps", "step_id", STEP_COLUMNS)
_JOB_STATE = _target("pudato_job_state", "job_id", ("job_id", "state"))
_STEP_STATE = _target("pudato_step_state", "step_id", ("step_id", "state"))


@dataclass(frozen=True)
class Writes:
    """Everything one batch changes: rows in table column order, and encoded fold states."""

    jobs: Sequence[Sequence[object]]
    steps: Sequence[Sequence[object]]
    job_states: Sequence[tuple[str, str]]
    step_states: Sequence[tuple[str, str]]
    # What the lineage edges are made of, before and after (None: the edges stay).
    lineage: edges.BatchLineage | None = None

    def states(self) -> States:
        """The saved states these writes leave."""
        return States(jobs=dict(self.job_states), steps=dict(self.step_states))


@dataclass(frozen=True)
class States:
    """The saved fold states of the entities a batch touches (absent: never seen)."""

    jobs: dict[str, str]
    steps: dict[str, str]


def _select_states(conn: psycopg.Connection[tuple[object, ...]], job_ids: Sequence[str],
                   step_ids: Sequence[str]) -> States:
    return States(
        jobs=dict(conn.execute(  # type: ignore[arg-type]
            "SELECT job_id, state FROM pudato_job_state WHERE job_id = ANY(%s)",
            (list(job_ids),)).fetchall()),
        steps=dict(conn.execute(  # type: ignore[arg-type]
            "SELECT step_id, state FROM pudato_step_state WHERE step_id = ANY(%s)",
            (list(step_ids),)).fetchall()),
    )


class Store:
    """The worker's PostgreSQL side: one connection, one transaction per batch.

    Constructing it opens nothing; the connection is opened on first use and
    dropped after any failure, so that a retry starts on a fresh one.
    """

    def __init__(self, dsn: str, *, schema: str | None = None,
                 lineage_edges: bool = True) -> None:
        self._dsn = dsn
        # Off only to measure what keeping pudato_lineage_edges costs (bench/).
        self._lineage_edges = lineage_edges
        # After a primary-key race the next attempt upserts every row (see _key_race).
        self._upsert_all = False
        # A replay writes the same tables in its shadow schema.
        self._options = {} if schema is None else {"options": f"-c search_path={schema}"}
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._reader: psycopg.Connection[tuple[object, ...]] | None = None

    def read_states(self, job_ids: Sequence[str], step_ids: Sequence[str]) -> States:
        """The committed states of these entities, on a connection of its own.

        The worker reads ahead with it while :meth:`apply` writes the previous
        batch on the other connection, from another thread.
        """
        if self._reader is None or self._reader.closed:
            self._reader = connect(self._dsn, autocommit=True, **self._options)
        try:
            return _select_states(self._reader, job_ids, step_ids)
        except BaseException:
            with contextlib.suppress(Exception):
                self._reader.close()
            self._reader = None
            raise

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            conn = connect(self._dsn, **self._options)
            # REPEATABLE READ: if another worker changed an entity this batch
            # read, the upsert fails with a serialization error (40001) and the
            # whole batch is retried on fresh states, instead of losing an update.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                for target in (_JOBS, _STEPS, _JOB_STATE, _STEP_STATE):
                    conn.execute(target.create_stage)
                if self._lineage_edges:
                    conn.execute(_EDGE_STAGE)
            self._conn = conn
        return self._conn

    def apply(self, job_ids: Sequence[str], step_ids: Sequence[str],
              compute: Callable[[States], Writes]) -> Writes:
        """In one transaction: read the states of these entities, ``compute``, write, commit."""
        conn = self._connection()
        try:
            with conn.transaction():
                states = _select_states(conn, job_ids, step_ids)
                writes = compute(states)
                # Jobs before steps: a step's job row must exist (foreign key).
                existing = (None, None) if self._upsert_all else (states.jobs, states.steps)
                self._write(conn, _JOBS, writes.jobs, existing[0])
                self._write(conn, _STEPS, writes.steps, existing[1])
                self._write(conn, _JOB_STATE, writes.job_states, existing[0])
                self._write(conn, _STEP_STATE, writes.step_states, existing[1])
                if writes.lineage is not None and self._lineage_edges:
                    keep_edges(conn, writes.lineage)
        except BaseException as exc:
            self._upsert_all = isinstance(exc, psycopg.Error) and _key_race(exc)
            # Only this connection: the reader may be busy in another thread.
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None
            raise
        self._upsert_all = False
        return writes

    @staticmethod
    def _write(conn: psycopg.Connection[tuple[object, ...]], target: _Target,
               rows: Sequence[Sequence[object]], existing: dict[str, str] | None) -> None:
        """COPY rows of new entities straight in; upsert the others through a staging table.

        An entity normally has a row exactly when it has a saved state (both
        are written in the same transaction), so ``existing`` (the states
        read) tells them apart; ``None`` upserts every row.
        """
        fresh: list[Sequence[object]] = []
        known: list[Sequence[object]] = []
        if existing is None:
            known = list(rows)
        else:
            for row in rows:
                (known if row[0] in existing else fresh).append(row)
        with conn.cursor() as cur:
            if fresh:
                copy_rows(cur, target.copy_in, fresh, target.types)
            if known:
                copy_rows(cur, target.copy_stage, known, target.types)
                cur.execute(target.upsert)

    def ping(self) -> None:
        """Open the connection if needed and run a trivial query (readiness, start-up checks)."""
        conn = self._connection()
        conn.execute("SELECT 1")
        conn.rollback()

    def close(self) -> None:
        """Close the connections, if open; the next call opens new ones."""
        for conn in (self._conn, self._reader):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._conn = self._reader = None


# --- the lineage edges (amendment 3) -------------------------------------------------


def _digest_sql(columns: Sequence[str], alias: str = "") -> str:
    """SHA-256 of the columns' texts, each prefixed by its length: no two tuples share one."""
    parts = ", ".join(f"length({alias}{c}), ':', {alias}{c}" for c in columns)
    return f"sha256(convert_to(concat({parts}), 'UTF8'))"


_STEP_KEY_COLUMNS = ("namespace", "environment", "pipeline", "step_name")


def edge_key_sql(alias: str = "") -> str:
    """The SQL of an edge's ``edge_key`` from its six key columns (as migration 004 has it)."""
    return _digest_sql(edges.KEY_COLUMNS, alias)


def step_key_sql(alias: str = "") -> str:
    """The SQL of an edge's ``step_key`` from its step's four columns."""
    return _digest_sql(_STEP_KEY_COLUMNS, alias)


_EDGE_LIST = ", ".join(edges.COLUMNS)
# The increments of a batch: the columns without the digests (computed on the way in).
_EDGE_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS pudato_stage_lineage_edges ON COMMIT DELETE ROWS"
               f" AS SELECT {_EDGE_LIST} FROM pudato_lineage_edges WITH NO DATA")
_EDGE_TYPES = column_types(edges.COLUMNS)
_LATEST = ("last_seen", "last_step_id", "last_job_id", "last_status", "ref_type")


def _merge(new: str, *, runs: bool) -> str:
    """SET clauses merging increment ``new`` into stored edge ``e``.

    The latest contributor wins: the greater (seen, step_id), step ids compared
    by code point as the definition (and Python) compares them.
    """
    newer = (f'({new}.last_seen, {new}.last_step_id COLLATE "C") >= '
             '(e.last_seen, e.last_step_id COLLATE "C")')
    sets = [f"runs = e.runs + {new}.runs"] if runs else []
    sets.append(f"first_seen = least(e.first_seen, {new}.first_seen)")
    sets += [f"{c} = CASE WHEN {newer} THEN {new}.{c} ELSE e.{c} END" for c in _LATEST]
    return ", ".join(sets)


def _insert_edges(source: str, on_conflict: str) -> str:
    return (f"INSERT INTO pudato_lineage_edges AS e (edge_key, step_key, {_EDGE_LIST}) "
            f"SELECT {edge_key_sql()}, {step_key_sql()}, {_EDGE_LIST} FROM {source} "
            f"ORDER BY 1 ON CONFLICT (edge_key) {on_conflict}")


# New contributions: inserted, or merged into the stored edge.
_EDGE_MERGE = _insert_edges("pudato_stage_lineage_edges WHERE runs > 0",
                            f"DO UPDATE SET {_merge('EXCLUDED', runs=True)}")
# Changed ones (no run added): merged into an edge that exists, never creating one.
_EDGE_TOUCH = (f"UPDATE pudato_lineage_edges e SET {_merge('s', runs=False)}"
               " FROM pudato_stage_lineage_edges s"
               f" WHERE s.runs = 0 AND e.edge_key = {edge_key_sql('s.')}")


def _recompute_sql(direction: str, column: str) -> str:
    """Edges of one direction aggregated afresh from the rows, for keys given as arrays.

    A step contributes once, however many entries name the location; the
    ref_type is that of the latest contributor's first entry naming it.
    """
    matches = (f"s.{column} @> jsonb_build_array(jsonb_build_object('location', k.location))"
               " AND s.step_name = k.step_name AND j.pipeline = k.pipeline"
               " AND j.namespace = k.namespace AND j.environment = k.environment"
               " AND coalesce(s.started_at, s.completed_at) IS NOT NULL")
    return f"""
SELECT k.location, '{direction}'::text, k.namespace, k.environment, k.pipeline, k.step_name,
       agg.runs, agg.first_seen, last.seen, last.step_id, last.job_id, last.status,
       last.ref_type
  FROM unnest(%(location)s::text[], %(namespace)s::text[], %(environment)s::text[],
              %(pipeline)s::text[], %(step_name)s::text[])
       AS k(location, namespace, environment, pipeline, step_name)
 CROSS JOIN LATERAL (
       SELECT count(*) AS runs, min(coalesce(s.started_at, s.completed_at)) AS first_seen
         FROM pudato_job_steps s JOIN pudato_jobs j ON j.job_id = s.job_id
        WHERE {matches}) agg
 CROSS JOIN LATERAL (
       SELECT coalesce(s.started_at, s.completed_at) AS seen, s.step_id, s.job_id, s.status,
              (SELECT r.entry->>'ref_type' FROM jsonb_array_elements(s.{column})
                      WITH ORDINALITY AS r(entry, n)
                WHERE r.entry->>'location' = k.location ORDER BY r.n LIMIT 1) AS ref_type
         FROM pudato_job_steps s JOIN pudato_jobs j ON j.job_id = s.job_id
        WHERE {matches}
        ORDER BY 1 DESC, s.step_id COLLATE "C" DESC LIMIT 1) last"""


_RECOMPUTE = {direction: _insert_edges(f"({_recompute_sql(direction, column)}) AS fresh"
                                       f"({_EDGE_LIST})", "DO NOTHING")
              for direction, column in edges.DIRECTIONS}
_VIEW_COLUMNS = ("step_id, job_id, step_name, status, started_at, completed_at, inputs, "
                 "outputs")


def keep_edges(conn: psycopg.Connection[tuple[object, ...]],
               change: edges.BatchLineage) -> edges.Delta:
    """Inside a batch's transaction, after its rows: bring ``pudato_lineage_edges`` along.

    Reads what the batch does not know: the keys of jobs it did not touch
    that its steps name, and the steps of jobs whose key it changed. New and
    changed contributions merge into the stored edges by one upsert, whatever
    their history; the edges a contribution left are aggregated afresh.
    """
    stored: dict[str, edges.JobKey | None] = {}
    unknown = change.unknown_jobs()
    if unknown:
        rows = conn.execute("SELECT job_id, namespace, environment, pipeline FROM pudato_jobs"
                            " WHERE job_id = ANY(%s)", (sorted(unknown),)).fetchall()
        stored = {str(r[0]): edges.job_key(*r[1:]) for r in rows}  # type: ignore[arg-type]
    unchanged: list[edges.StepView] = []
    moved = change.moved_jobs()
    if moved:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {_VIEW_COLUMNS} FROM pudato_job_steps WHERE job_id = ANY(%s)"
                        " AND NOT step_id = ANY(%s)",
                        (moved, [new.step_id for _old, new in change.steps]))
            unchanged = [edges.view_of(row) for row in cur.fetchall()]
    found = change.delta(stored, unchanged)
    with conn.cursor() as cur:
        if found.increments:
            rows = [found.increments[k].row() for k in sorted(found.increments)]
            copy_rows(cur, f"COPY pudato_stage_lineage_edges ({_EDGE_LIST}) FROM STDIN"
                           " (FORMAT BINARY)", rows, _EDGE_TYPES)
            runs = [row[6] for row in rows]
            if any(runs):
                cur.execute(_EDGE_MERGE)
            if not all(runs):
                cur.execute(_EDGE_TOUCH)
        if found.recompute:
            recompute_edges(conn, sorted(found.recompute))
    return found


def recompute_edges(conn: psycopg.Connection[tuple[object, ...]],
                    keys: Sequence[edges.EdgeKey]) -> None:
    """Aggregate these edges afresh from the rows: rewritten, or removed if nothing
    contributes to them any more."""
    columns = ("location", "namespace", "environment", "pipeline", "step_name")
    conn.execute(
        f"DELETE FROM pudato_lineage_edges WHERE edge_key = ANY(SELECT {edge_key_sql('k.')}"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
        f" AS k({', '.join(edges.KEY_COLUMNS)}))",
        [[k[i] for k in keys] for i in range(6)])
    for direction, _column in edges.DIRECTIONS:
        chosen = [k for k in keys if k[1] == direction]
        if chosen:
            params = {c: [k[i] for k in chosen] for c, i in zip(columns, (0, 2, 3, 4, 5),
                                                                 strict=True)}
            conn.execute(_RECOMPUTE[direction], params)


# --- replay: shadow tables and the swap ------------------------------------------------

SHADOW_SCHEMA = "pudato_shadow"
RETIRED_SCHEMA = "pudato_retired"
# In the order the worker's transaction first touches them, so that the swap's
# locks queue behind a running batch instead of deadlocking with it.
PROJECTION_TABLES = ("pudato_job_state", "pudato_step_state", "pudato_jobs", "pudato_job_steps",
                     "pudato_lineage_edges")


def create_shadow(dsn: str, migrations: Sequence[Migration] | None = None) -> None:
    """(Re)create the shadow schema with every migration applied: empty tables like the live."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SHADOW_SCHEMA}")
    with connect(dsn, options=f"-c search_path={SHADOW_SCHEMA}") as conn:
        for migration in load_migrations() if migrations is None else migrations:
            conn.execute(migration.sql.encode())
        # Autovacuum of a table being filled would hold up the swap's ALTER TABLE
        # (it yields only after deadlock_timeout); the swap turns it back on.
        for table in PROJECTION_TABLES:
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")


def shadow_bytes(dsn: str) -> int | None:
    """The size of a shadow schema left behind (an interrupted replay), or None if there is none."""
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_namespace n"
            " LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'r'"
            " WHERE n.nspname = %s GROUP BY n.oid", (SHADOW_SCHEMA,)).fetchone()
    return None if row is None else int(row[0])  # type: ignore[call-overload]


def analyze_shadow(dsn: str) -> None:
    """Planner statistics for the shadow tables, before they become the live ones."""
    with connect(dsn, autocommit=True) as conn:
        for table in PROJECTION_TABLES:
            conn.execute(f"ANALYZE {SHADOW_SCHEMA}.{table}")


def drop_shadow(dsn: str) -> None:
    """Remove the shadow schema and everything in it."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE")


# One replay at a time: a second would swap in a shadow missing the events
# between the two, or drop the shadow the first is building.
REPLAY_LOCK = 0x707564_7265706C  # "pud" "repl"


class ReplayRefusedError(RuntimeError):
    """A replay must not run now: another holds the lock, or the swap would lose something."""


@contextlib.contextmanager
def replay_lock(dsn: str) -> Iterator[None]:
    """Hold the replay lock for the block, or raise :class:`ReplayRefusedError` naming its owner."""
    with connect(dsn, autocommit=True) as conn:
        (got,) = conn.execute("SELECT pg_try_advisory_lock(%s)",  # type: ignore[misc]
                              (REPLAY_LOCK,)).fetchone()
        if not got:
            holder = conn.execute(
                "SELECT a.pid, a.usename, a.application_name, a.client_addr::text,"
                " a.backend_start FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s"
                " AND l.objid = %s AND l.database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())",
                (REPLAY_LOCK >> 32, REPLAY_LOCK & 0xFFFFFFFF)).fetchone()
            who = ("someone" if holder is None else
                   f"process {holder[0]} of {holder[1]} ({holder[2] or 'no application name'}"
                   f" from {holder[3] or 'a local socket'}, connected {holder[4]:%Y-%m-%d %H:%M})")
            raise ReplayRefusedError(f"another replay is running ({who}); wait for it to end")
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (REPLAY_LOCK,))


def _dependents(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> set[str]:
    """What depends on the projection tables of ``schema``, described without the schema."""
    tables = [f"{schema}.{table}" for table in PROJECTION_TABLES]
    rows = conn.execute(
        "SELECT DISTINCT pg_describe_object(classid, objid, objsubid) FROM pg_depend"
        " WHERE refobjid = ANY(%s::regclass[]) AND classid <> 'pg_type'::regclass",
        (tables,)).fetchall()
    return {str(row[0]).replace(f"{schema}.", "") for row in rows
            if not str(row[0]).startswith("toast table")}


def unkept_dependents(dsn: str) -> list[str]:
    """What the swap would drop with the live tables: views, foreign keys, triggers,
    publications, indexes and constraints that a DBA added and the migrations do not make."""
    with connect(dsn) as conn:
        (live,) = conn.execute("SELECT current_schema()").fetchone()  # type: ignore[misc]
        return sorted(_dependents(conn, str(live)) - _dependents(conn, SHADOW_SCHEMA))


@contextlib.contextmanager
def locked_live_tables(dsn: str, *, wait_s: float = 300.0, attempt_s: float = 0.2,
                       stop: threading.Event | None = None) -> Iterator[
        psycopg.Connection[tuple[object, ...]]]:
    """A transaction holding every projection table exclusively (the worker waits meanwhile).

    A lock request queues every later reader behind it; so each attempt waits
    at most ``attempt_s`` and gives way to the readers between attempts, for up
    to ``wait_s`` in all, instead of one long wait that stalls them all.
    """
    deadline = time.monotonic() + wait_s
    pause = attempt_s
    while True:
        conn = connect(dsn)
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{int(attempt_s * 1000)}ms'")
                conn.execute(f"LOCK TABLE {', '.join(PROJECTION_TABLES)} "
                             "IN ACCESS EXCLUSIVE MODE")
                conn.execute("SET LOCAL lock_timeout = 0")
                yield conn
            return
        except psycopg.errors.LockNotAvailable:
            if time.monotonic() + pause > deadline:
                raise ReplayRefusedError(
                    f"the live tables stayed in use for {wait_s:.0f} s (a long reader or "
                    "writer); nothing was swapped, try again") from None
        finally:
            conn.close()
        if (stop or threading.Event()).wait(pause):  # readers go on meanwhile
            raise ReplayRefusedError("stopped as asked while waiting for the live tables; "
                                     "nothing was swapped")
        pause = min(pause * 2, 5.0)


def copy_grants(conn: psycopg.Connection[tuple[object, ...]], live: str) -> None:
    """Give each shadow table the privileges its live twin grants (a worker's role needs them)."""
    for table in PROJECTION_TABLES:
        grants = conn.execute(
            "SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,"
            " g.privilege_type, g.is_grantable FROM pg_class c"
            " CROSS JOIN LATERAL aclexplode(c.relacl) g"
            " LEFT JOIN pg_roles r ON r.oid = g.grantee"
            " WHERE c.oid = %s::regclass AND g.grantee <> c.relowner",
            (f"{live}.{table}",)).fetchall()
        for grantee, privilege, grantable in grants:
            option = " WITH GRANT OPTION" if grantable else ""
            conn.execute(f"GRANT {privilege} ON {SHADOW_SCHEMA}.{table} TO {grantee}{option}")


def swap_in_shadow(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Inside :func:`locked_live_tables`: the shadow tables become the live ones, grants kept."""
    (live,) = conn.execute("SELECT current_schema()").fetchone()  # type: ignore[misc]
    copy_grants(conn, str(live))
    conn.execute(f"DROP SCHEMA IF EXISTS {RETIRED_SCHEMA} CASCADE")
    conn.execute(f"CREATE SCHEMA {RETIRED_SCHEMA}")
    # Tables keep their indexes, constraints and their names when they move.
    for table in PROJECTION_TABLES:
        conn.execute(f"ALTER TABLE {live}.{table} SET SCHEMA {RETIRED_SCHEMA}")
    for table in PROJECTION_TABLES:
        conn.execute(f"ALTER TABLE {SHADOW_SCHEMA}.{table} SET SCHEMA {live}")
        conn.execute(f"ALTER TABLE {live}.{table} RESET (autovacuum_enabled)")
    # The old tables are dropped after the lock is released (drop_retired): removing
    # a million rows' files and indexes is no reason to keep readers waiting.


def drop_retired(dsn: str) -> None:
    """Remove the tables a swap retired, outside its lock."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {RETIRED_SCHEMA} CASCADE")


def differences(dsn: str, sample: int = 5) -> dict[str, tuple[int, list[str]]]:
    """Rows that differ between the live and the shadow tables: table -> (count, some keys)."""
    out = {}
    with connect(dsn) as conn:
        (live,) = conn.execute("SELECT current_schema()").fetchone()  # type: ignore[misc]
        edge = ("CASE WHEN {t}.edge_key IS NOT NULL THEN concat_ws(' ', {t}.location,"
                " CASE {t}.direction WHEN 'in' THEN 'read by' ELSE 'written by' END,"
                " {t}.pipeline, '/', {t}.step_name) END")
        for table, key, named in (("pudato_jobs", "job_id", "{t}.job_id"),
                                  ("pudato_job_steps", "step_id", "{t}.step_id"),
                                  ("pudato_lineage_edges", "edge_key", edge)):
            rows = conn.execute(
                f"SELECT coalesce({named.format(t='l')}, {named.format(t='s')})"
                f" FROM {live}.{table} l "
                f"FULL JOIN {SHADOW_SCHEMA}.{table} s ON l.{key} = s.{key} "
                f"WHERE l IS DISTINCT FROM s ORDER BY 1"
            ).fetchall()
            out[table] = (len(rows), [str(r[0]) for r in rows[:sample]])
    return out


# --- dead-letter redrive bookkeeping -------------------------------------------------


def redriven_digests(dsn: str, digests: Sequence[str]) -> set[str]:
    """Which of these message digests were redriven before."""
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT message_sha256 FROM pudato_dlq_redriven WHERE message_sha256 = ANY(%s)",
            (list(digests),),
        ).fetchall()
    return {str(r[0]) for r in rows}


def record_redriven(dsn: str, rows: Sequence[tuple[str, str, str | None, int | None,
                                                   int | None]]) -> None:
    """Remember (digest, kind, source topic, partition, offset) of redriven messages."""
    with connect(dsn) as conn:
        conn.cursor().executemany(
            "INSERT INTO pudato_dlq_redriven (message_sha256, kind, source_topic,"
            " source_partition, source_offset) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (message_sha256) DO NOTHING",
            rows,
        )
