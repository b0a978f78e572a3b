"""Replay on real services: a live rebuild under load, verify, and selective repair."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pudato_registry import replay, store
from pudato_registry.cli import main
from pudato_registry.loop import Worker
from pudato_registry.sample import workload
from pudato_registry.settings import Settings
from tests.helpers import drain, expected_rows, messages_of, table_rows, wait_for
from tests.services import produce


def _args(settings: Settings) -> list[str]:
    return ["--bootstrap-servers", settings.bootstrap_servers,
            "--database-url", settings.database_dsn, "--topic", settings.topic]


def test_live_rebuild_under_load_never_shows_fewer_jobs(settings: Settings) -> None:
    first = workload(4_000, duplicates=0.05)
    later = workload(3_000, prefix="later", seed=11)
    produce(settings, messages_of(first))
    drain(settings)
    worker = Worker(settings)
    running = threading.Thread(target=worker.run)
    running.start()
    counts: list[int] = []
    stop = threading.Event()

    def read() -> None:
        with psycopg.connect(settings.database_dsn, autocommit=True) as conn:
            while not stop.is_set():
                (n,) = conn.execute("SELECT count(*) FROM pudato_jobs").fetchone()  # type: ignore[misc]
                counts.append(n)

    def publish() -> None:
        for start in range(0, len(later), 300):
            produce(settings, messages_of(later[start:start + 300]))

    readers = [threading.Thread(target=read), threading.Thread(target=publish)]
    for t in readers:
        t.start()
    try:
        report = replay.rebuild(settings)
        readers[1].join()
        expected = expected_rows(first + later)
        wait_for(lambda: table_rows(settings.database_dsn) == expected, timeout=120,
                 what="the live worker to finish on the swapped tables")
    finally:
        stop.set()
        worker.request_stop()
        running.join(timeout=60)
        readers[0].join()
    assert report.events >= len(first)
    assert counts == sorted(counts), "a reader saw fewer jobs than before"
    assert counts[-1] == len(expected[0])
    with psycopg.connect(settings.database_dsn) as conn:  # the shadow is gone
        assert conn.execute("SELECT to_regnamespace(%s)", (store.SHADOW_SCHEMA,)).fetchone() == (
            None,)


def test_verify_finds_a_tampered_row_and_reapply_repairs_it(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    events = workload(2_000)
    produce(settings, messages_of(events))
    drain(settings)
    assert main(["replay", "--verify", *_args(settings)]) == 0
    assert "pudato_jobs: 0 rows differ" in capsys.readouterr().out

    victim = events[0]
    with psycopg.connect(settings.database_dsn) as conn:
        conn.execute("UPDATE pudato_jobs SET status = 'cancelled' WHERE job_id = %s",
                     (victim.job_id,))
    assert main(["replay", "--verify", *_args(settings)]) == 1
    out = capsys.readouterr().out
    assert f"pudato_jobs: 1 rows differ (e.g. {victim.job_id})" in out
    assert "pudato_job_steps: 0 rows differ" in out

    assert main(["replay", "--correlation-id", victim.correlation_id, *_args(settings)]) == 0
    assert table_rows(settings.database_dsn) == expected_rows(events)

    with psycopg.connect(settings.database_dsn) as conn:
        conn.execute("UPDATE pudato_job_steps SET error = 'tampered'")
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert main(["replay", "--since", since, *_args(settings)]) == 0
    assert table_rows(settings.database_dsn) == expected_rows(events)
