"""The pages' pure computations: the Gantt, the grid, the cursor (no server)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pudato_registry.web import pages

T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _step(step_id: str, status: str, start: int | None, end: int | None, *,
          name: str | None = None, job_id: str = "j") -> dict[str, object]:
    return {"step_id": step_id, "job_id": job_id, "step_name": name or step_id,
            "status": status,
            "started_at": None if start is None else T0 + timedelta(seconds=start),
            "completed_at": None if end is None else T0 + timedelta(seconds=end),
            "duration_ms": None if start is None or end is None else (end - start) * 1000}


def test_gantt_places_bars_on_the_jobs_time_line() -> None:
    job = {"created_at": T0, "started_at": T0, "completed_at": T0 + timedelta(seconds=100),
           "status": "failed"}
    steps = [_step("a", "success", 0, 50), _step("b", "failed", 50, 100),
             _step("c", "pending", None, None)]
    chart = pages.gantt(job, steps, T0 + timedelta(seconds=200))
    assert [(b.status, b.x, b.width) for b in chart.bars] == [
        ("success", 0.0, 500.0), ("failed", 500.0, 500.0), ("pending", 0.0, 2.0)]
    assert chart.span_ms == 100_000
    assert chart.ticks[-1] == (1000.0, "1m40s")
    assert "not started" in chart.bars[2].title


def test_a_running_step_runs_to_now() -> None:
    job = {"created_at": T0, "started_at": T0, "completed_at": None, "status": "running"}
    chart = pages.gantt(job, [_step("a", "running", 10, None)], T0 + timedelta(seconds=20))
    (bar,) = chart.bars
    assert bar.running
    assert bar.x == 500.0
    assert bar.width == 500.0
    assert "so far" in bar.title


def test_grid_cells_keep_the_last_attempt_and_list_every_one() -> None:
    runs = [{"job_id": "j2"}, {"job_id": "j1"}]  # newest first
    steps = [_step("l1", "success", 0, 10, name="load", job_id="j1"),
             _step("l2a", "failed", 0, 5, name="load", job_id="j2"),
             _step("l2b", "success", 6, 30, name="load", job_id="j2")]
    grid = pages.grid(runs, steps)
    assert grid.names == ["load"]
    cell = grid.cells[("load", "j2")]
    assert cell.status == "success"
    assert cell.title == "load: failed in 5.0s; success in 24.0s"
    assert grid.trends["load"] == "0.0,12.5 100.0,2.0"  # 10 s, then 24 s (the tallest)


def test_a_step_that_failed_on_its_last_attempt_is_red() -> None:
    grid = pages.grid([{"job_id": "j"}], [_step("a", "success", 0, 1, name="x"),
                                          _step("b", "failed", 1, 2, name="x")])
    assert grid.cells[("x", "j")].status == "failed"


def test_cursor_round_trips() -> None:
    job = {"created_at": T0, "job_id": "a|b"}
    assert pages.parse_cursor(pages.cursor_of(job)) == (T0, "a|b")
    for bad in ("", "2026-12-01", "nonsense|x", "|x"):
        with pytest.raises(ValueError, match=r"cursor|Invalid isoformat"):
            pages.parse_cursor(bad)


def test_against_the_median() -> None:
    assert pages.against(1350, 1000) == "+35%"
    assert pages.against(900, 1000) == "-10%"
    assert pages.against(None, 1000) == pages.against(5, None) == ""
    assert pages.median([3, 1, 2]) == 2
    assert pages.median([]) is None


def test_vendored_scripts_match_their_checksums() -> None:
    vendor = Path(pages.__file__).parent / "static" / "vendor"
    sums: dict[str, str] = {}
    for line in (vendor / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        sums[name] = digest
    assert set(sums) == {p.name for p in vendor.glob("*.js")}
    for name, digest in sums.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
        licence = name.split("-")[0] + "-LICENSE.txt"
        assert (vendor / licence).read_text().strip(), licence
