"""The OpenLineage translator on the captured samples: rows as the contract says, in any order."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pudato_registry import inputs
from pudato_registry import openlineage as ol
from pudato_registry.projection import Projection, fold
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection, RejectionKind, validate
from pudato_registry.wire import Event

SAMPLES = Path(__file__).parent / "data" / "openlineage"


def _lines(name: str) -> list[bytes]:
    return (SAMPLES / f"{name}.jsonl").read_bytes().splitlines()


def _events(lines: list[bytes]) -> tuple[list[Event], list[inputs.Ignored], list[Rejection]]:
    events: list[Event] = []
    ignored, rejected = [], []
    for line in lines:
        result = ol.translate(line)
        if isinstance(result, inputs.Ignored):
            ignored.append(result)
        elif isinstance(result, Rejection):
            rejected.append(result)
        else:
            for key, value in result.messages:
                event = validate(value)
                assert not isinstance(event, Rejection), event
                assert key == event.correlation_id.encode()
                events.append(event)
    return events, ignored, rejected


def _folded(name: str) -> Projection:
    events, _ignored, rejected = _events(_lines(name))
    assert not rejected
    return fold(events)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_dbt_build_is_one_job_with_a_step_per_model_and_test() -> None:
    projection = _folded("dbt-build-success")
    (job,) = projection.job_rows()
    assert (job.pipeline, job.namespace, job.status, job.logic_version) == (
        "dbt-run-ol_demo", "dbt", "success", "1.2.0")
    assert job.metadata["source"] == "openlineage"
    steps = projection.step_rows()
    assert sorted((s.action, s.status) for s in steps) == [
        *[("model", "success")] * 5, *[("test", "success")] * 3]
    fct = next(s for s in steps if s.step_name == "model.ol_demo.fct_dept_budget")
    assert (fct.handler_type, fct.duration_ms) == ("dbt", 65)
    assert {e["execution_type"] for e in fct.executions} == {"sql", "dbt"}
    assert [o["location"] for o in fct.outputs] == [
        "duckdb:///srv/dbt/ol_demo/warehouse.duckdb/warehouse.main.fct_dept_budget"]
    assert all(not s.outputs for s in steps if s.action == "test")  # decision 9


def test_the_plain_client_parent_with_a_failing_child() -> None:
    projection = _folded("python-client-parent-children")
    (job,) = projection.job_rows()
    assert (job.pipeline, job.namespace, job.environment, job.logic_version, job.status) == (
        "nightly_budget", "pudato-demo", "staging", "3f9c2ab", "failed")
    assert job.error == "task nightly_budget.load_warehouse failed"
    assert (job.created_at, job.started_at, job.completed_at) == (
        _at("2026-11-30T03:53:43"), _at("2026-11-30T03:53:48"),
        _at("2026-11-30T03:53:54.200000"))
    steps = {s.step_name: s for s in projection.step_rows()}
    failed = steps["nightly_budget.load_warehouse"]
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.startswith("psycopg.errors.UniqueViolation")
    assert failed.outputs == []  # a failed run's outputs without statistics: dropped
    assert "Traceback" in failed.metadata["ol_error_stack_trace"]
    assert steps["nightly_budget.extract_departments"].outputs[0]["metadata"]["row_count"] == 112


def test_dbt_under_an_orchestrator_and_structured_logs() -> None:
    events, ignored, rejected = _events(_lines(
        "dbt-build-structured-logs-failing-with-airflow-parent"))
    assert not rejected
    assert len(ignored) == 74  # dbt's per-statement sub-runs (R4)
    projection = fold(events)
    (job,) = projection.job_rows()
    # The DAG run never emitted: decision 4 names it from its children's parent facet.
    assert (job.job_id, job.pipeline, job.namespace, job.status) == (
        "d4af0acc-cd8d-48ea-9700-fca6f297f365", "finance_dag", "airflow-prod", "pending")
    steps = {s.step_name: s for s in projection.step_rows()}
    assert steps["dbt-run-ol_demo"].action == "job"
    assert steps["model.ol_demo.dept_report"].status == "failed"
    assert steps["model.ol_demo.dept_report"].error.startswith(  # type: ignore[union-attr]
        "Runtime Error in model dept_report")
    assert steps["model.ol_demo.dept_report_summary"].status == "skipped"  # dbt's ABORT


def test_the_edge_cases() -> None:
    lines = _lines("python-client-edge-cases")
    events, ignored, rejected = _events(lines)
    assert [r.kind for r in rejected] == [RejectionKind.NAIVE_TIMESTAMP]
    assert [i.reason for i in ignored] == ["a STREAMING run: its state is not a run's"]
    projection = fold(events)
    jobs = {j.pipeline: j for j in projection.job_rows()}
    steps = {s.step_name: s for s in projection.step_rows()}
    orphan = steps["sales_dag.export_orders"]  # COMPLETE without START
    assert (orphan.status, orphan.started_at, orphan.duration_ms) == ("success", None, None)
    assert jobs["no_event_type"].status == "pending"
    aborted = jobs["aborted_job"]
    assert (aborted.status, aborted.started_at) == ("cancelled", _at("2026-11-30T03:54:02"))
    twice = [line for line in lines if b'"emitted_twice"' in line]
    assert len(twice) == 2
    assert ol.translate(twice[0]) == ol.translate(twice[1])  # the same ids: counted once
    assert jobs["emitted_twice"].status == "success"


# Jobs whose root run sends nothing before its children (the Airflow DAG run that never
# emitted; dbt-ol send-events, whose wrapper says START at re-send time): decision 4 names
# them through one carrier per root, ``ol:<rootRunId>:from-child``, from whichever child
# arrives first. Their created_at is that child's time: deterministic for one topic (a root's
# events share a partition), but not across arbitrary orders. Everything else is.
LATE_ROOTS = {"d4af0acc-cd8d-48ea-9700-fca6f297f365", "01a22a97-3a8d-7900-94aa-12184e20a8ca",
              "01a22a97-3cc6-7f0e-a6d4-79f9a60bb6b0"}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_sample_gives_the_same_rows_in_any_order(seed: int) -> None:
    lines = [line for path in sorted(SAMPLES.glob("*.jsonl"))
             for line in path.read_bytes().splitlines()]
    events, _ignored, _rejected = _events(lines)
    shuffled = events.copy()
    random.Random(seed).shuffle(shuffled)
    for order in (shuffled, list(reversed(events))):
        assert fold(order).step_rows() == fold(events).step_rows()
        jobs, again = fold(events).job_rows(), fold(order).job_rows()
        assert [j.job_id for j in jobs] == [j.job_id for j in again]
        for job, other in zip(jobs, again, strict=True):
            if job.job_id in LATE_ROOTS:
                assert job._replace(created_at=other.created_at) == other
                times = [e.occurred_at for e in events if e.job_id == job.job_id]
                assert min(times) <= other.created_at <= max(times)
            else:
                assert job == other
    assert {j.job_id for j in fold(events).job_rows()} >= LATE_ROOTS


def _run_event(**changes: Any) -> bytes:
    base: dict[str, Any] = {
        "eventType": "START", "eventTime": "2026-11-30T03:53:48+00:00",
        "run": {"runId": "r1", "facets": {}}, "job": {"namespace": "ns", "name": "j"},
        "producer": "p",
    }
    return json.dumps({**base, **changes}).encode()


@pytest.mark.parametrize(("value", "kind"), [
    (b"not json", RejectionKind.NOT_JSON),
    (b"[1, 2]", RejectionKind.NOT_OBJECT),
    (None, RejectionKind.TOMBSTONE),
    (_run_event(run={"facets": {}}), RejectionKind.MISSING_FIELD),
    (_run_event(run={"runId": ""}), RejectionKind.INVALID_FIELD),
    (_run_event(job={"namespace": "ns"}), RejectionKind.MISSING_FIELD),
    (_run_event(eventType="EXPLODED"), RejectionKind.UNKNOWN_EVENT_TYPE),
    (_run_event(eventTime="2026-11-30T03:53:48"), RejectionKind.NAIVE_TIMESTAMP),
    (_run_event(run={"runId": "r", "facets": {"parent": {"job": {}}}}),
     RejectionKind.INVALID_FIELD),
    (b'{"run": {"runId": "r"}, "job": {}, "pad": "' + b"x" * (8 * 1024 * 1024) + b'"}',
     RejectionKind.TOO_LARGE),
])
def test_bad_input_is_refused_with_a_kind(value: bytes | None, kind: RejectionKind) -> None:
    result = ol.translate(value)
    assert isinstance(result, Rejection)
    assert result.kind is kind, result.message


def test_job_and_dataset_events_are_ignored() -> None:
    assert isinstance(ol.translate(b'{"job": {"namespace": "n", "name": "j"}}'), inputs.Ignored)
    assert isinstance(ol.translate(b'{"dataset": {"namespace": "n", "name": "d"}}'), inputs.Ignored)


def test_names_over_the_limits_are_cut_apart_and_the_event_stays_valid() -> None:
    long_a, long_b = "a" * 600 + "1", "a" * 600 + "2"
    cut = []
    for name in (long_a, long_b):
        result = ol.translate(_run_event(job={"namespace": "ns", "name": name}))
        assert isinstance(result, inputs.Translated)
        event = validate(result.messages[0][1])
        assert not isinstance(event, Rejection)
        cut.append(event.data.pipeline)  # type: ignore[union-attr]
        assert event.data.metadata["ol_job_name"] == name  # type: ignore[index]
    assert len(cut[0]) == 512
    assert cut[0] != cut[1]


def test_input_formats_are_chosen_by_name_with_their_options() -> None:
    by_name = inputs.decoder("openlineage", Settings(
        ol_location_by_name=True, ol_environments={"pudato-demo": "prod"}))
    projection = fold([e for line in PARENT for e in _decoded(by_name(line))])
    (job,) = projection.job_rows()
    assert job.environment == "staging"  # the run's tag wins over the map
    assert {o["location"] for s in projection.step_rows() for o in s.outputs} == {
        "staging/departments/2026-11-30.parquet"}
    untagged = inputs.decoder("openlineage", Settings(ol_environments={"ns": "prod"}))
    assert _decoded(untagged(_run_event()))[0].data.environment == "prod"  # type: ignore[union-attr]
    only = inputs.decoder("openlineage", Settings(ol_namespaces=["elsewhere"]))
    assert isinstance(only(_run_event()), inputs.Ignored)
    mirror = inputs.decoder("events-v1", Settings())
    value = (b'{"schema_version": 1, "event_id": "e", "event_type": "job.started",'
             b' "occurred_at": "2026-11-30T00:00:00Z", "correlation_id": "c", "job_id": "j"}')
    assert mirror(value) == inputs.Translated([(b"c", value)])
    refused = mirror(b"{}")
    assert isinstance(refused, Rejection)
    assert refused.kind is RejectionKind.MISSING_FIELD
    with pytest.raises(ValueError, match="no input format 'avro'; there are events-v1, "
                                         "openlineage"):
        inputs.decoder("avro", Settings())


PARENT = (SAMPLES / "python-client-parent-children.jsonl").read_bytes().splitlines()


def _decoded(result: inputs.Decoded) -> list[Event]:
    assert isinstance(result, inputs.Translated), result
    out = []
    for _key, value in result.messages:
        event = validate(value)
        assert not isinstance(event, Rejection)
        out.append(event)
    return out
