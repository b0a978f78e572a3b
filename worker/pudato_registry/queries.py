"""Reads of the registry tables: jobs, their steps, lineage; rows as dicts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
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


def job_with_steps(dsn: str, job_id: str, limit: int = 1000) -> tuple[
        dict[str, Any] | None, list[dict[str, Any]], int]:
    """One job, its first ``limit`` steps (by start time) and how many more it has.

    (None, [], 0) if the job is unknown.
    """
    with connect(dsn) as conn:
        jobs = _rows(conn, "pudato_jobs", JOB_COLUMNS, "job_id", where="WHERE job_id = %s",
                     params=(job_id,))
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {', '.join(STEP_COLUMNS)} FROM pudato_job_steps "
                        "WHERE job_id = %s ORDER BY started_at NULLS LAST, step_id LIMIT %s",
                        (job_id, limit + 1))
            steps = cur.fetchall()
        more = 0
        if len(steps) > limit:
            row = conn.execute("SELECT count(*) FROM pudato_job_steps WHERE job_id = %s",
                               (job_id,)).fetchone()
            more, steps = (int(str(row[0])) if row else 0) - limit, steps[:limit]
    return (jobs[0] if jobs else None), steps, more


@dataclass(frozen=True)
class JobFilter:
    """What `jobs list` narrows by; None means any."""

    pipeline: str | None = None
    environment: str | None = None
    namespace: str | None = None
    status: str | None = None
    since: datetime | None = None
    stuck_for: timedelta | None = None
    limit: int = 50


def list_jobs(dsn: str, where: JobFilter) -> list[dict[str, Any]]:
    """Jobs matching the filter, newest first.

    ``stuck_for``: running jobs whose start is longer ago than that, with no
    terminal event (a lost ``failed`` is the classic cause).
    """
    clauses, params = [], []
    for column in ("pipeline", "environment", "namespace", "status"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if where.since is not None:
        clauses.append("created_at >= %s")
        params.append(where.since)
    if where.stuck_for is not None:
        clauses.append("status = 'running' AND started_at < now() - %s")
        params.append(where.stuck_for)
    sql_where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM pudato_jobs {sql_where} "
                    "ORDER BY created_at DESC, job_id LIMIT %s", (*params, where.limit))
        return cur.fetchall()


@dataclass(frozen=True)
class LineageHop:
    """A step that read (``consumed``) or wrote (``produced``) a location, ``depth`` hops away."""

    depth: int
    relation: str
    location: str
    step: dict[str, Any]


_LINEAGE_COLUMNS = "step_id, job_id, step_name, status, started_at, completed_at, inputs, outputs"
MAX_DEPTH = 20  # hops a walk may take: past that a lineage graph is a whole warehouse


@dataclass(frozen=True)
class Lineage:
    """A lineage answer: the hops, and how many more the limit left out (0: none)."""

    hops: list[LineageHop]
    more: int = 0  # further steps found at the last depth walked, beyond the limit
    cut_at_depth: int | None = None  # the depth where the limit stopped the walk


def _touching(conn: psycopg.Connection[Any], column: str, locations: list[str],
              exclude: set[str]) -> list[dict[str, Any]]:
    """Steps whose inputs/outputs hold any of ``locations``, each once: one query.

    Each location is a JSONB containment probe served by the GIN index; a
    step found through several is returned once, with the first of them.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT DISTINCT ON (s.step_id) probe.location AS via, s.* FROM"
            f" unnest(%s::text[]) WITH ORDINALITY AS probe(location, n)"
            f" CROSS JOIN LATERAL (SELECT {_LINEAGE_COLUMNS} FROM pudato_job_steps"
            f" WHERE {column} @> jsonb_build_array(jsonb_build_object('location',"
            f" probe.location))) s"
            f" WHERE NOT s.step_id = ANY(%s::text[])"
            f" ORDER BY s.step_id, probe.n", (locations, list(exclude)))
        rows = cur.fetchall()
    rows.sort(key=lambda r: (r["started_at"] is None, r["started_at"] or 0, r["step_id"]))
    return rows


def spellings(location: str) -> list[str]:
    """The ways one location may be stored: ``/p``, ``file:/p`` and ``file:///p`` name one file."""
    path = None
    if location.startswith("file:///"):
        path = location[len("file://"):]
    elif location.startswith("file:/") and not location.startswith("file://"):
        path = location[len("file:"):]
    elif location.startswith("/"):
        path = location
    if path is None:
        return [location]
    return [f"file://{path}", path, f"file:{path}"]


def lineage(dsn: str, location: str, *, upstream: bool = False, downstream: bool = False,
            depth: int = 3, limit: int = 1000) -> Lineage:
    """Steps that produced or consumed ``location``; with a direction, walk ``depth`` hops.

    One query per hop, whatever its fan-out; a step appears once, at the
    first depth that reaches it. A file location is found however it is
    spelt (:func:`spellings`). At most ``limit`` steps are returned; the
    answer says how many more the last hop found.
    """
    depth = max(1, min(depth, MAX_DEPTH))
    hops: list[LineageHop] = []
    with connect(dsn) as conn:
        if not (upstream or downstream):
            for column, relation in (("outputs", "produced"), ("inputs", "consumed")):
                hops += [LineageHop(1, relation, step.pop("via"), step)
                         for step in _touching(conn, column, spellings(location), set())]
            return Lineage(hops[:limit], max(0, len(hops) - limit),
                           1 if len(hops) > limit else None)
        # Upstream: who wrote it, then who wrote what they read ... and downstream alike.
        found, onward, relation = (("outputs", "inputs", "produced") if upstream
                                   else ("inputs", "outputs", "consumed"))
        frontier = spellings(location)
        seen_locations = set(frontier)
        seen_steps: set[str] = set()
        for level in range(1, depth + 1):
            steps = _touching(conn, found, frontier, seen_steps)
            room = limit - len(hops)
            if len(steps) > room:
                hops += [LineageHop(level, relation, s.pop("via"), s) for s in steps[:room]]
                return Lineage(hops, len(steps) - room, level)
            frontier = []
            for step in steps:
                seen_steps.add(step["step_id"])
                hops.append(LineageHop(level, relation, step.pop("via"), step))
                for ref in step[onward]:
                    for spelling in spellings(ref["location"]):
                        if spelling not in seen_locations:
                            seen_locations.add(spelling)
                            frontier.append(spelling)
            if not frontier:
                break
    return Lineage(hops)
