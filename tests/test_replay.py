"""Replay on real services: a live rebuild under load, verify, and selective repair."""

from __future__ import annotations

import threading
import time
import uuid
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
        # A byte budget of about 30 messages: batches of a consume() split.
        report = replay.rebuild(settings.replace(batch_max_bytes=20_000))
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


def test_verify_finds_a_deleted_or_altered_edge_and_reapply_repairs_them(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    events = workload(2_000)
    produce(settings, messages_of(events))
    drain(settings)
    assert main(["replay", "--verify", *_args(settings)]) == 0
    assert "pudato_lineage_edges: 0 rows differ" in capsys.readouterr().out
    victim = next(e for e in events if e.step_id is not None)
    with psycopg.connect(settings.database_dsn) as conn:
        edges = conn.execute(
            "SELECT e.location, e.direction, e.edge_key FROM pudato_lineage_edges e"
            " JOIN pudato_job_steps s ON s.step_id = e.last_step_id"
            " WHERE s.correlation_id = %s ORDER BY 1, 2 LIMIT 2",
            (victim.correlation_id,)).fetchall()
        assert len(edges) == 2
        conn.execute("DELETE FROM pudato_lineage_edges WHERE edge_key = %s", (edges[0][2],))
        conn.execute("UPDATE pudato_lineage_edges SET runs = runs + 7 WHERE edge_key = %s",
                     (edges[1][2],))
    assert main(["replay", "--verify", *_args(settings)]) == 1
    out = capsys.readouterr().out
    assert "pudato_lineage_edges: 2 rows differ" in out
    assert f"{edges[0][0]} {'read by' if edges[0][1] == 'in' else 'written by'}" in out
    assert main(["replay", "--correlation-id", victim.correlation_id, *_args(settings)]) == 0
    assert table_rows(settings.database_dsn) == expected_rows(events)


# --- replay that cannot lose rows ---------------------------------------------------------------

@pytest.fixture
def loaded(settings: Settings) -> Settings:
    """Settings whose topic holds a workload already applied to the tables."""
    produce(settings, messages_of(workload(1_500)))
    drain(settings)
    return settings


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_second_replay_names_the_first_and_exits_at_once(
        loaded: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(loaded.database_dsn, autocommit=True,
                         application_name="the-first-replay") as first:
        first.execute("SELECT pg_advisory_lock(%s)", (store.REPLAY_LOCK,))
        started = time.monotonic()
        err = _refused(capsys, ["replay", *_args(loaded)])
        assert time.monotonic() - started < 5
    assert "another replay is running" in err
    assert "the-first-replay" in err
    assert main(["replay", *_args(loaded)]) == 0  # and once it is gone, one may run


def test_a_topic_that_lost_its_head_is_not_rebuilt_unless_accepted(
        loaded: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from confluent_kafka import TopicPartition  # noqa: PLC0415

    from pudato_registry import kafka  # noqa: PLC0415

    before = table_rows(loaded.database_dsn)
    admin = kafka.make_admin(loaded)
    for future in admin.delete_records([TopicPartition(loaded.topic, 1, 10)]).values():
        future.result(30)
    err = _refused(capsys, ["replay", *_args(loaded)])
    assert "partition 1: the first 10 events" in err
    assert "--accept-trimmed" in err
    assert table_rows(loaded.database_dsn) == before
    assert main(["replay", "--accept-trimmed", *_args(loaded)]) == 0


def test_the_new_tables_keep_the_old_grants(loaded: Settings) -> None:
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(loaded.database_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE ON pudato_jobs, pudato_job_steps TO {role}")
        conn.execute(f"GRANT SELECT ON pudato_job_state TO {role} WITH GRANT OPTION")
    try:
        assert main(["replay", *_args(loaded)]) == 0
        with psycopg.connect(loaded.database_dsn) as conn:
            granted = conn.execute(
                "SELECT table_name, privilege_type, is_grantable FROM "
                "information_schema.role_table_grants WHERE grantee = %s ORDER BY 1, 2",
                (role,)).fetchall()
        assert granted == [
            ("pudato_job_state", "SELECT", "YES"),
            ("pudato_job_steps", "INSERT", "NO"), ("pudato_job_steps", "SELECT", "NO"),
            ("pudato_job_steps", "UPDATE", "NO"),
            ("pudato_jobs", "INSERT", "NO"), ("pudato_jobs", "SELECT", "NO"),
            ("pudato_jobs", "UPDATE", "NO")]
    finally:
        with psycopg.connect(loaded.database_dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_what_depends_on_the_live_tables_is_listed_and_nothing_swapped(
        loaded: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(loaded.database_dsn, autocommit=True) as conn:
        conn.execute("CREATE VIEW failed_jobs AS SELECT job_id FROM pudato_jobs "
                     "WHERE status = 'failed'")
        conn.execute("CREATE INDEX jobs_by_dag_run ON pudato_jobs (dag_run_id)")
    err = _refused(capsys, ["replay", *_args(loaded)])
    assert "view failed_jobs" in err
    assert "index jobs_by_dag_run" in err
    with psycopg.connect(loaded.database_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM failed_jobs").fetchone() is not None
        assert conn.execute("SELECT to_regnamespace(%s)", (store.SHADOW_SCHEMA,)).fetchone() \
            == (None,)
    assert main(["replay", "--verify", *_args(loaded)]) == 0  # verify swaps nothing


def test_waiting_for_the_swap_never_stalls_readers(loaded: Settings) -> None:
    long_reader = psycopg.connect(loaded.database_dsn)
    long_reader.execute("SELECT count(*) FROM pudato_jobs").fetchone()  # holds ACCESS SHARE
    outcome: list[int] = []
    replaying = threading.Thread(target=lambda: outcome.append(main(["replay",
                                                                     *_args(loaded)])))
    replaying.start()
    try:
        with psycopg.connect(loaded.database_dsn, autocommit=True) as watcher:
            def swap_waiting() -> bool:
                return watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LOCK TABLE%%'"
                    " AND datname = current_database()").fetchone() != (0,)

            wait_for(swap_waiting, what="the replay to try its swap")
            slowest = 0.0
            for _ in range(20):  # about two seconds of readers arriving meanwhile
                began = time.monotonic()
                watcher.execute("SELECT count(*) FROM pudato_jobs").fetchone()
                slowest = max(slowest, time.monotonic() - began)
                time.sleep(0.1)  # readers arrive over time: the thing under test
        assert slowest < 1.0
        assert replaying.is_alive()  # still waiting for the long reader, giving way
    finally:
        long_reader.close()
        replaying.join(120)
    assert outcome == [0]


def test_readers_wait_milliseconds_across_the_swap_not_seconds(loaded: Settings) -> None:
    longest: list[float] = []
    stop = threading.Event()

    def read() -> None:  # a dashboard's query, again and again, for the whole replay
        with psycopg.connect(loaded.database_dsn, autocommit=True) as conn:
            while not stop.is_set():
                began = time.monotonic()
                conn.execute("SELECT count(*) FROM pudato_jobs WHERE status = 'failed'")
                longest.append(time.monotonic() - began)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        report = replay.rebuild(loaded)
    finally:
        stop.set()
        reader.join()
    assert report.locked_seconds < 1.0
    assert max(longest) < 1.0
    assert f"readers blocked {report.locked_seconds * 1000:.0f} ms" in report.summary()
    assert table_rows(loaded.database_dsn) == expected_rows(workload(1_500))


def test_a_shadow_left_by_an_interrupted_replay_is_reported_and_removed(
        loaded: Settings) -> None:
    store.create_shadow(loaded.database_dsn)  # as a replay killed with -9 leaves it
    with psycopg.connect(loaded.database_dsn) as conn:
        conn.execute(f"INSERT INTO {store.SHADOW_SCHEMA}.pudato_jobs (job_id) VALUES ('left')")
    report = replay.rebuild(loaded)
    assert report.leftover_bytes is not None
    assert report.leftover_bytes > 0
    assert "removed the shadow tables an interrupted replay left behind" in report.summary()
    assert "left" not in {j["job_id"] for j in table_rows(loaded.database_dsn)[0]}
    assert store.shadow_bytes(loaded.database_dsn) is None
