"""The fold against the golden vectors: exact rows, and the right rejections."""

from __future__ import annotations

import pytest

from pudato_registry.projection import fold
from pudato_registry.validate import Rejection, RejectionKind, validate
from pudato_registry.wire import Event
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
        k.TOMBSTONE, k.MISSING_FIELD, k.MISSING_FIELD, k.NOT_JSON, k.MISSING_FIELD,
        k.MISSING_FIELD, k.NOT_OBJECT, k.NOT_UTF8, k.INVALID_FIELD, k.INVALID_FIELD,
        k.STEP_ID_NOT_ALLOWED, k.UNKNOWN_EVENT_TYPE, k.NAIVE_TIMESTAMP, k.INVALID_FIELD,
        k.NOT_OBJECT, k.UNSUPPORTED_SCHEMA_VERSION, k.INVALID_FIELD, k.INVALID_FIELD,
        k.MISSING_FIELD, k.MISSING_FIELD,
    ]
