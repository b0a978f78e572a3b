"""The publisher SDK on a real broker: context managers, broker outages, process restarts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pudato_registry import kafka, wire
from pudato_registry.devstack import DevStack
from pudato_registry.events import DataReference, Event, ExecutionRecord
from pudato_registry.projection import fold
from pudato_registry.publisher import Registry
from pudato_registry.settings import Settings
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

    def emit(self, event: Event) -> None:
        """Remember, then publish."""
        self.emitted.append(event)
        super().emit(event)


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
    jobs, steps = table_rows(publisher_settings.database_dsn)
    by_job = {j["job_id"]: j for j in jobs}
    assert by_job[job_id]["status"] == "success"
    assert by_job[skipped_job.job_id]["status"] == "cancelled"
    assert [j["error"] for j in jobs if j["pipeline"] == "p3"] == [
        "ValueError: the pipeline's own error"]
    mine = sorted((s for s in steps if s["job_id"] == job_id), key=lambda s: s["step_name"])
    assert [s["status"] for s in mine] == ["success", "failed", "success"]
    assert mine[1]["error"] == "RuntimeError: model_1 failed"
    assert mine[0]["outputs"][0]["location"] == "main.model_0"
    assert all(s["duration_ms"] is not None for s in mine)


@pytest.fixture
def outage_settings(dev_stack: DevStack, tmp_path: Path) -> Iterator[Settings]:
    admin = dev_stack.database_url.rsplit("/", 1)[0] + "/postgres"
    with fresh_database(admin, dev_stack.database_url) as url:
        made = settings_for(dev_stack.bootstrap_servers, url).replace(
            spool_dir=tmp_path / "spool", delivery_timeout_ms=2000, close_timeout_s=1.0)
        kafka.create_topics(made)
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
    assert "published 2 events" in err
    assert sorted(e.event_id for e in _topic_events(s)) == sorted(e.event_id for e in good)


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
