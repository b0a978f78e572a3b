"""Properties of the fold over generated pipelines: order, duplicates and chunking never matter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pudato_registry import events as models
from pudato_registry import factory
from pudato_registry.events import DataReference, ExecutionRecord
from pudato_registry.projection import JobState, Projection, StepState, fold
from pudato_registry.wire import Event, from_model

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
# Few ids, few instants: collisions (ties, shared references, retries) are the point.
JOBS = ("job-a", "job-b")
STEPS = ("step-1", "step-2", "step-3")
WORDS = ("x", "y", "z")

instants = st.integers(0, 6).map(lambda s: T0 + timedelta(seconds=s))
metadata = st.none() | st.dictionaries(st.sampled_from(WORDS), st.integers(0, 3), max_size=2)
references = st.lists(
    st.builds(lambda t, loc, rows: DataReference(ref_type=t, location=loc,
                                                 metadata={"rows": rows}),
              st.sampled_from(("table", "file")), st.sampled_from(WORDS), st.integers(0, 2)),
    max_size=3,
)
executions = st.lists(
    st.builds(lambda kind, n: ExecutionRecord(execution_type=kind, details={"n": n}),
              st.sampled_from(("sql", "dbt")), st.integers(0, 1)),
    max_size=2,
)


@st.composite
def an_event(draw: st.DrawFn) -> models.Event:
    """One valid event of any type, over a small world of ids, instants and values."""
    job = draw(st.sampled_from(JOBS))
    common: dict[str, Any] = {
        "occurred_at": draw(instants), "metadata": draw(metadata),
        "correlation_id": draw(st.sampled_from(("c1", "c2"))),
        "event_id": f"e{draw(st.integers(0, 10**6)):07d}",
    }
    kind = draw(st.sampled_from((
        "job.submitted", "job.started", "job.succeeded", "job.failed", "job.cancelled",
        "step.submitted", "step.started", "step.succeeded", "step.failed", "step.skipped",
    )))
    step = draw(st.sampled_from(STEPS))
    name: dict[str, Any] = {"step_name": draw(st.sampled_from(WORDS)), "handler_type": "transform",
            "action": draw(st.sampled_from(("build", "test")))}
    duration = draw(st.none() | st.integers(0, 5000))
    error = draw(st.none() | st.sampled_from(("boom", "bang")))
    final = draw(st.booleans())  # amendment 4: rank 3 on terminal events
    if kind == "job.submitted":
        return factory.job_submitted(
            job, pipeline=draw(st.sampled_from(WORDS)), logic_version="v1",
            environment=draw(st.none() | st.just("prod")), namespace=draw(st.none() | st.just("n")),
            parameters=draw(st.none() | st.just({"p": 1})), **common)
    if kind == "job.started":
        return factory.job_started(job, **common)
    if kind == "job.succeeded":
        return factory.job_succeeded(job, final=final, **common)
    if kind == "job.failed":
        return factory.job_failed(job, error=error or "failed", final=final, **common)
    if kind == "job.cancelled":
        return factory.job_cancelled(job, error=error, final=final, **common)
    if kind == "step.submitted":
        return factory.step_submitted(job, step, **name, inputs=draw(references), **common)
    if kind == "step.started":
        return factory.step_started(job, step, **name, inputs=draw(references), **common)
    if kind == "step.succeeded":
        return factory.step_succeeded(job, step, inputs=draw(references),
                                      outputs=draw(references), executions=draw(executions),
                                      duration_ms=duration, final=final, **common)
    if kind == "step.failed":
        return factory.step_failed(job, step, error=error or "failed", outputs=draw(references),
                                   executions=draw(executions), duration_ms=duration,
                                   final=final, **common)
    return factory.step_skipped(job, step, error=error, final=final, **common)


def _rows(projection: Projection) -> tuple[list[Any], list[Any]]:
    return projection.job_rows(), projection.step_rows()


def _distinct(events: list[Event]) -> list[Event]:
    """One event per id, as the spec's set is: the first of each id."""
    seen: dict[str, Event] = {}
    for event in events:
        seen.setdefault(event.event_id, event)
    return list(seen.values())


pipelines = st.lists(an_event().map(from_model), min_size=1, max_size=40).map(_distinct)


@settings(max_examples=300, deadline=None)
@given(pipelines, st.randoms(use_true_random=False))
def test_any_permutation_gives_the_same_rows(events: list[Event], rng: Any) -> None:
    shuffled = list(events)
    rng.shuffle(shuffled)
    assert _rows(fold(shuffled)) == _rows(fold(events))


@settings(max_examples=300, deadline=None)
@given(pipelines, st.lists(st.integers(0, 39), max_size=30), st.randoms(use_true_random=False))
def test_any_duplication_gives_the_same_rows(events: list[Event], picks: list[int],
                                             rng: Any) -> None:
    repeated = events + [events[i % len(events)] for i in picks]
    rng.shuffle(repeated)
    assert _rows(fold(repeated)) == _rows(fold(events))


def _resume(previous: Projection) -> Projection:
    """A projection rebuilt from the encoded states, as the worker reads them back."""
    return Projection(
        jobs={i: JobState.load(i, s.dump()) for i, s in previous.jobs.items()},
        steps={i: StepState.load(i, s.dump()) for i, s in previous.steps.items()},
    )


@settings(max_examples=300, deadline=None)
@given(pipelines, st.lists(st.integers(1, 10), max_size=10), st.randoms(use_true_random=False))
def test_any_split_into_saved_and_resumed_chunks_gives_the_same_rows(
        events: list[Event], sizes: list[int], rng: Any) -> None:
    shuffled = list(events)
    rng.shuffle(shuffled)
    projection = Projection()
    start = 0
    for size in [*sizes, len(shuffled)]:
        projection = _resume(projection)
        projection.apply_all(shuffled[start:start + size])
        start += size
    assert _rows(projection) == _rows(fold(events))


@settings(max_examples=300, deadline=None)
@given(pipelines, st.lists(st.integers(1, 10), max_size=10), st.randoms(use_true_random=False))
def test_writing_only_what_each_batch_changed_gives_the_rows_of_one_fold(
        events: list[Event], sizes: list[int], rng: Any) -> None:
    """As the worker writes: each batch folds into the saved states it reads, encoded, and
    writes the rows and states of the entities it marks changed, and nothing else."""
    shuffled = list(events)
    rng.shuffle(shuffled)
    job_states: dict[str, str] = {}
    step_states: dict[str, str] = {}
    jobs: dict[str, Any] = {}
    steps: dict[str, Any] = {}
    start = 0
    for size in [*sizes, len(shuffled)]:
        batch = shuffled[start:start + size]
        start += size
        projection = Projection(saved_jobs=dict(job_states), saved_steps=dict(step_states))
        projection.apply_all(batch)
        jobs.update((row.job_id, row) for row in projection.job_rows(only_changed=True))
        steps.update((row.step_id, row) for row in projection.step_rows(only_changed=True))
        job_states.update((i, projection.jobs[i].dump()) for i in projection.changed_jobs)
        step_states.update((i, projection.steps[i].dump()) for i in projection.changed_steps)
    expected = fold(events)
    assert (sorted(jobs.values()), sorted(steps.values())) == _rows(expected)
    # The same states (their encoding may order keys differently: not compared).
    assert {i: JobState.load(i, s) for i, s in job_states.items()} == expected.jobs
    assert {i: StepState.load(i, s) for i, s in step_states.items()} == expected.steps


@settings(max_examples=200, deadline=None)
@given(pipelines)
def test_refolding_seen_events_changes_nothing(events: list[Event]) -> None:
    projection = fold(events)
    before = _rows(projection), {i: s.dump() for i, s in projection.steps.items()}
    resumed = _resume(projection)
    assert resumed.apply_all(events) == 0
    assert not resumed.changed_jobs
    assert not resumed.changed_steps
    assert (_rows(resumed), {i: s.dump() for i, s in resumed.steps.items()}) == before


def test_a_duplicate_id_is_dropped_whatever_it_holds() -> None:
    first = factory.job_failed("j", error="first", event_id="same", occurred_at=T0)
    second = factory.job_succeeded("j", event_id="same", occurred_at=T0 + timedelta(1))
    (row,) = fold([from_model(first), from_model(second)]).job_rows()
    assert (row.status, row.error) == ("failed", "first")


V1_STEP = (
    '[1,["a","b"],[2,2000,"b","success",null,2424],1000,'
    '{"step_name":[1000,"a","m0"],"action":[1000,"a","build"]},'
    '{"attempt":[1000,"a",1],"rows":[2000,"b",5]},[2000,"b","job-1","corr-1"],'
    '[["table","raw.x",[1000,"a",0],[1000,"a",0],'
    '{"ref_type":"table","location":"raw.x","format":"csv","metadata":{}}]],'
    '[["table","out.y",[2000,"b",0],[2000,"b",0],'
    '{"ref_type":"table","location":"out.y","format":null,"metadata":{"n":1}}]],'
    '[["{\\"details\\":{\\"m\\":[\\"x\\"]},\\"execution_type\\":\\"dbt\\"}",[2000,"b",0],'
    '{"execution_type":"dbt","details":{"m":["x"]}}]]]'
)
V1_JOB = ('[1,["a"],[0,1000,"a","pending",null,null],null,{"pipeline":[1000,"a","p"]},'
          '{"k":[1000,"a",1]},1000,1000]')


def test_states_saved_by_an_older_worker_are_read_and_saved_smaller() -> None:
    step = StepState.load("s", V1_STEP)
    job = JobState.load("j", V1_JOB)
    for old, cls, key in ((step, StepState, "s"), (job, JobState, "j")):
        again = cls.load(key, old.dump())
        assert again.row() == old.row()
        assert again.dump() == old.dump()
        assert old.dump().startswith("[2,")
    assert step.row().executions == [{"execution_type": "dbt", "details": {"m": ["x"]}}]
    assert len(step.dump()) < len(V1_STEP) * 0.75
