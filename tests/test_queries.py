"""Queries on real services: jobs, a job's timeline, lineage walks, stuck jobs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pudato_registry import factory
from pudato_registry.cli import main
from pudato_registry.events import DataReference, Event, ExecutionRecord
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


def _run(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert main([*args, "--database-url", settings.database_dsn, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _edges(graph: Any) -> list[tuple[Any, ...]]:
    labels = {n["id"]: n.get("label") or n["location"] for n in graph["nodes"]}
    return [(e["side"], e["depth"], labels[e["source"]], labels[e["target"]], e["runs"])
            for e in graph["edges"]]


def test_lineage_is_the_logical_graph_up_and_down(
        graph: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    up = _run(graph, capsys, "lineage", "rpt.daily", "--upstream")
    assert _edges(up) == [
        ("upstream", 1, "etl / report", "rpt.daily", 1),
        ("upstream", 1, "mart.ab", "etl / report", 1),
        ("upstream", 2, "etl / model", "mart.ab", 1),
        ("upstream", 2, "raw.b", "etl / model", 1),
        ("upstream", 2, "stg.a", "etl / model", 1),
        ("upstream", 3, "etl / stage", "stg.a", 1),
        ("upstream", 3, "raw.a", "etl / stage", 1)]
    shallow = _run(graph, capsys, "lineage", "rpt.daily", "--upstream", "--depth", "1")
    assert len(_edges(shallow)) == 2
    down = _run(graph, capsys, "lineage", "raw.a", "--downstream", "--depth", "2")
    assert {e[2:4] for e in _edges(down)} == {
        ("raw.a", "etl / stage"), ("etl / stage", "stg.a"), ("stg.a", "etl / model"),
        ("etl / model", "mart.ab"), ("stg.a", "etl / export"), ("etl / export", "s3.export")}
    both = _run(graph, capsys, "lineage", "stg.a")  # one step each way by default
    assert sorted(e[:4] for e in _edges(both)) == [
        ("downstream", 1, "etl / export", "s3.export"),
        ("downstream", 1, "etl / model", "mart.ab"),
        ("downstream", 1, "stg.a", "etl / export"), ("downstream", 1, "stg.a", "etl / model"),
        ("upstream", 1, "etl / stage", "stg.a"), ("upstream", 1, "raw.a", "etl / stage")]
    assert _edges(_run(graph, capsys, "lineage", "stg.a", "--environment", "dev")) == []
    assert main(["lineage", "rpt.daily", "--upstream", "--database-url",
                 graph.database_dsn]) == 0
    text = capsys.readouterr().out
    assert text.startswith("rpt.daily: 5 datasets, 3 steps, 7 edges (upstream, depth 3)")
    assert "etl / report  rpt.daily" in text


def test_a_namespace_is_drawn_whole(graph: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    whole = _run(graph, capsys, "lineage", "--namespace", "default")
    assert whole["whole"] == "default"
    assert len(whole["edges"]) == 9  # stage 2, model 3, report 2, export 2
    assert {n["label"] for n in whole["nodes"] if n["kind"] == "step"} == {
        "etl / stage", "etl / model", "etl / report", "etl / export"}
    dsn = ["--database-url", graph.database_dsn]
    assert main(["lineage", "--namespace", "default", "--environment", "dev", *dsn]) == 1
    assert capsys.readouterr().err == (
        "no step of namespace 'default' reads or writes anything in environment 'dev'\n")


@pytest.fixture
def hourly(settings: Settings) -> Settings:
    """An hourly pipeline run 30 times; the last run's load failed."""
    t = NOW - timedelta(days=2)
    events: list[Event] = []
    for n in range(30):
        job, at = f"hourly-{n:02d}", t + timedelta(hours=n)
        events += [factory.job_submitted(job, pipeline="hourly", occurred_at=at),
                   factory.step_started(job, f"{job}-load", step_name="load",
                                        handler_type="h", action="a",
                                        inputs=[_ref('raw."orders"')], occurred_at=at)]
        if n < 29:
            events.append(factory.step_succeeded(job, f"{job}-load", outputs=[
                _ref("wh.fct_orders")], occurred_at=at + timedelta(minutes=5)))
        else:
            events.append(factory.step_failed(job, f"{job}-load", error="boom",
                                              occurred_at=at + timedelta(minutes=5)))
    produce(settings, messages_of(events))
    drain(settings)
    return settings


def test_runs_of_a_step_are_one_edge_and_a_failed_last_run_stays_red(
        hourly: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    found = _run(hourly, capsys, "lineage", 'raw."orders"')
    read, written = found["edges"]  # raw."orders" -> hourly / load -> wh.fct_orders
    assert (read["location"], written["location"]) == ('raw."orders"', "wh.fct_orders")
    edge = read
    assert (edge["runs"], edge["last_status"], edge["last_job_id"]) == (30, "failed",
                                                                        "hourly-29")
    written = _run(hourly, capsys, "lineage", "wh.fct_orders", "--upstream", "--depth", "1")
    [edge] = [e for e in written["edges"] if e["location"] == "wh.fct_orders"]
    assert (edge["runs"], edge["last_status"]) == (29, "success")
    dsn = ["--database-url", hourly.database_dsn]
    assert main(["lineage", 'raw."orders"', "--format", "dot", *dsn]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph lineage {")
    assert r'"dataset:raw.\"orders\"" [shape=box, label="raw.\"orders\"", penwidth=2];' in dot
    assert r'"dataset:raw.\"orders\"" -> "step:' in dot
    assert 'label="30 runs, last failed ' in dot
    assert 'color="#c62828"' in dot
    assert main(["lineage", 'raw."orders"', "--format", "mermaid", *dsn]) == 0
    mermaid = capsys.readouterr().out.splitlines()
    assert mermaid[:4] == ["flowchart LR", '  d0[("raw.#quot;orders#quot;")]',
                           '  d1[("wh.fct_orders")]', '  s0(["hourly / load"])']
    assert mermaid[4].startswith('  d0 -->|"30 runs, last failed ')
    assert mermaid[4].endswith("| s0")
    assert mermaid[5].startswith('  s0 -->|"29 runs, last success ')
    assert mermaid[-2:] == ["  linkStyle 0 stroke:#c62828", "  linkStyle 1 stroke:#2e7d32"]


def test_runs_are_paged_newest_first_and_narrowed(
        hourly: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lineage", 'raw."orders"', "--runs", "--limit", "10", "--json",
                 "--database-url", hourly.database_dsn]) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert [r["job_id"] for r in first] == [f"hourly-{n:02d}" for n in range(29, 19, -1)]
    assert "add --offset 10 for the next page" in captured.err
    last = _run(hourly, capsys, "lineage", 'raw."orders"', "--runs", "--limit", "10",
                "--offset", "20")
    assert [r["job_id"] for r in last] == [f"hourly-{n:02d}" for n in range(9, -1, -1)]
    assert _run(hourly, capsys, "lineage", 'raw."orders"', "--runs", "--pipeline",
                "nope") == []
    assert len(_run(hourly, capsys, "lineage", "wh.fct_orders", "--runs", "--step",
                    "load")) == 29


def test_runs_from_the_edges_are_the_runs_the_steps_hold(
        hourly: Settings, fan: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge-driven answer (each round: the scopes' newest jobs, then their steps)
    against the steps' JSON indexes, page by page, narrowed or not."""
    from pudato_registry import queries  # noqa: PLC0415

    def pages(settings: Settings, location: str, **narrow: Any) -> list[list[Any]]:
        found, offset = [], 0
        while True:
            page = queries.lineage_runs(settings.database_dsn, location, limit=7,
                                        offset=offset, **narrow)
            found.append([(h.relation, h.location, h.step["step_id"], h.step["status"])
                          for h in page.hops])
            if not page.more:
                return found
            offset += 7

    cases = [(hourly, 'raw."orders"', {}), (hourly, "wh.fct_orders", {"step_name": "load"}),
             (hourly, 'raw."orders"', {"pipeline": "hourly"}), (fan, "mart.all", {}),
             (fan, "src.t000", {})]
    from_edges = [pages(s, loc, **n) for s, loc, n in cases]
    monkeypatch.setattr(queries, "MAX_RUN_SCOPES", 0)
    assert from_edges == [pages(s, loc, **n) for s, loc, n in cases]
    assert sum(len(p) for p in from_edges[0]) == 30


def test_a_location_is_found_by_part_of_its_name(
        hourly: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    found = _run(hourly, capsys, "lineage", "--search", "FCT_ord")
    assert [(f["location"], f["steps"], f["runs"]) for f in found] == [
        ("wh.fct_orders", 1, 29)]
    dsn = ["--database-url", hourly.database_dsn]
    assert main(["lineage", "--search", "nothing-like-it", *dsn]) == 1
    assert capsys.readouterr().err == "no known location contains 'nothing-like-it'\n"
    assert main(["lineage", "warehouse.fct_orders", *dsn]) == 1
    assert capsys.readouterr().err == (
        "no step reads or writes 'warehouse.fct_orders'; did you mean 'wh.fct_orders'?\n")
    assert main(["lineage", "%_%", *dsn]) == 1  # LIKE's wildcards are text here
    assert "lineage --search TEXT lists" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["lineage"], "give a LOCATION, --search TEXT to find one, or --namespace N"),
    (["lineage", "x", "--search", "y"], "--search TEXT lists locations; give it alone"),
    (["lineage", "x", "--runs", "--upstream"], "--runs lists the runs at LOCATION itself"),
    (["lineage", "x", "--runs", "--format", "dot"], "--runs prints a table or JSON"),
    (["lineage", "x", "--pipeline", "p"], "--pipeline, --step and --offset narrow --runs"),
])
def test_lineage_options_that_do_not_go_together_are_named(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--database-url", "postgresql://nobody@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert len(err.splitlines()) == 1


def test_jobs_list_filters_and_stuck(graph: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    everything = _run(graph, capsys, "jobs", "list")
    # newest first; a tie by id, descending (the keyset order of the UI's pages)
    assert [j["job_id"] for j in everything] == ["fresh", "hung", "etl"]
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
    assert shown["job"]["status"] == "success"
    assert [s["step_name"] for s in shown["steps"]] == [
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
    edges = _edges(up)
    assert edges[0] == ("upstream", 1, "fan / merge", "mart.all", 1)
    assert len(edges) == 1 + 300 + 300 + 0  # merge's reads, and each source's write
    down = _run(fan, capsys, "lineage", "src.t000", "--downstream", "--depth", "1")
    assert sorted(e[2:4] for e in _edges(down)) == [
        ("fan / merge", "mart.all"), ("fan / read_a", "out.read_a"),
        ("fan / read_b", "out.read_b"), ("src.t000", "fan / merge"),
        ("src.t000", "fan / read_a"), ("src.t000", "fan / read_b")]
    assert main(["lineage", "mart.all", "--upstream", "--limit", "100",
                 "--database-url", fan.database_dsn]) == 0
    captured = capsys.readouterr()
    assert "100 edges" in captured.out.splitlines()[0]
    assert captured.err.startswith("... the graph was cut at 100 edges")


def test_the_per_run_walk_still_answers_through_the_api(graph: Settings) -> None:
    from pudato_registry import queries  # noqa: PLC0415

    up = queries.lineage(graph.database_dsn, "rpt.daily", upstream=True)
    assert [(h.depth, h.step["step_name"]) for h in up.hops] == [
        (1, "report"), (2, "model"), (3, "stage")]


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
    assert main(["jobs", "show", "wide", "--limit", "10", "--database-url",
                 settings.database_dsn]) == 0
    out = capsys.readouterr().out
    assert out.count(" running ") == 10
    assert "... and 20 more steps, not shown: raise --limit (now 10)" in out
    assert main(["dlq", "list", "--limit", "3", "--bootstrap-servers",
                 settings.bootstrap_servers, "--dlq-topic", settings.dlq_topic]) == 0
    out = capsys.readouterr().out
    assert out.count("not_json") == 3
    assert "... and 4 more dead letters, not shown: raise --limit (now 3)" in out


# --- jobs diff and jobs reproduce ----------------------------------------------------


def _night(n: int, *, logic: str = "git:1", rows: int = 1000, year: int = 2026,
           extra: bool = False, retry: bool = False, fail: bool = False) -> list[Event]:
    job, at = f"night-{n}", NOW - timedelta(days=10 - n)
    sql = f"select * from raw.src where year = {year}"
    load = f"{job}-load"
    events: list[Event] = [
        factory.job_submitted(job, pipeline="nightly", logic_version=logic,
                              parameters={"day": n if n < 3 else 2, "db_password": f"pw{n}"},
                              occurred_at=at),
        factory.job_started(job, occurred_at=at)]
    if retry:
        events += [factory.step_started(job, f"{load}-a1", step_name="load", handler_type="h",
                                        action="a", inputs=[_ref("raw.src")], occurred_at=at),
                   factory.step_failed(job, f"{load}-a1", error="timeout\nretrying",
                                       occurred_at=at + timedelta(seconds=1))]
    events += [
        factory.step_started(job, load, step_name="load", handler_type="h", action="a",
                             inputs=[DataReference(ref_type="table", location="raw.src",
                                                   metadata={"row_count": 500})],
                             occurred_at=at + timedelta(seconds=2)),
        factory.step_succeeded(job, load, outputs=[DataReference(
            ref_type="table", location="stg.src", metadata={"row_count": rows})],
            executions=[ExecutionRecord(execution_type="sql", details={"sql": sql})],
            duration_ms=1000, occurred_at=at + timedelta(seconds=3))]
    if extra:
        events += _step(job, "audit", ["stg.src"], ["audit.log"], at + timedelta(seconds=4))
    events.append(factory.job_failed(job, error="x", occurred_at=at + timedelta(seconds=9))
                   if fail else factory.job_succeeded(job, occurred_at=at + timedelta(
                       seconds=9)))
    return events


@pytest.fixture
def nights(settings: Settings) -> Settings:
    """Four nightly runs of one pipeline, the fourth retrying its load; raw.src written
    before night 2 and after it."""
    def ingest(n: int, at: datetime) -> list[Event]:
        return [factory.job_submitted(f"ingest-{n}", pipeline="ingest", occurred_at=at),
                *_step(f"ingest-{n}", "pull", [], ["raw.src"], at)]

    events = [*ingest(1, NOW - timedelta(days=8, hours=1)), *_night(1), *_night(2),
              *ingest(2, NOW - timedelta(days=7, hours=12)),
              *_night(3, logic="git:2", rows=0, year=2027, extra=True),
              *_night(4, logic="git:2", rows=0, year=2027, extra=True, retry=True)]
    produce(settings, messages_of(events))
    drain(settings)
    return settings


def test_jobs_diff_explains_tonights_run(nights: Settings,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    dsn = ["--database-url", nights.database_dsn]
    assert main(["jobs", "diff", "night-3", "--json", "--normalize-literals", *dsn]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["a"] == "night-2"  # the run before it
    assert found["verdict"] == [
        "logic_version changed (git:1 -> git:2)", "1 parameter changed",
        "1 input from other producing runs", "1 step only in B: audit",
        "SQL of 1 step differs only in literals", "1 output dropped to 0 rows"]
    assert found["parameters"] == [{"path": "db_password", "a": "***", "b": "***"}]
    [source] = found["inputs"]
    assert (source["a"]["producer"]["job_id"], source["b"]["producer"]["job_id"]) == (
        "ingest-1", "ingest-2")
    [load] = [s for s in found["steps"] if s["step"] == "load"]
    assert load["outputs"] == [{"location": "stg.src", "a": 1000, "b": 0, "moved": -1.0,
                                "dropped_to_zero": True}]
    assert main(["jobs", "diff", "night-3", *dsn]) == 1
    text = capsys.readouterr().out
    assert text.startswith("verdict: logic_version changed (git:1 -> git:2); ")
    assert "+select * from raw.src where year = 2027" in text  # without the flag: a diff
    assert "stg.src  1000 -> 0  DROPPED TO 0" in text


def test_a_retried_step_is_compared_attempt_by_attempt(
        nights: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "diff", "night-4", "--json",
                 "--database-url", nights.database_dsn]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["a"] == "night-3"
    assert "1 step only in B: load#2" in found["verdict"]
    steps = {s["step"]: s for s in found["steps"]}
    assert (steps["load"]["a"]["status"], steps["load"]["b"]["status"]) == ("success",
                                                                            "failed")
    assert steps["load"]["b"]["error"] == "timeout"  # the first line
    assert steps["load#2"]["only_in"] == "B"


def test_jobs_diff_exits_like_diff(nights: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = ["--database-url", nights.database_dsn]
    assert main(["jobs", "diff", "night-2", "night-2", *dsn]) == 0
    assert capsys.readouterr().out.startswith("verdict: no differences (times and ids aside)")
    assert main(["jobs", "diff", "night-1", *dsn]) == 2
    assert capsys.readouterr().err == (
        "no earlier run of pipeline 'nightly' in dev/default before 'night-1': name both "
        "runs\n")
    assert main(["jobs", "diff", "nope", *dsn]) == 2
    assert capsys.readouterr().err == "no job 'nope'\n"
    assert main(["jobs", "diff", "night-3", "--previous-succeeded", "--json", *dsn]) == 1
    assert json.loads(capsys.readouterr().out)["a"] == "night-2"
    assert main(["jobs", "diff", "night-2", "night-3", "--sql", "none", *dsn]) == 1
    assert "executions of" not in capsys.readouterr().out
    assert main(["jobs", "diff", "night-3", "--database-url",
                 "postgresql://nobody@127.0.0.1:1/x"]) == 2


def test_jobs_reproduce_says_what_was_overwritten_since(
        nights: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = ["--database-url", nights.database_dsn]
    assert main(["jobs", "reproduce", "night-2", "--json", *dsn]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["logic_version"] == "git:1"
    assert found["parameters"] == {"day": 2, "db_password": "***"}
    [source] = found["inputs"]
    assert (source["location"], source["rows"], source["producer"]["job_id"],
            source["overwritten_by"]["job_id"]) == ("raw.src", 500, "ingest-1", "ingest-2")
    assert found["overwritten_since"] == ["raw.src"]
    assert [s["step"] for s in found["steps"]] == ["load"]
    assert main(["jobs", "reproduce", "night-3", *dsn]) == 0
    text = capsys.readouterr().out
    assert "not recorded by the registry:" in text
    assert "warning:" not in text  # night 3 read ingest-2's, the latest
