"""Constructors of valid events, one per type, for the publisher SDK and the tests.

Each takes typed arguments (terminal ones ``final``, amendment 4: an outcome that no later
non-final terminal event may override), draws a fresh UUID for ``event_id`` and stamps
``occurred_at`` with the current UTC time unless given one. The result is a
validated model; :func:`encode` turns it into the wire bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, overload

from pudato_registry import events as ev


def _envelope(job_id: str, correlation_id: str | None, occurred_at: datetime | None,
              event_id: str | None) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": event_id or str(uuid.uuid4()),
        "occurred_at": occurred_at or datetime.now(UTC),
        "correlation_id": correlation_id or job_id,
        "job_id": job_id,
    }


ERROR_MAX_BYTES = 64 * 1024  # docs/events-v1.md, "Limits": the SDK cuts error texts here


@overload
def cut_error(text: str) -> str: ...
@overload
def cut_error(text: None) -> None: ...
def cut_error(text: str | None) -> str | None:
    """An error text cut to 64 KiB of UTF-8, at a character boundary, saying that it was cut."""
    if text is None:
        return None
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= ERROR_MAX_BYTES:
        return text
    marker = f"\n[... cut: {len(encoded):,} bytes in all, the first ones kept]"
    room = ERROR_MAX_BYTES - len(marker.encode())
    return encoded[:room].decode("utf-8", "ignore") + marker


def encode(event: ev.Event) -> bytes:
    """The event's wire form: a UTF-8 JSON object."""
    return event.model_dump_json(exclude_defaults=True).encode()


def job_submitted(job_id: str, *, pipeline: str, logic_version: str | None = None,
                  environment: str | None = None, namespace: str | None = None,
                  request: dict[str, Any] | None = None,
                  parameters: dict[str, Any] | None = None, dag_run_id: str | None = None,
                  metadata: dict[str, Any] | None = None, correlation_id: str | None = None,
                  occurred_at: datetime | None = None,
                  event_id: str | None = None) -> ev.JobSubmitted:
    """A ``job.submitted`` event."""
    return ev.JobSubmitted(
        **_envelope(job_id, correlation_id, occurred_at, event_id),
        event_type="job.submitted",
        data=ev.JobSubmittedData(
            pipeline=pipeline, logic_version=logic_version, environment=environment,
            namespace=namespace, request=request, parameters=parameters,
            dag_run_id=dag_run_id, metadata=metadata,
        ),
    )


def job_started(job_id: str, *, metadata: dict[str, Any] | None = None,
                correlation_id: str | None = None, occurred_at: datetime | None = None,
                event_id: str | None = None) -> ev.JobStarted:
    """A ``job.started`` event."""
    return ev.JobStarted(**_envelope(job_id, correlation_id, occurred_at, event_id),
                         event_type="job.started", data=ev.JobData(metadata=metadata))


def job_succeeded(job_id: str, *, metadata: dict[str, Any] | None = None, final: bool = False,
                  correlation_id: str | None = None, occurred_at: datetime | None = None,
                  event_id: str | None = None) -> ev.JobSucceeded:
    """A ``job.succeeded`` event."""
    return ev.JobSucceeded(**_envelope(job_id, correlation_id, occurred_at, event_id),
                           event_type="job.succeeded",
                           data=ev.JobSucceededData(metadata=metadata, final=final or None))


def job_failed(job_id: str, *, error: str, metadata: dict[str, Any] | None = None,
               final: bool = False, correlation_id: str | None = None,
               occurred_at: datetime | None = None, event_id: str | None = None) -> ev.JobFailed:
    """A ``job.failed`` event."""
    return ev.JobFailed(**_envelope(job_id, correlation_id, occurred_at, event_id),
                        event_type="job.failed",
                        data=ev.JobFailedData(error=cut_error(error), metadata=metadata,
                                              final=final or None))


def job_cancelled(job_id: str, *, error: str | None = None,
                  metadata: dict[str, Any] | None = None, final: bool = False,
                  correlation_id: str | None = None,
                  occurred_at: datetime | None = None,
                  event_id: str | None = None) -> ev.JobCancelled:
    """A ``job.cancelled`` event."""
    return ev.JobCancelled(**_envelope(job_id, correlation_id, occurred_at, event_id),
                           event_type="job.cancelled",
                           data=ev.JobCancelledData(error=cut_error(error), metadata=metadata,
                                                    final=final or None))


def step_submitted(job_id: str, step_id: str, *, step_name: str, handler_type: str,
                   action: str, inputs: Sequence[ev.DataReference] | None = None,
                   metadata: dict[str, Any] | None = None, correlation_id: str | None = None,
                   occurred_at: datetime | None = None,
                   event_id: str | None = None) -> ev.StepSubmitted:
    """A ``step.submitted`` event."""
    return ev.StepSubmitted(
        **_envelope(job_id, correlation_id, occurred_at, event_id), step_id=step_id,
        event_type="step.submitted",
        data=ev.StepStartData(step_name=step_name, handler_type=handler_type, action=action,
                              inputs=None if inputs is None else list(inputs),
                              metadata=metadata),
    )


def step_started(job_id: str, step_id: str, *, step_name: str, handler_type: str, action: str,
                 inputs: Sequence[ev.DataReference] | None = None,
                 metadata: dict[str, Any] | None = None, correlation_id: str | None = None,
                 occurred_at: datetime | None = None,
                 event_id: str | None = None) -> ev.StepStarted:
    """A ``step.started`` event."""
    return ev.StepStarted(
        **_envelope(job_id, correlation_id, occurred_at, event_id), step_id=step_id,
        event_type="step.started",
        data=ev.StepStartData(step_name=step_name, handler_type=handler_type, action=action,
                              inputs=None if inputs is None else list(inputs),
                              metadata=metadata),
    )


def _result(inputs: Sequence[ev.DataReference] | None,
            outputs: Sequence[ev.DataReference] | None,
            executions: Sequence[ev.ExecutionRecord] | None) -> dict[str, Any]:
    return {
        "inputs": None if inputs is None else list(inputs),
        "outputs": None if outputs is None else list(outputs),
        "executions": None if executions is None else list(executions),
    }


def step_succeeded(job_id: str, step_id: str, *,
                   inputs: Sequence[ev.DataReference] | None = None,
                   outputs: Sequence[ev.DataReference] | None = None,
                   executions: Sequence[ev.ExecutionRecord] | None = None,
                   duration_ms: int | None = None, metadata: dict[str, Any] | None = None,
                   step_name: str | None = None, handler_type: str | None = None,
                   action: str | None = None, final: bool = False,
                   correlation_id: str | None = None, occurred_at: datetime | None = None,
                   event_id: str | None = None) -> ev.StepSucceeded:
    """A ``step.succeeded`` event."""
    return ev.StepSucceeded(
        **_envelope(job_id, correlation_id, occurred_at, event_id), step_id=step_id,
        event_type="step.succeeded",
        data=ev.StepSucceededData(
            **_result(inputs, outputs, executions), duration_ms=duration_ms,
            metadata=metadata, step_name=step_name, handler_type=handler_type, action=action,
            final=final or None,
        ),
    )


def step_failed(job_id: str, step_id: str, *, error: str,
                inputs: Sequence[ev.DataReference] | None = None,
                outputs: Sequence[ev.DataReference] | None = None,
                executions: Sequence[ev.ExecutionRecord] | None = None,
                duration_ms: int | None = None, metadata: dict[str, Any] | None = None,
                step_name: str | None = None, handler_type: str | None = None,
                action: str | None = None, final: bool = False,
                correlation_id: str | None = None, occurred_at: datetime | None = None,
                event_id: str | None = None) -> ev.StepFailed:
    """A ``step.failed`` event."""
    return ev.StepFailed(
        **_envelope(job_id, correlation_id, occurred_at, event_id), step_id=step_id,
        event_type="step.failed",
        data=ev.StepFailedData(
            error=cut_error(error), **_result(inputs, outputs, executions), duration_ms=duration_ms,
            metadata=metadata, step_name=step_name, handler_type=handler_type, action=action,
            final=final or None,
        ),
    )


def step_skipped(job_id: str, step_id: str, *, error: str | None = None,
                 metadata: dict[str, Any] | None = None, step_name: str | None = None,
                 handler_type: str | None = None, action: str | None = None,
                 final: bool = False, correlation_id: str | None = None,
                 occurred_at: datetime | None = None,
                 event_id: str | None = None) -> ev.StepSkipped:
    """A ``step.skipped`` event."""
    return ev.StepSkipped(
        **_envelope(job_id, correlation_id, occurred_at, event_id), step_id=step_id,
        event_type="step.skipped",
        data=ev.StepSkippedData(error=cut_error(error), metadata=metadata, step_name=step_name,
                                handler_type=handler_type, action=action, final=final or None),
    )
