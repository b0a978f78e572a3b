"""The worker loop: the one module that touches both Kafka and PostgreSQL.

One iteration: consume up to ``batch_size`` messages; validate each (pure);
send the invalid ones to the dead-letter topic and wait for the broker's
acknowledgement; fold the valid ones into the saved states of the entities
they touch and write rows and states in one PostgreSQL transaction; only
then store the consumed offsets, which the consumer commits to Kafka.

Two batches overlap: while a writer thread commits batch N, the loop
consumes, validates and folds batch N+1, taking the states of entities that
N touches from N's result and the others from the database. The writer
checks, inside N+1's transaction, that the states it reads are the ones the
fold started from; if another worker changed one meanwhile, it folds again
from what it read. Offsets of N+1 are stored only after N and N+1 committed.

Where offsets live, and what a crash repeats: offsets live in Kafka only.
Between the database commit and the Kafka commit a crash loses nothing; on
restart the same messages are consumed again, and the fold drops every event
whose ``event_id`` its saved state already holds, so rows and states come out
the same. A repeated batch can repeat its dead letters (the DLQ is
at-least-once); each carries its source topic, partition and offset, by which
a reader can tell repeats apart.

What a retry repeats: a transient failure (connection lost, server restart,
serialization failure, deadlock, broker transport error) re-runs the whole
step, with exponential backoff and jitter: a rolled-back transaction
re-reads the states and re-folds, and dead letters are sent again. All the
retries of one batch (its dead letters, its reads, its write) share one
deadline, ``retry_timeout_s`` after it was consumed, which the consumer's
``max.poll.interval.ms`` outlasts: a long outage stops the worker with a
clear error, never gets it evicted from the group mid-retry. Consumption
pauses meanwhile: the loop folds at most one batch ahead of the writer.

No single event stops the worker (docs/events-v1.md, "Limits"): an invalid
one is dead-lettered before the fold; one that would take an entity past a
limit is refused by the fold (``entity_limit``); one PostgreSQL refuses for
its data (SQLSTATE classes 22, 23, 54) is isolated by applying the batch in
halves until it stands alone (``unstorable``). Each is dead-lettered before
its offset is stored. A permanent failure that would refuse every event
alike (missing table or privilege, retries exhausted) raises
:class:`FatalError` with nothing stored past the last committed batch.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import tenacity
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pudato_registry import kafka
from pudato_registry.metrics import Metrics
from pudato_registry.projection import Projection
from pudato_registry.settings import Settings
from pudato_registry.store import Failure, States, Store, Writes, classify, describe
from pudato_registry.validate import Rejection, RejectionKind, validate
from pudato_registry.wire import Event

log = logging.getLogger(__name__)
T = TypeVar("T")
Partition = tuple[str, int]


class FatalError(RuntimeError):
    """The worker cannot go on: a permanent failure, or a transient one that outlasted retries."""


BROKER_AWAY_S = 10.0  # transport errors this long, unbroken: not ready


class StoppedError(Exception):
    """A stop was asked for while ``operation`` waited to try again: nothing of it was done."""

    def __init__(self, operation: str) -> None:
        super().__init__(f"stopped while {operation} was waiting to be tried again")
        self.operation = operation


class UnstorableError(FatalError):
    """PostgreSQL refused a write for the data in it: some event's fault, not the database's."""

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"{operation}: {reason}")
        self.reason = reason


def tune_interpreter() -> None:
    """Tune the garbage collector and thread switching for batch processing."""
    # A batch allocates tens of thousands of short-lived, acyclic objects; the
    # default gen0 threshold (700) would scan them again and again. (While a
    # worker runs, automatic collection is off altogether: see Garbage.)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # The writer thread streams COPY data and waits on PostgreSQL without the
    # GIL; each time the socket is ready again it must win the GIL back from
    # the folding thread, which by default keeps it for up to 5 ms while the
    # server sits idle. 1 ms: a batch drains 15-20 % faster on 2 cores.
    sys.setswitchinterval(0.001)


class Garbage:
    """Automatic garbage collection off while the worker runs; collections between batches.

    Folding a batch builds the states of thousands of entities, all alive
    until the batch is written: every automatic collection during the fold
    traverses them in vain (a fifth of the fold's time, measured). Nearly all
    of it is freed by reference counting; what forms cycles is collected
    here, between batches, when little is alive: the young generations once
    ``YOUNG`` objects were allocated since, everything every ``FULL_EVERY_S``.
    """

    YOUNG = 50_000
    FULL_EVERY_S = 60.0
    # The collector is the process's: with several workers in one process
    # (tests, an embedding application), the first to start turns it off and
    # the last to stop turns it back on, if it was on.
    _lock = threading.Lock()
    _running = 0
    _was_enabled = True

    def __init__(self) -> None:
        self._full_due = time.monotonic() + self.FULL_EVERY_S

    def __enter__(self) -> Garbage:
        with Garbage._lock:
            if Garbage._running == 0:
                Garbage._was_enabled = gc.isenabled()
                gc.disable()
            Garbage._running += 1
        return self

    def __exit__(self, *_exc: object) -> None:
        with Garbage._lock:
            Garbage._running -= 1
            if Garbage._running == 0 and Garbage._was_enabled:
                gc.enable()

    def between_batches(self) -> None:
        """Collect what earlier batches left in cycles, if it is time."""
        now = time.monotonic()
        if now > self._full_due:
            self._full_due = now + self.FULL_EVERY_S
            gc.collect()
        elif gc.get_count()[0] >= self.YOUNG:
            gc.collect(1)


# A message that is dead-lettered: why (kind, reason).
Letter = tuple[Message, RejectionKind, str]


@dataclass
class Batch:
    """One batch of messages (a count and a byte budget), split by validation."""

    # Every retry this batch needs (dead letters, reads, its write) ends by then.
    deadline: float
    events: list[Event] = field(default_factory=list)
    sources: list[Message] = field(default_factory=list)  # the message of each event
    rejections: list[Letter] = field(default_factory=list)
    next_offsets: dict[Partition, int] = field(default_factory=dict)
    consumed: int = 0
    size: int = 0  # bytes of message values


@dataclass(frozen=True)
class Plan:
    """What folding events into saved states gives: the writes, and what it did with each event."""

    writes: Writes
    new: int  # events applied (the others were duplicates or refused)
    refused: list[tuple[Event, str]]  # refused for an entity limit, with the reason


@dataclass(frozen=True)
class _Planned:
    """A batch folded ahead of its transaction, and the states it was folded from."""

    batch: Batch
    job_ids: list[str]
    step_ids: list[str]
    base: States
    plan: Plan


@dataclass
class Isolated:
    """Events applied in parts around the ones PostgreSQL refused: see :func:`isolate`."""

    new: int = 0
    refused: list[tuple[Event, str]] = field(default_factory=list)
    unstorable: list[tuple[Event, str]] = field(default_factory=list)
    transactions: int = 0


@dataclass
class Stats:
    """Running totals, for the demo and the tests (Prometheus has the same)."""

    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    largest_batch_bytes: int = 0
    busy_seconds: float = 0.0  # validating, folding, writing: the time not spent waiting


def plan_writes(events: Sequence[Event], states: States, *, rewrite: bool = False) -> Plan:
    """Fold ``events`` into the saved ``states``: the writes, how many were new, which refused.

    With ``rewrite``, every entity the events name gets its row written from
    its state even if no event was new: selective replay repairs rows so.
    """
    # Copies: the projection takes each saved state out as it decodes it.
    projection = Projection(saved_jobs=dict(states.jobs), saved_steps=dict(states.steps))
    new = projection.apply_all(events)
    if rewrite:
        for event in events:
            if projection.job(event.job_id) is not None:
                projection.changed_jobs.add(event.job_id)
            if event.step_id is not None and projection.step(event.step_id) is not None:
                projection.changed_steps.add(event.step_id)
    steps = projection.step_rows(only_changed=True)
    writes = Writes(
        jobs=projection.job_rows(only_changed=True),
        steps=steps,
        job_states=[(i, projection.jobs[i].dump()) for i in sorted(projection.changed_jobs)],
        step_states=[(i, projection.steps[i].dump()) for i in sorted(projection.changed_steps)],
        lineage=projection.lineage(steps, rewrite=rewrite),
    )
    return Plan(writes, new, projection.refused)


def entity_ids(events: Sequence[Event]) -> tuple[list[str], list[str]]:
    """The job ids and step ids ``events`` name, sorted (the order rows are locked in)."""
    return (sorted({e.job_id for e in events}),
            sorted({e.step_id for e in events if e.step_id is not None}))


def apply_events(store: Store, events: Sequence[Event], *, rewrite: bool = False) -> Plan:
    """Fold ``events`` into the states they touch and write the result, in one transaction."""
    job_ids, step_ids = entity_ids(events)
    plan: Plan | None = None

    def compute(states: States) -> Writes:
        nonlocal plan  # the last attempt's plan is the one that committed
        plan = plan_writes(events, states, rewrite=rewrite)
        return plan.writes

    store.apply(job_ids, step_ids, compute)
    assert plan is not None
    return plan


def fold_ahead(events: Sequence[Event], job_ids: Sequence[str], step_ids: Sequence[str],
               written: States, read: Callable[[list[str], list[str]], States]) -> tuple[
                   States, Plan]:
    """Fold ``events`` while the batch before them commits: the states it writes
    (``written``) for its entities, ``read`` (the committed ones) for the others.

    Returns the states the fold began from, and its plan: :func:`commit_plan`
    writes it, folding again should the states have moved meanwhile.
    """
    stored = read([i for i in job_ids if i not in written.jobs],
                  [i for i in step_ids if i not in written.steps])
    base = States(
        jobs={**{i: written.jobs[i] for i in job_ids if i in written.jobs}, **stored.jobs},
        steps={**{i: written.steps[i] for i in step_ids if i in written.steps},
               **stored.steps})
    return base, plan_writes(events, base)


def commit_plan(store: Store, events: Sequence[Event], job_ids: Sequence[str],
                step_ids: Sequence[str], *, base: States, plan: Plan, recheck: bool,
                on_refold: Callable[[], None] = lambda: None) -> Plan:
    """Write a plan :func:`fold_ahead` made, in one transaction; return the plan written.

    Without ``recheck`` (a first attempt) only the states the fold began from are
    read back: an entity it took as new is COPYed in, and if another writer
    created it since, its primary key fails (23505, transient). ``recheck``
    (a retry) reads every entity's state. States that moved are folded again.
    """
    if not recheck:
        job_ids = [i for i in job_ids if i in base.jobs]
        step_ids = [i for i in step_ids if i in base.steps]
    written = plan

    def compute(current: States) -> Writes:
        nonlocal written
        if current == base:
            return plan.writes
        on_refold()
        written = plan_writes(events, current)
        return written.writes

    store.apply(job_ids, step_ids, compute)
    return written


def isolate(apply: Callable[[Sequence[Event]], Plan], events: Sequence[Event]) -> Isolated:
    """Apply ``events`` in ever smaller parts until each one PostgreSQL refuses stands alone.

    ``apply`` writes some events in one transaction, or raises
    :class:`UnstorableError`; then the part is split in halves, each applied
    on its own. An event refused alone is unstorable; every other event is
    applied. Each part folds into the states its predecessors committed, so
    the rows are those of the events applied, whatever the split (the fold
    does not depend on order). One bad event among n costs about 2 log2(n)
    transactions.
    """
    result = Isolated()
    parts: list[Sequence[Event]] = [events]
    while parts:
        part = parts.pop()
        result.transactions += 1
        try:
            plan = apply(part)
        except UnstorableError as exc:
            if len(part) == 1:
                result.unstorable.append((part[0], exc.reason))
            else:  # the second half goes on the stack first, so the first is tried first
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]
            continue
        result.new += plan.new
        result.refused += plan.refused
    return result


def with_retries(settings: Settings, operation: str, fn: Callable[..., T], *args: Any,
                 on_retry: Callable[[], None] = lambda: None,
                 deadline: float | None = None, stop: threading.Event | None = None) -> T:
    """Run ``fn``, retrying transient failures with capped, jittered exponential backoff.

    Retries end at ``deadline`` (a ``time.monotonic()`` value; by default
    ``settings.retry_timeout_s`` from now): no backoff sleeps past it. Raises
    :class:`UnstorableError` when PostgreSQL refuses the data written,
    :class:`FatalError` on any other permanent failure, or when transient
    ones outlast the deadline. With ``stop``, a backoff ends the moment it is
    set, and :class:`StoppedError` is raised instead of trying again.
    """
    ends = time.monotonic() + settings.retry_timeout_s if deadline is None else deadline
    stopping = stop or threading.Event()

    def attempt() -> T:
        if stopping.is_set():
            raise StoppedError(operation)
        return fn(*args)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        on_retry()
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s failed (attempt %d), retrying: %s", operation, state.attempt_number, exc)

    def out_of_time(state: tenacity.RetryCallState) -> bool:
        return stopping.is_set() or time.monotonic() + state.upcoming_sleep >= ends

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_transient),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=settings.retry_max_backoff_s),
        stop=out_of_time,
        sleep=functools.partial(_sleep_unless, stopping),  # a stop ends a backoff at once
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except StoppedError:
        raise
    except Exception as exc:
        if stopping.is_set() and _transient(exc):
            raise StoppedError(operation) from exc
        if classify(exc) is Failure.DATA:
            raise UnstorableError(operation, describe(exc)) from exc
        kind = "still failing after retries" if _transient(exc) else "permanent failure"
        raise FatalError(f"{operation}: {kind}: {exc}") from exc


def _sleep_unless(stop: threading.Event, seconds: float) -> None:
    stop.wait(seconds)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, kafka.DeliveryError):
        return True
    if isinstance(exc, KafkaException):
        error = exc.args[0]
        return bool(error.retriable()) and not error.fatal()
    return classify(exc) is Failure.TRANSIENT


@dataclass(frozen=True)
class _Written:
    """What the writer thread did with a batch: applied, committed at, dead-lettered."""

    new: int
    committed_at: float
    letters: list[Letter]


class Worker:
    """Consumes the event topic and keeps the tables equal to the projection of its events."""

    def __init__(self, settings: Settings, *, consumer: Consumer | None = None,
                 producer: Producer | None = None, store: Store | None = None,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self._member = kafka.MemberSlot("worker", settings.group_id, settings.group_instance_id)
        self._broker = kafka.BrokerWatch("worker")
        self.consumer = consumer or kafka.make_consumer(
            settings, **self._member.config(), error_cb=self._broker.error)
        self.producer = producer or kafka.make_producer(settings, **{"client.id": "pudato-dlq"})
        self.store = store or Store(settings.database_dsn,
                                    lineage_edges=settings.lineage_edges)
        self.metrics = metrics or Metrics(stall_timeout_s=settings.stall_timeout_s)
        self.stats = Stats()
        self._stop = threading.Event()
        self._assigned: set[Partition] = set()
        self._at_end: set[Partition] = set()
        self._lag_due = 0.0
        self._behind = 0  # messages behind, over the assigned partitions, as last observed
        self._consume_errors: set[int] = set()
        self._batches = kafka.Batches(self.consumer, settings.batch_size,
                                      settings.batch_max_bytes, settings.batch_timeout_s)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pudato-writer")
        self._inflight: tuple[Batch, Future[_Written], float] | None = None
        self._written = States(jobs={}, steps={})  # the states the in-flight batch writes
        self.dead_letters = kafka.DeadLetters(settings, self.producer, settings.dlq_topic,
                                              self._stop)
        self.refolds = 0  # batches whose states changed under them (another worker)
        self.isolations = 0  # batches split to isolate events PostgreSQL refused

    def request_stop(self) -> None:
        """Ask the loop to finish its batch, commit and return (signal handlers call this)."""
        self._stop.set()

    # --- the loop ------------------------------------------------------------

    def run(self, *, drain: bool = False) -> None:
        """Consume until stopped, or with ``drain`` until every assigned partition is caught up.

        A stop asked for while a failure is being retried (no database at start,
        a database or broker away) ends the wait at once: the batch being retried
        is not committed and its offsets are not stored, so the next start reads
        it again.
        """
        try:
            self._start()
            with Garbage() as garbage:
                self._consume(garbage, drain=drain)
            self._settle()  # stopping: finish the batch in flight
        except StoppedError as exc:
            self._abandon_inflight()
            log.warning("%s; nothing half-done was committed, the next start reads it again",
                        exc)
        finally:
            self.metrics.set_ready(False)
            self._close()

    def _consume(self, garbage: Garbage, *, drain: bool) -> None:
        while not self._stop.is_set():
            messages = self._batches.next()
            started = time.perf_counter()
            batch = self._collect(messages)
            if batch.consumed:
                self._process(batch, started)
            elif self._inflight is not None:
                self._settle()  # nothing new: acknowledge the last batch now, not later
            garbage.between_batches()
            self._check_broker()
            self._observe_lag()
            # For /healthz: the loop went round; is there more to do?
            self.metrics.progressed(work_pending=self._inflight is not None
                                    or self._behind > 0)
            if (drain and self._assigned and self._assigned <= self._at_end
                    and not self._batches.waiting):
                self._settle()
                if self._assigned <= self._at_end:
                    log.info("drained: every assigned partition is at its end")
                    return

    def _start(self) -> None:
        settings = self.settings
        kafka.require_topics(settings, settings.topic, settings.dlq_topic)
        self.dead_letters.start()
        self._retry("connect", self.store.ping)
        tune_interpreter()
        self.consumer.subscribe([settings.topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.metrics.set_ready(True)
        log.info("worker consuming %s as group %s", settings.topic, settings.group_id)

    def _collect(self, messages: list[Message]) -> Batch:
        batch = Batch(deadline=time.monotonic() + self.settings.retry_timeout_s)
        max_bytes = self.settings.max_message_bytes
        for message in messages:
            error = message.error()
            where = cast(Partition, (message.topic(), message.partition()))
            if error is not None:
                self._on_consume_error(error, where)
                continue
            self._at_end.discard(where)
            if batch.consumed == 0:
                self._broker_answers()
                self.metrics.consumed_now()
            batch.consumed += 1
            batch.next_offsets[where] = cast(int, message.offset()) + 1
            value = message.value()
            batch.size += len(value or b"")
            result = validate(value, max_bytes)
            if isinstance(result, Rejection):
                batch.rejections.append((message, result.kind, result.message))
            else:
                batch.events.append(result)
                batch.sources.append(message)
        return batch

    def _on_consume_error(self, error: KafkaError, where: Partition) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            self._at_end.add(where)
            self._broker_answers()
            return
        if error.fatal():
            raise FatalError(f"Kafka consumer failed: {error.str()}")
        self._broker.error(error)
        # librdkafka reconnects by itself; say so once per kind of error.
        if error.code() not in self._consume_errors:
            self._consume_errors.add(error.code())
            log.warning("Kafka consumer error (retried by the client): %s", error.str())

    def _broker_answers(self) -> None:
        """A message or an end of partition came: the broker is there."""
        if self._broker.since is not None:
            self._broker.answered()
            self._consume_errors.clear()
            self.metrics.set_ready(True)

    def _check_broker(self) -> None:
        """Not ready once the broker has been away for a while (a blip is not an outage)."""
        if self._broker.since is None:
            return
        if self._broker.probe_due() and kafka.answers(self.consumer, self.settings.topic, 0.5):
            self._broker_answers()  # back, though nothing new came to say so
        elif self._broker.away_for() > BROKER_AWAY_S:
            self.metrics.set_ready(False)

    def _process(self, batch: Batch, started: float) -> None:
        if batch.rejections:
            self._retry("dead_letter", self._dead_letter, batch.rejections,
                        deadline=batch.deadline)
        if not batch.events:
            self._settle()
            self._acknowledge(batch, 0, time.time(), time.perf_counter() - started)
            return
        job_ids, step_ids = entity_ids(batch.events)
        # Fold ahead while the previous batch commits: its entities' states come
        # from its result, the others' from the database (nothing writes them now).
        base, plan = fold_ahead(batch.events, job_ids, step_ids, self._written,
                                lambda jobs, steps: self._retry(
                                    "read", self.store.read_states, jobs, steps,
                                    deadline=batch.deadline))
        self._settle()
        self._written = plan.writes.states()
        planned = _Planned(batch, job_ids, step_ids, base, plan)
        self._inflight = (batch, self._writer.submit(self._write, planned),
                          time.perf_counter() - started)

    def _write(self, planned: _Planned) -> _Written:
        """In the writer thread: commit ``planned``, then dead-letter what the write refused."""
        batch = planned.batch
        attempts = itertools.count()
        try:
            plan = self._retry("apply", lambda: self._commit(planned,
                                                             recheck=next(attempts) > 0),
                               deadline=batch.deadline)
            refused, unstorable, new = plan.refused, [], plan.new
        except UnstorableError as exc:
            log.warning("PostgreSQL refused a batch of %d events for the data of some (%s); "
                        "isolating them", len(batch.events), exc.reason)
            self.isolations += 1
            isolated = isolate(lambda part: self._retry(
                "apply", apply_events, self.store, part, deadline=batch.deadline), batch.events)
            refused, unstorable, new = isolated.refused, isolated.unstorable, isolated.new
        committed_at = time.time()
        letters: list[Letter] = []
        if refused or unstorable:
            source = {id(event): message for event, message in zip(batch.events, batch.sources,
                                                                    strict=True)}
            letters = [(source[id(event)], RejectionKind.ENTITY_LIMIT, reason)
                       for event, reason in refused]
            letters += [(source[id(event)], RejectionKind.UNSTORABLE, reason)
                        for event, reason in unstorable]
            self._retry("dead_letter", self._dead_letter, letters, deadline=batch.deadline)
        return _Written(new, committed_at, letters)

    def _commit(self, planned: _Planned, *, recheck: bool = True) -> Plan:
        """One transaction; fold again if the states moved meanwhile (another worker)."""
        def refolded() -> None:
            self.refolds += 1

        return commit_plan(self.store, planned.batch.events, planned.job_ids,
                           planned.step_ids, base=planned.base, plan=planned.plan,
                           recheck=recheck, on_refold=refolded)

    def _abandon_inflight(self) -> None:
        """Stopping: the batch in flight stopped too (or commits now); store none of its offsets."""
        if self._inflight is not None:
            _batch, future, _seconds = self._inflight
            self._inflight = None
            with contextlib.suppress(BaseException):  # its own stop, or done: read again later
                future.result()
            self._written = States(jobs={}, steps={})

    def _settle(self) -> None:
        """Wait for the batch in flight to commit, then store its offsets."""
        if self._inflight is None:
            return
        batch, future, seconds = self._inflight
        self._inflight = None
        started = time.perf_counter()
        try:
            written = future.result()
        except BaseException:
            self._written = States(jobs={}, steps={})
            raise
        batch.rejections += written.letters
        self._acknowledge(batch, written.new, written.committed_at,
                          seconds + time.perf_counter() - started)

    def _acknowledge(self, batch: Batch, new: int, committed_at: float, seconds: float) -> None:
        # Durable before acknowledged: only now may the offsets be committed.
        try:
            self.consumer.store_offsets(offsets=[
                TopicPartition(topic, partition, offset)
                for (topic, partition), offset in batch.next_offsets.items()
            ])
        except KafkaException as exc:  # partitions lost meanwhile: their new owner re-reads
            log.warning("offsets not stored: %s", exc)
        self._consume_errors.clear()
        self._account(batch, new, committed_at, seconds)

    def _account(self, batch: Batch, new: int, committed_at: float, seconds: float) -> None:
        m, s = self.metrics, self.stats
        valid = len(batch.events)
        refused = sum(1 for _m, kind, _r in batch.rejections
                      if kind in (RejectionKind.ENTITY_LIMIT, RejectionKind.UNSTORABLE))
        s.consumed += batch.consumed
        s.applied += new
        s.duplicates += valid - new - refused
        s.dead_lettered += len(batch.rejections)
        s.batches += 1
        s.largest_batch_bytes = max(s.largest_batch_bytes, batch.size)
        s.busy_seconds += seconds
        m.consumed.inc(batch.consumed)
        m.applied.inc(new)
        m.duplicates.inc(valid - new - refused)
        for _message, kind, _reason in batch.rejections:
            m.dead_lettered.labels(kind.value).inc()
        m.batches.inc()
        m.batch_seconds.observe(seconds)
        m.observe_latencies((committed_at - e.occurred_at.timestamp() for e in batch.events),
                            self.settings.latency_window_s)
        m.set_ready(True)

    # --- the two side effects ----------------------------------------------------

    def _dead_letter(self, letters: Sequence[Letter]) -> None:
        self.dead_letters.send([(message, kind.value, reason) for message, kind, reason in letters])

    def _retry(self, operation: str, fn: Callable[..., T], *args: Any,
               deadline: float | None = None) -> T:
        def on_retry() -> None:
            self.metrics.retries.labels(operation).inc()
            self.metrics.set_ready(False)

        return with_retries(self.settings, operation, fn, *args, on_retry=on_retry,
                            deadline=deadline, stop=self._stop)

    # --- group membership -----------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        got = {(p.topic, p.partition) for p in partitions}
        self._assigned |= got
        self._at_end -= got
        log.info("assigned %s", sorted(p for _t, p in got))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Callbacks run inside consume(), in the loop's thread: finish the batch
        # in flight and commit its offsets before the partitions go elsewhere.
        self._settle()
        kafka.commit_stored(consumer)
        lost = {(p.topic, p.partition) for p in partitions}
        self._assigned -= lost
        self._at_end -= lost
        self._batches.forget(lost)
        self.metrics.forget_lag(lost)
        log.info("revoked %s", sorted(p for _t, p in lost))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        self._assigned -= lost
        self._at_end -= lost
        self._batches.forget(lost)
        self.metrics.forget_lag(lost)
        log.warning("lost %s", sorted(p for _t, p in lost))

    def _observe_lag(self) -> None:
        now = time.monotonic()
        if now < self._lag_due or not self._assigned:
            return
        self._lag_due = now + 5.0
        lags = kafka.lags(self.consumer, self._assigned)
        self.metrics.observe_lag(lags)
        self._behind = sum(lag for _t, _p, lag in lags)

    def _close(self) -> None:
        self._writer.shutdown(wait=True)
        stopping = self._stop.is_set()
        if not kafka.close_consumer(self.consumer, kafka.CLOSE_ON_STOP_S if stopping else 30.0,
                                    commit=True):
            log.warning("Kafka is away: leaving without committing the last offsets; their "
                        "events are read again on the next start and dropped as repeats")
        self._member.release()
        # Every dead letter of a stored offset was acknowledged; what is left belongs
        # to a batch that will be read again: a stop need not wait for a broker away.
        kafka.abandon_unacknowledged(self.producer, 1.0 if stopping else 10.0)
        self.store.close()
