"""The SDK pipelines import: publish lifecycle events, fire-and-forget, never blocking, never lost.

::

    registry = Registry()                     # settings from PUDATO_* variables
    with registry.job(pipeline="dept_budget", logic_version="git:abc123") as job:
        with job.step("stg_departments", handler_type="transform", action="build",
                      inputs=[DataReference(ref_type="table", location="raw.departments")]) as step:
            ...
            step.output(DataReference(ref_type="table", location="main.stg_departments"))
            step.execution(ExecutionRecord(execution_type="dbt", details={"command": "build"}))

How an event travels: :meth:`Registry.emit` encodes it and hands it to the
Kafka client's local queue (microseconds) and returns. A background thread
serves delivery reports. If the queue is full, or the broker has not taken
an event within ``delivery_timeout_ms``, an *episode* begins: that event and
every later one go to the durable SQLite spool (:mod:`pudato_registry.spool`)
instead, logged once. The same thread re-sends the spool, oldest first, once
nothing is in flight, and ends the episode when the spool is empty. At exit,
:meth:`Registry.close` waits at most ``close_timeout_s`` for deliveries and
spools the rest; the next process to open the same spool re-sends it.

Nothing here raises for a delivery problem, and a pipeline's own exception
passes through the context managers untouched.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pudato_registry import factory, kafka
from pudato_registry.events import DataReference, Event, ExecutionRecord
from pudato_registry.settings import Settings
from pudato_registry.spool import Spool

log = logging.getLogger(__name__)
P = ParamSpec("P")
E = TypeVar("E", bound=Event)
_RESEND_BATCH = 1000


@dataclass
class PublisherStats:
    """What the publisher did, for tests, benches and logs."""

    emitted: int = 0
    delivered: int = 0
    spooled: int = 0
    resent: int = 0
    rejected: int = 0
    episodes: int = 0


def _emitter(build: Callable[P, E]) -> Callable[Concatenate[Registry, P], E]:
    """A Registry method that builds an event with ``build`` and emits it."""

    def method(self: Registry, /, *args: P.args, **kwargs: P.kwargs) -> E:
        event = build(*args, **kwargs)
        self.emit(event)
        return event

    method.__name__ = build.__name__
    method.__doc__ = f"Build and emit {build.__doc__ or 'an event'}"
    return method


class Registry:
    """A thread-safe publisher of registry events; one per process is enough."""

    def __init__(self, settings: Settings | None = None, *, spool_dir: Any = None) -> None:
        self.settings = settings or Settings()
        self.topic = self.settings.topic
        self.stats = PublisherStats()
        self.spool = Spool(spool_dir or self.settings.spool_dir)
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        # Guards the counters in ``stats`` that more than one thread updates:
        # delivery reports run in callers' flush() and in our thread alike.
        self._count_lock = threading.Lock()
        self._seq = itertools.count()
        self._healthy = True
        self._to_spool: list[tuple[int, int, bytes | None, bytes]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self._closed = False

    # --- emitting ------------------------------------------------------------------

    def _start(self) -> Producer:
        """Build the producer and the background thread on first use (no I/O before)."""
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
                # A previous process may have left events behind.
                self._healthy = self.spool.count() == 0
                self._thread = threading.Thread(target=self._background, daemon=True,
                                                name="pudato-publisher")
                self._thread.start()
                atexit.register(self.close)
            return self._producer

    def emit(self, event: Event) -> None:
        """Publish one event, keyed by its correlation id. Returns at once; never raises."""
        producer = self._producer or self._start()
        value = factory.encode(event)
        key = event.correlation_id.encode()
        stamp = (time.time_ns(), next(self._seq))
        with self._count_lock:
            self.stats.emitted += 1
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
        with self._lock:
            self._to_spool.append((*stamp, key, value))

    def _delivered(self, stamp: tuple[int, int], error: KafkaError | None,
                   message: Message) -> None:
        if error is None:
            with self._count_lock:
                self.stats.delivered += 1
            return
        if not error.retriable() and error.code() not in _SPOOLABLE:
            with self._count_lock:
                self.stats.rejected += 1
            log.error("the broker rejected an event for good (%s); it is dropped", error.str())
            return
        self._episode(error.str())
        with self._lock:
            self._to_spool.append((*stamp, message.key(), message.value() or b""))

    def _client_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("the Kafka client failed for good: %s", error.str())
        else:
            log.debug("Kafka client: %s", error.str())

    def _episode(self, why: str) -> None:
        with self._count_lock:  # callers and delivery reports may both notice it
            if not self._healthy:
                return
            self._healthy = False
            self.stats.episodes += 1
        log.warning("cannot deliver to Kafka (%s); spooling events to %s until it can",
                    why, self.spool.path)

    # --- the background thread ------------------------------------------------------

    def _background(self) -> None:
        while not self._stop.is_set():
            assert self._producer is not None
            self._producer.poll(0.05)
            self._flush_to_spool()
            if not self._healthy and time.monotonic() >= self._retry_at:
                self._resend()

    def _flush_to_spool(self) -> None:
        with self._lock:
            rows, self._to_spool = self._to_spool, []
        if rows:
            self._spool_now(rows)

    def _spool_now(self, rows: list[tuple[int, int, bytes | None, bytes]]) -> None:
        self.spool.put(rows)
        with self._count_lock:  # callers after close() and our thread both spool
            self.stats.spooled += len(rows)

    def _resend(self) -> None:
        """Re-send the spool, oldest first, once nothing else is in flight."""
        assert self._producer is not None
        if len(self._producer) > 0:
            return  # earlier events are still in flight: they go first, or into the spool
        rows = self.spool.oldest(_RESEND_BATCH)
        if not rows:
            with self._lock:
                if not self._to_spool:
                    self._healthy = True
                    self._backoff = 0.5
                    log.warning("Kafka takes events again; the spool is empty")
            return
        acked: list[int] = []
        failed: list[KafkaError] = []

        def report(row_id: int, error: KafkaError | None, _message: Message) -> None:
            if error is None:
                acked.append(row_id)
            else:
                failed.append(error)

        for row_id, key, value in rows:
            try:
                self._producer.produce(self.topic, key=key, value=value,
                                       on_delivery=functools.partial(report, row_id))
            except BufferError:
                break
        self._producer.flush(self.settings.delivery_timeout_ms / 1000 + 5)
        self.spool.delete(acked)
        self.stats.resent += len(acked)
        if failed:
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)

    # --- exit -----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds for deliveries; return how many are still pending."""
        if self._producer is None:
            return 0
        remaining = int(self._producer.flush(self.settings.close_timeout_s
                                             if timeout is None else timeout))
        self._flush_to_spool()
        return remaining

    def close(self) -> None:
        """Deliver what can be delivered within ``close_timeout_s``; spool the rest. Idempotent."""
        if self._closed or self._producer is None:
            self._closed = True
            return
        if not self._healthy and not self._stop.is_set():
            self.drain_spool(self.settings.close_timeout_s)
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        producer = self._producer
        if self._healthy:
            producer.flush(self.settings.close_timeout_s)
        # What is still queued or in flight comes back through the delivery
        # reports as purged, and so into the spool.
        producer.purge()
        producer.flush(1.0)
        self._flush_to_spool()
        self.spool.close()
        atexit.unregister(self.close)
        if self.stats.spooled > self.stats.resent:
            log.warning("%d events wait in %s; the next publisher re-sends them",
                        self.spool.count(), self.spool.path)

    def pending(self) -> int:
        """Events waiting in the spool or on their way to it (0 when all is delivered)."""
        with self._lock:
            waiting = len(self._to_spool)
        return waiting + self.spool.count()

    @property
    def healthy(self) -> bool:
        """False during an episode: events go to the spool until it is re-sent."""
        return self._healthy

    def drain_spool(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the spool to be re-sent; return what is left."""
        self._producer or self._start()
        deadline = time.monotonic() + timeout
        while (not self._healthy or self.pending()) and time.monotonic() < deadline:
            self._stop.wait(0.05)
        return self.pending()

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

    def job(self, *, pipeline: str, logic_version: str, job_id: str | None = None,
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


_SPOOLABLE = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT,
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
})


def _error_text(exc: BaseException) -> str:
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
        else:
            self.registry.job_failed(self.job_id, error=_error_text(exc),
                                     correlation_id=self.correlation_id)

    def cancel(self, reason: str | None = None) -> None:
        """End the job as cancelled (nothing more is emitted for it on exit)."""
        if not self._ended:
            self._ended = True
            self.registry.job_cancelled(self.job_id, error=reason,
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

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._ended:
            return
        self._ended = True
        duration = int((time.monotonic() - self._started) * 1000)
        result: dict[str, Any] = {"inputs": self.inputs or None, "outputs": self.outputs or None,
                  "executions": self.executions or None, "duration_ms": duration,
                  "correlation_id": self.correlation_id}
        if exc is None:
            self.registry.step_succeeded(self.job_id, self.step_id, **result)
        else:
            self.registry.step_failed(self.job_id, self.step_id, error=_error_text(exc),
                                      **result)


@contextmanager
def registry(settings: Settings | None = None) -> Iterator[Registry]:
    """A Registry closed on exit (flushing, then spooling what is left)."""
    client = Registry(settings)
    try:
        yield client
    finally:
        client.close()
