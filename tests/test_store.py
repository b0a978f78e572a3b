"""Migrations against a real PostgreSQL: the tables match the spec; reruns and races are safe."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from pudato_registry import store
from tests.services import Services, fresh_database

# (column, data_type, is_nullable, default) exactly as registry-schema.md and
# events-v1.md's nullability say.
JOBS = [
    ("job_id", "text", "NO", None),
    ("pipeline", "text", "YES", None),
    ("environment", "text", "NO", "'dev'::text"),
    ("namespace", "text", "NO", "'default'::text"),
    ("status", "text", "NO", "'pending'::text"),
    ("logic_version", "text", "YES", None),
    ("request", "jsonb", "NO", "'{}'::jsonb"),
    ("parameters", "jsonb", "NO", "'{}'::jsonb"),
    ("dag_run_id", "text", "YES", None),
    ("created_at", "timestamp with time zone", "NO", "now()"),
    ("started_at", "timestamp with time zone", "YES", None),
    ("completed_at", "timestamp with time zone", "YES", None),
    ("error", "text", "YES", None),
    ("metadata", "jsonb", "NO", "'{}'::jsonb"),
]
STEPS = [
    ("step_id", "text", "NO", None),
    ("job_id", "text", "NO", None),
    ("step_name", "text", "YES", None),
    ("handler_type", "text", "YES", None),
    ("action", "text", "YES", None),
    ("status", "text", "NO", "'pending'::text"),
    ("correlation_id", "text", "NO", None),
    ("inputs", "jsonb", "NO", "'[]'::jsonb"),
    ("outputs", "jsonb", "NO", "'[]'::jsonb"),
    ("executions", "jsonb", "NO", "'[]'::jsonb"),
    ("started_at", "timestamp with time zone", "YES", None),
    ("completed_at", "timestamp with time zone", "YES", None),
    ("duration_ms", "integer", "YES", None),
    ("error", "text", "YES", None),
    ("metadata", "jsonb", "NO", "'{}'::jsonb"),
]
INDEXES = {
    "pudato_jobs": {
        "pudato_jobs_pkey": "(job_id)",
        "idx_jobs_pipeline": "(pipeline)", "idx_jobs_environment": "(environment)",
        "idx_jobs_namespace": "(namespace)", "idx_jobs_status": "(status)",
        "idx_jobs_created_at": "(created_at)",
        # Added by 005 for jobs diff and the exporter, beyond the spec's list.
        "idx_jobs_pipeline_scope_created": "(pipeline, environment, namespace, created_at)",
        # Added by 006 for the UI's jobs page, and its text filter (where pg_trgm can be
        # had, as here).
        "idx_jobs_pipeline_created": "(pipeline, created_at) INCLUDE (status)",
        "idx_jobs_status_created": "(status, created_at)",
        "idx_jobs_created_status": "(created_at) INCLUDE (status)",
        "idx_jobs_text": "(error, ''::text))) gin_trgm_ops)",
    },
    "pudato_job_steps": {
        "pudato_job_steps_pkey": "(step_id)",
        "idx_steps_job_id": "(job_id)", "idx_steps_status": "(status)",
        "idx_steps_started_at": "(started_at)",
        # Added by 003 for lineage queries (issue 6), beyond the spec's list.
        "idx_steps_inputs": "(inputs jsonb_path_ops)",
        "idx_steps_outputs": "(outputs jsonb_path_ops)",
    },
}


def _columns(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()


def _indexes(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    rows = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                        (table,)).fetchall()
    # What follows USING ...: the columns (and an INCLUDE), or an expression's tail.
    return {name: definition[definition.index("(", definition.index(" USING ")):]
            if "INCLUDE" in definition else definition[definition.rindex("("):]
            for name, definition in rows}


def test_migrate_creates_the_spec_tables_and_reruns_as_a_no_op(services: Services) -> None:
    with fresh_database(services.admin_url(), services.database_url, migrated=False) as url:
        applied = store.migrate(url)
        assert [m.version for m in applied] == [m.version for m in store.load_migrations()]
        assert store.migrate(url) == []
        with psycopg.connect(url) as conn:
            assert _columns(conn, "pudato_jobs") == JOBS
            assert _columns(conn, "pudato_job_steps") == STEPS
            for table, expected in INDEXES.items():
                assert _indexes(conn, table) == expected
            fk = conn.execute(
                "SELECT rc.delete_rule, kcu.column_name, ccu.table_name, ccu.column_name"
                " FROM information_schema.referential_constraints rc"
                " JOIN information_schema.key_column_usage kcu"
                "   ON kcu.constraint_name = rc.constraint_name"
                " JOIN information_schema.constraint_column_usage ccu"
                "   ON ccu.constraint_name = rc.constraint_name"
                " WHERE kcu.table_name = 'pudato_job_steps'"
            ).fetchall()
            assert fk == [("CASCADE", "job_id", "pudato_jobs", "job_id")]
            recorded = conn.execute(
                "SELECT version FROM pudato_schema_migrations ORDER BY version").fetchall()
            assert [v for (v,) in recorded] == [m.version for m in applied]


def test_concurrent_migrations_apply_each_file_once(services: Services) -> None:
    with fresh_database(services.admin_url(), services.database_url, migrated=False) as url:
        results: list[list[store.Migration]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                results.append(store.migrate(url))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        applied = sorted(m.version for batch in results for m in batch)
        assert applied == [m.version for m in store.load_migrations()]


def test_an_edited_applied_migration_is_refused(services: Services) -> None:
    with fresh_database(services.admin_url(), services.database_url) as url:
        first = store.load_migrations()[0]
        edited = store.Migration(first.version, first.name, first.sql + "\n-- edited\n")
        with pytest.raises(store.MigrationError, match="edited after it was applied"):
            store.migrate(url, [edited])


def test_transient_and_permanent_errors_are_told_apart_by_sqlstate(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as missing:
            conn.execute("SELECT * FROM no_such_table")
        assert not store.is_transient(missing.value)
        other = psycopg.connect(database_url, autocommit=True)
        pid = other.info.backend_pid
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError) as dropped:
            other.execute("SELECT 1")
        assert store.is_transient(dropped.value)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)
    assert store.is_transient(refused.value)
