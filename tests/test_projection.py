"""The fold against the golden vectors: exact rows, and the right rejections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pudato_registry import factory
from pudato_registry.events import ENTITY_EVENTS_MAX, DataReference, ExecutionRecord
from pudato_registry.projection import Projection, StepState, fold
from pudato_registry.validate import Rejection, RejectionKind, validate
from pudato_registry.wire import Event
from tests.helpers import decoded
from tests.vectors import Vector, all_vectors, as_expected

VECTORS = all_vectors()


def _split(vector: Vector) -> tuple[list[Event], list[Rejection]]:
    events: list[Event] = []
    rejections: list[Rejection] = []
    for message in vector.messages:
        result = validate(message.value)
        (rejections if isinstance(result, Rejection) else events).append(result)  # type: ignore[arg-type]
    return events, rejections


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector_folds_to_expected_rows(vector: Vector) -> None:
    events, rejections = _split(vector)
    projection = fold(events)
    assert [as_expected(r._asdict()) for r in projection.job_rows()] == vector.jobs
    assert [as_expected(r._asdict()) for r in projection.step_rows()] == vector.steps
    assert len(rejections) == vector.dead_letters


def test_invalid_vector_rejection_kinds() -> None:
    vector = next(v for v in VECTORS if v.name == "10-invalid-events")
    kinds = [r.kind for r in (validate(m.value) for m in vector.messages)
             if isinstance(r, Rejection)]
    k = RejectionKind
    assert kinds == [
        k.TOMBSTONE, k.MISSING_FIELD, k.NOT_JSON, k.MISSING_FIELD,
        k.MISSING_FIELD, k.NOT_OBJECT, k.NOT_UTF8, k.INVALID_FIELD, k.INVALID_FIELD,
        k.STEP_ID_NOT_ALLOWED, k.UNKNOWN_EVENT_TYPE, k.NAIVE_TIMESTAMP, k.INVALID_FIELD,
        k.NOT_OBJECT, k.UNSUPPORTED_SCHEMA_VERSION, k.INVALID_FIELD, k.STRING_TOO_LONG,
        k.MISSING_FIELD, k.MISSING_FIELD,
    ]


# --- amendment 1: per-entity limits --------------------------------------------------------

def _ref(location: str) -> DataReference:
    return DataReference(ref_type="table", location=location)


def _saved(projection: Projection) -> tuple[dict[str, str], dict[str, str]]:
    return ({i: s.dump() for i, s in projection.jobs.items()},
            {i: s.dump() for i, s in projection.steps.items()})


def test_a_step_takes_at_most_1000_events_and_the_next_changes_nothing() -> None:
    projection = Projection()
    for i in range(ENTITY_EVENTS_MAX):
        assert projection.apply(decoded([factory.step_succeeded(
            "j", "s", metadata={"n": i}, event_id=f"e{i:04}")])[0])
    before = _saved(projection)
    over = decoded([factory.step_failed("j", "s", error="late", event_id="over")])[0]
    assert not projection.apply(over)
    assert projection.refused == [(over, "step 's' already has 1000 events, the most one "
                                         "entity may have")]
    assert _saved(projection) == before
    # An event already applied is still a duplicate, not a refusal.
    again = decoded([factory.step_succeeded("j", "s", metadata={"n": 0}, event_id="e0000")])[0]
    assert not projection.apply(again)
    assert len(projection.refused) == 1


def test_a_jobs_steps_do_not_count_against_the_job() -> None:
    projection = Projection()
    for i in range(ENTITY_EVENTS_MAX):
        projection.apply(decoded([factory.job_started("j", event_id=f"j{i}")])[0])
    for i in range(50):
        assert projection.apply(decoded([factory.step_started(
            "j", f"s{i}", step_name="s", handler_type="h", action="a")])[0])
    assert not projection.apply(decoded([factory.job_succeeded("j")])[0])
    assert [reason for _e, reason in projection.refused] == [
        "job 'j' already has 1000 events, the most one entity may have"]


def test_metadata_keys_are_counted_across_events() -> None:
    projection = Projection()
    first = {f"k{i}": i for i in range(600)}
    assert projection.apply(decoded([factory.job_started("j", metadata=first)])[0])
    # Keys already held do not count again: 600 + 400 new = 1000 exactly.
    second = {**first, **{f"n{i}": i for i in range(400)}}
    assert projection.apply(decoded([factory.job_succeeded("j", metadata=second)])[0])
    assert not projection.apply(decoded([factory.job_failed("j", error="e",
                                                            metadata={"one": 1})])[0])
    assert projection.refused[0][1] == "job 'j' would have more than 1000 metadata keys"
    assert projection.apply(decoded([factory.job_failed("j", error="e",
                                                        metadata={"k1": "again"})])[0])


@pytest.mark.parametrize("field", ["inputs", "outputs"])
def test_references_per_list_are_counted_across_events(field: str) -> None:
    projection = Projection()
    def event(refs: list[DataReference], into: str = field) -> Event:
        lists: dict[str, Any] = {into: refs}
        return decoded([factory.step_succeeded("j", "s", **lists)])[0]

    for batch in range(2):
        assert projection.apply(event([_ref(f"t{batch}.{i}") for i in range(5_000)]))
    assert projection.apply(event([_ref("t0.1"), _ref("t1.2")]))  # known pairs: none new
    over = event([_ref("new")])
    assert not projection.apply(over)
    assert projection.refused == [(over, f"step 's' would have more than 10000 {field}")]
    # The other list is not full.
    assert projection.apply(event([_ref("x")], "outputs" if field == "inputs" else "inputs"))


def test_distinct_executions_are_counted_across_events() -> None:
    projection = Projection()
    runs = [ExecutionRecord(execution_type="sql", details={"n": i}) for i in range(1000)]
    assert projection.apply(decoded([factory.step_succeeded("j", "s", executions=runs)])[0])
    assert projection.apply(decoded([factory.step_succeeded("j", "s", executions=runs[:3])])[0])
    assert not projection.apply(decoded([factory.step_failed(
        "j", "s", error="e", executions=[ExecutionRecord(execution_type="sql")])])[0])
    assert projection.refused[0][1] == "step 's' would have more than 1000 executions"


def test_a_refused_step_event_leaves_its_job_untouched() -> None:
    full = Projection()
    for i in range(ENTITY_EVENTS_MAX):
        full.apply(decoded([factory.step_started("j", "s", step_name="s", handler_type="h",
                                                 action="a", event_id=f"e{i}")])[0])
    # A fresh projection that knows the step from its saved state, and not the job.
    projection = Projection(steps={"s": StepState.load("s", full.steps["s"].dump())})
    early = datetime(2000, 1, 1, tzinfo=UTC)
    assert not projection.apply(decoded([factory.step_succeeded("j", "s",
                                                                occurred_at=early)])[0])
    assert projection.jobs == {}
    assert not projection.changed_jobs
    assert not projection.changed_steps


def test_a_final_failure_stands_against_a_later_success_and_a_later_final_wins() -> None:
    """Amendment 4, as Spark's listener sends it: FAIL, then COMPLETE 19 ms later."""
    started = datetime(2026, 11, 1, 12, tzinfo=UTC)
    events = decoded([
        factory.step_started("j", "s", step_name="write", handler_type="spark", action="write",
                             occurred_at=started),
        factory.step_failed("j", "s", error="no FX rate", final=True,
                            occurred_at=started + timedelta(seconds=19)),
        factory.step_succeeded("j", "s", occurred_at=started + timedelta(seconds=19.019)),
        factory.job_succeeded("j", occurred_at=started + timedelta(seconds=30)),
        factory.job_failed("j", error="write failed", final=True,
                           occurred_at=started + timedelta(seconds=19)),
    ])
    for order in (events, events[::-1]):
        projection = fold(order)
        [step] = projection.step_rows()
        assert (step.status, step.error) == ("failed", "no FX rate")
        assert step.completed_at == started + timedelta(seconds=19)
        [job] = projection.job_rows()
        assert (job.status, job.error) == ("failed", "write failed")
    later = decoded([factory.job_succeeded("j", final=True,
                                           occurred_at=started + timedelta(seconds=40))])
    assert fold(events + later).job_rows()[0].status == "success"
