"""The publisher SDK on a real broker: context managers, broker outages, process restarts."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pudato_registry import factory, kafka, wire
from pudato_registry.devstack import DevStack
from pudato_registry.events import DataReference, Event, ExecutionRecord
from pudato_registry.projection import fold
from pudato_registry.publisher import Registry
from pudato_registry.settings import MIB, Settings
from pudato_registry.spool import Spool
from pudato_registry.validate import Rejection, validate
from tests.helpers import drain, expected_rows, table_rows, wait_for
from tests.services import fresh_database, read_topic, settings_for

RAW = DataReference(ref_type="table", location="raw.departments", format="csv")
STG = DataReference(ref_type="table", location="main.stg_departments", format="parquet")


class RecordingRegistry(Registry):
    """A Registry that remembers every event handed to it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.emitted: list[Event] = []

    def emit(self, event: Event) -> bool:
        """Remember, then publish."""
        self.emitted.append(event)
        return super().emit(event)


def pipeline(registry: Registry, steps: int = 3, fail_at: int | None = None) -> str:
    """A small dbt-like run through the context managers; returns the job id."""
    with registry.job(pipeline="dept_budget", logic_version="git:abc123",
                      parameters={"date": "2026-11-01"}) as job:
        for n in range(steps):
            try:
                with job.step(f"model_{n}", handler_type="transform", action="build",
                              inputs=[RAW]) as step:
                    step.output(DataReference(ref_type="table", location=f"main.model_{n}"))
                    step.execution(ExecutionRecord(execution_type="dbt",
                                                   details={"models": [f"model_{n}"]}))
                    if n == fail_at:
                        raise RuntimeError(f"model_{n} failed")
            except RuntimeError:
                pass
    return job.job_id


def _topic_events(settings: Settings) -> list[wire.Event]:
    events = []
    for record in read_topic(settings, settings.topic):
        event = validate(record.value)
        assert not isinstance(event, Rejection), event
        assert record.key == event.correlation_id.encode()
        events.append(event)
    return events


@pytest.fixture
def publisher_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(spool_dir=tmp_path / "spool", delivery_timeout_ms=2000,
                            close_timeout_s=2.0)


def test_context_managers_yield_the_rows_the_fold_predicts(publisher_settings: Settings) -> None:
    registry = RecordingRegistry(publisher_settings)
    job_id = pipeline(registry, steps=3, fail_at=1)
    with registry.job(pipeline="p2", logic_version="v") as skipped_job:
        with skipped_job.step("never", handler_type="t", action="a") as step:
            step.skip("upstream failed")
        skipped_job.cancel("operator")
    with registry.job(pipeline="p4") as final_job:
        with final_job.step("write", handler_type="spark", action="write") as written:
            written.output(STG)
            written.fail("no FX rate for 'XXX'", final=True)
        # A success reported after it, as Spark's listener does: the final failure stands.
        registry.step_succeeded(final_job.job_id, written.step_id,
                                correlation_id=final_job.correlation_id)
        final_job.fail("write failed", final=True)
    boom = ValueError("the pipeline's own error")
    with pytest.raises(ValueError, match="own error") as raised, \
            registry.job(pipeline="p3", logic_version="v"):
        raise boom
    assert raised.value is boom
    registry.close()
    assert registry.stats.delivered == len(registry.emitted)
    assert registry.pending() == 0

    drain(publisher_settings)
    assert table_rows(publisher_settings.database_dsn) == expected_rows(registry.emitted)
    assert sorted(e.event_id for e in _topic_events(publisher_settings)) == sorted(
        e.event_id for e in registry.emitted)
    jobs, steps, _edges = table_rows(publisher_settings.database_dsn)
    by_job = {j["job_id"]: j for j in jobs}
    assert by_job[job_id]["status"] == "success"
    assert by_job[skipped_job.job_id]["status"] == "cancelled"
    assert (by_job[final_job.job_id]["status"], by_job[final_job.job_id]["error"]) == (
        "failed", "write failed")
    [final_step] = [s for s in steps if s["job_id"] == final_job.job_id]
    assert (final_step["status"], final_step["error"]) == ("failed", "no FX rate for 'XXX'")
    assert final_step["outputs"][0]["location"] == STG["location"]
    assert [j["error"] for j in jobs if j["pipeline"] == "p3"] == [
        "ValueError: the pipeline's own error"]
    mine = sorted((s for s in steps if s["job_id"] == job_id), key=lambda s: s["step_name"])
    assert [s["status"] for s in mine] == ["success", "failed", "success"]
    assert mine[1]["error"] == "RuntimeError: model_1 failed"
    assert mine[0]["outputs"][0]["location"] == "main.model_0"
    assert all(s["duration_ms"] is not None for s in mine)


@contextlib.contextmanager
def on_the_dev_stack(dev_stack: DevStack, spool_dir: Path, **changes: Any) -> Iterator[Settings]:
    """Publisher settings on the stack the test may stop: a database and topics of its own."""
    admin = dev_stack.database_url.rsplit("/", 1)[0] + "/postgres"
    with fresh_database(admin, dev_stack.database_url) as url:
        made = settings_for(dev_stack.bootstrap_servers, url).replace(spool_dir=spool_dir,
                                                                       **changes)
        kafka.create_topics(made)
        yield made


@pytest.fixture
def outage_settings(dev_stack: DevStack, tmp_path: Path) -> Iterator[Settings]:
    with on_the_dev_stack(dev_stack, tmp_path / "spool", delivery_timeout_ms=2000,
                          close_timeout_s=1.0) as made:
        yield made


def test_broker_down_mid_run_spools_and_drains(dev_stack: DevStack,
                                              outage_settings: Settings) -> None:
    registry = RecordingRegistry(outage_settings)
    pipeline(registry, steps=2)
    assert registry.flush(10) == 0
    dev_stack.stop_kafka()
    try:
        pipeline(registry, steps=4, fail_at=2)  # finishes although nothing can be delivered
        wait_for(lambda: registry.spool.count() > 0, what="events in the spool")
        assert not registry.healthy
    finally:
        dev_stack.start_kafka(timeout=60)
    assert registry.drain_spool(60) == 0
    registry.close()
    assert registry.stats.episodes == 1
    drain(outage_settings)
    topic_ids = [e.event_id for e in _topic_events(outage_settings)]
    assert set(topic_ids) == {e.event_id for e in registry.emitted}  # nothing lost
    assert table_rows(outage_settings.database_dsn) == expected_rows(registry.emitted)


PIPELINE_SCRIPT = textwrap.dedent("""
    import sys
    from pudato_registry.publisher import Registry
    from tests.test_publisher import pipeline
    registry = Registry()
    print(pipeline(registry, steps=int(sys.argv[1])))
    if len(sys.argv) > 2:
        registry.drain_spool(float(sys.argv[2]))
""")


def _run_pipeline(settings: Settings, *args: str) -> str:
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PUDATO_TOPIC": settings.topic, "PUDATO_SPOOL_DIR": str(settings.spool_dir),
           "PUDATO_DELIVERY_TIMEOUT_MS": str(settings.delivery_timeout_ms),
           "PUDATO_CLOSE_TIMEOUT_S": str(settings.close_timeout_s)}
    done = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, *args], env=env,
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1], check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_spool_outlives_the_process_and_the_next_one_sends_it(
        dev_stack: DevStack, outage_settings: Settings) -> None:
    dev_stack.stop_kafka()
    try:
        first = _run_pipeline(outage_settings, "3")  # exits with the broker down
        left = Spool(outage_settings.spool_dir).count()
        assert left == 2 + 3 * 2 + 1  # submitted, started, 3 steps x 2, succeeded
    finally:
        dev_stack.start_kafka(timeout=60)
    second = _run_pipeline(outage_settings, "2", "60")
    assert Spool(outage_settings.spool_dir).count() == 0
    drain(outage_settings)
    events = _topic_events(outage_settings)
    assert {e.job_id for e in events} == {first, second}
    assert len({e.event_id for e in events}) == left + 2 + 2 * 2 + 1
    assert table_rows(outage_settings.database_dsn) == expected_rows(events)
    (job_row,) = [j for j in fold(events).job_rows() if j.job_id == first]
    assert job_row.status == "success"


def test_publish_command_sends_valid_lines_and_reports_invalid_ones(
        publisher_settings: Settings, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pudato_registry import factory  # noqa: PLC0415
    from pudato_registry.cli import main  # noqa: PLC0415

    good: list[Event] = [factory.job_submitted("job-cli", pipeline="p", logic_version="v"),
            factory.job_succeeded("job-cli")]
    lines = [factory.encode(good[0]), b'{"not": "an event"}', b"", factory.encode(good[1]),
             b"garbage"]
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    s = publisher_settings
    code = main(["publish", str(source), "--bootstrap-servers", s.bootstrap_servers,
                 "--topic", s.topic, "--spool-dir", str(s.spool_dir), "--wait", "30"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{source}:2: missing_field" in err
    assert f"{source}:5: not_json" in err
    assert "published 2 of 2 events" in err
    assert sorted(e.event_id for e in _topic_events(s)) == sorted(e.event_id for e in good)


def test_publish_dry_run_validates_every_line_and_sends_nothing(
        publisher_settings: Settings, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pudato_registry import factory  # noqa: PLC0415
    from pudato_registry.cli import main  # noqa: PLC0415

    good: list[Event] = [factory.job_submitted("job-dry", pipeline="p"),
                         factory.job_started("job-dry"), factory.job_succeeded("job-dry")]
    source = tmp_path / "backfill.jsonl"
    source.write_bytes(b"\n".join([*(factory.encode(e) for e in good), b"[1]"]) + b"\n")
    s = publisher_settings
    args = ["publish", str(source), "--dry-run", "--topic", s.topic,
            "--spool-dir", str(s.spool_dir)]
    # No broker is asked: a dead address makes no difference.
    assert main([*args, "--bootstrap-servers", "127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert f"{source}:4: " in err
    assert f"dry run: 3 valid events would be sent to topic {s.topic}; 1 invalid" in err
    source.write_bytes(b"\n".join(factory.encode(e) for e in good) + b"\n")
    assert main([*args, "--bootstrap-servers", s.bootstrap_servers]) == 0
    assert _topic_events(s) == []
    assert not (s.spool_dir / "spool.sqlite3").exists()


def test_publish_fail_on_spooled_and_the_spool_commands(
        publisher_settings: Settings, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pudato_registry import factory  # noqa: PLC0415
    from pudato_registry.cli import main  # noqa: PLC0415

    source = tmp_path / "one.jsonl"
    source.write_bytes(factory.encode(factory.job_submitted("job-sp", pipeline="p")) + b"\n")
    s = publisher_settings
    args = ["publish", str(source), "--fail-on-spooled", "--bootstrap-servers",
            s.bootstrap_servers, "--topic", s.topic, "--spool-dir", str(s.spool_dir),
            "--wait", "5"]
    # A client that cannot be built (linger over the delivery timeout): it is spooled.
    assert main([*args, "--kafka-config", "linger.ms=60000"]) == 3
    assert f"1 wait in {s.spool_dir / 'spool.sqlite3'}" in capsys.readouterr().err
    where = ["--spool-dir", str(s.spool_dir), "--bootstrap-servers", s.bootstrap_servers,
             "--topic", s.topic]
    assert main(["spool", "list", "--spool-dir", str(s.spool_dir)]) == 0
    assert "1 events wait to be sent; 0 set aside" in capsys.readouterr().out
    assert main(["spool", "flush", *where]) == 0
    assert "re-sent 1 events" in capsys.readouterr().out
    assert main(["spool", "flush", *where]) == 0
    assert "nothing waits" in capsys.readouterr().out
    assert main([*args, "--kafka-config", "linger.ms=60000"]) == 3  # spooled again
    assert main(args) == 0  # this run sends the one left before, then its own
    assert "and re-sent 2 from the spool (this run's or earlier ones)" in (
        capsys.readouterr().err)
    assert len(_topic_events(s)) == 3


def test_one_registry_serves_many_threads(publisher_settings: Settings) -> None:
    import threading  # noqa: PLC0415

    registry = Registry(publisher_settings)
    job_ids: list[str] = []

    def run() -> None:
        for _ in range(10):
            job_ids.append(pipeline(registry, steps=3))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registry.close()
    per_job = 2 + 3 * 2 + 1
    assert registry.stats.emitted == registry.stats.delivered == 40 * per_job
    events = _topic_events(publisher_settings)
    assert len({e.event_id for e in events}) == len(events) == 40 * per_job
    assert {e.job_id for e in events} == set(job_ids)


# --- hardening: nothing a pipeline emits can wedge the publisher --------------------------------


def test_an_event_the_worker_would_refuse_is_refused_at_emit_and_never_spooled(
        publisher_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(publisher_settings)
    assert registry.job_submitted("j", pipeline="p" * 600, logic_version="v") is None
    assert registry.job_submitted("k", pipeline="p" * 700, logic_version="v") is None
    assert registry.job_started("j", metadata={"blob": "x" * (2 * MIB)}) is None  # too large
    assert not registry.emit(factory.job_started("j", metadata={"nul": "a\x00b"}))
    kept = registry.job_submitted("j", pipeline="p", logic_version="v")
    assert kept is not None
    registry.close()
    assert registry.stats.rejected == 4
    assert registry.stats.emitted == registry.stats.delivered == 1
    assert registry.spool.count() == 0
    refusals = [r.getMessage() for r in caplog.records if "refused a" in r.getMessage()]
    assert len(refusals) == 3  # once per kind: the second over-long pipeline only counted
    assert all(len(line) < 800 for line in refusals)
    assert [e.event_id for e in _topic_events(publisher_settings)] == [kept.event_id]


def test_a_three_megabyte_error_is_cut_and_delivered(publisher_settings: Settings) -> None:
    registry = RecordingRegistry(publisher_settings)
    with pytest.raises(RuntimeError), registry.job(pipeline="p", logic_version="v"):
        raise RuntimeError("SELECT " + "x" * 3_000_000)
    after = pipeline(registry, steps=2)
    registry.close()
    assert registry.stats.rejected == 0
    assert registry.producer.stats.delivered == len(registry.emitted)
    drain(publisher_settings)
    jobs, _steps, _edges = table_rows(publisher_settings.database_dsn)
    (failed,) = [j for j in jobs if j["status"] == "failed"]
    assert len(failed["error"].encode()) <= factory.ERROR_MAX_BYTES
    assert failed["error"].startswith("RuntimeError: SELECT xxx")
    assert failed["error"].endswith("bytes in all, the first ones kept]")
    assert {j["job_id"] for j in jobs} >= {after}


def test_spooled_events_the_broker_refuses_for_good_are_set_aside(
        publisher_settings: Settings) -> None:
    good = factory.job_submitted("spooled", pipeline="p", logic_version="v")
    spool = Spool(publisher_settings.spool_dir)
    spool.put([  # left by an older publisher: one the client refuses, one the topic refuses
        (1, 0, b"k", os.urandom(3 * MIB)),
        (2, 0, b"k", os.urandom(MIB + 200 * 1024)),  # random: compression cannot shrink it
        (3, 0, good.correlation_id.encode(), factory.encode(good)),
    ])
    spool.close()
    registry = Registry(publisher_settings)
    registry.job_succeeded("spooled")
    assert registry.drain_spool(60) == 0
    assert registry.producer.alive
    registry.job_failed("spooled", error="and still delivering")
    registry.close()
    assert registry.stats.set_aside == 2
    assert Spool(publisher_settings.spool_dir).set_aside_count() == 2
    assert sorted(e.event_type for e in _topic_events(publisher_settings)) == [
        "job.failed", "job.submitted", "job.succeeded"]


def test_a_corrupt_spool_is_renamed_aside_and_a_fresh_one_started(
        publisher_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    directory = publisher_settings.spool_dir
    directory.mkdir(parents=True)
    (directory / "spool.sqlite3").write_bytes(b"this is not a database" * 100)
    registry = RecordingRegistry(publisher_settings)
    job_id = pipeline(registry, steps=1)
    registry.close()
    assert registry.stats.delivered == len(registry.emitted)
    assert [p.name.split("-")[0] for p in directory.glob("spool.sqlite3.corrupt-*")] == [
        "spool.sqlite3.corrupt"]
    assert any("cannot be read" in r.getMessage() for r in caplog.records)
    assert {e.job_id for e in _topic_events(publisher_settings)} == {job_id}


def test_the_spool_is_private_to_its_user(publisher_settings: Settings) -> None:
    directory = publisher_settings.spool_dir
    directory.mkdir(mode=0o755, parents=True)
    directory.chmod(0o755)
    spool = Spool(directory)
    spool.put([(1, 0, b"k", b"secret parameters")])
    spool.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.glob("spool.sqlite3*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time
    from pudato_registry.publisher import Registry, exit_on_sigterm
    registry = Registry()
    exit_on_sigterm()
    with registry.job(pipeline="long", logic_version="v") as job:
        with job.step("wait", handler_type="h", action="a"):
            print(job.job_id, flush=True)
            time.sleep(120)
""")


def _sigterm_pipeline(s: Settings) -> tuple[str, subprocess.Popen[str]]:
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": s.bootstrap_servers,
           "PUDATO_TOPIC": s.topic, "PUDATO_SPOOL_DIR": str(s.spool_dir),
           "PUDATO_CLOSE_TIMEOUT_S": "2", "PUDATO_DELIVERY_TIMEOUT_MS": "60000",
           # Longer than the test waits: only close() on the way out sends them.
           "PUDATO_KAFKA": '{"linger.ms": "30000"}'}
    process = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parents[1])
    assert process.stdout is not None
    job_id = process.stdout.readline().strip()
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    return job_id, process


def _cancelled_by_sigterm(s: Settings, job_id: str) -> None:
    drain(s)
    jobs, steps, _edges = table_rows(s.database_dsn)
    assert [(j["job_id"], j["status"], j["error"]) for j in jobs] == [
        (job_id, "cancelled", "terminated by SIGTERM")]
    assert [(st["status"], st["error"]) for st in steps] == [("failed", "terminated by SIGTERM")]


def test_sigterm_loses_nothing_a_pipeline_had_emitted(publisher_settings: Settings) -> None:
    job_id, _process = _sigterm_pipeline(publisher_settings)
    assert Spool(publisher_settings.spool_dir).count() == 0  # all delivered on the way out
    _cancelled_by_sigterm(publisher_settings, job_id)


def test_sigterm_with_the_broker_down_spools_everything(dev_stack: DevStack,
                                                        outage_settings: Settings) -> None:
    dev_stack.stop_kafka()
    try:
        job_id, _process = _sigterm_pipeline(outage_settings)
        assert Spool(outage_settings.spool_dir).count() == 5  # job x2, step x2, job end
    finally:
        dev_stack.start_kafka(timeout=60)
    registry = Registry(outage_settings)
    assert registry.drain_spool(60) == 0
    registry.close()
    _cancelled_by_sigterm(outage_settings, job_id)


def test_a_kafka_client_that_cannot_be_built_spools_instead_of_losing(
        publisher_settings: Settings) -> None:
    broken = publisher_settings.replace(kafka={"linger.ms": "60000"})  # over the 2 s timeout
    registry = RecordingRegistry(broken)
    pipeline(registry, steps=1)
    assert registry.stats.rejected == 0
    assert registry.spool.count() == len(registry.emitted)
    registry.close()
    fixed = Registry(publisher_settings)
    assert fixed.drain_spool(60) == 0
    fixed.close()
    assert {e.event_id for e in _topic_events(publisher_settings)} == {
        e.event_id for e in registry.emitted}
