"""Replay: rebuild the tables from the topic, the source of truth, with zero downtime.

A full replay folds the whole topic into *shadow* tables (the same migrations,
in the schema ``pudato_shadow``) while readers and the live worker keep using
the live tables. When the shadow has caught up, one transaction locks the
live tables (the live worker's next batch waits), catches the shadow up to
the topic's end as it is at that moment, and moves the shadow tables into
place: readers see the old tables or the new ones, never an empty or a
half-built one.

The handover of positions: the live worker commits a Kafka offset only after
its database transaction, and it cannot commit one while the tables are
locked, so every event it ever applied lies below the ends the swap caught up
to. After the swap it goes on from its own committed offsets: events between
those and the ends are already in the new tables and are dropped by event id,
events after the ends are new to it. Nothing is missed, nothing counts twice.

``--verify`` builds the shadow and reports how it differs from the live tables
instead of swapping. ``--since`` and ``--correlation-id`` re-apply part of the
topic to the live tables and rewrite the rows of every entity it names from
its saved state (a repair; applying an event twice changes nothing).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from confluent_kafka import Message

from pudato_registry import kafka, store
from pudato_registry.loop import (
    Garbage,
    Plan,
    StoppedError,
    UnstorableError,
    apply_events,
    commit_plan,
    entity_ids,
    fold_ahead,
    isolate,
    tune_interpreter,
    with_retries,
)
from pudato_registry.present import safe
from pudato_registry.settings import Settings
from pudato_registry.store import States
from pudato_registry.validate import Rejection, validate
from pudato_registry.wire import Event

log = logging.getLogger(__name__)
T = TypeVar("T")
_LOCK_WHEN_BEHIND = 500  # messages: catch up outside the lock until this close


@dataclass
class ReplayReport:
    """What a replay read and did."""

    mode: str
    messages: int = 0
    events: int = 0
    invalid: int = 0
    applied: int = 0
    refused: int = 0  # over an entity limit, or unstorable: dead-lettered by the worker
    seconds: float = 0.0
    locked_seconds: float = 0.0
    leftover_bytes: int | None = None  # a shadow schema an interrupted replay left, removed
    differences: dict[str, tuple[int, list[str]]] = field(default_factory=dict)

    def summary(self) -> str:
        """One paragraph for people."""
        lines = []
        if self.leftover_bytes is not None:
            lines.append(f"removed the shadow tables an interrupted replay left behind "
                         f"({self.leftover_bytes / 2**20:.1f} MiB)")
        lines += [f"replay ({self.mode}): {self.messages} messages read, {self.events} events "
                 f"({self.invalid} invalid and {self.refused} over a limit or unstorable "
                 f"skipped), {self.applied} new to the target, "
                 f"{self.seconds:.1f} s"]
        if self.mode == "rebuild":
            lines.append(f"swapped in; readers blocked {self.locked_seconds * 1000:.0f} ms "
                         "(the live tables were locked that long)")
        for table, (count, keys) in self.differences.items():
            shown = ", ".join(safe(key) for key in keys)
            lines.append(f"{table}: {count} rows differ" + (f" (e.g. {shown})" if keys else ""))
        return "\n".join(lines)


class _Applier:
    """Applies batches of events to the target, one transaction each, as the worker does.

    ``ahead``: fold a batch while the one before it commits, in a writer thread
    (the worker's pipeline). Only for a target nothing else writes, the shadow
    tables: a batch's entities then have the states the batch before it wrote,
    or the committed ones. Should that batch have been split around an event
    PostgreSQL refused, the commit finds other states than the fold began from
    and folds again, so the rows are right either way.
    """

    def __init__(self, target: store.Store, settings: Settings, report: ReplayReport, *,
                 rewrite: bool, ahead: bool, stop: threading.Event | None) -> None:
        self.target, self.settings, self.report = target, settings, report
        self.rewrite, self.stop = rewrite, stop
        self._writer = ThreadPoolExecutor(1, "pudato-replay-writer") if ahead else None
        self._inflight: Future[tuple[int, int]] | None = None
        self._written = States(jobs={}, steps={})  # the states the batch in flight writes

    def apply(self, events: Sequence[Event]) -> None:
        """Apply ``events``: now, or (ahead) once the batch before has committed."""
        if self._writer is None:
            self._account(self._isolated(events))
            return
        job_ids, step_ids = entity_ids(events)
        base, plan = fold_ahead(events, job_ids, step_ids, self._written,
                                lambda jobs, steps: self._retry(
                                    "read", lambda: self.target.read_states(jobs, steps)))
        self.settle()
        self._written = plan.writes.states()
        self._inflight = self._writer.submit(self._commit, events, job_ids, step_ids, base,
                                             plan)

    def _commit(self, events: Sequence[Event], job_ids: list[str], step_ids: list[str],
                base: States, plan: Plan) -> tuple[int, int]:
        """In the writer thread: one transaction, as the worker's (a retry reads them all)."""
        attempts = itertools.count()
        try:
            written = self._retry("replay", lambda: commit_plan(
                self.target, events, job_ids, step_ids, base=base, plan=plan,
                recheck=next(attempts) > 0))
        except UnstorableError:
            return self._isolated(events)
        return written.new, len(written.refused)

    def _isolated(self, events: Sequence[Event]) -> tuple[int, int]:
        # As the worker does: an event PostgreSQL refuses is set apart, the rest applied.
        done = isolate(lambda part: self._retry(
            "replay", lambda: apply_events(self.target, part, rewrite=self.rewrite)), events)
        return done.new, len(done.refused) + len(done.unstorable)

    def settle(self) -> None:
        """Wait for the batch in flight to commit."""
        if self._inflight is not None:
            future, self._inflight = self._inflight, None
            try:
                self._account(future.result())
            except BaseException:
                self._written = States(jobs={}, steps={})
                raise

    def close(self) -> None:
        """Let the batch in flight finish (or fail); stop the writer thread."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def _account(self, counts: tuple[int, int]) -> None:
        self.report.applied += counts[0]
        self.report.refused += counts[1]

    def _retry(self, operation: str, fn: Callable[[], T]) -> T:
        return with_retries(self.settings, operation, fn, stop=self.stop)


def _fold_into(reader: kafka.PartitionReader, targets: dict[int, int], target: store.Store,
               settings: Settings, report: ReplayReport, *, rewrite: bool = False,
               keep: Callable[[Event], bool] = lambda _e: True, wait_s: float = 0.1,
               ahead: bool = False, stop: threading.Event | None = None) -> None:
    applier = _Applier(target, settings, report, rewrite=rewrite, ahead=ahead, stop=stop)
    # As in the worker: no automatic collection during a fold, collections between batches.
    try:
        with Garbage() as garbage:
            for messages in reader.read_until(targets, wait_s):
                if stop is not None and stop.is_set():
                    raise StoppedError("reading the topic")
                events = _valid(messages, settings, report, keep)
                if events:
                    applier.apply(events)
                garbage.between_batches()
            applier.settle()
    finally:
        applier.close()


def _valid(messages: list[Message], settings: Settings, report: ReplayReport,
           keep: Callable[[Event], bool]) -> list[Event]:
    """The events of ``messages`` that are valid and kept, counting the others."""
    report.messages += len(messages)
    events = []
    for message in messages:
        event = validate(message.value(), settings.max_message_bytes)
        if isinstance(event, Rejection):
            report.invalid += 1
        elif keep(event):
            events.append(event)
    report.events += len(events)
    return events


def rebuild(settings: Settings, *, verify: bool = False, accept_trimmed: bool = False,
            stop: threading.Event | None = None) -> ReplayReport:
    """Fold the whole topic into shadow tables; swap them in, or with ``verify`` compare.

    Refuses (:class:`store.ReplayRefusedError`, before building anything) while
    another replay runs; when the topic has lost its head (retention,
    ``kafka-delete-records``) unless ``accept_trimmed``; and when the swap
    would drop views, foreign keys, triggers, publications or indexes that
    depend on the live tables. ``stop`` set (a signal) ends it with
    :class:`StoppedError` before the swap: the live tables are as they were.
    """
    dsn = settings.database_dsn
    report = ReplayReport("verify" if verify else "rebuild")
    started = time.monotonic()
    tune_interpreter()
    with store.replay_lock(dsn):
        reader = kafka.PartitionReader(settings, settings.topic)
        try:
            trimmed = {p: low for p, low in reader.start_offsets().items() if low > 0}
            if trimmed and not (verify or accept_trimmed):
                lost = ", ".join(f"partition {p}: the first {low} events" for p, low in
                                 sorted(trimmed.items()))
                raise store.ReplayRefusedError(
                    f"topic {settings.topic} no longer holds its first events ({lost}); a "
                    "rebuild would drop the jobs they made. To rebuild from what is left, "
                    "run again with --accept-trimmed")
            report.leftover_bytes = store.shadow_bytes(dsn)
            if report.leftover_bytes is not None:
                log.warning("removing the shadow tables an interrupted replay left behind "
                            "(%.1f MiB)", report.leftover_bytes / 2**20)
            store.create_shadow(dsn)
            if not verify and (lost_objects := store.unkept_dependents(dsn)):
                raise store.ReplayRefusedError(
                    "the swap would drop what depends on the live tables: "
                    f"{'; '.join(lost_objects)}. Drop or move them first (and re-create them "
                    "after), or use --verify")
            shadow = store.Store(dsn, schema=store.SHADOW_SCHEMA)
            try:
                _rebuild_into(reader, shadow, settings, report, verify=verify, stop=stop)
            finally:
                shadow.close()
        finally:
            reader.close()
            store.drop_shadow(dsn)
    report.seconds = time.monotonic() - started
    return report


def _rebuild_into(reader: kafka.PartitionReader, shadow: store.Store, settings: Settings,
                  report: ReplayReport, *, verify: bool, stop: threading.Event | None) -> None:
    dsn = settings.database_dsn
    reader.start()
    ends = reader.end_offsets()
    while True:  # catch up while the live tables stay open to everyone
        _fold_into(reader, ends, shadow, settings, report, ahead=True, stop=stop)
        ends = reader.end_offsets()
        behind = sum(end - reader.positions.get(p, 0) for p, end in ends.items())
        if behind < _LOCK_WHEN_BEHIND:
            break
    if verify:
        report.differences = store.differences(dsn)
        return
    store.analyze_shadow(dsn)  # the planner knows the new tables from their first query
    with store.locked_live_tables(dsn, stop=stop) as conn:
        locked = time.monotonic()
        # Under the lock the live worker cannot commit a batch, so the topic's ends as
        # they are now lie above everything it applied: catch up to them, and swap.
        # One ListOffsets round trip, then only the few events since the last round.
        _fold_into(reader, reader.end_offsets(), shadow, settings, report, wait_s=0.01)
        store.swap_in_shadow(conn)
    report.locked_seconds = time.monotonic() - locked
    store.drop_retired(dsn)


def reapply(settings: Settings, *, since: datetime | None = None,
            correlation_id: str | None = None,
            stop: threading.Event | None = None) -> ReplayReport:
    """Re-apply the events since a time, or of one correlation, to the live tables."""
    report = ReplayReport("since" if since is not None else "correlation")
    started = time.monotonic()
    with store.replay_lock(settings.database_dsn):
        _reapply(settings, report, since, correlation_id, stop)
    report.seconds = time.monotonic() - started
    return report


def _reapply(settings: Settings, report: ReplayReport, since: datetime | None,
             correlation_id: str | None, stop: threading.Event | None) -> None:
    live = store.Store(settings.database_dsn)
    reader = kafka.PartitionReader(settings, settings.topic)
    try:
        reader.start(None if since is None else reader.offsets_at(since))
        _fold_into(reader, reader.end_offsets(), live, settings, report, rewrite=True,
                   keep=(lambda e: e.correlation_id == correlation_id)
                   if correlation_id is not None else (lambda _e: True), stop=stop)
    finally:
        reader.close()
        live.close()
