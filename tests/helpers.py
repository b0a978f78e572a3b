"""Helpers of the integration tests: run workers, wait on conditions, compare with the fold."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from pydantic import BaseModel

from pudato_registry import events as models
from pudato_registry import queries, wire
from pudato_registry.edges import edges_of
from pudato_registry.factory import encode
from pudato_registry.loop import Worker
from pudato_registry.projection import fold
from pudato_registry.settings import Settings


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def answers(url: str) -> bool:
    """Whether a GET of ``url`` gets an answer (any status below 500) within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - the tests' own servers
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def drain(settings: Settings) -> Worker:
    """Run a worker in this process until it has caught up; return it for its stats."""
    worker = Worker(settings)
    worker.run(drain=True)
    return worker


def messages_of(events: Iterable[models.Event]) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of each event as a publisher sends it."""
    return [(e.correlation_id.encode(), encode(e)) for e in events]


def decoded(events: Iterable[models.Event | wire.Event]) -> list[wire.Event]:
    """Events as the worker decodes them, whether built by the factory or read back."""
    return [wire.from_model(e) if isinstance(e, BaseModel) else e for e in events]


class Tables(NamedTuple):
    """The rows of the three projection tables, each sorted by key."""

    jobs: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    edges: list[dict[str, Any]]


def expected_rows(events: Iterable[models.Event | wire.Event]) -> Tables:
    """The rows the pure fold gives, as the tables return them; the edges by amendment 3's
    definition over them (edges.edges_of, computed in full)."""
    projection = fold(decoded(events))
    jobs = [r._asdict() for r in projection.job_rows()]
    steps = [r._asdict() for r in projection.step_rows()]
    return Tables(jobs, steps, [e.row() for e in edges_of(jobs, steps)])


def table_rows(database_url: str) -> Tables:
    """Every row of the three tables, sorted by key."""
    return Tables(queries.all_jobs(database_url), queries.all_steps(database_url),
                  queries.all_edges(database_url))


def count_rows(database_url: str) -> int:
    """How many step and job rows exist (a progress measure)."""
    jobs, steps, _edges = table_rows(database_url)
    return len(jobs) + len(steps)


def worker_process(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    """Start `pudato-registry worker` as a child process configured by PUDATO_* variables."""
    env = {
        **os.environ,
        "PUDATO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "PUDATO_DATABASE_URL": settings.database_dsn,
        "PUDATO_TOPIC": settings.topic,
        "PUDATO_DLQ_TOPIC": settings.dlq_topic,
        "PUDATO_GROUP_ID": settings.group_id,
        "PUDATO_METRICS_PORT": "0",
        "PUDATO_BATCH_SIZE": str(settings.batch_size),
        "PUDATO_BATCH_TIMEOUT_S": str(settings.batch_timeout_s),
        "PUDATO_RETRY_MAX_BACKOFF_S": str(settings.retry_max_backoff_s),
        "PUDATO_KAFKA": "{\"session.timeout.ms\": \"6000\", \"heartbeat.interval.ms\": \"500\"}",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pudato_registry.cli", "worker", *args], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
