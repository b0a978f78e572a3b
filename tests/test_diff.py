"""jobs diff and jobs reproduce, pure: properties over folded rows, and each section."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pudato_registry import diff
from pudato_registry.projection import fold
from pudato_registry.wire import Event
from tests.test_projection_properties import JOBS, pipelines


def _facts(events: list[Event], job_id: str) -> diff.RunFacts | None:
    projection = fold(events)
    jobs = {r.job_id: r._asdict() for r in projection.job_rows()}
    if job_id not in jobs:
        return None
    steps = [r._asdict() for r in projection.step_rows() if r.job_id == job_id]
    return diff.RunFacts(jobs[job_id], steps)


def _both(events: list[Event]) -> tuple[diff.RunFacts, diff.RunFacts] | None:
    a, b = _facts(events, JOBS[0]), _facts(events, JOBS[1])
    return None if a is None or b is None else (a, b)


@settings(max_examples=200, deadline=None)
@given(pipelines)
def test_a_run_against_itself_differs_in_nothing(events: list[Event]) -> None:
    for job in JOBS:
        facts = _facts(events, job)
        if facts is not None:
            found = diff.compare(facts, facts)
            assert not found.differs
            # Nothing but the outcome, said of both sides alike, when the run failed.
            if facts.job["status"] in ("failed", "cancelled", "skipped"):
                b, a = found.verdict
                assert (b[:2], a[:2], b[2:]) == ("B ", "A ", a[2:])
                assert ", the first divergence" not in b
            else:
                assert found.verdict == ["no differences (times and ids aside)"]


def _shape(found: diff.RunDiff, *, flip: bool = False) -> dict[str, Any]:
    """What a comparison says, with A and B swapped if asked: for the mirror property."""
    def change(c: diff.Change | None) -> Any:
        return None if c is None else (c.flipped() if flip else c)

    return {
        "differs": found.differs,
        "status": change(found.status), "logic_version": change(found.logic_version),
        "parameters": [change(c) for c in found.parameters],
        "request": [change(c) for c in found.request],
        "steps": {s.key: ((s.b, s.a) if flip else (s.a, s.b),
                          [c.flipped() if flip else c for c in s.outputs],
                          s.inputs_changed, s.sql is None) for s in found.steps},
        "inputs": {i.location: (i.b, i.a) if flip else (i.a, i.b) for i in found.inputs},
    }


@settings(max_examples=200, deadline=None)
@given(pipelines)
def test_b_against_a_mirrors_a_against_b(events: list[Event]) -> None:
    pair = _both(events)
    if pair is not None:
        a, b = pair
        assert _shape(diff.compare(a, b)) == _shape(diff.compare(b, a), flip=True)


@settings(max_examples=200, deadline=None)
@given(pipelines, st.randoms(use_true_random=False))
def test_the_comparison_depends_on_the_rows_only(events: list[Event], rng: Any) -> None:
    pair = _both(events)
    if pair is not None:
        shuffled = list(events)
        rng.shuffle(shuffled)
        again = _both(shuffled)
        assert again is not None
        assert diff.diff_as_dict(diff.compare(*pair)) == diff.diff_as_dict(
            diff.compare(*again))


# --- each section, by hand -------------------------------------------------------------

def _job(**changes: Any) -> dict[str, Any]:
    return {"job_id": "j", "pipeline": "p", "environment": "prod", "namespace": "n",
            "status": "success", "logic_version": "git:1", "parameters": {}, "request": {},
            "metadata": {}, "started_at": None, "completed_at": None, **changes}


def _step(name: str, n: int = 0, **changes: Any) -> dict[str, Any]:
    return {"step_id": f"{name}-{n}", "step_name": name, "status": "success",
            "started_at": f"2026-11-01T00:00:0{n}Z", "completed_at": None,
            "duration_ms": 100, "error": None, "inputs": [], "outputs": [],
            "executions": [], **changes}


def _ref(location: str, rows: int | None = None) -> dict[str, Any]:
    return {"ref_type": "table", "location": location,
            "metadata": {} if rows is None else {"row_count": rows}}


def _sql(text: str) -> list[dict[str, Any]]:
    return [{"execution_type": "sql", "details": {"sql": text}}]


def test_parameters_are_a_path_diff_with_secrets_masked() -> None:
    a = diff.RunFacts(_job(parameters={"date": "d1", "db": {"password": "x", "host": "h"}}),
                      [])
    b = diff.RunFacts(_job(parameters={"date": "d2", "db": {"password": "y", "host": "h"}}),
                      [])
    found = diff.compare(a, b)
    assert found.parameters == [diff.Change("date", "d1", "d2"),
                                diff.Change("db.password", "***", "***")]
    assert found.verdict == ["2 parameters changed"]


def test_the_verdict_is_in_root_cause_order() -> None:
    a = diff.RunFacts(_job(), [_step("load", 0, inputs=[_ref("raw.a", 100)],
                                     outputs=[_ref("stg.a", 100)]),
                               _step("model", 1, inputs=[_ref("stg.a")],
                                     outputs=[_ref("mart.m", 50)])])
    b = diff.RunFacts(_job(status="failed", logic_version="git:2", parameters={"x": 1}),
                      [_step("load", 0, inputs=[_ref("raw.a", 10)], outputs=[_ref("stg.a", 0)]),
                       _step("model", 1, status="failed", error="boom\nat line 2",
                             inputs=[_ref("stg.a")]),
                       _step("extra", 2)])
    found = diff.compare(a, b)
    assert found.verdict == [
        "B failed at step model, the first divergence", "logic_version changed (git:1 -> git:2)",
        "1 parameter changed", "row counts of 1 input moved > 50 %", "1 step only in B: extra",
        "1 output dropped to 0 rows"]
    [model] = [s for s in found.steps if s.key == "model"]
    assert diff.first_line(model.b["error"]) == "boom"  # type: ignore[index]


def test_a_retry_is_matched_attempt_by_attempt() -> None:
    a = diff.RunFacts(_job(), [_step("load", 0)])
    b = diff.RunFacts(_job(), [_step("load", 0, status="failed", error="timeout"),
                               _step("load", 1)])
    keys = {s.key: (s.a is not None, s.b is not None) for s in diff.compare(a, b).steps}
    assert keys == {"load": (True, True), "load#2": (False, True)}


def test_sql_that_differs_only_in_literals_is_told_apart_when_asked() -> None:
    a = diff.RunFacts(_job(), [_step("q", executions=_sql("select * from t where y = 2026"))])
    b = diff.RunFacts(_job(), [_step("q", executions=_sql("select * from t where y = 2027"))])
    plain = diff.compare(a, b)
    assert plain.verdict == ["SQL of 1 step changed"]
    [step] = plain.steps
    assert step.sql is not None
    assert "-select * from t where y = 2026" in step.sql.diff
    assert diff.compare(a, b, literals=True).verdict == [
        "SQL of 1 step differs only in literals"]


def test_a_step_slower_than_its_baseline_is_named() -> None:
    a = diff.RunFacts(_job(), [_step("load")])
    b = diff.RunFacts(_job(), [_step("load", duration_ms=5000)])
    found = diff.compare(a, b, baselines={"load": [100, 110, 120, 90, 100]})
    assert found.verdict == ["B slower: load took 50.0x its median"]
    assert not found.differs  # durations alone are no difference: exit 0


def test_an_input_overwritten_since_is_on_the_card() -> None:
    run = diff.RunFacts(_job(parameters={"api_token": "t", "day": "d"}),
                        [_step("load", inputs=[_ref("raw.a", 7)], outputs=[_ref("stg.a")])],
                        producers={"raw.a": {"job_id": "ingest-1", "step_name": "pull"}})
    found = diff.card(run, {"raw.a": {"job_id": "ingest-2", "completed_at": None}})
    assert [i.location for i in found.overwritten] == ["raw.a"]
    assert found.parameters == {"api_token": "***", "day": "d"}
    assert diff.card_as_dict(found)["overwritten_since"] == ["raw.a"]


def test_mirrored_counts_and_changes_flip() -> None:
    c = diff.CountChange("t", 10, 0)
    assert c.dropped_to_zero
    assert c.flipped().dropped_to_zero
    assert c.moved == -1.0
    assert diff.Change("p", 1, 2).flipped() == diff.Change("p", 2, 1)
