"""Reads of the registry tables: whole rows as dicts, for the CLI, the demo and the tests."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from pudato_registry.store import JOB_COLUMNS, STEP_COLUMNS, connect


def _rows(conn: psycopg.Connection[Any], table: str, columns: tuple[str, ...], key: str, *,
          where: str = "", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {', '.join(columns)} FROM {table} {where} "
                    f'ORDER BY {key} COLLATE "C"', params)
        return cur.fetchall()


def all_jobs(dsn: str) -> list[dict[str, Any]]:
    """Every row of ``pudato_jobs``, by job_id."""
    with connect(dsn) as conn:
        return _rows(conn, "pudato_jobs", JOB_COLUMNS, "job_id")


def all_steps(dsn: str) -> list[dict[str, Any]]:
    """Every row of ``pudato_job_steps``, by step_id."""
    with connect(dsn) as conn:
        return _rows(conn, "pudato_job_steps", STEP_COLUMNS, "step_id")


def job_with_steps(dsn: str, job_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """One job and its steps (by start time), or (None, []) if it is unknown."""
    with connect(dsn) as conn:
        jobs = _rows(conn, "pudato_jobs", JOB_COLUMNS, "job_id", where="WHERE job_id = %s",
                     params=(job_id,))
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {', '.join(STEP_COLUMNS)} FROM pudato_job_steps "
                        "WHERE job_id = %s ORDER BY started_at NULLS LAST, step_id", (job_id,))
            steps = cur.fetchall()
    return (jobs[0] if jobs else None), steps
