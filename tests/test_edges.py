"""Amendment 3's logical lineage edges, computed from rows (pure): the golden vectors."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pudato_registry.edges import edges_of
from pudato_registry.projection import fold
from pudato_registry.validate import Rejection, validate
from pudato_registry.wire import Event
from tests.vectors import Vector, all_vectors, as_expected

VECTORS = all_vectors()


def _key(edge: dict[str, Any]) -> tuple[str, ...]:
    return tuple(edge[c] for c in ("location", "direction", "namespace", "environment",
                                   "pipeline", "step_name"))


def _events(vector: Vector) -> list[Event]:
    found = [validate(m.value) for m in vector.messages]
    return [e for e in found if not isinstance(e, Rejection)]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_the_vectors_rows_give_their_edges(vector: Vector) -> None:
    edges = [e.row() for e in edges_of(vector.jobs, vector.steps)]
    assert edges == sorted(vector.edges, key=_key)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_the_folded_rows_give_the_same_edges_in_any_order(vector: Vector) -> None:
    events = _events(vector)
    for order in (events, events[::-1], random.Random(7).sample(events, len(events))):
        projection = fold(order)
        jobs = [r._asdict() for r in projection.job_rows()]
        steps = [r._asdict() for r in projection.step_rows()]
        edges = [as_expected(e.row()) for e in edges_of(jobs, steps)]
        assert edges == sorted(vector.edges, key=_key)


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
