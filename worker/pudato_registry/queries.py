"""Reads of the registry tables: jobs, their steps, lineage; rows as dicts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row

from pudato_registry import diff, edges
from pudato_registry.store import JOB_COLUMNS, STEP_COLUMNS, connect

Source = str | psycopg.Connection[Any]  # a database URL, or a connection held by the caller


@contextlib.contextmanager
def _connected(source: Source) -> Iterator[psycopg.Connection[Any]]:
    """A connection for one answer: the caller's (left open), or a new one for the URL."""
    if isinstance(source, str):
        with connect(source) as conn:
            yield conn
    else:
        yield source
        source.rollback()  # end the read's transaction: no snapshot held between answers


def reading_connection(dsn: str, *, timeout_ms: int = 10_000) -> psycopg.Connection[Any]:
    """A connection that can only read, whose statements end after ``timeout_ms``."""
    return connect(dsn, options=f"-c default_transaction_read_only=on "
                                f"-c statement_timeout={timeout_ms}")


@contextlib.contextmanager
def reading(dsn: str, *, timeout_ms: int = 10_000) -> Iterator[psycopg.Connection[Any]]:
    """:func:`reading_connection` for a block: for answers that take several queries (a
    comparison), one connection for all of them."""
    with reading_connection(dsn, timeout_ms=timeout_ms) as conn:
        yield conn


def _rows(conn: psycopg.Connection[Any], table: str, columns: tuple[str, ...], key: str, *,
          where: str = "", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {', '.join(columns)} FROM {table} {where} "
                    f'ORDER BY {key} COLLATE "C"', params)
        return cur.fetchall()


def all_jobs(dsn: Source) -> list[dict[str, Any]]:
    """Every row of ``pudato_jobs``, by job_id."""
    with _connected(dsn) as conn:
        return _rows(conn, "pudato_jobs", JOB_COLUMNS, "job_id")


def all_steps(dsn: Source) -> list[dict[str, Any]]:
    """Every row of ``pudato_job_steps``, by step_id."""
    with _connected(dsn) as conn:
        return _rows(conn, "pudato_job_steps", STEP_COLUMNS, "step_id")


def all_edges(dsn: Source) -> list[dict[str, Any]]:
    """Every row of ``pudato_lineage_edges`` (without its digests), by key."""
    with _connected(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {', '.join(edges.COLUMNS)} FROM pudato_lineage_edges ORDER BY "
                    + ", ".join(f'{c} COLLATE "C"' for c in edges.KEY_COLUMNS))
        return cur.fetchall()


def job_with_steps(dsn: Source, job_id: str, limit: int = 1000) -> tuple[
        dict[str, Any] | None, list[dict[str, Any]], int]:
    """One job, its first ``limit`` steps (by start time) and how many more it has.

    (None, [], 0) if the job is unknown.
    """
    with _connected(dsn) as conn:
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
    """What `jobs list` and the UI's jobs page narrow by; None means any."""

    pipeline: str | None = None
    environment: str | None = None
    namespace: str | None = None
    status: str | None = None
    since: datetime | None = None
    stuck_for: timedelta | None = None
    text: str | None = None  # in the job id, pipeline, dag_run_id or error (any case)
    limit: int = 50
    before: tuple[datetime, str] | None = None  # keyset: jobs older than (created_at, job_id)


_JOB_TEXT = ("(job_id || ' ' || coalesce(pipeline, '') || ' ' || coalesce(dag_run_id, '')"
             " || ' ' || coalesce(error, ''))")


def _job_where(where: JobFilter) -> tuple[str, list[Any]]:
    """The WHERE clause of a filter (its paging cursor aside)."""
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
    # Start the newest-first walk at the filter's own newest job (one probe of migration
    # 006's index): a pipeline whose runs all lie a year back is not found by walking
    # every newer job first, which is what the planner does when it expects it dense.
    for column in ("pipeline", "status"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"created_at <= (SELECT max(created_at) FROM pudato_jobs"
                           f" WHERE {column} = %s)")
            params.append(value)
            break
    if where.text:  # the expression of migration 006's trigram index
        clauses.append(f"{_JOB_TEXT} ILIKE %s")
        params.append(_like(where.text))
    return (f"WHERE {' AND '.join(clauses)}" if clauses else "WHERE true"), params


def list_jobs(dsn: Source, where: JobFilter) -> list[dict[str, Any]]:
    """Jobs matching the filter, newest first (ties by job id, descending).

    ``stuck_for``: running jobs whose start is longer ago than that, with no
    terminal event (a lost ``failed`` is the classic cause). ``before`` pages
    by keyset, on the index of ``created_at``: page 1,000 costs what page 1 does.
    """
    sql_where, params = _job_where(where)
    if where.before is not None:
        at, job_id = where.before
        # Two conditions rather than a row comparison: the index is on created_at alone.
        sql_where += " AND created_at <= %s AND (created_at < %s OR job_id < %s)"
        params += [at, at, job_id]
    with _connected(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM pudato_jobs {sql_where} "
                    "ORDER BY created_at DESC, job_id DESC LIMIT %s", (*params, where.limit))
        return cur.fetchall()


def count_jobs(dsn: Source, where: JobFilter, *, most: int = 10_000) -> tuple[
        dict[str, int], bool]:
    """How many jobs match the filter, by status; counted over at most ``most`` of the
    newest (the answer says whether it stopped there): a bounded query at any size."""
    sql_where, params = _job_where(where)
    with _connected(dsn) as conn:
        rows = conn.execute(
            f"SELECT status, count(*) FROM (SELECT status FROM pudato_jobs {sql_where}"
            " ORDER BY created_at DESC LIMIT %s) newest GROUP BY status",
            (*params, most + 1)).fetchall()
    counts = {str(status): int(n) for status, n in rows}
    return counts, sum(counts.values()) > most


def failed_steps(dsn: Source, job_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per job, its failed step runs: (how many no later run of the same step made good,
    how many a retry did); jobs with none are left out."""
    with _connected(dsn) as conn:
        rows = conn.execute(
            "SELECT job_id, count(*) FILTER (WHERE NOT retried), count(*) FILTER (WHERE retried)"
            " FROM (SELECT f.job_id, EXISTS (SELECT 1 FROM pudato_job_steps s"
            " WHERE s.job_id = f.job_id AND s.step_name = f.step_name AND s.status = 'success'"
            " AND s.started_at >= f.started_at) AS retried FROM pudato_job_steps f"
            " WHERE f.job_id = ANY(%s) AND f.status = 'failed') failed GROUP BY job_id",
            (list(job_ids),)).fetchall()
    return {str(job_id): (int(left), int(retried)) for job_id, left, retried in rows}


@dataclass(frozen=True)
class PipelineRuns:
    """A pipeline's last runs (newest first) and their steps, for the grid."""

    pipeline: str
    environment: str | None
    namespace: str | None
    jobs: list[dict[str, Any]]
    steps: list[dict[str, Any]]


_GRID_STEP = ("step_id", "job_id", "step_name", "status", "started_at", "completed_at",
              "duration_ms", "error")


def pipeline_runs(dsn: Source, pipeline: str, *, environment: str | None = None,
                  namespace: str | None = None, runs: int = 25) -> PipelineRuns:
    """The last ``runs`` runs of ``pipeline`` and their steps. Without an environment and
    namespace, those of its newest run: one grid never mixes dev and prod."""
    with _connected(dsn) as conn:
        if environment is None or namespace is None:
            given = "".join(f" AND {c} = %s" for c, v in (("environment", environment),
                                                          ("namespace", namespace)) if v)
            values = [v for v in (environment, namespace) if v]
            newest = conn.execute(  # max() first: one probe of (pipeline, created_at)
                f"SELECT environment, namespace FROM pudato_jobs WHERE pipeline = %s{given}"
                " AND created_at = (SELECT max(created_at) FROM pudato_jobs"
                f" WHERE pipeline = %s{given}) LIMIT 1",
                (pipeline, *values, pipeline, *values)).fetchone()
            if newest is None:
                return PipelineRuns(pipeline, environment, namespace, [], [])
            environment, namespace = str(newest[0]), str(newest[1])
        jobs = _rows(conn, "pudato_jobs", JOB_COLUMNS, "job_id", where=(
            "WHERE job_id = ANY(ARRAY(SELECT job_id FROM pudato_jobs WHERE pipeline = %s"
            " AND environment = %s AND namespace = %s ORDER BY created_at DESC LIMIT %s))"),
            params=(pipeline, environment, namespace, runs))
        jobs.sort(key=lambda j: (j["created_at"], j["job_id"]), reverse=True)
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(f"SELECT {', '.join(_GRID_STEP)} FROM pudato_job_steps"
                        " WHERE job_id = ANY(%s) ORDER BY started_at NULLS LAST, step_id"
                        " LIMIT %s", ([j["job_id"] for j in jobs], runs * 500))
            steps = cur.fetchall()
    return PipelineRuns(pipeline, environment, namespace, jobs, steps)


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


def lineage(dsn: Source, location: str, *, upstream: bool = False, downstream: bool = False,
            depth: int = 3, limit: int = 1000) -> Lineage:
    """Steps that produced or consumed ``location``; with a direction, walk ``depth`` hops.

    One query per hop, whatever its fan-out; a step appears once, at the
    first depth that reaches it. A file location is found however it is
    spelt (:func:`spellings`). At most ``limit`` steps are returned; the
    answer says how many more the last hop found.
    """
    depth = max(1, min(depth, MAX_DEPTH))
    hops: list[LineageHop] = []
    with _connected(dsn) as conn:
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


# --- the logical lineage graph (pudato_lineage_edges) ---------------------------------


@dataclass(frozen=True)
class StepNode:
    """A logical step: a named step of a pipeline, in a namespace and environment."""

    namespace: str
    environment: str
    pipeline: str
    step_name: str

    @property
    def id(self) -> str:
        """A stable node id (for JSON, DOT and Mermaid)."""
        return "step:" + "\x1f".join((self.namespace, self.environment, self.pipeline,
                                      self.step_name))

    @property
    def label(self) -> str:
        """How people name it."""
        return f"{self.pipeline} / {self.step_name}"


@dataclass(frozen=True)
class GraphEdge:
    """One logical edge: a step reads (``in``) or writes (``out``) a location, over its runs."""

    location: str
    direction: str
    step: StepNode
    runs: int
    first_seen: datetime
    last_seen: datetime
    last_status: str
    last_job_id: str
    last_step_id: str
    ref_type: str
    depth: int  # steps away from the location asked about (1: it reads or writes it)
    side: str  # "upstream" or "downstream" of that location

    @property
    def source(self) -> str:
        """The id of the node the edge leaves: the dataset read, or the step writing."""
        return dataset_id(self.location) if self.direction == "in" else self.step.id

    @property
    def target(self) -> str:
        """The id of the node the edge enters."""
        return self.step.id if self.direction == "in" else dataset_id(self.location)


def dataset_id(location: str) -> str:
    """A dataset's node id."""
    return f"dataset:{location}"


@dataclass
class LineageGraph:
    """The datasets and logical steps around a location, with the edges between them."""

    location: str  # as found in the table (a file path may be stored under another spelling)
    found: bool
    datasets: list[str] = field(default_factory=list)
    steps: list[StepNode] = field(default_factory=list)
    edges: list[GraphEdge] = field(default_factory=list)
    truncated: bool = False  # the walk stopped at max_edges
    depth: int = 1
    upstream: bool = True
    downstream: bool = True
    whole: str | None = None  # a namespace (and environment) drawn whole: no location asked


    def as_dict(self) -> dict[str, Any]:
        """The graph for JSON: nodes with ids, edges by node id."""
        return {
            "location": self.location, "found": self.found, "depth": self.depth,
            "whole": self.whole,
            "truncated": self.truncated,
            "nodes": [{"id": dataset_id(d), "kind": "dataset", "location": d}
                      for d in self.datasets]
                     + [{"id": s.id, "kind": "step", "label": s.label,
                         "namespace": s.namespace, "environment": s.environment,
                         "pipeline": s.pipeline, "step_name": s.step_name} for s in self.steps],
            "edges": [{"source": e.source, "target": e.target, "location": e.location,
                       "direction": e.direction, "side": e.side, "depth": e.depth,
                       "step": e.step.label, "runs": e.runs, "first_seen": e.first_seen,
                       "last_seen": e.last_seen, "last_status": e.last_status,
                       "last_job_id": e.last_job_id, "last_step_id": e.last_step_id,
                       "ref_type": e.ref_type} for e in self.edges],
        }


MAX_GRAPH_EDGES = 2000  # a graph bigger than this is a warehouse, not an answer
_EDGE_READ = ("location, direction, namespace, environment, pipeline, step_name, runs,"
              " first_seen, last_seen, last_status, last_job_id, last_step_id, ref_type")


def _graph_edge(row: tuple[Any, ...], depth: int, side: str,
                step: StepNode | None = None) -> GraphEdge:
    """An edge from a row of :data:`_EDGE_READ` (``step``: its step node, if built already)."""
    (location, direction, namespace, environment, pipeline, step_name, runs, first_seen,
     last_seen, last_status, last_job_id, last_step_id, ref_type) = row
    return GraphEdge(location, direction,
                     step or StepNode(namespace, environment, pipeline, step_name), int(runs),
                     first_seen, last_seen, last_status, last_job_id, last_step_id, ref_type,
                     depth, side)


def _equal(columns: dict[str, Any]) -> tuple[str, list[Any]]:
    """`` AND column = %s`` for each column given a value (None: any), and the values."""
    given = {c: v for c, v in columns.items() if v is not None}
    return "".join(f" AND {c} = %s" for c in given), list(given.values())


def _scope(namespace: str | None, environment: str | None) -> tuple[str, list[Any]]:
    return _equal({"namespace": namespace, "environment": environment})


def _hop(conn: psycopg.Connection[Any], locations: list[str], scope: tuple[str, list[Any]],
         limit: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """One step of a walk in one statement: the edges at these locations (``near``, by the
    location index), and every edge of the logical steps at their other end (``far``, by
    step_key). The walk keeps the directions it follows."""
    rows = conn.execute(
        f"WITH near AS (SELECT step_key, {_EDGE_READ} FROM pudato_lineage_edges"
        f" WHERE location = ANY(%s){scope[0]} ORDER BY last_seen DESC LIMIT %s)"
        f" (SELECT true, {_EDGE_READ} FROM near) UNION ALL"
        f" (SELECT false, {_EDGE_READ} FROM pudato_lineage_edges"
        " WHERE step_key IN (SELECT step_key FROM near) ORDER BY last_seen DESC LIMIT %s)",
        (locations, *scope[1], limit, limit)).fetchall()
    return [r[1:] for r in rows if r[0]], [r[1:] for r in rows if not r[0]]


# Walking one side: the direction of the edges from a dataset to the steps next
# to it, and of the edges from those steps on to the next datasets.
_TOWARD = {"upstream": "out", "downstream": "in"}
_AWAY = {"upstream": "in", "downstream": "out"}


class _Walk:
    """A walk out from a location, both sides a step at a time: what it found so far."""

    def __init__(self, sides: list[str], names: list[str], room: int) -> None:
        self.sides, self.room = sides, room
        self.datasets: dict[str, None] = {}
        self.steps: dict[StepNode, None] = {}
        self.edges: dict[tuple[str, str, StepNode], GraphEdge] = {}
        self.truncated = False
        self.frontier = {side: set(names) for side in sides}  # datasets to go on from
        self.visited = {side: set(names) for side in sides}
        self.new_steps: dict[str, list[StepNode]] = {side: [] for side in sides}
        self.seen_steps: dict[str, set[StepNode]] = {side: set() for side in sides}

    def _add(self, row: tuple[Any, ...], level: int, side: str, step: StepNode) -> bool:
        if len(self.edges) >= self.room:
            self.truncated = True
            return False
        key = (row[0], row[1], step)
        if key not in self.edges:
            self.edges[key] = _graph_edge(row, level, side, step)
        return True

    def toward(self, rows: list[tuple[Any, ...]], level: int) -> bool:
        """From the frontier's datasets to the steps next to them; whether to go on."""
        self.new_steps = {side: [] for side in self.sides}
        for row in rows:
            location, direction = row[0], row[1]
            side = next((s for s in self.sides if direction == _TOWARD[s]
                         and location in self.frontier[s]), None)
            if side is None:
                continue
            step = StepNode(*row[2:6])
            if not self._add(row, level, side, step):
                return False
            if step not in self.seen_steps[side]:
                self.seen_steps[side].add(step)
                self.new_steps[side].append(step)
                self.steps.setdefault(step)
        return any(self.new_steps.values())

    def away(self, rows: list[tuple[Any, ...]], level: int) -> bool:
        """From the new steps on to their other datasets; whether to go on."""
        new = {side: set(self.new_steps[side]) for side in self.sides}
        self.frontier = {side: set() for side in self.sides}
        for row in rows:
            location, direction, step = row[0], row[1], StepNode(*row[2:6])
            side = next((s for s in self.sides if direction == _AWAY[s]
                         and step in new[s]), None)
            if side is None:
                continue
            if not self._add(row, level, side, step):
                return False
            self.datasets.setdefault(location)
            if location not in self.visited[side]:
                self.visited[side].add(location)
                self.frontier[side].add(location)
        return any(self.frontier.values())


def lineage_graph(dsn: Source, location: str, *, upstream: bool = True, downstream: bool = True,
                  depth: int = 1, namespace: str | None = None,
                  environment: str | None = None,
                  max_edges: int = MAX_GRAPH_EDGES) -> LineageGraph:
    """The logical graph around ``location``: the steps that write it (upstream) and what
    they read, the steps that read it (downstream) and what they write, ``depth`` steps out.

    One statement per step of depth (two index probes), both sides at once,
    whatever the number of runs behind an edge. ``namespace``/``environment`` narrow the
    steps. At most ``max_edges`` edges; the answer says if it was cut. A file
    location is found however it is spelt (:func:`spellings`).
    """
    depth = max(1, min(depth, MAX_DEPTH))
    graph = LineageGraph(location, False, depth=depth, upstream=upstream,
                         downstream=downstream)
    scope = _scope(namespace, environment)
    sides = [s for s, wanted in (("upstream", upstream), ("downstream", downstream)) if wanted]
    names = spellings(location)
    walk = _Walk(sides, names, max_edges)
    with _connected(dsn) as conn:
        for level in range(1, depth + 1):
            wanted = sorted(set().union(*walk.frontier.values()))
            rows, far = _hop(conn, wanted, scope, max_edges + 1)
            if level == 1:
                stored = sorted({r[0] for r in rows})
                graph.found = bool(stored) or (bool(scope[0]) and known_location(conn, location))
                if not graph.found:
                    return graph
                graph.location = stored[0] if len(stored) == 1 else location
                walk.datasets.update(dict.fromkeys(stored))
            if not walk.toward(rows, level):
                break
            if not walk.away(far, level):
                break
    graph.datasets, graph.steps, graph.truncated = (list(walk.datasets), list(walk.steps),
                                                    walk.truncated)
    graph.edges = sorted(walk.edges.values(), key=lambda e: (
        e.side != "upstream", e.depth, e.direction != _TOWARD[e.side], e.step.label,
        e.location))
    return graph


def known_location(dsn: Source, location: str) -> bool:
    """Whether any logical step reads or writes ``location`` (in any of its spellings)."""
    with _connected(dsn) as conn:
        return conn.execute("SELECT 1 FROM pudato_lineage_edges WHERE location = ANY(%s)"
                            " LIMIT 1", (spellings(location),)).fetchone() is not None


def namespace_graph(dsn: Source, namespace: str, *, environment: str | None = None,
                    max_edges: int = MAX_GRAPH_EDGES) -> LineageGraph:
    """Every edge of the steps of a namespace (and environment): its whole graph, one
    indexed query; at most ``max_edges`` edges, most recently seen first."""
    scope = _scope(namespace, environment)
    with _connected(dsn) as conn:
        rows = conn.execute(
            f"SELECT {_EDGE_READ} FROM pudato_lineage_edges WHERE true{scope[0]}"
            " ORDER BY last_seen DESC LIMIT %s", (*scope[1], max_edges + 1)).fetchall()
    whole = namespace if environment is None else f"{namespace}/{environment}"
    graph = LineageGraph(whole, bool(rows), depth=0, upstream=False, downstream=False,
                         whole=whole, truncated=len(rows) > max_edges)
    found = [_graph_edge(row, 0, "namespace") for row in rows[:max_edges]]
    graph.datasets = list(dict.fromkeys(e.location for e in found))
    graph.steps = list(dict.fromkeys(e.step for e in found))
    graph.edges = sorted(found, key=lambda e: (e.step.label, e.direction, e.location))
    return graph


@dataclass(frozen=True)
class KnownLocation:
    """A location the graph knows, with how much stands behind it."""

    location: str
    steps: int  # logical steps reading or writing it
    runs: int  # step runs behind those edges
    last_seen: datetime


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_locations(dsn: Source, text: str, *, limit: int = 20) -> list[KnownLocation]:
    """Known locations containing ``text`` (any case), shortest first; at most ``limit``.

    Served by the trigram index where pg_trgm is installed (three characters
    or more); otherwise a scan of the edges, cut at ``limit``.
    """
    with _connected(dsn) as conn:
        rows: list[Any] = conn.execute(
            "SELECT location, count(*), sum(runs), max(last_seen) FROM pudato_lineage_edges"
            " WHERE location ILIKE %s GROUP BY location"
            " ORDER BY length(location), location COLLATE \"C\" LIMIT %s",
            (_like(text), limit)).fetchall()
    return [KnownLocation(r[0], int(r[1]), int(r[2]), r[3]) for r in rows]


def nearest_locations(dsn: Source, location: str, *, limit: int = 5) -> list[KnownLocation]:
    """Locations a mistyped or partial ``location`` may have meant: those containing its
    last part (after the last ``/``, ``.`` or ``:``), else those containing any part."""
    parts = [p for p in location.replace(":", "/").replace(".", "/").split("/") if p]
    for part in ([parts[-1]] if parts else []) + sorted(set(parts[:-1]), key=len, reverse=True):
        found = search_locations(dsn, part, limit=limit)
        if found:
            return found
    return []


@dataclass(frozen=True)
class LineageRuns:
    """One page of the step runs that read or wrote a location, newest first."""

    hops: list[LineageHop]
    more: bool  # another page follows

    def rows(self) -> list[dict[str, Any]]:
        """The page as `lineage --runs --json` (and the API) print it."""
        return [{"relation": h.relation, "location": h.location, **h.step} for h in self.hops]


_RUN_STEP = ("step_id", "job_id", "step_name", "status", "started_at", "completed_at")
MAX_RUN_SCOPES = 200  # a location more logical steps than this touch: probed from the steps


def lineage_runs(dsn: Source, location: str, *, pipeline: str | None = None,
                 step_name: str | None = None, limit: int = 50,
                 offset: int = 0) -> LineageRuns:
    """The step runs behind the graph's edges at ``location``, newest run first (by the
    job's creation, then the step's start), ``limit`` from ``offset``; narrowed by pipeline
    and step name.

    The edges name the logical steps (scope and step name) that read or wrote the
    location; each round reads the newest jobs of those scopes on their index and
    then only those jobs' steps, so a location behind 20,000 runs costs what one
    behind 20 does. Past :data:`MAX_RUN_SCOPES` logical steps, the steps' JSON
    indexes answer instead (:func:`_runs_from_steps`).
    """
    names = spellings(location)
    narrow, params = _equal({"pipeline": pipeline, "step_name": step_name})
    with _connected(dsn) as conn:
        edge_rows = conn.execute(
            "SELECT DISTINCT location, direction, namespace, environment, pipeline, step_name"
            f" FROM pudato_lineage_edges WHERE location = ANY(%s){narrow} LIMIT %s",
            (names, *params, MAX_RUN_SCOPES + 1)).fetchall()
        if len(edge_rows) > MAX_RUN_SCOPES:
            return _runs_from_steps(conn, names, pipeline=pipeline, step_name=step_name,
                                    limit=limit, offset=offset)
        return _runs_of_edges(conn, edge_rows, limit, offset)


def _runs_of_edges(conn: psycopg.Connection[Any], edge_rows: Sequence[Sequence[Any]],
                   limit: int, offset: int) -> LineageRuns:
    wanted = {(str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[1])): str(r[0])
              for r in edge_rows}  # (namespace, environment, pipeline, step, direction)
    scopes = sorted({(p, e, n) for n, e, p, _s, _d in wanted})
    step_names = sorted({k[3] for k in wanted})
    locations = sorted(set(wanted.values()))
    probe = [{"location": loc} for loc in locations]
    need, window = limit + offset + 1, max(2 * (limit + offset + 1), 100)
    hops: list[tuple[tuple[Any, ...], LineageHop]] = []
    before: tuple[datetime, str] | None = None
    while scopes and len(hops) < need:
        keyset = (" AND (created_at < %s OR (created_at = %s AND job_id < %s))"
                  if before else "")
        union = " UNION ALL ".join(
            "(SELECT job_id, created_at, pipeline, namespace, environment FROM pudato_jobs"
            f" WHERE pipeline = %s AND environment = %s AND namespace = %s{keyset}"
            " ORDER BY created_at DESC, job_id DESC LIMIT %s)" for _ in scopes)
        args: list[Any] = []
        for scope in scopes:
            args += [*scope, *((before[0], before[0], before[1]) if before else ()), window]
        jobs = conn.execute(f"SELECT * FROM ({union}) newest ORDER BY created_at DESC,"
                            " job_id DESC LIMIT %s", (*args, window)).fetchall()
        if not jobs:
            break
        by_job = {str(j[0]): j for j in jobs}
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"SELECT {', '.join(_RUN_STEP)}, (inputs @> ANY(%s::jsonb[])) IS TRUE AS reads,"
                " (outputs @> ANY(%s::jsonb[])) IS TRUE AS writes FROM pudato_job_steps"
                " WHERE job_id = ANY(%s) AND step_name = ANY(%s)",
                ([_probe_json([p]) for p in probe], [_probe_json([p]) for p in probe],
                 list(by_job), step_names))
            steps = cur.fetchall()
        for step in steps:
            job = by_job[step["job_id"]]
            reads, writes = step.pop("reads"), step.pop("writes")
            for relation, direction, hit in (("produced", "out", writes),
                                             ("consumed", "in", reads)):
                key = (str(job[3]), str(job[4]), str(job[2]), step["step_name"], direction)
                if hit and key in wanted:
                    seen = step["started_at"] or step["completed_at"]
                    order = (job[1], job[0], seen is not None, seen or job[1], step["step_id"],
                             relation == "consumed")
                    hops.append((order, LineageHop(1, relation, wanted[key],
                                                   {**step, "pipeline": job[2]})))
        if len(jobs) < window:
            break
        before = (jobs[-1][1], str(jobs[-1][0]))
    hops.sort(key=lambda h: h[0], reverse=True)
    page = [h for _o, h in hops[offset:offset + limit + 1]]
    return LineageRuns(page[:limit], len(page) > limit)


def _probe_json(refs: list[dict[str, str]]) -> str:
    return msgspec.json.encode(refs).decode()


def _runs_from_steps(conn: psycopg.Connection[Any], names: list[str], *,
                     pipeline: str | None, step_name: str | None, limit: int,
                     offset: int) -> LineageRuns:
    """The runs at a location read by very many logical steps, from the steps' JSON
    indexes, newest first by the step's start."""
    narrow, params = _equal({"j.pipeline": pipeline, "s.step_name": step_name})
    probes = [(column, relation) for column, relation in (("outputs", "produced"),
                                                          ("inputs", "consumed"))]
    union = " UNION ALL ".join(
        f"SELECT '{relation}' AS relation, probe.location AS via, s.step_id, s.job_id,"
        f" s.step_name, s.status, s.started_at, s.completed_at, j.pipeline,"
        f" coalesce(s.started_at, s.completed_at) AS seen"
        f" FROM unnest(%s::text[]) AS probe(location)"
        f" JOIN pudato_job_steps s ON s.{column} @> jsonb_build_array("
        f"jsonb_build_object('location', probe.location))"
        f" JOIN pudato_jobs j ON j.job_id = s.job_id WHERE true{narrow}"
        for column, relation in probes)
    args: list[Any] = []
    for _probe in probes:
        args += [names, *params]
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT * FROM ({union}) runs ORDER BY seen DESC NULLS LAST,"
                    " step_id COLLATE \"C\" DESC, relation LIMIT %s OFFSET %s",
                    (*args, limit + 1, offset))
        rows = cur.fetchall()
    for row in rows:
        row.pop("seen")
    hops = [LineageHop(1, row.pop("relation"), row.pop("via"), row) for row in rows[:limit]]
    return LineageRuns(hops, len(rows) > limit)


# --- comparing runs (diff.py) ------------------------------------------------------------


def _job(conn: psycopg.Connection[Any], job_id: str) -> dict[str, Any] | None:
    found = _rows(conn, "pudato_jobs", JOB_COLUMNS, "job_id", where="WHERE job_id = %s",
                  params=(job_id,))
    return found[0] if found else None


def _steps_of(conn: psycopg.Connection[Any], job_id: str) -> list[dict[str, Any]]:
    return _rows(conn, "pudato_job_steps", STEP_COLUMNS, "step_id", where="WHERE job_id = %s",
                 params=(job_id,))


def previous_run(dsn: Source, job: dict[str, Any], *,
                 succeeded: bool = False) -> dict[str, Any] | None:
    """The run of the same pipeline, environment and namespace just before ``job`` (by
    creation), or the last successful one before it."""
    if job.get("pipeline") is None:
        return None
    with _connected(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {', '.join(JOB_COLUMNS)} FROM pudato_jobs WHERE pipeline = %s"
            " AND environment = %s AND namespace = %s AND (created_at, job_id COLLATE \"C\")"
            " < (%s, %s)" + (" AND status = 'success'" if succeeded else "")
            + " ORDER BY created_at DESC, job_id COLLATE \"C\" DESC LIMIT 1",
            (job["pipeline"], job["environment"], job["namespace"], job["created_at"],
             job["job_id"]))
        return cur.fetchone()


def _writers(conn: psycopg.Connection[Any], probes: list[tuple[str, datetime]], *,
             after: bool) -> dict[str, dict[str, Any] | None]:
    """Per (location, time): the last successful step that wrote it before that time, or
    (``after``) the last one after it."""
    if not probes:
        return {}
    sign = ">" if after else "<="
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT probe.location, w.job_id, w.step_id, w.step_name, w.pipeline,"
            " w.completed_at, w.outputs FROM unnest(%s::text[], %s::timestamptz[])"
            " AS probe(location, at) LEFT JOIN LATERAL ("
            " SELECT s.job_id, s.step_id, s.step_name, j.pipeline, s.completed_at, s.outputs"
            " FROM pudato_job_steps s JOIN pudato_jobs j ON j.job_id = s.job_id"
            " WHERE s.outputs @> jsonb_build_array(jsonb_build_object('location',"
            f" probe.location)) AND s.status = 'success' AND s.completed_at {sign} probe.at"
            " ORDER BY s.completed_at DESC LIMIT 1) w ON true",
            ([p[0] for p in probes], [p[1] for p in probes]))
        rows = cur.fetchall()
    out: dict[str, dict[str, Any] | None] = {}
    for row in rows:
        location = row.pop("location")
        outputs = row.pop("outputs") or []
        if row["step_id"] is None:
            out[location] = None
            continue
        written: dict[str, Any] = next((r for r in outputs if r["location"] == location), {})
        out[location] = {**row, "rows": diff.row_count(written),
                         "version": diff.version_of(written)}
    return out


def _first_reads(steps: Sequence[Mapping[str, Any]]) -> list[tuple[str, datetime]]:
    """(location, when the run first read it) of the inputs no step of the run wrote."""
    produced = {r["location"] for s in steps for r in s["outputs"]}
    first: dict[str, datetime] = {}
    for step in steps:
        at = step["started_at"] or step["completed_at"]
        if at is None:
            continue
        for ref in step["inputs"]:
            if ref["location"] not in produced and (ref["location"] not in first
                                                    or at < first[ref["location"]]):
                first[ref["location"]] = at
    return sorted(first.items())


def run_facts(dsn: Source, job_id: str) -> diff.RunFacts | None:
    """A job, its steps and the producers of its external inputs; None if it is unknown."""
    with _connected(dsn) as conn:
        job = _job(conn, job_id)
        if job is None:
            return None
        steps = _steps_of(conn, job_id)
        return diff.RunFacts(job, steps, _writers(conn, _first_reads(steps), after=False))


def step_baselines(dsn: Source, job: dict[str, Any], runs: int) -> dict[str, list[int]]:
    """Per step name, the durations of its successful runs in the last ``runs`` successful
    runs of the job's pipeline (environment, namespace) before it."""
    if job.get("pipeline") is None or runs < 1:
        return {}
    with _connected(dsn) as conn:
        rows = conn.execute(
            "SELECT step_name, duration_ms FROM pudato_job_steps WHERE job_id = ANY(ARRAY("
            "SELECT job_id FROM pudato_jobs WHERE pipeline = %s AND environment = %s"
            " AND namespace = %s AND status = 'success' AND created_at < %s"
            " ORDER BY created_at DESC LIMIT %s)) AND status = 'success'"
            " AND duration_ms IS NOT NULL AND step_name IS NOT NULL",
            (job["pipeline"], job["environment"], job["namespace"], job["created_at"],
             runs)).fetchall()
    out: dict[str, list[int]] = {}
    for name, duration in rows:
        out.setdefault(str(name), []).append(int(duration))
    return out


def overwrites(dsn: Source, facts: diff.RunFacts) -> dict[str, dict[str, Any] | None]:
    """Per external input of a run: a successful write of it after the one the run read
    (after the run first read it, when no producer is known)."""
    probes = []
    for location, read_at in _first_reads(facts.steps):
        producer = facts.producers.get(location)
        probes.append((location, producer["completed_at"] if producer else read_at))
    with _connected(dsn) as conn:
        return _writers(conn, probes, after=True)
