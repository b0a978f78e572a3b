"""The compiled decoder against the models: same fields, and never more lenient or different."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from pudato_registry import events, wire
from pudato_registry.validate import Rejection, RejectionKind, validate
from tests.fuzz import places

MODELS = {cls.__name__: cls for cls in get_args(get_args(events.Event)[0])}
DECODED = {cls.__name__: cls for cls in get_args(wire.Event)}


def _model_fields(model: type[BaseModel]) -> dict[str, bool]:
    return {name: info.is_required() for name, info in model.model_fields.items()}


def _struct_fields(struct: type[msgspec.Struct]) -> dict[str, bool]:
    return {f.encode_name: f.required for f in msgspec.structs.fields(struct)}


def test_every_event_type_has_a_mirror_with_the_same_fields() -> None:
    assert MODELS.keys() == DECODED.keys()
    for name, model in MODELS.items():
        decoded = DECODED[name]
        assert decoded.event_type == model.model_fields["event_type"].annotation.__args__[0]
        envelope = _model_fields(model)
        del envelope["event_type"]  # the union's tag
        assert _struct_fields(decoded) == envelope, name
        data_model = model.model_fields["data"].annotation
        data_struct = msgspec.structs.fields(decoded)[-1].type
        assert isinstance(data_model, type)
        assert issubclass(data_model, BaseModel)
        assert _struct_fields(data_struct) == _model_fields(data_model), name


def _models_say(value: bytes) -> wire.Event | None:
    try:
        return wire.from_model(events.EVENT_ADAPTER.validate_json(value))
    except ValidationError:
        return None


# Values that sit on the edges where JSON libraries differ.
TIMES = ["2026-11-01T12:00:00Z", "2026-11-01T12:00:00.5+02:00", "2026-11-01t12:00:00z",
         "2026-11-01 12:00:00Z", "2026-11-01T12:00:00.1234567Z", "2026-11-01T12:00:00.9999999Z",
         "2026-11-01T12:00Z", "2026-11-01T12:00:00", "2026-02-30T12:00:00Z",
         "2026-11-01T24:00:00Z", "2026-11-01T12:00:00+24:00", "2026-11-01T12:00:00,5Z",
         "2026-11-01T12:00:00+0100", "9999-12-31T23:59:59.999999-01:00", "0001-01-01T00:00:00Z"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2**31 - 1, 2**31]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(TIMES),
    st.text(max_size=3), st.just("x" * 200), st.just("x" * 201), st.just("😀" * 200),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)
REF = {"ref_type": "table", "location": "main.x", "format": "csv", "metadata": {"rows": 1}}
RUN = {"execution_type": "dbt", "details": {"models": ["m"]}}
DATA = {
    "job.submitted": {"pipeline": "p", "logic_version": "v", "environment": "prod",
                      "namespace": "n", "request": {}, "parameters": {"d": 1},
                      "dag_run_id": "r", "metadata": {"k": 1}},
    "job.started": {"final": True},  # not a terminal event: an unknown field, ignored
    "job.succeeded": {"final": False},
    "job.failed": {"error": "boom", "final": True}, "job.cancelled": {"error": None, "final": None},
    "step.submitted": {"step_name": "s", "handler_type": "h", "action": "a", "inputs": [REF]},
    "step.started": {"step_name": "s", "handler_type": "h", "action": "a"},
    "step.succeeded": {"step_name": "s", "inputs": [REF], "outputs": [REF, REF],
                       "executions": [RUN], "duration_ms": 5, "metadata": {}},
    "step.failed": {"error": "e", "outputs": [REF], "executions": [RUN, RUN], "final": True},
    "step.skipped": {"error": "why", "action": "a", "final": True},
}


def _valid(kind: str) -> dict[str, Any]:
    message = {"schema_version": 1, "event_id": "e", "event_type": kind,
               "occurred_at": "2026-11-01T12:00:00.5+02:00", "correlation_id": "c",
               "job_id": "j", "data": json.loads(json.dumps(DATA.get(kind, {})))}
    if kind.startswith("step."):
        message["step_id"] = "s"
    return message


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message of any type with up to three edits: a value replaced, or a key removed."""
    message = _valid(draw(st.sampled_from(events.EVENT_TYPES)))
    for _ in range(draw(st.sampled_from((0, 1, 1, 2, 3)))):
        *parent_path, last = draw(st.sampled_from(places(message)))
        parent = message
        for key in parent_path:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[last]
        else:
            parent[last] = draw(json_values)
    return message


@settings(max_examples=3000, deadline=None)
@given(messages())
@example({"schema_version": 1, "event_id": "e", "event_type": "job.started",
          "occurred_at": "2026-11-01T12:00:00.9999999Z", "correlation_id": "c", "job_id": "j"})
@example({"schema_version": 1, "event_id": "e", "event_type": "job.started",
          "occurred_at": "2026-11-01T12:00:00Z", "correlation_id": "c", "job_id": "j",
          "data": {"metadata": {"deep": json.loads("[" * 250 + "]" * 250)}}})
def test_the_decoder_accepts_only_what_the_models_accept_with_the_same_values(
        message: dict[str, Any]) -> None:
    value = json.dumps(message).encode()
    by_models = _models_say(value)
    try:
        fast: wire.Event | None = wire.decode(value)
    except Exception:  # any refusal leaves it to the models
        fast = None
    if fast is not None:
        assert fast == by_models
    result = validate(value)
    if isinstance(result, Rejection) and result.kind is RejectionKind.NUL_CHARACTER:
        return  # a rule of validate's own, on top of the models
    assert (None if isinstance(result, Rejection) else result) == by_models


def _message(**changes: Any) -> bytes:
    return msgspec.json.encode({"schema_version": 1, "event_id": "e", "event_type": "job.started",
                         "occurred_at": "2026-11-01T12:00:00Z", "correlation_id": "c",
                         "job_id": "j", **changes})


def test_what_the_decoder_leaves_to_the_models_is_still_accepted() -> None:
    value = _message(data={"metadata": {"ratio": float("nan")}}).replace(b"null", b"NaN")
    with pytest.raises(msgspec.DecodeError):
        wire.decode(value)  # NaN is not JSON; pydantic reads it all the same
    event = validate(value)
    assert not isinstance(event, Rejection)
    assert event.data.metadata == {"ratio": None}  # as pydantic and msgspec write NaN


@pytest.mark.parametrize(("stamp", "kind"), [
    ("1700000000", RejectionKind.INVALID_FIELD), ("2026-11-01", RejectionKind.INVALID_FIELD),
    ("2026-11-01T12:00Z", RejectionKind.INVALID_FIELD),
    ("2026-11-01T12:00:00", RejectionKind.NAIVE_TIMESTAMP),
])
def test_a_timestamp_is_rfc_3339_with_an_offset(stamp: str, kind: RejectionKind) -> None:
    result = validate(_message(occurred_at=stamp))
    assert isinstance(result, Rejection)
    assert result.kind is kind


def test_fraction_digits_beyond_the_sixth_round_on_both_paths() -> None:
    value = _message(occurred_at="2026-11-01T12:00:00.9999996Z")
    second = datetime(2026, 11, 1, 12, 0, 1, tzinfo=UTC)
    assert wire.decode(value).occurred_at == second
    assert events.EVENT_ADAPTER.validate_json(value).occurred_at == second


# --- amendment 1: per-event limits, the same on both paths --------------------------------

_REF = {"ref_type": "t", "location": "l"}
LIMITS = [  # (event type, data at the limit, data one over it, kind)
    ("job.submitted", {"pipeline": "é" * 512, "logic_version": "v"},
     {"pipeline": "é" * 513, "logic_version": "v"}, RejectionKind.STRING_TOO_LONG),
    ("job.submitted", {"pipeline": "p", "logic_version": "v", "environment": "😀" * 512},
     {"pipeline": "p", "logic_version": "v", "environment": "😀" * 513},
     RejectionKind.STRING_TOO_LONG),
    ("job.submitted", {"pipeline": "p", "logic_version": "v", "namespace": "n" * 512},
     {"pipeline": "p", "logic_version": "v", "namespace": "n" * 513},
     RejectionKind.STRING_TOO_LONG),
    ("job.submitted", {"pipeline": "p", "logic_version": "v" * 1024, "dag_run_id": "d" * 1024},
     {"pipeline": "p", "logic_version": "v", "dag_run_id": "d" * 1025},
     RejectionKind.STRING_TOO_LONG),
    ("job.submitted", {"pipeline": "p", "logic_version": "v" * 1024},
     {"pipeline": "p", "logic_version": "v" * 1025}, RejectionKind.STRING_TOO_LONG),
    ("step.started", {"step_name": "s" * 512, "handler_type": "h" * 512, "action": "a" * 512},
     {"step_name": "s", "handler_type": "h", "action": "a" * 513},
     RejectionKind.STRING_TOO_LONG),
    ("step.skipped", {"step_name": "s" * 512}, {"step_name": "s" * 513},
     RejectionKind.STRING_TOO_LONG),
    ("step.succeeded", {"outputs": [{"ref_type": "r" * 64, "location": "l" * 4096,
                                     "format": "f" * 64}]},
     {"outputs": [{"ref_type": "r" * 65, "location": "l"}]}, RejectionKind.STRING_TOO_LONG),
    ("step.succeeded", {"outputs": [{"ref_type": "r", "location": "l", "format": "f" * 64}]},
     {"outputs": [{"ref_type": "r", "location": "l", "format": "f" * 65}]},
     RejectionKind.STRING_TOO_LONG),
    ("step.succeeded", {"inputs": [{"ref_type": "r", "location": "l" * 4096}]},
     {"inputs": [{"ref_type": "r", "location": "l" * 4097}]}, RejectionKind.STRING_TOO_LONG),
    ("step.succeeded", {"inputs": [_REF] * 10_000, "outputs": [_REF] * 10_000},
     {"outputs": [_REF] * 10_001}, RejectionKind.TOO_MANY_ITEMS),
    ("step.submitted", {"step_name": "s", "handler_type": "h", "action": "a",
                        "inputs": [_REF] * 10_000},
     {"step_name": "s", "handler_type": "h", "action": "a", "inputs": [_REF] * 10_001},
     RejectionKind.TOO_MANY_ITEMS),
    ("step.failed", {"error": "e", "executions": [RUN] * 1000},
     {"error": "e", "executions": [RUN] * 1001}, RejectionKind.TOO_MANY_ITEMS),
    ("job.started", {"metadata": {str(i): i for i in range(1000)}},
     {"metadata": {str(i): i for i in range(1001)}}, RejectionKind.TOO_MANY_KEYS),
    ("step.succeeded", {"metadata": {str(i): i for i in range(1000)}},
     {"metadata": {str(i): i for i in range(1001)}}, RejectionKind.TOO_MANY_KEYS),
    ("job.failed", {"error": "x" * 500_000}, None, None),  # error: no limit but the size
]


@pytest.mark.parametrize(("kind", "at", "over", "rejected"), LIMITS,
                         ids=lambda v: v if isinstance(v, str) else None)
def test_per_event_limits_hold_on_both_paths(kind: str, at: dict[str, Any],
                                              over: dict[str, Any] | None,
                                              rejected: RejectionKind | None) -> None:
    at_limit = json.dumps({**_valid(kind), "data": at}).encode()
    assert wire.decode(at_limit) == _models_say(at_limit) == validate(at_limit)
    if over is None:
        return
    over_limit = json.dumps({**_valid(kind), "data": over}).encode()
    with pytest.raises(msgspec.ValidationError):
        wire.decode(over_limit)
    assert _models_say(over_limit) is None
    result = validate(over_limit)
    assert isinstance(result, Rejection)
    assert result.kind is rejected, result.message
    assert "at most" in result.message or "more than" in result.message


def test_the_json_schema_states_the_limits() -> None:
    text = json.dumps(events.json_schema())
    for limit in ('"maxLength": 512', '"maxLength": 1024', '"maxLength": 64',
                  '"maxLength": 4096', '"maxItems": 10000', '"maxItems": 1000',
                  '"maxProperties": 1000'):
        assert limit in text, limit


@pytest.mark.parametrize("changes", [
    {"event_type": "x" * 1_000_000},
    {"schema_version": "9" * 900_000},
    {"schema_version": {"k" * 500_000: ["v" * 400_000]}},
])
def test_a_rejection_quotes_the_input_but_never_copies_it(changes: dict[str, Any]) -> None:
    value = _message(**changes)
    result = validate(value, max_bytes=2 * len(value))
    assert isinstance(result, Rejection)
    assert len(result.message) < 400, result.message


def test_an_integer_too_long_to_print_is_rejected_not_raised() -> None:
    value = _message().replace(b'"schema_version":1', b'"schema_version":' + b"9" * 5000)
    result = validate(value)
    assert isinstance(result, Rejection)
    assert len(result.message) < 400


@pytest.mark.parametrize("kind", ["job.succeeded", "job.failed", "job.cancelled",
                                  "step.succeeded", "step.failed", "step.skipped"])
@pytest.mark.parametrize("final", [1, "true", 0, [], {}])
def test_final_is_a_boolean_on_both_paths(kind: str, final: Any) -> None:
    message = _valid(kind)
    message["data"]["final"] = final
    value = json.dumps(message).encode()
    with pytest.raises(msgspec.ValidationError):
        wire.decode(value)
    result = validate(value)
    assert isinstance(result, Rejection)
    assert result.kind is RejectionKind.INVALID_FIELD


def test_final_on_a_non_terminal_event_is_ignored() -> None:
    message = _valid("step.started")
    message["data"]["final"] = "anything"
    result = validate(json.dumps(message).encode())
    assert not isinstance(result, Rejection)
    assert not hasattr(result.data, "final")
