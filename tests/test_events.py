"""The wire models: strictness, defaults, and the committed JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from pudato_registry import factory, wire
from pudato_registry.cli import main
from pudato_registry.events import DataReference, Event, ExecutionRecord, json_schema
from pudato_registry.validate import Rejection, RejectionKind, validate

SCHEMA_FILE = Path(__file__).parents[1] / "schema" / "events-v1.schema.json"


def test_committed_json_schema_is_in_sync_with_the_models() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), (
        "regenerate it: pudato-registry schema > schema/events-v1.schema.json"
    )


def test_schema_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_every_constructor_round_trips_through_the_wire() -> None:
    ref = DataReference(ref_type="table", location="main.x")
    built: list[Event] = [
        factory.job_submitted("j", pipeline="p", logic_version="v"),
        factory.job_started("j"), factory.job_succeeded("j"),
        factory.job_failed("j", error="e"), factory.job_cancelled("j"),
        factory.step_submitted("j", "s", step_name="n", handler_type="h", action="a"),
        factory.step_started("j", "s", step_name="n", handler_type="h", action="a",
                             inputs=[ref]),
        factory.step_succeeded("j", "s", outputs=[ref], duration_ms=3,
                               executions=[ExecutionRecord(execution_type="sql")]),
        factory.step_failed("j", "s", error="boom"), factory.step_skipped("j", "s"),
    ]
    for event in built:
        assert validate(factory.encode(event)) == wire.from_model(event)
        assert event.occurred_at.tzinfo is not None
    assert len({e.event_id for e in built}) == len(built)


def _event(**changes: object) -> bytes:
    base: dict[str, object] = {
        "schema_version": 1, "event_id": "e", "event_type": "step.succeeded",
        "occurred_at": "2026-11-01T12:00:00Z", "correlation_id": "c", "job_id": "j",
        "step_id": "s",
    }
    return msgspec.json.encode({**base, **changes})


@pytest.mark.parametrize(("changes", "kind"), [
    ({"schema_version": "1"}, RejectionKind.UNSUPPORTED_SCHEMA_VERSION),
    ({"schema_version": True}, RejectionKind.UNSUPPORTED_SCHEMA_VERSION),
    ({"occurred_at": 1_700_000_000}, RejectionKind.INVALID_FIELD),
    ({"occurred_at": "2026-11-01"}, RejectionKind.INVALID_FIELD),
    ({"event_id": ""}, RejectionKind.INVALID_FIELD),
    ({"step_id": None}, RejectionKind.INVALID_FIELD),
    ({"data": {"duration_ms": 1.5}}, RejectionKind.INVALID_FIELD),
    ({"data": {"duration_ms": 2**31}}, RejectionKind.INVALID_FIELD),
    ({"data": {"outputs": [{"ref_type": "t", "location": 5}]}}, RejectionKind.INVALID_FIELD),
    ({"data": {"metadata": "x"}}, RejectionKind.INVALID_FIELD),
    ({"event_type": "step.failed"}, RejectionKind.MISSING_FIELD),
])
def test_strict_rules(changes: dict[str, object], kind: RejectionKind) -> None:
    result = validate(_event(**changes))
    assert isinstance(result, Rejection)
    assert result.kind is kind, result.message


@pytest.mark.parametrize("value", [
    b"[" * 100_000 + b"]" * 100_000,
    _event(data={"metadata": {"deep": [[[]]]}}).replace(b"[[[]]]", b"[" * 5000 + b"]" * 5000),
])
def test_nesting_too_deep_to_parse_is_rejected_not_raised(value: bytes) -> None:
    result = validate(value)
    assert isinstance(result, Rejection)
    assert result.kind is RejectionKind.NOT_JSON


def test_unknown_fields_are_ignored_and_defaults_filled() -> None:
    event = validate(_event(extra=1, data={"future": True,
                                           "outputs": [{"ref_type": "t", "location": "l",
                                                        "new": 1}]}))
    assert not isinstance(event, Rejection)
    assert event.data.outputs == [  # type: ignore[union-attr]
        wire.DataReference(ref_type="t", location="l", format=None, metadata={})]


def test_validate_never_raises_on_arbitrary_bytes() -> None:
    from hypothesis import given, settings  # noqa: PLC0415
    from hypothesis import strategies as st  # noqa: PLC0415

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
    def check(value: bytes) -> None:
        assert isinstance(validate(value), Rejection)

    check()
