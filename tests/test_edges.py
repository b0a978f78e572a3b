"""Amendment 3's logical lineage edges, computed from rows (pure): the golden vectors."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pudato_registry.edges import StepView, contributions_of, delta, edges_of
from pudato_registry.projection import fold
from pudato_registry.validate import Rejection, validate
from pudato_registry.wire import Event
from tests.vectors import Vector, all_vectors, as_expected, edge_key

VECTORS = all_vectors()


def _events(vector: Vector) -> list[Event]:
    found = [validate(m.value) for m in vector.messages]
    return [e for e in found if not isinstance(e, Rejection)]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_the_vectors_rows_give_their_edges(vector: Vector) -> None:
    edges = [e.row() for e in edges_of(vector.jobs, vector.steps)]
    assert edges == sorted(vector.edges, key=edge_key)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_the_folded_rows_give_the_same_edges_in_any_order(vector: Vector) -> None:
    events = _events(vector)
    for order in (events, events[::-1], random.Random(7).sample(events, len(events))):
        projection = fold(order)
        jobs = [r._asdict() for r in projection.job_rows()]
        steps = [r._asdict() for r in projection.step_rows()]
        edges = [as_expected(e.row()) for e in edges_of(jobs, steps)]
        assert edges == sorted(vector.edges, key=edge_key)


def test_what_contributes_nothing() -> None:
    job = {"job_id": "j", "pipeline": "p", "namespace": "n", "environment": "e"}
    step = {"step_id": "s", "job_id": "j", "step_name": "load", "status": "running",
            "started_at": None, "completed_at": None,
            "inputs": [{"ref_type": "table", "location": "raw.a"}], "outputs": []}
    assert edges_of([job], [step]) == []  # submitted only: not seen yet
    seen = {**step, "started_at": "2026-11-01T00:00:00.000000Z"}
    assert edges_of([{**job, "pipeline": None}], [seen]) == []  # a job without a pipeline
    assert edges_of([], [seen]) == []  # no job row yet
    assert edges_of([job], [{**seen, "step_name": None}]) == []
    [edge] = edges_of([job], [seen])
    assert (edge.location, edge.direction, edge.runs) == ("raw.a", "in", 1)


def test_a_location_listed_twice_counts_once_with_the_first_entrys_ref_type() -> None:
    job = {"job_id": "j", "pipeline": "p", "namespace": "n", "environment": "e"}
    steps = [{"step_id": f"s{n}", "job_id": "j", "step_name": "load", "status": status,
              "started_at": f"2026-11-0{n}T00:00:00.000000Z", "completed_at": None,
              "inputs": [], "outputs": [{"ref_type": "table", "location": "mart.a"},
                                        {"ref_type": "view", "location": "mart.a"}]}
             for n, status in ((1, "success"), (2, "failed"))]
    [edge] = edges_of([job], steps)
    assert (edge.runs, edge.ref_type, edge.last_step_id, edge.last_status) == (
        2, "table", "s2", "failed")
    assert (edge.first_seen, edge.last_seen) == ("2026-11-01T00:00:00.000000Z",
                                                 "2026-11-02T00:00:00.000000Z")


def _view(**changes: Any) -> StepView:
    base: dict[str, Any] = {
        "step_id": "s", "job_id": "j", "step_name": "load", "status": "running",
        "seen": "2026-11-01T00:00:00Z", "inputs": (("raw.a", "table"),), "outputs": ()}
    return StepView(**{**base, **changes})


JOB = ("n", "e", "p")
KEY = ("raw.a", "in", "n", "e", "p", "load")


def test_a_new_contribution_adds_a_run_and_an_unchanged_one_nothing() -> None:
    after = contributions_of(_view(), JOB)
    found = delta([({}, after)])
    assert (found.increments[KEY].runs, found.recompute) == (1, set())
    assert not delta([(after, after)])


def test_a_new_status_merges_without_a_run_and_a_move_in_time_recounts() -> None:
    before = contributions_of(_view(), JOB)
    done = delta([(before, contributions_of(_view(status="success"), JOB))])
    assert (found := done.increments[KEY]).runs == 0
    assert found.latest.status == "success"
    later = delta([(before, contributions_of(_view(seen="2026-11-01T00:00:05Z"), JOB))])
    assert (later.increments, later.recompute) == ({}, {KEY})


def test_a_contribution_that_left_recounts_its_edge_and_a_repair_recounts_all() -> None:
    before = contributions_of(_view(), JOB)
    renamed = contributions_of(_view(step_name="load2"), JOB)
    moved = delta([(before, renamed)])
    assert moved.recompute == {KEY}
    assert [k[5] for k in moved.increments] == ["load2"]
    assert delta([(before, before)], rewrite=True).recompute == {KEY}


def test_runs_of_one_batch_merge_into_one_increment() -> None:
    parts = [contributions_of(_view(step_id=f"s{n}", seen=f"2026-11-01T00:00:0{n}Z"), JOB)
             for n in (3, 1, 2)]
    [increment] = delta([({}, p) for p in parts]).increments.values()
    assert (increment.runs, increment.first_seen, increment.latest.step_id) == (
        3, "2026-11-01T00:00:01Z", "s3")
