"""Raw message bytes to a typed :class:`~pudato_registry.wire.Event` or a :class:`Rejection`.

Pure and total: :func:`validate` never raises, whatever the bytes. The fast
path is one compiled msgspec pass straight from the bytes (:mod:`.wire`). A
message it refuses goes to the pydantic models (:mod:`.events`), which are
the contract: they either accept it after all (a form the fast path leaves to
them, such as a timestamp with a space for ``T``) or say precisely why not
(kind + message naming the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec
from pydantic import ValidationError
from pydantic_core import from_json

from pudato_registry import wire
from pudato_registry.events import EVENT_ADAPTER, EVENT_TYPES, SCHEMA_VERSION
from pudato_registry.settings import MIB


class RejectionKind(StrEnum):
    """Why a message is not a valid v1 event; the ``error.kind`` header of its dead letter."""

    TOMBSTONE = "tombstone"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    NAIVE_TIMESTAMP = "naive_timestamp"
    STEP_ID_NOT_ALLOWED = "step_id_not_allowed"
    NUL_CHARACTER = "nul_character"


@dataclass(frozen=True, slots=True)
class Rejection:
    """An invalid message: what kind of invalid, and a message a human can act on."""

    kind: RejectionKind
    message: str


def validate(value: bytes | None, max_bytes: int = MIB) -> wire.Event | Rejection:
    """Turn one message value into an event, or say why it is not one. Never raises."""
    try:
        return _validate(value, max_bytes)
    except RecursionError:  # a parser's own limit: nothing to explain, and nothing to store
        return Rejection(RejectionKind.NOT_JSON, "value is not JSON this worker can read: "
                                                 "nested too deeply")


def _validate(value: bytes | None, max_bytes: int) -> wire.Event | Rejection:
    if value is None:
        return Rejection(RejectionKind.TOMBSTONE, "a null value (tombstone) is not an event")
    if len(value) > max_bytes:
        return Rejection(
            RejectionKind.TOO_LARGE, f"value is {len(value)} bytes, over the limit of {max_bytes}"
        )
    try:
        event = wire.decode(value)
    except Exception:  # whatever the fast path refuses or trips on, the models decide
        try:
            event = wire.from_model(EVENT_ADAPTER.validate_json(value))
        except ValidationError:
            return _explain(value)
        except Exception as exc:
            return Rejection(RejectionKind.INVALID_FIELD, f"unexpected validation failure: {exc!r}")
    # PostgreSQL can store no U+0000 in TEXT or JSONB; JSON can only carry it
    # escaped, so a cheap look at the bytes rules it out for nearly every event.
    if b"\\u0000" in value and _has_nul(from_json(value)):  # from_json: NaN, as the models
        return Rejection(
            RejectionKind.NUL_CHARACTER, "a string holds U+0000, which PostgreSQL cannot store"
        )
    return event


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _explain(value: bytes) -> Rejection:
    """The slow path: find the first rule the message breaks, in the spec's order."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(RejectionKind.NOT_UTF8, f"value is not UTF-8: {exc.reason} at byte "
                                                 f"{exc.start}")
    try:
        parsed = from_json(text)
    except ValueError as exc:
        return Rejection(RejectionKind.NOT_JSON, f"value is not JSON: {exc}")
    if not isinstance(parsed, dict):
        return Rejection(
            RejectionKind.NOT_OBJECT, f"value is a JSON {_json_type(parsed)}, not an object"
        )
    if "schema_version" not in parsed:
        return Rejection(RejectionKind.MISSING_FIELD, "field 'schema_version' is required")
    version = parsed["schema_version"]
    if type(version) is not int or version != SCHEMA_VERSION:
        return Rejection(
            RejectionKind.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {version!r} is not supported (this worker reads {SCHEMA_VERSION})",
        )
    if "event_type" not in parsed:
        return Rejection(RejectionKind.MISSING_FIELD, "field 'event_type' is required")
    if parsed["event_type"] not in EVENT_TYPES:
        return Rejection(
            RejectionKind.UNKNOWN_EVENT_TYPE,
            f"event_type {parsed['event_type']!r} is not one of {', '.join(EVENT_TYPES)}",
        )
    if "data" not in parsed:  # absent means {}: name the data field that is then missing
        value = msgspec.json.encode({**parsed, "data": {}})
    try:
        EVENT_ADAPTER.validate_json(value)
    except ValidationError as exc:
        return _from_pydantic(exc)
    return Rejection(RejectionKind.INVALID_FIELD, "invalid event")  # pragma: no cover


def _from_pydantic(exc: ValidationError) -> Rejection:
    error = exc.errors(include_url=False)[0]
    # The first element of the location is the union tag (the event type).
    loc = [str(part) for part in error["loc"][1:]]
    field = ".".join(loc)
    kind = {
        "missing": RejectionKind.MISSING_FIELD,
        "timezone_aware": RejectionKind.NAIVE_TIMESTAMP,
    }.get(error["type"], RejectionKind.INVALID_FIELD)
    if loc == ["step_id"] and error["type"] == "none_required":
        return Rejection(
            RejectionKind.STEP_ID_NOT_ALLOWED,
            f"{error['loc'][0]} is a job event: step_id must be absent or null",
        )
    if kind is RejectionKind.MISSING_FIELD:
        return Rejection(kind, f"field {field!r} is required on {error['loc'][0]}")
    return Rejection(kind, f"field {field!r}: {error['msg']}")


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)
