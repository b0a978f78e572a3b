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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pudato_registry import devstack, factory, kafka, queries, store
from pudato_registry.events import DataReference, Event, ExecutionRecord
from pudato_registry.loop import Worker
from pudato_registry.present import graph_table, table
from pudato_registry.settings import Settings


def sample_pipeline(now: datetime) -> list[Event]:
    """A job of three dbt models; the second fails on its first attempt and succeeds on retry."""
    job, corr = f"dept_budget-{now:%Y%m%dT%H%M%S}", f"demo-{now:%H%M%S}"
    clock = now

    def at(ms: int) -> datetime:
        nonlocal clock
        clock += timedelta(milliseconds=ms)
        return clock

    raw = DataReference(ref_type="table", location="raw.departments", format="csv")
    stg = DataReference(ref_type="table", location="main.stg_departments", format="parquet",
                        metadata={"row_count": 112})
    budgets = DataReference(ref_type="table", location="main.stg_budgets", format="parquet",
                            metadata={"row_count": 4_380})
    fct = DataReference(ref_type="table", location="main.fct_dept_budget", format="iceberg",
                        metadata={"row_count": 112})

    def dbt(model: str) -> ExecutionRecord:
        return ExecutionRecord(execution_type="dbt", details={
            "command": "build", "models": [model], "project_dir": "dbt/"})

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

    return [
        factory.job_submitted(job, pipeline="dept_budget", logic_version="git:3f9c2ab",
                              environment="dev", namespace="finance",
                              parameters={"date": now.date().isoformat()},
                              metadata={"submitted_by": "demo"}, correlation_id=corr,
                              occurred_at=at(0)),
        factory.job_started(job, metadata={"host": "localhost"}, correlation_id=corr,
                            occurred_at=at(50)),
        *step(1, "stg_departments", [raw], stg),
        *step(2, "stg_budgets", [raw], budgets,
              fail="Database Error in model stg_budgets: canceling statement due to timeout"),
        *step(2, "stg_budgets", [raw], budgets, attempt=2),
        *step(3, "fct_dept_budget", [stg, budgets], fct),
        factory.job_succeeded(job, metadata={"steps": 3}, correlation_id=corr,
                              occurred_at=at(30)),
    ]


def _show(rows: list[dict[str, Any]], columns: list[str]) -> None:
    print(table(rows, columns))


def run_demo(settings: Settings, timeout: float = 120.0) -> int:
    """Run the whole demo; return the exit code."""
    # The broker's start-up chatter (coordinator loading, ...) is not the demo's story.
    logging.getLogger("pudato_registry.kafka.client").setLevel(logging.ERROR)
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
            worker = Worker(local)
            thread = threading.Thread(target=worker.run, name="worker")
            thread.start()
            try:
                events = sample_pipeline(datetime.now(UTC))
                producer = kafka.make_producer(local)
                for event in events:
                    producer.produce(local.topic, key=event.correlation_id.encode(),
                                     value=factory.encode(event))
                producer.flush(30)
                del producer
                print(f"published {len(events)} events of one pipeline run; worker applying ...")
                deadline = time.monotonic() + timeout
                while worker.stats.applied < len(events):
                    if not thread.is_alive() or time.monotonic() > deadline:
                        print("the worker did not apply the events in time")
                        return 1
                    time.sleep(0.05)
            finally:
                worker.request_stop()
                thread.join()
            print("\npudato_jobs:")
            _show(queries.all_jobs(local.database_dsn),
                  ["job_id", "pipeline", "status", "created_at", "started_at", "completed_at"])
            print("\npudato_job_steps:")
            _show(queries.all_steps(local.database_dsn),
                  ["step_name", "status", "started_at", "completed_at", "duration_ms", "error"])
            print("\nlineage main.fct_dept_budget --upstream (the logical graph):")
            print(graph_table(queries.lineage_graph(local.database_dsn, "main.fct_dept_budget",
                                                    downstream=False, depth=3)))
            s = worker.stats
            print(f"\nworker: consumed {s.consumed} events, applied {s.applied}, duplicates "
                  f"{s.duplicates}, dead-lettered {s.dead_lettered}, in {s.batches} "
                  f"batch{'' if s.batches == 1 else 'es'}")
    return 0
