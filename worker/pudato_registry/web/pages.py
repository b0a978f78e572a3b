"""What the pages show, computed from rows: pure functions, no Flask, no database.

The Gantt's geometry, the pipeline grid, the trend lines and
the jobs page's cursor are decided here, so that they are tested without a
server and the views only fetch rows and render.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pudato_registry.present import duration


def cursor_of(job: Mapping[str, Any]) -> str:
    """The jobs page's "older" cursor after ``job``: its creation time and id."""
    created: datetime = job["created_at"]
    return f"{created.astimezone(UTC).isoformat()}|{job['job_id']}"


def parse_cursor(text: str) -> tuple[datetime, str]:
    """A cursor back to (created_at, job_id); ValueError if it is not one."""
    at, sep, job_id = text.partition("|")
    if not sep or not job_id:
        raise ValueError("not a cursor")
    moment = datetime.fromisoformat(at)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), job_id


def elapsed_ms(start: datetime | None, end: datetime | None, now: datetime) -> int | None:
    """Milliseconds from ``start`` to ``end`` (to ``now`` if it has not ended)."""
    if start is None:
        return None
    return max(0, int(((end or now) - start).total_seconds() * 1000))


@dataclass(frozen=True)
class Bar:
    """One row of the Gantt: a step run's bar, in per mille of the chart's width."""

    step_id: str
    label: str
    status: str
    x: float
    width: float
    title: str
    running: bool


@dataclass(frozen=True)
class Gantt:
    """The job's steps on one time axis."""

    bars: list[Bar]
    span_ms: int
    ticks: list[tuple[float, str]] = field(default_factory=list)


def gantt(job: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], now: datetime) -> Gantt:
    """A bar per step run (a retry is its own row), from the job's start; a running step
    runs to ``now``; a step that never started is a sliver at the start."""
    starts = [s["started_at"] for s in steps if s.get("started_at")]
    origin = job.get("started_at") or (min(starts) if starts else None) or job["created_at"]
    ends = [s.get("completed_at") or (now if s.get("started_at") else None) for s in steps]
    finish = max([e for e in ends if e] + [job.get("completed_at") or origin, origin])
    if job.get("status") == "running":
        finish = max(finish, now)
    span = max(1, int((finish - origin).total_seconds() * 1000))
    bars = []
    for step, end in zip(steps, ends, strict=True):
        start = step.get("started_at")
        name = str(step.get("step_name") or step["step_id"])
        if start is None:
            x, width, took = 0.0, 0.0, None
        else:
            x = max(0.0, (start - origin).total_seconds() * 1000 / span * 1000)
            took = elapsed_ms(start, end, now)
            width = (took or 0) / span * 1000
        running = step.get("status") == "running"
        title = f"{name}: {step.get('status')}" + (
            f", {duration(took)}{' so far' if running else ''}" if took is not None else
            ", not started")
        bars.append(Bar(str(step["step_id"]), name, str(step.get("status")), round(x, 2),
                        round(max(width, 2.0), 2), title, running))
    ticks = [(i * 250.0, duration(span * i // 4)) for i in range(5)]
    return Gantt(bars, span, ticks)


def median(values: Sequence[int]) -> int | None:
    """The median of ``values`` (None for none)."""
    return int(statistics.median(values)) if values else None


def against(took: int | None, typical: int | None) -> str:
    """A duration against its step's recent median: ``+35%``, ``-10%``, or empty."""
    if took is None or not typical:
        return ""
    change = (took - typical) * 100 // typical
    return f"{change:+d}%"


@dataclass(frozen=True)
class Cell:
    """One cell of the pipeline grid: a run's attempt(s) at a step."""

    status: str
    title: str
    job_id: str
    step_id: str


@dataclass(frozen=True)
class Grid:
    """Airflow's grid: the runs (newest first) by the pipeline's step names."""

    runs: list[Mapping[str, Any]]
    names: list[str]
    cells: dict[tuple[str, str], Cell]  # (step name, job id)
    trends: dict[str, str]  # step name -> SVG polyline points of its durations, oldest left


def _worst(statuses: Iterable[str]) -> str:
    order = {"failed": 0, "cancelled": 1, "running": 2, "pending": 3, "skipped": 4,
             "success": 5}
    return min(statuses, key=lambda s: order.get(s, 6))


def grid(runs: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]]) -> Grid:
    """The grid of ``runs`` (newest first) and their ``steps``; a retried step's cell
    takes its last attempt's status and lists every attempt on hover."""
    by_cell: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    names: dict[str, None] = {}
    for step in steps:
        name = str(step.get("step_name") or step["step_id"])
        names.setdefault(name)
        by_cell.setdefault((name, str(step["job_id"])), []).append(step)
    cells = {}
    for key, attempts in by_cell.items():
        last = attempts[-1]
        lines = [f"{a.get('status')}" + (f" in {duration(int(a['duration_ms']))}"
                                         if a.get("duration_ms") is not None else "")
                 for a in attempts]
        status = str(last.get("status"))
        if status == "success" or len(attempts) == 1:
            shown = status
        else:
            shown = _worst(str(a.get("status")) for a in attempts)
        cells[key] = Cell(shown, f"{key[0]}: " + "; ".join(lines), key[1], str(last["step_id"]))
    trends = {name: _trend([by_cell.get((name, str(r["job_id"]))) for r in reversed(runs)])
              for name in names}
    return Grid(list(runs), list(names), cells, trends)


def _trend(attempts: Sequence[Sequence[Mapping[str, Any]] | None]) -> str:
    """Points of a 100 x 20 polyline of the durations (run i of n at x = 100 i / (n - 1))."""
    values = [next((int(a["duration_ms"]) for a in reversed(found or [])
                    if a.get("duration_ms") is not None), None) for found in attempts]
    known = [v for v in values if v is not None]
    if not known:
        return ""
    top, n = max(known) or 1, max(1, len(values) - 1)
    return " ".join(f"{100 * i / n:.1f},{20 - 18 * v / top:.1f}"
                    for i, v in enumerate(values) if v is not None)
