"""The main job on local defaults: a throwaway stack, the worker, one sample pipeline, its rows.

Starts the dev stack, migrates, creates the topics, runs the worker in a
thread, publishes a dbt-like pipeline run (one step fails and is retried),
waits until the worker has applied every event, prints the rows and stops.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pudato_registry import devstack, diff, factory, kafka, queries, store
from pudato_registry.events import DataReference, Event, ExecutionRecord
from pudato_registry.loop import Stats, Worker
from pudato_registry.present import diff_text, graph_table, table
from pudato_registry.settings import Settings

SQL = {
    "stg_departments": "select id, name, cost_centre from {{ source('raw', 'departments') }}",
    "stg_budgets": "select department_id, fiscal_year, amount\n"
                   "from {{ source('raw', 'departments') }}\nwhere fiscal_year = 2026",
    "fct_dept_budget": "select d.name, sum(b.amount) as budget\nfrom stg_departments d\n"
                       "join stg_budgets b on b.department_id = d.id\ngroup by d.name",
}


def sample_pipeline(now: datetime, *, night: int = 1) -> list[Event]:
    """A job of three dbt models; the second fails on its first attempt and succeeds on retry.

    ``night=2`` is the next night's run gone wrong: a full refresh asked for, the
    budgets model filtering on next year (no rows), the fact table failing.
    """
    job, corr = f"dept_budget-{now:%Y%m%dT%H%M%S}", f"demo-{now:%H%M%S}"
    clock = now
    bad = night == 2

    def at(ms: int) -> datetime:
        nonlocal clock
        clock += timedelta(milliseconds=ms)
        return clock

    raw = DataReference(ref_type="table", location="raw.departments", format="csv",
                        metadata={"row_count": 112})
    stg = DataReference(ref_type="table", location="main.stg_departments", format="parquet",
                        metadata={"row_count": 112})
    budgets = DataReference(ref_type="table", location="main.stg_budgets", format="parquet",
                            metadata={"row_count": 0 if bad else 4_380})
    fct = DataReference(ref_type="table", location="main.fct_dept_budget", format="iceberg",
                        metadata={"row_count": 112})

    def dbt(model: str) -> ExecutionRecord:
        sql = SQL[model].replace("2026", "2027") if bad else SQL[model]
        return ExecutionRecord(execution_type="dbt", details={
            "command": "build", "models": [model], "project_dir": "dbt/",
            "compiled_sql": sql})

    def step(n: int, name: str, inputs: list[DataReference], output: DataReference, *,
             attempt: int = 1, fail: str | None = None) -> list[Event]:
        sid = f"{job}-{n}-{name}-a{attempt}"
        started = factory.step_started(job, sid, step_name=name, handler_type="transform",
                                       action="build", inputs=inputs, correlation_id=corr,
                                       metadata={"attempt": attempt}, occurred_at=at(20))
        if fail:
            return [started, factory.step_failed(job, sid, error=fail, executions=[dbt(name)],
                                                 correlation_id=corr, occurred_at=at(900))]
        return [started, factory.step_succeeded(job, sid, outputs=[output],
                                                executions=[dbt(name)], correlation_id=corr,
                                                occurred_at=at(1200))]

    parameters: dict[str, Any] = {"date": now.date().isoformat(), "full_refresh": bad}
    events = [  # built in order: each event's time follows the one before
        factory.job_submitted(job, pipeline="dept_budget", logic_version="git:3f9c2ab",
                              environment="dev", namespace="finance", parameters=parameters,
                              metadata={"submitted_by": "demo"}, correlation_id=corr,
                              occurred_at=at(0)),
        factory.job_started(job, metadata={"host": "localhost"}, correlation_id=corr,
                            occurred_at=at(50)),
        *step(1, "stg_departments", [raw], stg),
        *step(2, "stg_budgets", [raw], budgets,
              fail="Database Error in model stg_budgets: canceling statement due to timeout"),
        *step(2, "stg_budgets", [raw], budgets, attempt=2),
    ]
    if bad:
        events += step(3, "fct_dept_budget", [stg, budgets], fct,
                       fail="Runtime Error in model fct_dept_budget: division by zero")
        events.append(factory.job_failed(job, error="step fct_dept_budget failed",
                                         correlation_id=corr, occurred_at=at(30)))
    else:
        events += step(3, "fct_dept_budget", [stg, budgets], fct)
        events.append(factory.job_succeeded(job, metadata={"steps": 3}, correlation_id=corr,
                                            occurred_at=at(30)))
    return events


def _diff_of(dsn: str, job_id: str) -> str:
    """What ``jobs diff JOB`` prints."""
    with queries.reading(dsn) as conn:
        later = queries.run_facts(conn, job_id)
        assert later is not None
        before = queries.previous_run(conn, dict(later.job))
        assert before is not None
        earlier = queries.run_facts(conn, before["job_id"])
        assert earlier is not None
        return diff_text(diff.compare(earlier, later, baselines=queries.step_baselines(
            conn, dict(later.job), 20)))


def _show(rows: list[dict[str, Any]], columns: list[str]) -> None:
    print(table(rows, columns))


def _apply(local: Settings, events: list[Event], timeout: float) -> Stats | None:
    """Publish ``events`` and run the worker until it has applied them all; its counts
    (None if it did not in ``timeout`` seconds)."""
    worker = Worker(local)
    thread = threading.Thread(target=worker.run, name="worker")
    thread.start()
    try:
        producer = kafka.make_producer(local)
        for event in events:
            producer.produce(local.topic, key=event.correlation_id.encode(),
                             value=factory.encode(event))
        producer.flush(30)
        del producer
        deadline = time.monotonic() + timeout
        while worker.stats.applied < len(events):
            if not thread.is_alive() or time.monotonic() > deadline:
                return None
            time.sleep(0.05)
    finally:
        worker.request_stop()
        thread.join()
    return worker.stats


def _history(now: datetime) -> list[Event]:
    """For the UI: five good nights before the demo's two, and a run still going."""
    events = [e for days in range(7, 2, -1) for e in sample_pipeline(now - timedelta(days=days))]
    going = sample_pipeline(now + timedelta(seconds=1))
    return events + going[:4] + going[4:5]  # submitted, started, a step done, one running


def run_demo(settings: Settings, timeout: float = 120.0, *,
             then: Callable[[Settings], int] | None = None, history: bool = False) -> int:
    """Run the whole demo; return the exit code. ``then``: called with the stack's
    settings before it stops (`demo --ui` serves the UI), after ``history`` is added."""
    # The broker's start-up chatter (coordinator loading, ...), the migrations and the
    # worker's assignments are not the demo's story: it prints its own lines.
    logging.getLogger("pudato_registry.kafka.client").setLevel(logging.ERROR)
    for name in ("pudato_registry.store", "pudato_registry.loop"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="pudato-demo-") as tmp:
        print("starting a local Kafka broker and PostgreSQL server ...", flush=True)
        started = time.monotonic()
        with devstack.running(Path(tmp)) as stack:
            print(f"  up in {time.monotonic() - started:.1f}s: kafka {stack.bootstrap_servers}, "
                  f"postgres {stack.database_url}", flush=True)
            local = settings.replace(
                bootstrap_servers=stack.bootstrap_servers, database_url=stack.database_url,
                metrics_port=0, partitions=3,
            )
            applied = store.migrate(local.database_dsn)
            print(f"  migrated: {', '.join(f'{m.version:03d}_{m.name}' for m in applied)}")
            kafka.create_topics(local)
            now = datetime.now(UTC).replace(microsecond=0)
            second = sample_pipeline(now, night=2)
            events = sample_pipeline(now - timedelta(days=1)) + second
            print(f"publishing {len(events)} events of two nightly runs, the second gone "
                  "wrong; worker applying ...", flush=True)
            s = _apply(local, events, timeout)
            if s is None:
                print("the worker did not apply the events in time")
                return 1
            print("\npudato_jobs:")
            _show(queries.all_jobs(local.database_dsn),
                  ["job_id", "pipeline", "status", "created_at", "started_at", "completed_at"])
            print("\npudato_job_steps:")
            _show(queries.all_steps(local.database_dsn),
                  ["step_name", "status", "started_at", "completed_at", "duration_ms", "error"])
            print("\nlineage main.fct_dept_budget --upstream (the logical graph):")
            print(graph_table(queries.lineage_graph(local.database_dsn, "main.fct_dept_budget",
                                                    downstream=False, depth=3)))
            print(f"\njobs diff {second[0].job_id} (against the night before):")
            print(_diff_of(local.database_dsn, second[0].job_id))
            print(f"\nworker: consumed {s.consumed} events, applied {s.applied}, duplicates "
                  f"{s.duplicates}, dead-lettered {s.dead_lettered}, in {s.batches} "
                  f"batch{'' if s.batches == 1 else 'es'}")
            if then is None:
                return 0
            if history and _apply(local, _history(now), timeout) is None:
                print("the worker did not apply the events in time")
                return 1
            return then(local)
    return 0
