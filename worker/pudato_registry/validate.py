"""Raw message bytes to a typed :class:`~pudato_registry.wire.Event` or a :class:`Rejection`.

Pure and total: :func:`validate` never raises, whatever the bytes. The fast
path is one compiled msgspec pass straight from the bytes (:mod:`.wire`). A
message it refuses goes to the pydantic models (:mod:`.events`), which are
the contract: they either accept it after all (a form the fast path leaves to
them, such as a timestamp with a space for ``T``) or say precisely why not
(kind + message naming the field).
"""

from __future__ import annotations

import reprlib
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
    """Why a message was dead-lettered: the ``error.kind`` header of its letter.

    All but the last two are found by :func:`validate`; ``entity_limit`` by
    the fold, ``unstorable`` by PostgreSQL (docs/events-v1.md, "Limits").
    """

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
    STRING_TOO_LONG = "string_too_long"  # a per-event limit on a string's characters
    TOO_MANY_ITEMS = "too_many_items"  # ... on the entries of inputs, outputs, executions
    TOO_MANY_KEYS = "too_many_keys"  # ... on the top-level keys of metadata
    ENTITY_LIMIT = "entity_limit"
    UNSTORABLE = "unstorable"


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
            f"schema_version {preview(version)} is not supported (this worker reads "
            f"{SCHEMA_VERSION})",
        )
    if "event_type" not in parsed:
        return Rejection(RejectionKind.MISSING_FIELD, "field 'event_type' is required")
    if parsed["event_type"] not in EVENT_TYPES:
        return Rejection(
            RejectionKind.UNKNOWN_EVENT_TYPE,
            f"event_type {preview(parsed['event_type'])} is not one of {', '.join(EVENT_TYPES)}",
        )
    if "data" not in parsed:  # absent means {}: name the data field that is then missing
        value = msgspec.json.encode({**parsed, "data": {}})
    try:
        EVENT_ADAPTER.validate_json(value)
    except ValidationError as exc:
        return _from_pydantic(exc)
    return Rejection(RejectionKind.INVALID_FIELD, "invalid event")  # pragma: no cover


_PREVIEWS = reprlib.Repr()  # keyword arguments only from Python 3.12
_PREVIEWS.maxlevel, _PREVIEWS.maxlist, _PREVIEWS.maxdict = 2, 4, 4
_PREVIEWS.maxstring, _PREVIEWS.maxlong, _PREVIEWS.maxother = 60, 40, 60


def preview(value: Any) -> str:
    """A short ``repr`` of ``value``: a rejection quotes the input, it never copies it."""
    try:
        text = _PREVIEWS.repr(value)
    except ValueError:  # an integer too long to print (over 4,300 digits)
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else "?"
    if isinstance(value, str) and len(value) > 60:
        text += f" ({len(value)} characters)"
    return text


_KIND_OF_ERROR = {
    "missing": RejectionKind.MISSING_FIELD,
    "timezone_aware": RejectionKind.NAIVE_TIMESTAMP,
    "string_too_long": RejectionKind.STRING_TOO_LONG,
}


def _from_pydantic(exc: ValidationError) -> Rejection:
    error = exc.errors(include_url=False, include_input=False)[0]
    # The first element of the location is the union tag (the event type).
    loc = [str(part) for part in error["loc"][1:]]
    field = ".".join(loc)
    kind = _KIND_OF_ERROR.get(error["type"], RejectionKind.INVALID_FIELD)
    if error["type"] == "too_long":  # a list's entries or an object's keys
        dictionary = error.get("ctx", {}).get("field_type") == "Dictionary"
        kind = RejectionKind.TOO_MANY_KEYS if dictionary else RejectionKind.TOO_MANY_ITEMS
        limit = error.get("ctx", {}).get("max_length")
        what = "keys" if dictionary else "entries"
        return Rejection(kind, f"field {field!r} has more than {limit} {what}, the most one "
                               "event may carry")
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
