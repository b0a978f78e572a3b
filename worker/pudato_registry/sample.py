"""Realistic, reproducible event streams: dbt-like pipelines for the tests and the benches.

A job of ``steps`` steps reads raw tables and builds models one after
another; each step starts and succeeds (or fails, and the job with it, then
a retry runs and succeeds). :func:`workload` interleaves many such runs and
can add duplicates and local reordering, as real at-least-once delivery does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from pudato_registry import factory
from pudato_registry.events import DataReference, Event, ExecutionRecord

START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
PIPELINES = ("dept_budget", "expenditures", "payroll", "vendors", "grants")


def pipeline_run(run: int, *, steps: int = 10, rng: random.Random | None = None,
                 start: datetime = START, fail_step: int | None = None,
                 correlation_id: str | None = None, prefix: str = "job") -> list[Event]:
    """The events of one job run, in emission order; ``fail_step`` fails there and stops."""
    rng = rng or random.Random(run)
    job_id = f"{prefix}-{run:07d}"
    correlation = correlation_id or f"corr-{prefix}-{run:07d}"
    pipeline = PIPELINES[run % len(PIPELINES)]
    clock = start
    sha = f"{rng.getrandbits(40):010x}"

    def tick(low: int = 5, high: int = 800) -> datetime:
        nonlocal clock
        clock += timedelta(milliseconds=rng.randint(low, high))
        return clock

    out: list[Event] = [
        factory.job_submitted(
            job_id, pipeline=pipeline, logic_version=f"git:{sha}",
            environment=rng.choice(("dev", "staging", "prod")), namespace=f"team_{run % 7}",
            request={"trigger": "schedule", "n": steps},
            parameters={"date": start.date().isoformat(), "full_refresh": run % 5 == 0},
            dag_run_id=f"scheduled__{job_id}", metadata={"submitted_by": "airflow"},
            correlation_id=correlation, occurred_at=tick(),
        ),
        factory.job_started(job_id, metadata={"host": f"worker-{run % 9}"},
                            correlation_id=correlation, occurred_at=tick()),
    ]
    source = DataReference(ref_type="table", location=f"raw.{pipeline}", format="csv")
    for index in range(steps):
        step_id = f"{job_id}-step-{index:03d}"
        model = f"{pipeline}.model_{index}"
        out.append(factory.step_started(
            job_id, step_id, step_name=f"build_{model}", handler_type="transform",
            action="build", inputs=[source], metadata={"attempt": 1},
            correlation_id=correlation, occurred_at=tick(),
        ))
        rows = rng.randint(100, 1_000_000)
        target = DataReference(ref_type="table", location=model, format="parquet",
                               metadata={"row_count": rows, "bytes": rows * 731})
        execution = ExecutionRecord(execution_type="dbt", details={
            "command": "build", "models": [f"model_{index}"], "project_dir": "dbt/"})
        if index == fail_step:
            out.append(factory.step_failed(
                job_id, step_id, error=f"Database Error in model model_{index}: timeout",
                executions=[execution], correlation_id=correlation, occurred_at=tick(),
            ))
            out.append(factory.job_failed(job_id, error=f"step {step_id} failed",
                                          correlation_id=correlation, occurred_at=tick()))
            return out
        out.append(factory.step_succeeded(
            job_id, step_id, outputs=[target], executions=[execution],
            duration_ms=rng.randint(10, 5000), metadata={"rows": rows},
            correlation_id=correlation, occurred_at=tick(),
        ))
        source = target
    out.append(factory.job_succeeded(job_id, metadata={"steps": steps},
                                     correlation_id=correlation, occurred_at=tick()))
    return out


def workload(events: int, *, steps: int = 10, seed: int = 7, duplicates: float = 0.0,
             reorder_window: int = 0, concurrent: int = 20, fail_rate: float = 0.05,
             prefix: str = "job", runs: int | None = None) -> list[Event]:
    """About ``events`` events (or ``runs`` whole runs) from ``concurrent`` runs in flight.

    Runs are interleaved to the end: every run started is finished, with
    duplicates and local reordering as asked.
    """
    rng = random.Random(seed)
    active: list[Iterator[Event]] = []
    out: list[Event] = []
    run = 0
    while True:
        while len(active) < concurrent and (len(out) < events if runs is None else run < runs):
            fail = rng.randrange(steps) if rng.random() < fail_rate else None
            active.append(iter(pipeline_run(run, steps=steps,
                                            rng=random.Random(seed * 7919 + run),
                                            fail_step=fail, prefix=prefix)))
            run += 1
        if not active:
            break
        pick = rng.randrange(len(active))
        event = next(active[pick], None)
        if event is None:
            active[pick] = active[-1]  # order among runs does not matter: O(1) removal
            active.pop()
            continue
        out.append(event)
        if duplicates and rng.random() < duplicates:
            out.append(event)
    if reorder_window > 1:
        for start in range(0, len(out), reorder_window):
            chunk = out[start:start + reorder_window]
            rng.shuffle(chunk)
            out[start:start + reorder_window] = chunk
    return out
