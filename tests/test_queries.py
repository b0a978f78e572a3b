"""Queries on real services: jobs, a job's timeline, lineage walks, stuck jobs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pudato_registry import factory
from pudato_registry.cli import main
from pudato_registry.events import DataReference, Event
from pudato_registry.settings import Settings
from tests.helpers import drain, messages_of
from tests.services import produce

NOW = datetime.now(UTC)


def _ref(location: str) -> DataReference:
    return DataReference(ref_type="table", location=location)


def _step(job: str, name: str, reads: list[str], writes: list[str], at: datetime) -> list[Event]:
    sid = f"{job}-{name}"
    return [
        factory.step_started(job, sid, step_name=name, handler_type="transform", action="build",
                             inputs=[_ref(r) for r in reads], occurred_at=at),
        factory.step_succeeded(job, sid, outputs=[_ref(w) for w in writes],
                               occurred_at=at + timedelta(seconds=1)),
    ]


def _graph() -> list[Event]:
    t = NOW - timedelta(hours=1)
    return [
        factory.job_submitted("etl", pipeline="etl", logic_version="v", environment="prod",
                              occurred_at=t),
        factory.job_started("etl", occurred_at=t),
        *_step("etl", "stage", ["raw.a"], ["stg.a"], t),
        *_step("etl", "model", ["stg.a", "raw.b"], ["mart.ab"], t + timedelta(minutes=1)),
        *_step("etl", "report", ["mart.ab"], ["rpt.daily"], t + timedelta(minutes=2)),
        *_step("etl", "export", ["stg.a"], ["s3.export"], t + timedelta(minutes=3)),
        factory.job_succeeded("etl", occurred_at=t + timedelta(minutes=5)),
        factory.job_submitted("hung", pipeline="etl", logic_version="v", occurred_at=t),
        factory.job_started("hung", occurred_at=NOW - timedelta(hours=3)),
        factory.job_submitted("fresh", pipeline="other", logic_version="v", occurred_at=NOW),
        factory.job_started("fresh", occurred_at=NOW),
    ]


@pytest.fixture
def graph(settings: Settings) -> Settings:
    produce(settings, messages_of(_graph()))
    drain(settings)
    return settings


def _run(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> list[
        dict[str, object]]:
    assert main([*args, "--database-url", settings.database_dsn, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_lineage_walks_up_and_down(graph: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    up = _run(graph, capsys, "lineage", "rpt.daily", "--upstream")
    assert [(h["depth"], h["step_name"]) for h in up] == [(1, "report"), (2, "model"),
                                                          (3, "stage")]
    shallow = _run(graph, capsys, "lineage", "rpt.daily", "--upstream", "--depth", "1")
    assert [h["step_name"] for h in shallow] == ["report"]
    down = _run(graph, capsys, "lineage", "raw.a", "--downstream")
    assert sorted((h["depth"], h["step_name"]) for h in down) == [
        (1, "stage"), (2, "export"), (2, "model"), (3, "report")]
    both = _run(graph, capsys, "lineage", "stg.a")
    assert sorted((h["relation"], h["step_name"]) for h in both) == [
        ("consumed", "export"), ("consumed", "model"), ("produced", "stage")]


def test_jobs_list_filters_and_stuck(graph: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    everything = _run(graph, capsys, "jobs", "list")
    assert [j["job_id"] for j in everything] == ["fresh", "etl", "hung"]  # newest first
    assert [j["job_id"] for j in _run(graph, capsys, "jobs", "list", "--environment",
                                      "prod")] == ["etl"]
    assert [j["job_id"] for j in _run(graph, capsys, "jobs", "list", "--status",
                                      "running")] == ["fresh", "hung"]
    assert [j["job_id"] for j in _run(graph, capsys, "jobs", "list", "--stuck", "2h")] == [
        "hung"]
    assert [j["job_id"] for j in _run(graph, capsys, "jobs", "list", "--since", "30m")] == [
        "fresh"]


def test_jobs_show_is_a_timeline(graph: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    shown = _run(graph, capsys, "jobs", "show", "etl")
    assert shown["job"]["status"] == "success"  # type: ignore[call-overload]
    assert [s["step_name"] for s in shown["steps"]] == [  # type: ignore[call-overload]
        "stage", "model", "report", "export"]
    assert main(["jobs", "show", "etl", "--database-url", graph.database_dsn]) == 0
    text = capsys.readouterr().out
    assert "report" in text
    assert "1000" in text  # duration_ms of each step
    assert main(["jobs", "show", "nope", "--database-url", graph.database_dsn]) == 1


@pytest.fixture
def fan(settings: Settings) -> Settings:
    """300 steps each write one table; one step reads them all; two steps read its output."""
    t = NOW - timedelta(hours=2)
    events: list[Event] = [factory.job_submitted("fan", pipeline="fan", logic_version="v",
                                                 occurred_at=t)]
    for i in range(300):
        events += _step("fan", f"src{i:03d}", [], [f"src.t{i:03d}"], t)
    events += _step("fan", "merge", [f"src.t{i:03d}" for i in range(300)], ["mart.all"],
                    t + timedelta(minutes=1))
    for name in ("read_a", "read_b"):  # each reads mart.all twice over: found once
        events += _step("fan", name, ["mart.all", "src.t000"], [f"out.{name}"],
                        t + timedelta(minutes=2))
    produce(settings, messages_of(events))
    drain(settings)
    return settings


def test_lineage_fans_in_once_per_step_and_stops_at_its_limit(
        fan: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    up = _run(fan, capsys, "lineage", "mart.all", "--upstream", "--depth", "2")
    assert [h["step_name"] for h in up][:1] == ["merge"]
    assert len(up) == 301
    assert len({h["step_id"] for h in up}) == 301
    down = _run(fan, capsys, "lineage", "src.t000", "--downstream")
    assert sorted((h["depth"], h["step_name"]) for h in down) == [
        (1, "merge"), (1, "read_a"), (1, "read_b")]  # read_a/b once, at the first depth
    assert main(["lineage", "mart.all", "--upstream", "--limit", "100",
                 "--database-url", fan.database_dsn]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "src" in line]) == 99
    assert out.rstrip().splitlines()[-1].startswith("... and 201 more steps at depth 2")


def test_lineage_depth_is_capped(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["lineage", "x", "--upstream", "--depth", "21"])
    assert "at most 20 hops" in capsys.readouterr().err


def test_jobs_show_and_dlq_list_are_bounded_with_a_more_line(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from pudato_registry import factory  # noqa: PLC0415
    from tests.helpers import drain  # noqa: PLC0415
    from tests.services import produce  # noqa: PLC0415

    events: list[Event] = [factory.job_submitted("wide", pipeline="p")]
    events += [factory.step_started("wide", f"s{n:03d}", step_name=f"s{n}", handler_type="h",
                                    action="a") for n in range(30)]
    produce(settings, [(b"wide", factory.encode(e)) for e in events]
            + [(b"bad", b"not json")] * 7)
    drain(settings)
    common = ["--database-url", settings.database_dsn, "--bootstrap-servers",
              settings.bootstrap_servers, "--topic", settings.topic,
              "--dlq-topic", settings.dlq_topic]
    assert main(["jobs", "show", "wide", "--limit", "10", *common]) == 0
    out = capsys.readouterr().out
    assert out.count(" running ") == 10
    assert "... and 20 more steps, not shown: raise --limit (now 10)" in out
    assert main(["dlq", "list", "--limit", "3", *common]) == 0
    out = capsys.readouterr().out
    assert out.count("not_json") == 3
    assert "... and 4 more dead letters, not shown: raise --limit (now 3)" in out
