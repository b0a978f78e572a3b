"""The SDK pipelines import: publish lifecycle events, fire-and-forget, never blocking, never lost.

::

    registry = Registry()                     # settings from PUDATO_* variables
    exit_on_sigterm()                         # optional: see "Stopping" below
    with registry.job(pipeline="dept_budget", logic_version="git:abc123") as job:
        with job.step("stg_departments", handler_type="transform", action="build",
                      inputs=[DataReference(ref_type="table", location="raw.departments")]) as step:
            ...
            step.output(DataReference(ref_type="table", location="main.stg_departments"))
            step.execution(ExecutionRecord(execution_type="dbt", details={"command": "build"}))

Two parts, each with one lock. :class:`Registry` is the facade: it builds
events, cuts error texts at 64 KiB (marking the cut) and refuses, at
``emit``, an event the worker would dead-letter anyway (over a limit of
docs/events-v1.md, or over the message size): it runs the worker's own
:func:`~pudato_registry.validate.validate` on the bytes. A refused event is
logged once per kind, counted in ``stats.rejected`` and never spooled, so
that it cannot clog anything. The rest goes to :class:`SpoolingProducer`,
which hands it to the Kafka client's local queue (microseconds) and
returns. Its background thread serves delivery reports. If the queue is
full, or the broker has not taken an event within ``delivery_timeout_ms``,
an *episode* begins: that event and every later one go to the durable
SQLite spool (:mod:`pudato_registry.spool`) instead, logged once. An
episode also begins as soon as the client reports every broker down, or the
broker says the topic does not exist (one line naming the topic and what to
do): what waits in the client's queue then moves to the spool at once,
rather than after the client's own timeout. The same thread re-sends the
spool, oldest first, once nothing is in flight and the broker answers, and
ends the episode when the spool is empty. A spooled event the broker
refuses for good is set aside in the spool file, not re-sent forever. The
thread outlives any exception: it logs, backs off and goes on.

Limits: the spool file grows to ``spool_max_bytes`` (1 GiB) at most, and
while it cannot be written (a full disk) at most 64 MiB of events wait in
memory; events past either are dropped, counted in ``stats.dropped`` and
logged, never raised. What was spooled before stays.

``fork()``: the child gets a producer and a spool connection of its own on
first use (the parent's are never touched), and its events are delivered at
its exit, ``multiprocessing`` children's too. A child that leaves by
``os._exit`` runs no exit code: call :meth:`Registry.close` first.

Nothing here raises into the pipeline, and a pipeline's own exception passes
through the context managers untouched.

Stopping: at exit, :meth:`Registry.close` waits at most ``close_timeout_s``
for deliveries and spools the rest; the next process to open the same spool
re-sends it. A process killed by SIGTERM's default action runs no exit
code at all, and loses what is still in the client's memory: call
:func:`exit_on_sigterm` (or close the registry in a SIGTERM handler of
your own) so that SIGTERM ends open jobs as cancelled and closes the
registry on the way out.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import multiprocessing.util
import os
import signal
import sqlite3
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import ValidationError

from pudato_registry import factory, kafka
from pudato_registry.events import DataReference, Event, ExecutionRecord
from pudato_registry.settings import Settings, unknown_variables
from pudato_registry.spool import Spool
from pudato_registry.validate import Rejection, validate

log = logging.getLogger(__name__)
P = ParamSpec("P")
E = TypeVar("E", bound=Event)
_RESEND_BATCH = 1000
_MAX_THREAD_BACKOFF_S = 30.0
MEMORY_MAX_BYTES = 64 * 1024 * 1024  # events waiting for a spool that cannot be written
_TOLD_EVERY_S = 60.0  # a persistent condition (a full disk) is logged once a minute


@dataclass
class PublisherStats:
    """What the publisher did, for tests, benches and logs."""

    emitted: int = 0  # taken by emit (refused ones are not)
    delivered: int = 0
    spooled: int = 0
    resent: int = 0
    rejected: int = 0  # refused at emit, or refused for good by the broker
    episodes: int = 0
    set_aside: int = 0  # spooled events the broker refused for good
    dropped: int = 0  # lost for want of room: over the spool's cap, or memory's (full disk)


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread by :func:`exit_on_sigterm`'s handler."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` (a ``SystemExit``) in the main thread.

    Open jobs then end as cancelled and steps as failed ("terminated by
    SIGTERM"), and the interpreter's exit closes every registry, which
    delivers or spools everything emitted. Call it once, from the main thread.
    """

    def terminated(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, terminated)


class SpoolingProducer:
    """Delivers encoded events to the topic, or to the spool while it cannot; one lock.

    Never raises from :meth:`send`; builds its Kafka client and thread on
    first use (no I/O before).
    """

    def __init__(self, settings: Settings, spool_dir: Path) -> None:
        self.settings = settings
        self.topic = settings.topic
        self.spool = Spool(spool_dir, settings.spool_max_bytes)
        self._seq = itertools.count()
        self._fresh()
        _LIVE.add(self)
        # multiprocessing's children leave by os._exit after running its finalizers, not
        # atexit's; it clears them at the child's start, then calls its after-fork hooks.
        multiprocessing.util.register_after_fork(self, SpoolingProducer._close_at_exit)

    def _fresh(self) -> None:
        """The state of a producer not used yet (also a forked child's)."""
        self.stats = PublisherStats()
        # Guards everything below that more than one thread touches: delivery
        # reports run in callers' flush() and in our thread alike.
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._healthy = True
        self._to_spool: list[tuple[int, int, bytes | None, bytes]] = []
        self._held = 0  # bytes in _to_spool
        self._spool_at = 0.0  # after a failed write, the next try
        self._told_at: dict[str, float] = {}
        self._purge_due = False
        self._topic_checked = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self._closed = False

    def forked(self) -> None:
        """In a child after ``fork()``: start afresh, never touching the parent's client."""
        if self._producer is not None:
            # Not even to destroy it: its threads were not forked, and librdkafka would
            # crash on them. It stays, unused, until the child exits.
            _LEFT_BEHIND.append(self._producer)
        self._fresh()
        self.spool.forked()

    def _close_at_exit(self) -> None:
        """In a multiprocessing child: close at its exit, as atexit does elsewhere."""
        multiprocessing.util.Finalize(self, self.close, exitpriority=10)

    def _start(self) -> Producer:
        """Build the producer and the background thread on first use."""
        with self._lock:
            if self._producer is None:
                self._producer = kafka.make_producer(self.settings, **{
                    "client.id": "pudato-publisher",
                    "message.timeout.ms": self.settings.delivery_timeout_ms,
                    # A broker that is down would fill the log with one line per
                    # reconnect; the episode is reported once, by us, instead.
                    "log_level": 2,
                    "error_cb": self._client_error,
                })
                self._thread = threading.Thread(target=self._background, daemon=True,
                                                name="pudato-publisher")
                # A previous process may have left events behind.
                self._healthy = self._spooled() == 0
                self._thread.start()
            return self._producer

    def _spooled(self) -> int:
        try:
            return self.spool.count()
        except Exception as exc:  # an unreadable spool is renamed aside; this is worse
            log.error("cannot read the spool %s: %s", self.spool.path, exc)
            return 0

    def send(self, key: bytes | None, value: bytes) -> None:
        """Deliver one message, or spool it; returns at once, never raises."""
        stamp = (time.time_ns(), next(self._seq))
        try:
            producer = self._producer or self._start()
        except KafkaException as exc:  # a client that cannot be built: a setting to fix
            self._episode(f"the Kafka client cannot be built: {exc}")
            self._spool_now([(*stamp, key, value)])
            return
        if self._closed:
            self._spool_now([(*stamp, key, value)])
            return
        if self._healthy:
            try:
                producer.produce(self.topic, key=key, value=value,
                                 on_delivery=functools.partial(self._delivered, stamp))
                return
            except BufferError:
                self._episode("the local queue is full")
            except KafkaException as exc:
                self._episode(f"the client refused the event: {exc}")
        self._hold([(*stamp, key, value)])

    def _hold(self, rows: list[tuple[int, int, bytes | None, bytes]], *,
              first: bool = False) -> None:
        """Keep rows for the spool, in memory up to MEMORY_MAX_BYTES; drop (counted) the rest."""
        with self._lock:
            taken: list[tuple[int, int, bytes | None, bytes]] = []
            for row in rows:
                size = len(row[2] or b"") + len(row[3])
                if self._held + size > MEMORY_MAX_BYTES:
                    break
                self._held += size
                taken.append(row)
            if first:
                self._to_spool[:0] = taken
            else:
                self._to_spool += taken
            lost = len(rows) - len(taken)
            self.stats.dropped += lost
            dropped = self.stats.dropped
        if lost:
            self._tell("memory", "%d events dropped so far: the spool %s cannot take them and "
                       "%d MiB of events already wait in memory for it", dropped,
                       self.spool.path, MEMORY_MAX_BYTES // (1024 * 1024))

    def _tell(self, what: str, message: str, *args: object) -> None:
        """Log an error about ``what`` at most once a minute."""
        now = time.monotonic()
        with self._lock:
            if now < self._told_at.get(what, -_TOLD_EVERY_S) + _TOLD_EVERY_S:
                return
            self._told_at[what] = now
        log.error(message, *args)

    def _delivered(self, stamp: tuple[int, int], error: KafkaError | None,
                   message: Message) -> None:
        if error is None:
            with self._lock:
                self.stats.delivered += 1
            return
        if _undeliverable(error):
            with self._lock:
                self.stats.rejected += 1
            log.error("the broker rejected an event for good (%s); it is dropped", error.str())
            return
        if error.code() in kafka.UNKNOWN_TOPIC:
            self._unknown_topic()
        else:
            self._episode(error.str())
        self._hold([(*stamp, message.key(), message.value() or b"")])

    def _client_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("the Kafka client failed for good: %s", error.str())
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            # An outage: what waits in the client's queue goes to the spool now, not
            # after delivery_timeout_ms (the background thread purges the queue).
            self._episode(f"no broker answers: {error.str()}")
            self._purge_due = True
        else:
            log.debug("Kafka client: %s", error.str())

    def _unknown_topic(self) -> None:
        self._episode(f"topic {self.topic!r} does not exist at {self.settings.bootstrap_servers}; "
                      "create it with `pudato-registry topics create`, or set PUDATO_TOPIC to "
                      "the right one")
        self._purge_due = True

    def _check_topic(self) -> bool:
        """Once, at start: ask the broker about the topic; False if it did not answer."""
        assert self._producer is not None
        try:
            metadata = self._producer.list_topics(self.topic, timeout=2.0)
        except KafkaException:
            return False
        found = metadata.topics.get(self.topic)
        if found is not None and found.error is not None \
                and found.error.code() in kafka.UNKNOWN_TOPIC:
            self._unknown_topic()
        return True

    def _episode(self, why: str) -> None:
        with self._lock:  # callers and delivery reports may both notice it
            if not self._healthy:
                return
            self._healthy = False
            self.stats.episodes += 1
        log.warning("cannot deliver to Kafka (%s); spooling events to %s until it can",
                    why, self.spool.path)

    # --- the background thread ------------------------------------------------------

    def _background(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                assert self._producer is not None
                if not self._topic_checked:
                    self._topic_checked = self._check_topic()
                self._producer.poll(0.05)
                if self._purge_due:
                    self._purge_due = False
                    self._producer.purge(in_queue=True, in_flight=False)  # reports: spooled
                    self._producer.poll(0)
                self._flush_to_spool()
                if not self._healthy and time.monotonic() >= self._retry_at:
                    self._resend()
                failures = 0
            except Exception as exc:  # whatever it is, the thread must go on
                failures += 1
                pause = min(_MAX_THREAD_BACKOFF_S, 0.1 * 2 ** failures)
                log.error("the publisher's background work failed (%s: %s); trying again "
                          "in %.1f s", type(exc).__name__, exc, pause,
                          exc_info=log.isEnabledFor(logging.DEBUG))
                self._stop.wait(pause)

    def _flush_to_spool(self, *, now: bool = False) -> None:
        if not now and time.monotonic() < self._spool_at:
            return  # the last write failed: not again at once
        with self._lock:
            rows, self._to_spool, self._held = self._to_spool, [], 0
        if rows:
            self._spool_now(rows)

    def _spool_now(self, rows: list[tuple[int, int, bytes | None, bytes]]) -> None:
        try:
            refused = self.spool.put(rows)
        except (OSError, sqlite3.Error) as exc:  # a full disk, say: keep them, in bounds
            self._spool_at = time.monotonic() + 1.0
            self._hold(rows, first=True)
            self._tell("spool", "cannot write the spool %s (%s); events wait in memory (64 MiB "
                       "at most, then they are dropped) and the write is tried again",
                       self.spool.path, exc)
            return
        with self._lock:
            self.stats.spooled += len(rows) - refused
            self.stats.dropped += refused
            dropped = self.stats.dropped
        if refused:
            self._tell("cap", "the spool %s is full (PUDATO_SPOOL_MAX_BYTES=%d): %d events "
                       "dropped so far", self.spool.path, self.spool.max_bytes, dropped)

    def _resend(self) -> None:
        """Re-send the spool, oldest first, once nothing else is in flight."""
        assert self._producer is not None
        if len(self._producer) > 0:
            return  # earlier events are still in flight: they go first, or into the spool
        if not kafka.answers(self._producer, self.topic, 1.0):
            # Neither re-send (one more client timeout's wait) nor end the episode:
            # an outage may begin with nothing spooled yet.
            self._retry_later()
            return
        rows = self.spool.oldest(_RESEND_BATCH)
        if not rows:
            with self._lock:
                if self._to_spool:
                    return
                self._healthy = True
                self._backoff = 0.5
            log.warning("Kafka takes events again; the spool is empty")
            return
        acked: list[int] = []
        refused: list[tuple[int, str]] = []
        failed: list[KafkaError] = []

        def report(row_id: int, error: KafkaError | None, _message: Message) -> None:
            if error is None:
                acked.append(row_id)
            elif _undeliverable(error):
                refused.append((row_id, error.str()))
            else:
                failed.append(error)

        for row_id, key, value in rows:
            try:
                self._producer.produce(self.topic, key=key, value=value,
                                       on_delivery=functools.partial(report, row_id))
            except BufferError:
                break
            except KafkaException as exc:  # refused before sending, e.g. over message.max.bytes
                error = exc.args[0]
                if not _undeliverable(error):
                    break
                refused.append((row_id, error.str()))
        # In slices: what is emitted meanwhile reaches the spool, and a close need not wait.
        ends = time.monotonic() + self.settings.delivery_timeout_ms / 1000 + 5
        while len(self._producer) and time.monotonic() < ends and not self._stop.is_set():
            self._producer.flush(0.1)
            self._flush_to_spool()
        self.spool.delete(acked)
        if refused:
            self.spool.set_aside(refused)
            log.error("%d spooled events were refused by the broker for good (%s); set aside "
                      "in %s, table set_aside", len(refused), refused[0][1], self.spool.path)
        with self._lock:
            self.stats.resent += len(acked)
            self.stats.set_aside += len(refused)
        if failed:
            self._retry_later()

    def _retry_later(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    # --- exit -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds for deliveries; return how many are still pending."""
        if self._producer is None:
            return 0
        remaining = int(self._producer.flush(self.settings.close_timeout_s
                                             if timeout is None else timeout))
        self._flush_to_spool(now=True)
        return remaining

    def close(self, timeout: float | None = None) -> None:
        """Deliver what can be delivered within ``timeout`` s (``close_timeout_s``); spool the rest.

        Idempotent, and never raises. However long the broker is away, it returns
        within about the timeout: what is not delivered by then is in the spool,
        for the next publisher on this spool directory to re-send.
        """
        try:
            self._close(self.settings.close_timeout_s if timeout is None else timeout)
        except Exception as exc:  # at exit above all: a line, not a traceback
            log.error("closing the publisher failed (%s: %s); what was not delivered or "
                      "spooled by then is lost", type(exc).__name__, exc)

    def _close(self, budget: float) -> None:
        if self._closed:
            return
        if self._producer is None:  # never used, or its client could not be built
            self._closed = True
            if self._to_spool:
                self._spool_the_rest()  # closes the spool too
            else:
                self.spool.close()  # (a no-op if this process never opened it)
            return
        ends = time.monotonic() + budget
        if not self._healthy and not self._stop.is_set():
            self.drain_spool(budget)
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            # A re-send waits in 0.1 s slices and checks the stop: this is short.
            self._thread.join(max(0.0, ends - time.monotonic()) + 1.0)
        producer = self._producer
        if self._healthy:
            producer.flush(max(0.0, ends - time.monotonic()))
        # What is still queued or in flight comes back through the delivery
        # reports as purged, and so into the spool.
        producer.purge()
        producer.flush(0.5)
        self._spool_the_rest()

    def _spool_the_rest(self) -> None:
        """At close: spool what waits in memory, or say how much is lost."""
        self._flush_to_spool(now=True)
        with self._lock:
            lost, self._to_spool, self._held = len(self._to_spool), [], 0
            self.stats.dropped += lost
        if lost:
            log.error("%d events are lost: they could not be delivered, and the spool %s "
                      "cannot be written", lost, self.spool.path)
        left = self._spooled()
        self.spool.close()
        if left:
            log.warning("%d events wait in %s; the next publisher re-sends them", left,
                        self.spool.path)

    def pending(self) -> int:
        """Events waiting in the spool or on their way to it (0 when all is delivered)."""
        with self._lock:
            waiting = len(self._to_spool)
        return waiting + self._spooled()

    @property
    def healthy(self) -> bool:
        """False during an episode: events go to the spool until it is re-sent."""
        return self._healthy

    @property
    def alive(self) -> bool:
        """Whether the background thread runs (it should, from first use until close)."""
        return self._thread is not None and self._thread.is_alive()

    def drain_spool(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the spool to be re-sent; return what is left."""
        self._producer or self._start()
        deadline = time.monotonic() + timeout
        while (not self._healthy or self.pending()) and time.monotonic() < deadline:
            self._stop.wait(0.05)
        return self.pending()


_LIVE: weakref.WeakSet[SpoolingProducer] = weakref.WeakSet()
_LEFT_BEHIND: list[Producer] = []  # a forked child's copies of its parent's clients


def _after_fork_in_child() -> None:
    for producer in list(_LIVE):
        producer.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)

_SPOOLABLE = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT,
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
}) | kafka.UNKNOWN_TOPIC


def _undeliverable(error: KafkaError) -> bool:
    """Whether re-sending can never help (too large, not authorised, ...)."""
    return not error.retriable() and error.code() not in _SPOOLABLE


def _emitter(build: Callable[P, E]) -> Callable[Concatenate[Registry, P], E | None]:
    """A Registry method that builds an event with ``build`` and emits it; None if refused."""

    def method(self: Registry, /, *args: P.args, **kwargs: P.kwargs) -> E | None:
        try:
            event = build(*args, **kwargs)
        except (ValidationError, TypeError, ValueError) as exc:
            self._refuse(build.__name__.replace("_", ".", 1), "invalid", _why(exc))
            return None
        return event if self.emit(event) else None

    method.__name__ = build.__name__
    method.__doc__ = f"Build and emit {build.__doc__ or 'an event'}"
    return method


def _why(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors(include_url=False, include_input=False)[0]
        return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
    return str(exc)


class Registry:
    """The SDK facade: builds events, refuses what could never be stored, hands the rest on.

    Thread-safe; one per process is enough. Its own lock guards only its
    counters; delivery is :class:`SpoolingProducer`'s.
    """

    def __init__(self, settings: Settings | None = None, *, spool_dir: Any = None) -> None:
        if settings is None:
            # A pipeline must not stop for it, but a misspelt variable silently means a
            # default (another topic, another broker): say so.
            for variable, near in unknown_variables(os.environ):
                log.warning("%s is not a setting and is ignored%s", variable,
                            f" (did you mean {near}?)" if near else "")
        self.settings = settings or Settings()
        self.producer = SpoolingProducer(self.settings,
                                         Path(spool_dir or self.settings.spool_dir))
        self._lock = threading.Lock()
        self._emitted = 0
        self._rejected = 0
        self._told: set[tuple[str, str]] = set()  # (event type, kind) refusals logged
        self._registered = False

    @property
    def stats(self) -> PublisherStats:
        """A snapshot of what this publisher did."""
        delivery = self.producer.stats
        with self._lock:
            emitted, rejected = self._emitted, self._rejected
        return PublisherStats(emitted=emitted, delivered=delivery.delivered,
                              spooled=delivery.spooled, resent=delivery.resent,
                              rejected=rejected + delivery.rejected, episodes=delivery.episodes,
                              set_aside=delivery.set_aside, dropped=delivery.dropped)

    @property
    def spool(self) -> Spool:
        """The durable spool of events waiting for the broker."""
        return self.producer.spool

    def emit(self, event: Event) -> bool:
        """Publish one event, keyed by its correlation id; False if refused. Never raises."""
        try:
            value = factory.encode(event)
            # The worker's own check: what it would dead-letter is refused here instead.
            verdict = validate(value, self.settings.max_message_bytes)
            if isinstance(verdict, Rejection):
                self._refuse(event.event_type, verdict.kind.value, verdict.message)
                return False
            with self._lock:
                self._emitted += 1
                first = not self._registered
                self._registered = True
            if first:
                atexit.register(self.close)
            self.producer.send(event.correlation_id.encode(), value)
        except Exception as exc:  # emit never raises into the pipeline
            self._refuse(getattr(event, "event_type", "?"), "unexpected", repr(exc))
            return False
        return True

    def _refuse(self, event_type: str, kind: str, why: str) -> None:
        with self._lock:
            self._rejected += 1
            first = (event_type, kind) not in self._told
            self._told.add((event_type, kind))
        if first:
            log.error("refused a %s event the registry could never store (%s: %s); it is not "
                      "sent. Further refusals like it are only counted (stats.rejected)",
                      event_type, kind, kafka.cap_utf8(why, 300))

    def flush(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds for deliveries; return how many are still pending."""
        return self.producer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what can be delivered within ``timeout`` s (``close_timeout_s``); spool the rest.

        Idempotent.
        """
        self.producer.close(timeout)
        atexit.unregister(self.close)

    def pending(self) -> int:
        """Events waiting in the spool or on their way to it (0 when all is delivered)."""
        return self.producer.pending()

    @property
    def healthy(self) -> bool:
        """False during an episode: events go to the spool until it is re-sent."""
        return self.producer.healthy

    def drain_spool(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the spool to be re-sent; return what is left."""
        return self.producer.drain_spool(timeout)

    # --- plain methods, one per event type --------------------------------------------

    job_submitted = _emitter(factory.job_submitted)
    job_started = _emitter(factory.job_started)
    job_succeeded = _emitter(factory.job_succeeded)
    job_failed = _emitter(factory.job_failed)
    job_cancelled = _emitter(factory.job_cancelled)
    step_submitted = _emitter(factory.step_submitted)
    step_started = _emitter(factory.step_started)
    step_succeeded = _emitter(factory.step_succeeded)
    step_failed = _emitter(factory.step_failed)
    step_skipped = _emitter(factory.step_skipped)

    # --- context managers ----------------------------------------------------------

    def job(self, *, pipeline: str, logic_version: str | None = None, job_id: str | None = None,
            correlation_id: str | None = None, environment: str | None = None,
            namespace: str | None = None, request: dict[str, Any] | None = None,
            parameters: dict[str, Any] | None = None, dag_run_id: str | None = None,
            metadata: dict[str, Any] | None = None) -> JobRun:
        """A job run: submitted and started on enter, succeeded or failed on exit."""
        job_id = job_id or f"{pipeline}-{uuid.uuid4().hex[:12]}"
        return JobRun(self, job_id, correlation_id or job_id, {
            "pipeline": pipeline, "logic_version": logic_version, "environment": environment,
            "namespace": namespace, "request": request, "parameters": parameters,
            "dag_run_id": dag_run_id, "metadata": metadata,
        })


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, Terminated):
        return "terminated by SIGTERM"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text or type(exc).__name__


class JobRun:
    """A job in progress: make steps with :meth:`step`; ends succeeded, failed or cancelled."""

    def __init__(self, registry: Registry, job_id: str, correlation_id: str,
                 submitted: dict[str, Any]) -> None:
        self.registry = registry
        self.job_id = job_id
        self.correlation_id = correlation_id
        self._submitted = submitted
        self._ended = False

    def __enter__(self) -> JobRun:
        r = self.registry
        r.job_submitted(self.job_id, correlation_id=self.correlation_id, **self._submitted)
        r.job_started(self.job_id, correlation_id=self.correlation_id)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._ended:
            return
        self._ended = True
        if exc is None:
            self.registry.job_succeeded(self.job_id, correlation_id=self.correlation_id)
        elif isinstance(exc, Terminated | KeyboardInterrupt):  # stopped from outside
            self.registry.job_cancelled(self.job_id, error=_error_text(exc),
                                        correlation_id=self.correlation_id)
        else:
            self.registry.job_failed(self.job_id, error=_error_text(exc),
                                     correlation_id=self.correlation_id)

    def cancel(self, reason: str | None = None) -> None:
        """End the job as cancelled (nothing more is emitted for it on exit)."""
        if not self._ended:
            self._ended = True
            self.registry.job_cancelled(self.job_id, error=reason,
                                        correlation_id=self.correlation_id)

    def fail(self, error: str, *, final: bool = False) -> None:
        """End the job as failed; ``final``: no later success may override it (amendment 4)."""
        if not self._ended:
            self._ended = True
            self.registry.job_failed(self.job_id, error=error, final=final,
                                     correlation_id=self.correlation_id)

    def step(self, step_name: str, *, handler_type: str, action: str,
             inputs: Sequence[DataReference] = (), step_id: str | None = None,
             correlation_id: str | None = None,
             metadata: dict[str, Any] | None = None) -> StepRun:
        """A step of this job: started on enter, succeeded or failed (with timing) on exit."""
        return StepRun(self.registry, self.job_id,
                       step_id or f"{self.job_id}-{step_name}-{uuid.uuid4().hex[:8]}",
                       correlation_id=correlation_id or self.correlation_id,
                       step_name=step_name, handler_type=handler_type, action=action,
                       inputs=list(inputs), metadata=metadata)


class StepRun:
    """A step in progress: record outputs and executions; ends succeeded, failed or skipped."""

    def __init__(self, registry: Registry, job_id: str, step_id: str, *, correlation_id: str,
                 step_name: str, handler_type: str, action: str,
                 inputs: list[DataReference], metadata: dict[str, Any] | None) -> None:
        self.registry = registry
        self.job_id, self.step_id, self.correlation_id = job_id, step_id, correlation_id
        self._identity: dict[str, Any] = {"step_name": step_name, "handler_type": handler_type,
                          "action": action}
        self.inputs = inputs
        self.outputs: list[DataReference] = []
        self.executions: list[ExecutionRecord] = []
        self._metadata = metadata
        self._started = 0.0
        self._ended = False

    def __enter__(self) -> StepRun:
        self._started = time.monotonic()
        self.registry.step_started(self.job_id, self.step_id, inputs=self.inputs,
                                   metadata=self._metadata, correlation_id=self.correlation_id,
                                   **self._identity)
        return self

    def input(self, reference: DataReference) -> None:
        """Record a dataset the step read."""
        self.inputs.append(reference)

    def output(self, reference: DataReference) -> None:
        """Record a dataset the step wrote."""
        self.outputs.append(reference)

    def execution(self, record: ExecutionRecord) -> None:
        """Record something the step executed."""
        self.executions.append(record)

    def skip(self, reason: str | None = None) -> None:
        """End the step as skipped."""
        if not self._ended:
            self._ended = True
            self.registry.step_skipped(self.job_id, self.step_id, error=reason,
                                       correlation_id=self.correlation_id)

    def fail(self, error: str, *, final: bool = False) -> None:
        """End the step as failed, with what it recorded; ``final``: no later success overrides."""
        if not self._ended:
            self._ended = True
            self.registry.step_failed(self.job_id, self.step_id, error=error, final=final,
                                      **self._result())

    def _result(self) -> dict[str, Any]:
        return {"inputs": self.inputs or None, "outputs": self.outputs or None,
                "executions": self.executions or None,
                "duration_ms": int((time.monotonic() - self._started) * 1000),
                "correlation_id": self.correlation_id}

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._ended:
            return
        self._ended = True
        if exc is None:
            self.registry.step_succeeded(self.job_id, self.step_id, **self._result())
        else:
            self.registry.step_failed(self.job_id, self.step_id, error=_error_text(exc),
                                      **self._result())


@contextmanager
def registry(settings: Settings | None = None) -> Iterator[Registry]:
    """A Registry closed on exit (flushing, then spooling what is left)."""
    client = Registry(settings)
    try:
        yield client
    finally:
        client.close()
