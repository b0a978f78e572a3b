"""The fold: valid events to rows of ``pudato_jobs`` and ``pudato_job_steps``; pure, incremental.

Every projection rule of ``docs/events-v1.md`` is a function of the *set* of
events, so the fold keeps, per entity, just enough to merge one more event
into what it already knows, in any order:

* ``seen``: the event ids already applied. A second message with the same id
  is dropped, whatever it holds: that is what makes re-delivery harmless.
* ``win``: the winning event so far, as its sort key (rank, occurred_at,
  event_id) with its status, error and (steps) duration_ms. Rule 1 is a max;
  a ``final`` terminal event has rank 3 (amendment 4), so the max still decides.
* ``started_at`` and, for jobs, the earliest ``job.submitted`` and the
  earliest event of any kind naming the job: rules 2 and 10 are mins.
* ``scalars``: per field, the (occurred_at, event_id) of the last event that
  carried it non-null, and its value: rule 6 is a last-writer-wins register.
* ``metadata``: the same register per metadata key: a shallow merge in event
  order is last-writer-wins per key (rule 7).
* ``inputs``/``outputs``: per (ref_type, location), the position of its first
  appearance (occurred_at, event_id, index in the list) and the position and
  content of its last (rule 8). ``executions``: per distinct entry, its first
  position (rule 9).

The limits per entity (1,000 events, 10,000 references per list, 1,000
executions, 1,000 metadata keys) bound every state: the event that would
cross one is refused before it changes anything (:attr:`Projection.refused`),
so that no event's cost grows with its entity's history.

Each piece is a max, a min, a register or a set union: commutative,
associative and idempotent. So folding new events into a saved state equals
folding everything at once, and the worker only ever reads the states of the
entities a batch touches. Times are kept as integer microseconds since the
epoch (exact, cheap to compare and to store).

A state is saved as compact JSON (version 2): the sorted event ids once, and
every stamp naming its event by its place in that list; an execution entry
by its canonical JSON only, a reference without repeating its key. That
nearly halves it against version 1 (which wrote each event id at every
stamp, and is still read).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from pudato_registry import edges
from pudato_registry.events import (
    ENTITY_EVENTS_MAX,
    ENTITY_EXECUTIONS_MAX,
    ENTITY_METADATA_KEYS_MAX,
    ENTITY_REFERENCES_MAX,
    FINAL_RANK,
    INT32_MAX,
    RANK,
    STATUS_OF,
    TERMINAL,
)
from pudato_registry.wire import DataReference, Event, ExecutionRecord, JobSubmitted, StepEvent

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# msgspec: fast, and JSON numbers may be integers of any size.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode
_canonical = msgspec.json.Encoder(order="sorted").encode  # keys sorted at every depth

Stamp = tuple[int, str]  # (occurred_at in µs, event_id): "event order"
# A list entry's place is [µs, event_id, index]: a list, not a tuple, since
# that is what a saved state decodes to, and lists compare element-wise too.

JOB_SCALARS = ("pipeline", "logic_version", "environment", "namespace", "request",
               "parameters", "dag_run_id")
_FAILURE_STATUSES = frozenset({"failed", "cancelled", "skipped"})


class _Kind(NamedTuple):
    """What the fold needs to know of an event type, found with one lookup."""

    status: str
    rank: int
    error: bool  # its data has ``error``
    inputs: bool  # its data has ``inputs``
    result: bool  # its data has ``outputs``, ``executions`` and ``duration_ms``
    terminal: bool  # its data has ``final`` (amendment 4)


_KINDS = {
    kind: _Kind(STATUS_OF[kind], RANK[STATUS_OF[kind]],
                kind in ("job.failed", "job.cancelled", "step.failed", "step.skipped"),
                kind in ("step.submitted", "step.started", "step.succeeded", "step.failed"),
                kind in ("step.succeeded", "step.failed"),
                STATUS_OF[kind] in TERMINAL)
    for kind in STATUS_OF
}


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of microseconds since the epoch."""
    return EPOCH + _US * micros  # about twice as fast as timedelta(microseconds=...)


class JobRow(NamedTuple):
    """One row of ``pudato_jobs``, columns in table order."""

    job_id: str
    pipeline: str | None
    environment: str
    namespace: str
    status: str
    logic_version: str | None
    request: dict[str, Any]
    parameters: dict[str, Any]
    dag_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    metadata: dict[str, Any]


class StepRow(NamedTuple):
    """One row of ``pudato_job_steps``, columns in table order."""

    step_id: str
    job_id: str
    step_name: str | None
    handler_type: str | None
    action: str | None
    status: str
    correlation_id: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    executions: list[dict[str, Any]]
    started_at: datetime | None
    completed_at: datetime | None
    duration_ms: int | None
    error: str | None
    metadata: dict[str, Any]


# --- the registers -------------------------------------------------------------


def _merge_scalar(registers: dict[str, list[Any]], name: str, stamp: Stamp, value: Any) -> None:
    """Last-writer-wins by event order; None never writes (rule 6)."""
    if value is None:
        return
    held = registers.get(name)
    if held is None or (held[0], held[1]) < stamp:
        registers[name] = [stamp[0], stamp[1], value]


def _merge_metadata(registers: dict[str, list[Any]], stamp: Stamp,
                    metadata: dict[str, Any] | None) -> None:
    """A shallow merge in event order is a last-writer-wins register per key (rule 7)."""
    if not metadata:
        return
    for key, value in metadata.items():
        held = registers.get(key)
        if held is None or (held[0], held[1]) < stamp:
            registers[key] = [stamp[0], stamp[1], value]


def _merge_references(merged: dict[tuple[str, str], list[Any]], stamp: Stamp,
                      references: list[DataReference] | None) -> None:
    """Per (ref_type, location): first position, last position and last content (rule 8)."""
    if not references:
        return
    for index, ref in enumerate(references):
        position = [stamp[0], stamp[1], index]
        pair = (ref.ref_type, ref.location)
        held = merged.get(pair)
        if held is None:
            merged[pair] = [position, position, _reference_json(ref)]
            continue
        held[0] = min(held[0], position)
        if position > held[1]:
            held[1] = position
            held[2] = _reference_json(ref)


def _merge_executions(merged: dict[bytes, list[Any]], stamp: Stamp,
                      executions: list[ExecutionRecord] | None) -> None:
    """Per distinct entry (equal as parsed JSON): its first position (rule 9)."""
    if not executions:
        return
    for index, record in enumerate(executions):
        content = {"execution_type": record.execution_type, "details": record.details}
        identity = _canonical(content)
        position = [stamp[0], stamp[1], index]
        held = merged.get(identity)
        if held is None or position < held[0]:
            merged[identity] = [position, content]


def _reference_json(ref: DataReference) -> dict[str, Any]:
    """A reference as stored: every member present."""
    return {"ref_type": ref.ref_type, "location": ref.location, "format": ref.format,
            "metadata": ref.metadata}


_FIRST = operator.itemgetter(0)


def _references_list(merged: dict[tuple[str, str], list[Any]]) -> list[dict[str, Any]]:
    if len(merged) < 2:  # most lists: nothing to sort
        return [held[2] for held in merged.values()]
    return [content for _first, _last, content in
            sorted(merged.values(), key=_FIRST)]


def _dumps(value: Any) -> str:
    return _encode(value).decode()


# --- saving states: event ids by their place in the sorted ``seen`` ------------


def _out(stamped: list[Any], place: dict[str, int], at: int = 1) -> list[Any]:
    """A stamped list with its event id (at index ``at``) replaced by the id's place."""
    copy = stamped.copy()
    copy[at] = place[copy[at]]
    return copy


def _in(stamped: list[Any], ids: list[str], at: int = 1) -> list[Any]:
    """:func:`_out` undone, in place: the list is fresh from the decoder."""
    stamped[at] = ids[stamped[at]]
    return stamped


# The two below run for every register of every state read or written: inline, not
# by _out/_in (a register is [µs, event_id, value]).
def _registers_out(registers: dict[str, list[Any]], place: dict[str, int]) -> dict[str, Any]:
    return {name: [held[0], place[held[1]], held[2]] for name, held in registers.items()}


def _registers_in(registers: dict[str, list[Any]], ids: list[str]) -> dict[str, list[Any]]:
    for held in registers.values():
        held[1] = ids[held[1]]
    return registers


def _over(held: dict[Any, Any], incoming: Iterable[Any], limit: int) -> bool:
    """Whether adding the ``incoming`` keys to ``held`` would leave more than ``limit`` keys."""
    room = limit - len(held)
    if isinstance(incoming, list | dict) and len(incoming) <= room:
        return False  # even if every one were new: the common case, decided at once
    return len(set(incoming).difference(held)) > room


def _min(current: int | None, candidate: int) -> int:
    return candidate if current is None or candidate < current else current


# --- entity states -------------------------------------------------------------


@dataclass(slots=True)
class _Entity:
    seen: set[str] = field(default_factory=set)
    # [rank, µs, event_id, status, error, duration_ms] of the winning event.
    win: list[Any] | None = None
    started_at: int | None = None
    scalars: dict[str, list[Any]] = field(default_factory=dict)
    metadata: dict[str, list[Any]] = field(default_factory=dict)

    def _take(self, event: Event, kind: _Kind, stamp: Stamp,
              duration_ms: int | None = None) -> None:
        """Rules 1-4 and 7: the winning event, ``started_at``, metadata."""
        win = self.win
        rank = kind.rank
        if kind.terminal and event.data.final:  # type: ignore[union-attr]
            rank = FINAL_RANK  # amendment 4: a final outcome outranks every non-final one
        if win is None or (win[0], win[1], win[2]) < (rank, *stamp):
            error = event.data.error if kind.error else None  # type: ignore[union-attr]
            self.win = [rank, stamp[0], stamp[1], kind.status, error, duration_ms]
        if kind.rank == 1 and (self.started_at is None or stamp[0] < self.started_at):
            self.started_at = stamp[0]
        if event.data.metadata:
            _merge_metadata(self.metadata, stamp, event.data.metadata)

    def _refusal(self, what: str, metadata: dict[str, Any] | None) -> str | None:
        """Why one more event would take this entity past a limit of its own, if it would."""
        if len(self.seen) >= ENTITY_EVENTS_MAX:
            return f"{what} already has {ENTITY_EVENTS_MAX} events, the most one entity may have"
        if metadata and _over(self.metadata, metadata, ENTITY_METADATA_KEYS_MAX):
            return f"{what} would have more than {ENTITY_METADATA_KEYS_MAX} metadata keys"
        return None

    def _status(self) -> tuple[str, int | None, str | None]:
        """(status, completed_at in µs, error) from the winning event (rules 1, 3, 4)."""
        if self.win is None:
            return "pending", None, None
        status = self.win[3]
        completed = self.win[1] if status in TERMINAL else None
        error = self.win[4] if status in _FAILURE_STATUSES else None
        return status, completed, error

    def _metadata(self) -> dict[str, Any]:
        return {key: held[2] for key, held in self.metadata.items()}

    def _scalar(self, name: str, default: Any = None) -> Any:
        held = self.scalars.get(name)
        return default if held is None else held[2]


@dataclass(slots=True)
class JobState(_Entity):
    """What the fold knows of one job."""

    job_id: str = ""
    submitted_at: int | None = None
    first_seen_at: int | None = None

    def apply(self, event: Event, micros: int) -> bool:
        """Merge a ``job.*`` event that occurred at ``micros``; False if already applied."""
        if event.event_id in self.seen:
            return False
        self.seen.add(event.event_id)
        stamp = (micros, event.event_id)
        self._take(event, _KINDS[event.event_type], stamp)
        self.named_at(micros)
        if isinstance(event, JobSubmitted):
            self.submitted_at = _min(self.submitted_at, micros)
            data = event.data
            for name in JOB_SCALARS:
                _merge_scalar(self.scalars, name, stamp, getattr(data, name))
        return True

    def refusal(self, event: Event) -> str | None:
        """Why applying ``event`` would take the job past an entity limit (docs: Limits)."""
        return self._refusal(f"job {event.job_id!r}", event.data.metadata)

    def named_at(self, occurred_micros: int) -> None:
        """An event naming this job occurred then: it counts for ``created_at`` (rule 10)."""
        self.first_seen_at = _min(self.first_seen_at, occurred_micros)

    def row(self) -> JobRow:
        """The job's row (rules 1-4, 6, 7, 10, 12)."""
        status, completed, error = self._status()
        created = self.submitted_at if self.submitted_at is not None else self.first_seen_at
        assert created is not None, "a job state exists only once an event names it"
        return JobRow(
            job_id=self.job_id,
            pipeline=self._scalar("pipeline"),
            environment=self._scalar("environment", "dev"),
            namespace=self._scalar("namespace", "default"),
            status=status,
            logic_version=self._scalar("logic_version"),
            request=self._scalar("request", {}),
            parameters=self._scalar("parameters", {}),
            dag_run_id=self._scalar("dag_run_id"),
            created_at=from_micros(created),
            started_at=None if self.started_at is None else from_micros(self.started_at),
            completed_at=None if completed is None else from_micros(completed),
            error=error,
            metadata=self._metadata(),
        )

    def lineage_key(self) -> edges.JobKey | None:
        """What the job gives its steps' lineage edges (amendment 3)."""
        return _lineage_key(self.scalars)

    def dump(self) -> str:
        """The state's compact JSON encoding, for ``pudato_job_state.state``."""
        ids = sorted(self.seen)
        place = {event_id: i for i, event_id in enumerate(ids)}
        return _dumps([2, ids, None if self.win is None else _out(self.win, place, 2),
                       self.started_at, _registers_out(self.scalars, place),
                       _registers_out(self.metadata, place), self.submitted_at,
                       self.first_seen_at])

    @classmethod
    def load(cls, job_id: str, encoded: str) -> JobState:
        """Decode :meth:`dump`'s output (either version)."""
        version, ids, win, started, scalars, metadata, submitted, first = _decode(encoded)
        if version > 1:
            win = None if win is None else _in(win, ids, 2)
            scalars, metadata = _registers_in(scalars, ids), _registers_in(metadata, ids)
        return cls(set(ids), win, started, scalars, metadata, job_id, submitted, first)


@dataclass(slots=True)
class StepState(_Entity):
    """What the fold knows of one step."""

    step_id: str = ""
    # [µs, event_id, job_id, correlation_id] of the last step event (rule 11).
    owner: list[Any] | None = None
    inputs: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    outputs: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    executions: dict[bytes, list[Any]] = field(default_factory=dict)

    def apply(self, event: StepEvent, micros: int) -> bool:
        """Merge a ``step.*`` event that occurred at ``micros``; False if already applied."""
        if event.event_id in self.seen:
            return False
        self.seen.add(event.event_id)
        stamp = (micros, event.event_id)
        data = event.data
        kind = _KINDS[event.event_type]
        self._take(event, kind, stamp, data.duration_ms if kind.result else None)  # type: ignore[union-attr]
        owner = self.owner
        if owner is None or (owner[0], owner[1]) < stamp:
            self.owner = [micros, event.event_id, event.job_id, event.correlation_id]
        # The checks below only save calls (the merges ignore None and empty
        # lists too): per event they are worth about 4 % of validate + fold.
        if data.step_name is not None:
            _merge_scalar(self.scalars, "step_name", stamp, data.step_name)
        if data.handler_type is not None:
            _merge_scalar(self.scalars, "handler_type", stamp, data.handler_type)
        if data.action is not None:
            _merge_scalar(self.scalars, "action", stamp, data.action)
        if kind.inputs and data.inputs:  # type: ignore[union-attr]
            _merge_references(self.inputs, stamp, data.inputs)  # type: ignore[union-attr]
        if kind.result:
            if data.outputs:  # type: ignore[union-attr]
                _merge_references(self.outputs, stamp, data.outputs)  # type: ignore[union-attr]
            if data.executions:  # type: ignore[union-attr]
                _merge_executions(self.executions, stamp, data.executions)  # type: ignore[union-attr]
        return True

    def refusal(self, event: StepEvent) -> str | None:
        """Why applying ``event`` would take the step past an entity limit (docs: Limits)."""
        what = f"step {event.step_id!r}"
        reason = self._refusal(what, event.data.metadata)
        if reason is not None:
            return reason
        kind = _KINDS[event.event_type]
        data = event.data
        lists = []
        if kind.inputs and data.inputs:  # type: ignore[union-attr]
            lists.append(("inputs", self.inputs, data.inputs))  # type: ignore[union-attr]
        if kind.result and data.outputs:  # type: ignore[union-attr]
            lists.append(("outputs", self.outputs, data.outputs))  # type: ignore[union-attr]
        for name, held, refs in lists:
            if len(held) + len(refs) > ENTITY_REFERENCES_MAX and _over(
                    held, [(r.ref_type, r.location) for r in refs], ENTITY_REFERENCES_MAX):
                return f"{what} would have more than {ENTITY_REFERENCES_MAX} {name}"
        runs = data.executions if kind.result else None  # type: ignore[union-attr]
        if runs and len(self.executions) + len(runs) > ENTITY_EXECUTIONS_MAX and _over(
                self.executions, [_canonical({"execution_type": r.execution_type,
                                              "details": r.details}) for r in runs],
                ENTITY_EXECUTIONS_MAX):
            return f"{what} would have more than {ENTITY_EXECUTIONS_MAX} executions"
        return None

    @property
    def job_id(self) -> str:
        """The job the step belongs to: that of its last event (rule 11)."""
        assert self.owner is not None
        return str(self.owner[2])

    def row(self) -> StepRow:
        """The step's row (rules 1-9, 11)."""
        assert self.owner is not None, "a step state exists only once an event names it"
        status, completed, error = self._status()
        duration: int | None = None
        if completed is not None:
            assert self.win is not None
            given = self.win[5]
            if given is not None:
                duration = given
            elif self.started_at is not None:
                duration = min(INT32_MAX, max(0, (completed - self.started_at) // 1000))
        scalars = self.scalars
        name, handler, action = (scalars.get("step_name"), scalars.get("handler_type"),
                                 scalars.get("action"))
        executions = self.executions
        return StepRow(  # positional, and inline: this runs for every step written
            self.step_id,
            self.owner[2],
            None if name is None else name[2],
            None if handler is None else handler[2],
            None if action is None else action[2],
            status,
            self.owner[3],
            _references_list(self.inputs),
            _references_list(self.outputs),
            [held[1] for held in executions.values()] if len(executions) < 2 else
            [content for _pos, content in sorted(executions.values(), key=_FIRST)],
            None if self.started_at is None else EPOCH + _US * self.started_at,
            None if completed is None else EPOCH + _US * completed,
            duration,
            error,
            {key: held[2] for key, held in self.metadata.items()},
        )

    def lineage_view(self) -> edges.StepView:
        """What of the step's row its lineage edges depend on (amendment 3)."""
        assert self.owner is not None, "a step state exists only once an event names it"
        status, completed, _error = self._status()
        name = self.scalars.get("step_name")
        return edges.view(
            self.step_id, self.owner[2], None if name is None else name[2], status,
            started_at=None if self.started_at is None else from_micros(self.started_at),
            completed_at=None if completed is None else from_micros(completed),
            inputs=_references_list(self.inputs), outputs=_references_list(self.outputs))

    def dump(self) -> str:
        """The state's compact JSON encoding, for ``pudato_step_state.state``."""
        ids = sorted(self.seen)
        place = {event_id: i for i, event_id in enumerate(ids)}

        def references(merged: dict[tuple[str, str], list[Any]]) -> list[list[Any]]:
            return [[ref_type, location, [first[0], place[first[1]], first[2]],
                     [last[0], place[last[1]], last[2]], content["format"], content["metadata"]]
                    for (ref_type, location), (first, last, content) in merged.items()]

        return _dumps([
            2, ids, None if self.win is None else _out(self.win, place, 2), self.started_at,
            _registers_out(self.scalars, place), _registers_out(self.metadata, place),
            None if self.owner is None else _out(self.owner, place),
            references(self.inputs), references(self.outputs),
            [[identity.decode(), _out(first, place)]
             for identity, (first, _content) in self.executions.items()],
        ])

    @classmethod
    def load(cls, step_id: str, encoded: str) -> StepState:
        """Decode :meth:`dump`'s output (either version)."""
        (version, ids, win, started, scalars, metadata, owner, inputs, outputs,
         executions) = _decode(encoded)
        if version == 1:
            return cls(
                set(ids), win, started, scalars, metadata, step_id, owner,
                {(r, loc): [first, last, content] for r, loc, first, last, content in inputs},
                {(r, loc): [first, last, content] for r, loc, first, last, content in outputs},
                {identity.encode(): [first, content] for identity, first, content in executions},
            )

        def references(saved: list[list[Any]]) -> dict[tuple[str, str], list[Any]]:
            return {(r, loc): [[first[0], ids[first[1]], first[2]],
                               [last[0], ids[last[1]], last[2]],
                               {"ref_type": r, "location": loc, "format": f, "metadata": m}]
                    for r, loc, first, last, f, m in saved}

        return cls(
            set(ids), None if win is None else _in(win, ids, 2), started,
            _registers_in(scalars, ids), _registers_in(metadata, ids), step_id,
            None if owner is None else _in(owner, ids), references(inputs), references(outputs),
            {identity.encode(): [_in(first, ids), _decode(identity)]
             for identity, first in executions},
        )


# --- many entities ---------------------------------------------------------------


class _SavedJobHead(msgspec.Struct, array_like=True):
    """A saved job state read only as far as a step event needs: the rest stays undecoded."""

    version: int
    ids: msgspec.Raw
    win: msgspec.Raw
    started_at: int | None
    scalars: msgspec.Raw
    metadata: msgspec.Raw
    submitted_at: int | None
    first_seen_at: int | None


_job_head = msgspec.json.Decoder(_SavedJobHead).decode


@dataclass(slots=True)
class Projection:
    """The fold over many entities: states by id, and which of them changed.

    ``saved_jobs`` and ``saved_steps`` are encoded states (as :meth:`JobState.dump`
    and :meth:`StepState.dump` give them) decoded on first use. A step event
    that does not move its job's earliest event changes nothing of the job;
    the saved state of such a job is read only as far as that time, and its
    row and state are not written again.
    """

    jobs: dict[str, JobState] = field(default_factory=dict)
    steps: dict[str, StepState] = field(default_factory=dict)
    saved_jobs: dict[str, str] = field(default_factory=dict)
    saved_steps: dict[str, str] = field(default_factory=dict)
    changed_jobs: set[str] = field(default_factory=set)
    changed_steps: set[str] = field(default_factory=set)
    # Events refused for an entity limit, with the reason: they changed nothing.
    refused: list[tuple[Event, str]] = field(default_factory=list)
    # The earliest event time of saved jobs not decoded: their head, read once.
    _first_seen: dict[str, int] = field(default_factory=dict)
    # What saved entities gave the lineage edges before this fold changed them.
    _jobs_before: dict[str, edges.JobKey | None] = field(default_factory=dict)
    _steps_before: dict[str, edges.StepView] = field(default_factory=dict)

    def job(self, job_id: str) -> JobState | None:
        """The job's state, decoded from its saved state if need be; None if never seen."""
        job = self.jobs.get(job_id)
        if job is None:
            saved = self.saved_jobs.pop(job_id, None)
            if saved is not None:
                job = self.jobs[job_id] = JobState.load(job_id, saved)
                self._first_seen.pop(job_id, None)
                self._jobs_before[job_id] = job.lineage_key()
        return job

    def step(self, step_id: str) -> StepState | None:
        """The step's state, decoded from its saved state if need be; None if never seen."""
        step = self.steps.get(step_id)
        if step is None:
            saved = self.saved_steps.pop(step_id, None)
            if saved is not None:
                step = self.steps[step_id] = StepState.load(step_id, saved)
                self._steps_before[step_id] = step.lineage_view()
        return step

    def apply(self, event: Event) -> bool:
        """Merge one event; False if it changed nothing (a duplicate, or :attr:`refused`)."""
        micros = (event.occurred_at - EPOCH) // _US
        job_id = event.job_id
        if event.step_id is None:
            job = self.job(job_id)
            if job is None:
                job = self.jobs[job_id] = JobState(job_id=job_id)
            if event.event_id not in job.seen and (reason := job.refusal(event)) is not None:
                self.refused.append((event, reason))
                if job.first_seen_at is None:  # created just now for nothing: forget it
                    del self.jobs[job_id]
                return False
            if not job.apply(event, micros):
                return False
            self.changed_jobs.add(job_id)
            return True
        step_id = event.step_id
        step = self.step(step_id)
        if step is None:
            step = self.steps[step_id] = StepState(step_id=step_id)
        reason = None
        if event.event_id not in step.seen and (reason := step.refusal(event)) is not None:
            self.refused.append((event, reason))
        if reason is not None or not step.apply(event, micros):
            if step.owner is None:  # created just now for nothing: forget it
                del self.steps[step_id]
            return False
        self.changed_steps.add(step_id)
        self._named_by_step(job_id, micros)
        return True

    def _named_by_step(self, job_id: str, micros: int) -> None:
        """A step event named the job: it changes only if that is its earliest event (rule 10)."""
        job = self.jobs.get(job_id)
        if job is None:
            saved = self.saved_jobs.get(job_id)
            if saved is not None:
                first = self._first_seen.get(job_id)
                if first is None:
                    head = _job_head(saved)
                    first = self._first_seen[job_id] = (
                        micros if head.first_seen_at is None else head.first_seen_at)
                if micros >= first:
                    return  # the saved state holds an earlier event: nothing to write
                job = self.job(job_id)
            else:
                job = self.jobs[job_id] = JobState(job_id=job_id)
        assert job is not None
        if job.first_seen_at is None or micros < job.first_seen_at:
            job.first_seen_at = micros
            self.changed_jobs.add(job_id)

    def apply_all(self, events: Iterable[Event]) -> int:
        """Merge events in any order; return how many were new."""
        return sum(self.apply(event) for event in events)

    def _decode_all(self) -> None:
        for job_id in list(self.saved_jobs):
            self.job(job_id)
        for step_id in list(self.saved_steps):
            self.step(step_id)

    def job_rows(self, only_changed: bool = False) -> list[JobRow]:
        """Rows of the (changed) jobs, sorted by job_id."""
        if not only_changed:
            self._decode_all()
        ids = self.changed_jobs if only_changed else self.jobs.keys()
        return [self.jobs[i].row() for i in sorted(ids)]

    def step_rows(self, only_changed: bool = False) -> list[StepRow]:
        """Rows of the (changed) steps, sorted by step_id."""
        if not only_changed:
            self._decode_all()
        ids = self.changed_steps if only_changed else self.steps.keys()
        return [self.steps[i].row() for i in sorted(ids)]

    def lineage(self, rows: Iterable[StepRow], *, rewrite: bool = False) -> edges.BatchLineage:
        """What the fold changed of what the lineage edges are made of, given the rows of
        the changed steps (:meth:`step_rows`): see :class:`edges.BatchLineage`."""
        pairs = [(self._steps_before.get(r.step_id),
                  edges.view(r.step_id, r.job_id, r.step_name, r.status,
                             started_at=r.started_at, completed_at=r.completed_at,
                             inputs=r.inputs, outputs=r.outputs)) for r in rows]
        before = dict(self._jobs_before)
        after = {job_id: job.lineage_key() for job_id, job in self.jobs.items()}
        for old, new in pairs:
            for job_id in (new.job_id, None if old is None else old.job_id):
                saved = None if job_id is None else self.saved_jobs.get(job_id)
                if job_id is not None and saved is not None and job_id not in before:
                    # Read only as far as its head: this fold did not change the job.
                    before[job_id] = after[job_id] = _head_key(saved)
        return edges.BatchLineage(pairs, before, after, rewrite)


def _lineage_key(scalars: dict[str, list[Any]]) -> edges.JobKey | None:
    """A job's lineage key from its scalar registers, with the row's defaults (rule 6)."""
    def value(name: str, default: Any) -> Any:
        held = scalars.get(name)
        return default if held is None else held[2]

    return edges.job_key(value("namespace", "default"), value("environment", "dev"),
                         value("pipeline", None))


def _head_key(saved: str) -> edges.JobKey | None:
    """A saved job state's lineage key, without decoding the rest of it (a register's value
    sits at index 2 in either state version)."""
    return _lineage_key(_decode(_job_head(saved).scalars))


def fold(events: Iterable[Event]) -> Projection:
    """Fold events from nothing: the rows every consumer of the topic must agree on."""
    projection = Projection()
    projection.apply_all(events)
    return projection
