"""The v1 wire contract (``docs/events-v1.md``) as typed, immutable pydantic models.

Validation is strict, as the spec reads: strings are strings (``42`` is not a
``job_id``), integers are integers, ``occurred_at`` is an RFC 3339 string with
an offset (a naive time is invalid) normalised to UTC. Unknown fields are
ignored; missing optional members take their defaults.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired, TypeAlias

import msgspec
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    with_config,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

SCHEMA_VERSION = 1
INT32_MAX = 2**31 - 1  # duration_ms is an INTEGER column

# --- limits (docs/events-v1.md, "Limits"): no single event may cost more than its share.
# Per event: an event over one of these is invalid. Lengths count characters.
ID_MAX_CHARS = 200
NAME_MAX_CHARS = 512  # indexed or listed columns: 512 x 4 bytes stays under btree's 2,704
VERSION_MAX_CHARS = 1024  # logic_version, dag_run_id
REF_TYPE_MAX_CHARS = 64  # a reference's ref_type and format
LOCATION_MAX_CHARS = 4096
REFERENCES_MAX = 10_000  # inputs, outputs of one event, each
EXECUTIONS_MAX = 1_000
METADATA_KEYS_MAX = 1_000
# Per entity (one job_id, one step_id): enforced by the fold, kind ``entity_limit``.
ENTITY_EVENTS_MAX = 1_000
ENTITY_REFERENCES_MAX = 10_000  # per list
ENTITY_EXECUTIONS_MAX = 1_000
ENTITY_METADATA_KEYS_MAX = 1_000

Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS)]
Name = Annotated[str, StringConstraints(max_length=NAME_MAX_CHARS)]
Version = Annotated[str, StringConstraints(max_length=VERSION_MAX_CHARS)]
JsonObject: TypeAlias = dict[str, Any]
Metadata = Annotated[JsonObject, Field(max_length=METADATA_KEYS_MAX)]


# RFC 3339 with an offset, as msgspec reads it: the one reading of a timestamp,
# here and in the worker's decoder (wire.py).
RFC3339 = Annotated[datetime, msgspec.Meta(tz=True)]


def _rfc3339(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """An RFC 3339 string, as the worker's compiled decoder (msgspec) reads it; or a datetime.

    pydantic's own parser would also take a Unix time in a string, a date
    alone, or no seconds, and truncates fraction digits beyond the sixth where
    msgspec (and PostgreSQL) rounds: one parser keeps the two decoders equal.
    """
    if not isinstance(value, str):
        return handler(value)  # a datetime built in Python; strict: nothing else
    try:
        return msgspec.convert(value, RFC3339)
    except msgspec.ValidationError:
        pass
    try:
        msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        raise PydanticCustomError("datetime_parsing", "Input should be an RFC 3339 "
                                  "timestamp such as 2026-11-01T12:00:00Z") from None
    raise PydanticCustomError("timezone_aware", "Input should have timezone info")


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00:00-01:00 is after datetime.max in UTC
        raise ValueError("the time is out of range in UTC (years 1 to 9999)") from None


Timestamp = Annotated[AwareDatetime, WrapValidator(_rfc3339), AfterValidator(_to_utc)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


# DataReference and ExecutionRecord are TypedDicts, not models: they are
# validated just as strictly, but arrive as plain dicts, which is what the
# fold stores and nearly halves the cost of validating a step event.
# ``DataReference(ref_type="table", location="main.x")`` builds one.


@with_config(ConfigDict(strict=True, extra="ignore"))
class DataReference(TypedDict):
    """A dataset a step read or wrote, identified by (``ref_type``, ``location``)."""

    ref_type: Annotated[str, StringConstraints(max_length=REF_TYPE_MAX_CHARS)]
    location: Annotated[str, StringConstraints(max_length=LOCATION_MAX_CHARS)]
    format: NotRequired[Annotated[str, StringConstraints(max_length=REF_TYPE_MAX_CHARS)] | None]
    metadata: NotRequired[JsonObject]


@with_config(ConfigDict(strict=True, extra="ignore"))
class ExecutionRecord(TypedDict):
    """What a step executed: SQL, a dbt command, a Spark job ..."""

    execution_type: str
    details: NotRequired[JsonObject]


References = Annotated[list[DataReference], Field(max_length=REFERENCES_MAX)]
Executions = Annotated[list[ExecutionRecord], Field(max_length=EXECUTIONS_MAX)]


# --- data of each event type -------------------------------------------------


class _Data(_Strict):
    metadata: Metadata | None = None


class JobSubmittedData(_Data):
    """``job.submitted``: what the run is."""

    pipeline: Name
    logic_version: Version | None = None  # optional since amendment 2
    environment: Name | None = None
    namespace: Name | None = None
    request: JsonObject | None = None
    parameters: JsonObject | None = None
    dag_run_id: Version | None = None


class JobData(_Data):
    """``job.started``: metadata only."""


class _Terminal(_Data):
    # Amendment 4: a final terminal event outranks every non-final one.
    final: StrictBool | None = None


class JobSucceededData(_Terminal):
    """``job.succeeded``: metadata, and whether the outcome is final."""


class JobFailedData(_Terminal):
    """``job.failed``: the error is required."""

    error: str


class JobCancelledData(_Terminal):
    """``job.cancelled``: an optional reason."""

    error: str | None = None


class _StepIdentity(_Data):
    step_name: Name | None = None
    handler_type: Name | None = None
    action: Name | None = None


class StepStartData(_StepIdentity):
    """``step.submitted`` / ``step.started``: the step's identity is required."""

    step_name: Name
    handler_type: Name
    action: Name
    inputs: References | None = None


class _StepResult(_StepIdentity):
    final: StrictBool | None = None  # amendment 4
    inputs: References | None = None
    outputs: References | None = None
    executions: Executions | None = None
    duration_ms: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None


class StepSucceededData(_StepResult):
    """``step.succeeded``: lineage, executions and timing."""


class StepFailedData(_StepResult):
    """``step.failed``: as succeeded, and the error is required."""

    error: str


class StepSkippedData(_StepIdentity):
    """``step.skipped``: an optional reason."""

    final: StrictBool | None = None  # amendment 4

    error: str | None = None


# --- envelopes ----------------------------------------------------------------


# Literal[1] would let JSON `true` and `1.0` through (they equal 1 in Python).
SchemaVersion = Annotated[StrictInt, Field(ge=SCHEMA_VERSION, le=SCHEMA_VERSION,
                                           json_schema_extra={"const": SCHEMA_VERSION})]


class _Envelope(_Strict):
    schema_version: SchemaVersion
    event_id: Id
    occurred_at: Timestamp
    correlation_id: Id
    job_id: Id


class _JobEnvelope(_Envelope):
    step_id: None = None


class _StepEnvelope(_Envelope):
    step_id: Id


class JobSubmitted(_JobEnvelope):
    """A job was submitted: status ``pending``."""

    event_type: Literal["job.submitted"]
    data: JobSubmittedData


class JobStarted(_JobEnvelope):
    """A job started: status ``running``."""

    event_type: Literal["job.started"]
    data: JobData = Field(default_factory=JobData)


class JobSucceeded(_JobEnvelope):
    """A job succeeded: status ``success``."""

    event_type: Literal["job.succeeded"]
    data: JobSucceededData = Field(default_factory=JobSucceededData)


class JobFailed(_JobEnvelope):
    """A job failed: status ``failed``."""

    event_type: Literal["job.failed"]
    data: JobFailedData


class JobCancelled(_JobEnvelope):
    """A job was cancelled: status ``cancelled``."""

    event_type: Literal["job.cancelled"]
    data: JobCancelledData = Field(default_factory=JobCancelledData)


class StepSubmitted(_StepEnvelope):
    """A step was submitted: status ``pending``."""

    event_type: Literal["step.submitted"]
    data: StepStartData


class StepStarted(_StepEnvelope):
    """A step started: status ``running``."""

    event_type: Literal["step.started"]
    data: StepStartData


class StepSucceeded(_StepEnvelope):
    """A step succeeded: status ``success``."""

    event_type: Literal["step.succeeded"]
    data: StepSucceededData = Field(default_factory=StepSucceededData)


class StepFailed(_StepEnvelope):
    """A step failed: status ``failed``."""

    event_type: Literal["step.failed"]
    data: StepFailedData


class StepSkipped(_StepEnvelope):
    """A step was skipped: status ``skipped``."""

    event_type: Literal["step.skipped"]
    data: StepSkippedData = Field(default_factory=StepSkippedData)


JobEvent: TypeAlias = JobSubmitted | JobStarted | JobSucceeded | JobFailed | JobCancelled
StepEvent: TypeAlias = StepSubmitted | StepStarted | StepSucceeded | StepFailed | StepSkipped
Event: TypeAlias = Annotated[JobEvent | StepEvent, Field(discriminator="event_type")]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_TYPES: tuple[str, ...] = (
    "job.submitted", "job.started", "job.succeeded", "job.failed", "job.cancelled",
    "step.submitted", "step.started", "step.succeeded", "step.failed", "step.skipped",
)

# The status each event type sets, and the rank that decides which event wins.
STATUS_OF: dict[str, str] = {
    "job.submitted": "pending", "job.started": "running", "job.succeeded": "success",
    "job.failed": "failed", "job.cancelled": "cancelled",
    "step.submitted": "pending", "step.started": "running", "step.succeeded": "success",
    "step.failed": "failed", "step.skipped": "skipped",
}
RANK: dict[str, int] = {
    "pending": 0, "running": 1, "success": 2, "failed": 2, "cancelled": 2, "skipped": 2,
}
TERMINAL = frozenset(s for s, r in RANK.items() if r == 2)
FINAL_RANK = 3  # amendment 4: a terminal event with ``data.final`` true


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a v1 event, generated from the models."""
    schema = EVENT_ADAPTER.json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://pudato.io/schemas/registry/events-v1.schema.json"
    schema["title"] = "pudato registry lifecycle event, version 1"
    return schema
