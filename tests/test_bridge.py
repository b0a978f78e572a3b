"""The OpenLineage bridge on a real broker: samples through bridge and worker into the tables."""

from __future__ import annotations

import json
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
    jobs, steps, _edges = table_rows(ol_settings.database_dsn)
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
    assert "bridge stopped: consumed 8, published 20 events" in caplog.text


def _small_topic(settings: Settings, name: str, max_bytes: int) -> None:
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # noqa: PLC0415

    from pudato_registry import kafka  # noqa: PLC0415

    admin = kafka.make_admin(settings)
    future = admin.create_topics([NewTopic(name, 1, 1, config={
        "max.message.bytes": str(max_bytes)})])[name]
    future.result(30)


def test_the_bridge_fits_what_it_publishes_to_a_smaller_topic_and_never_crash_loops(
        ol_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from tests.test_openlineage_big import run_events  # noqa: PLC0415

    platform = ol_settings.replace(topic=f"{ol_settings.topic}.platform")
    _small_topic(platform, platform.topic, 1_000_000)  # as a platform team makes topics
    big = run_events(outputs=20_000)
    fail = json.loads(run_events(end="FAIL")[2])
    fail["run"]["runId"] = "01a235e9-0000-7000-8000-0000000000f5"
    fail["run"]["facets"]["errorMessage"] = {"message": "e" * 60_000,
                                             "stackTrace": "t" * 60_000}
    unfit = platform.replace(topic=f"{ol_settings.topic}.tiny")
    _small_topic(unfit, unfit.topic, 100_000)
    values = [*big, json.dumps(fail).encode()]
    produce(platform.replace(max_message_bytes=8 * 1024 * 1024),
            [(None, v) for v in values], topic=platform.ol_topic)
    with caplog.at_level("WARNING", logger="pudato_registry.bridge"):
        bridged = bridge.Bridge(platform)
        bridged.run(drain=True)
    assert "translating to fit it" in caplog.text
    assert bridged.stats.dead_lettered == 0
    assert max(len(r.value or b"") for r in read_topic(platform, platform.topic)) < 1_000_000
    drain(platform)
    [step] = [s for s in table_rows(platform.database_dsn)[1]
              if s["step_id"].endswith("b00b")]
    assert (step["status"], len(step["outputs"])) == ("success", 10_000)

    # A topic too small for the FAIL's error and stack trace: that RunEvent is
    # dead-lettered, with the reason, and the rest goes on.
    again = unfit.replace(ol_group_id=f"{platform.ol_group_id}.2")
    bridged = bridge.Bridge(again)
    bridged.run(drain=True)
    assert bridged.stats.dead_lettered == 1
    [letter] = read_topic(again, again.ol_dlq_topic)
    assert letter.value == values[-1]
    assert letter.headers["error.kind"] == "too_large"
    assert bridged.stats.published > 4


def test_create_topics_makes_an_openlineage_topic_for_8_mib_run_events(
        settings: Settings) -> None:
    made = settings.replace(ol_topic=f"{settings.topic}.ol8",
                            ol_dlq_topic=f"{settings.topic}.ol8.dlq")
    bridge.create_topics(made)
    from pudato_registry import kafka  # noqa: PLC0415

    assert kafka.max_message_bytes(made, made.ol_topic) >= 8 * 1024 * 1024
    assert kafka.max_message_bytes(made, made.ol_dlq_topic) >= 8 * 1024 * 1024
    produce(made.replace(max_message_bytes=8 * 1024 * 1024),
            [(None, b'{"x": "' + b"y" * 1_500_000 + b'"}')], topic=made.ol_topic)


def test_the_bridge_exports_series_of_its_own(ol_settings: Settings) -> None:
    import urllib.request  # noqa: PLC0415

    lines = (SAMPLES / "python-client-parent-children.jsonl").read_bytes().splitlines()
    produce(ol_settings, [(None, line) for line in [*lines, b"not json"]],
            topic=ol_settings.ol_topic)
    bridged = bridge.Bridge(ol_settings)
    port = bridged.metrics.serve("127.0.0.1", 0)
    try:
        bridged.run(drain=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=10) as response:
            text = response.read().decode()
    finally:
        bridged.metrics.close()
    assert f"pudato_openlineage_consumed_total {len(lines) + 1}.0" in text
    assert f"pudato_openlineage_published_total {bridged.stats.published}.0" in text
    assert 'pudato_openlineage_dead_lettered_total{kind="not_json"} 1.0' in text
    assert "pudato_seconds_since_last_consumed" in text
    assert "pudato_events_applied_total" not in text  # the worker's: the bridge applies nothing


def test_a_taken_metrics_port_is_named_with_the_flag_to_change_it(
        ol_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    import socket  # noqa: PLC0415

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        code = main(["openlineage", "bridge", "--drain", "--metrics-port", str(port),
                     "--bootstrap-servers", ol_settings.bootstrap_servers,
                     "--topic", ol_settings.topic])
    finally:
        taken.close()
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1, err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err
    assert "--metrics-port" in err


def test_the_bridge_takes_port_9109_by_default_beside_a_worker_on_9108(
        ol_settings: Settings, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pudato_registry import logs  # noqa: PLC0415

    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)
    monkeypatch.delenv("PUDATO_METRICS_PORT", raising=False)
    for key, value in {"PUDATO_OL_TOPIC": ol_settings.ol_topic,
                       "PUDATO_OL_DLQ_TOPIC": ol_settings.ol_dlq_topic,
                       "PUDATO_OL_GROUP_ID": ol_settings.ol_group_id}.items():
        monkeypatch.setitem(os.environ, key, value)
    with caplog.at_level("INFO"):
        assert main(["openlineage", "bridge", "--drain",
                     "--bootstrap-servers", ol_settings.bootstrap_servers,
                     "--topic", ol_settings.topic]) == 0
    assert "metrics on http://127.0.0.1:9109/metrics" in caplog.text
