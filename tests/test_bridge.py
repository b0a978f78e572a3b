"""The OpenLineage bridge on a real broker: samples through bridge and worker into the tables."""

from __future__ import annotations

import os

import pytest

from pudato_registry import bridge
from pudato_registry.cli import main
from pudato_registry.projection import fold
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection, validate
from tests.helpers import drain, table_rows
from tests.services import produce, read_topic
from tests.test_openlineage import SAMPLES, _events


def test_every_sample_through_the_bridge_and_the_worker(ol_settings: Settings) -> None:
    lines = [line for path in sorted(SAMPLES.glob("*.jsonl"))
             for line in path.read_bytes().splitlines()]
    bad = [b"not json", b"[1]", b'{"run": {}, "job": {"namespace": "n", "name": "j"}}',
           b'{"eventType": "EXPLODED", "eventTime": "2026-11-30T03:53:48Z",'
           b' "run": {"runId": "r"}, "job": {"namespace": "n", "name": "j"}}']
    produce(ol_settings, [(b"run:dbt/dbt-run-ol_demo", line) for line in [*lines, *bad]],
            topic=ol_settings.ol_topic)
    bridged = bridge.Bridge(ol_settings)
    bridged.run(drain=True)
    events, ignored, rejected = _events(lines)
    assert bridged.stats.consumed == len(lines) + len(bad)
    assert bridged.stats.ignored == len(ignored)
    assert bridged.stats.dead_lettered == len(rejected) + len(bad)
    published = read_topic(ol_settings, ol_settings.topic)
    assert len(published) == bridged.stats.published == len(events)
    for record in published:  # keyed by correlation id, as events-v1 wants
        event = validate(record.value)
        assert not isinstance(event, Rejection)
        assert record.key == event.correlation_id.encode()
    letters = read_topic(ol_settings, ol_settings.ol_dlq_topic)
    assert sorted(r.value or b"" for r in letters) == sorted(
        [line for line in lines if b"naive_time_job" in line] + bad)
    assert {r.headers["source.topic"] for r in letters} == {ol_settings.ol_topic}
    drain(ol_settings)
    jobs, steps = table_rows(ol_settings.database_dsn)
    expected = fold(events)
    assert [j["job_id"] for j in jobs] == [j.job_id for j in expected.job_rows()]
    assert [(s["step_id"], s["status"]) for s in steps] == [
        (s.step_id, s.status) for s in expected.step_rows()]
    failed = next(j for j in jobs if j["pipeline"] == "nightly_budget")
    assert (failed["status"], failed["error"]) == (
        "failed", "task nightly_budget.load_warehouse failed")


def test_the_bridge_command_drains_and_says_what_it_did(
        ol_settings: Settings, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pudato_registry import logs  # noqa: PLC0415

    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)
    lines = (SAMPLES / "python-client-parent-children.jsonl").read_bytes().splitlines()
    produce(ol_settings, [(None, line) for line in lines], topic=ol_settings.ol_topic)
    for key, value in {"PUDATO_OL_TOPIC": ol_settings.ol_topic,
                       "PUDATO_OL_DLQ_TOPIC": ol_settings.ol_dlq_topic,
                       "PUDATO_OL_GROUP_ID": ol_settings.ol_group_id}.items():
        monkeypatch.setitem(os.environ, key, value)
    with caplog.at_level("INFO"):
        assert main(["openlineage", "bridge", "--drain", "--metrics-port", "0",
                     "--bootstrap-servers", ol_settings.bootstrap_servers,
                     "--topic", ol_settings.topic]) == 0
    assert "bridge stopped: consumed 8, published 15 events" in caplog.text
