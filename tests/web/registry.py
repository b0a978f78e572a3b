"""The registry the UI tests look at: built by the real worker from real Kafka events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg_pool import ConnectionPool

from pudato_registry import factory
from pudato_registry.events import DataReference, Event, ExecutionRecord
from pudato_registry.web import app as web

NOW = datetime.now(UTC).replace(microsecond=0)
HOSTILE = '<script>alert("step")</script>'
HOSTILE_LOCATION = 'raw.</script><img src=x onerror=alert(1)>'
RUNNING = "nightly-running"


def ref(location: str, rows: int | None = None) -> DataReference:
    """A table reference, with a row count if given."""
    found = DataReference(ref_type="table", location=location)
    if rows is not None:
        found["metadata"] = {"row_count": rows, "bytes": rows * 100}
    return found


def step(job: str, name: str, at: datetime, *, reads: list[str], writes: list[str],
         failed: bool = False, n: int = 0, ms: int = 60_000) -> list[Event]:
    """One step run: started at ``at``, done ``ms`` later."""
    step_id = f"{job}-{name}-{n}"
    sql = ExecutionRecord(execution_type="sql",
                          details={"sql": f"insert into {writes[0] if writes else 'x'} "
                                          f"select * from {reads[0] if reads else 'y'}"})
    started = factory.step_started(job, step_id, step_name=name, handler_type="dbt",
                                   action="run", inputs=[ref(r) for r in reads],
                                   occurred_at=at)
    end = at + timedelta(milliseconds=ms)
    if failed:
        done: Event = factory.step_failed(job, step_id, error=f"{name} broke\nat line 3",
                                          occurred_at=end, executions=[sql])
    else:
        done = factory.step_succeeded(job, step_id, outputs=[ref(w, 1000) for w in writes],
                                      executions=[sql], occurred_at=end)
    return [started, done]


def nightly(n: int, at: datetime, *, fail: bool = False) -> list[Event]:
    """Night ``n`` of pipeline ``nightly``: extract, transform (retried on night 3), load."""
    job = f"nightly-{n}"
    events: list[Event] = [
        factory.job_submitted(job, pipeline="nightly", environment="prod", namespace="sales",
                              logic_version="git:abc", dag_run_id=f"scheduled__{n}",
                              parameters={"date": f"2026-11-{n:02d}", "db_password": "hunter2",
                                          "nested": {"apiKey": "k-123", "monkey": "ok"}},
                              occurred_at=at),
        factory.job_started(job, occurred_at=at),
        *step(job, "extract", at, reads=["src.orders"], writes=["raw.orders"]),
        *step(job, "transform", at + timedelta(minutes=1), reads=["raw.orders"],
              writes=["mart.orders"], failed=fail),
    ]
    if fail:
        events.append(factory.job_failed(job, error="transform broke", occurred_at=at
                                         + timedelta(minutes=3)))
    else:
        events += step(job, "load", at + timedelta(minutes=2), reads=["mart.orders"],
                       writes=["dw.orders"])
        events.append(factory.job_succeeded(job, occurred_at=at + timedelta(minutes=3)))
    return events


def registry_events() -> list[Event]:
    """Three nights (the third failed), a running job, a hostile job, 60 small jobs."""
    events: list[Event] = []
    for n in (1, 2):
        events += nightly(n, NOW - timedelta(days=4 - n))
    events += nightly(3, NOW - timedelta(days=1), fail=True)
    at = NOW - timedelta(minutes=5)
    events += [factory.job_submitted(RUNNING, pipeline="nightly", environment="prod",
                                     namespace="sales", occurred_at=at),
               factory.job_started(RUNNING, occurred_at=at),
               *step(RUNNING, "extract", at, reads=["src.orders"], writes=["raw.orders"]),
               factory.step_started(RUNNING, f"{RUNNING}-transform", step_name="transform",
                                    handler_type="dbt", action="run",
                                    inputs=[ref("raw.orders")],
                                    occurred_at=at + timedelta(minutes=1))]
    evil = "evil-1"
    events += [factory.job_submitted(evil, pipeline=HOSTILE, occurred_at=NOW - timedelta(
        days=5)), *step(evil, HOSTILE, NOW - timedelta(days=5), reads=[HOSTILE_LOCATION],
                        writes=["mart.evil"])]
    for i in range(60):
        job, when = f"small-{i:02d}", NOW - timedelta(days=10, minutes=i)
        events += [factory.job_submitted(job, pipeline="small", occurred_at=when),
                   factory.job_succeeded(job, occurred_at=when + timedelta(seconds=1))]
    return events


def finish_running() -> list[Event]:
    """The running job's transform ends and the job succeeds."""
    at = NOW - timedelta(minutes=3)
    return [factory.step_succeeded(RUNNING, f"{RUNNING}-transform",
                                   outputs=[ref("mart.orders", 5)], occurred_at=at),
            factory.job_succeeded(RUNNING, occurred_at=at)]


@contextmanager
def pool_for(dsn: str, *, timeout_ms: int = 2000) -> Iterator[ConnectionPool]:
    """The UI's pool of read-only connections, closed afterwards."""
    pool = web.open_pool(dsn, statement_timeout_ms=timeout_ms, size=4)
    try:
        yield pool
    finally:
        pool.close()


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app served by waitress on a free loopback port, as `ui` serves it; its URL."""
    server = web.make_server(app, "127.0.0.1", 0)
    stop = threading.Event()
    thread = threading.Thread(target=web.serve, args=(server, stop.is_set), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop.set()
        thread.join(10)
