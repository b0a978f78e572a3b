"""The OpenLineage bridge: an OpenLineage topic in, registry events out (Kafka only).

Each batch: consume OpenLineage messages; translate each (pure,
:mod:`pudato_registry.openlineage`); publish the translated events to the
registry topic keyed by their correlation id, and the invalid input to the
bridge's own dead-letter topic with the worker's headers, and wait for the
broker's acknowledgement of both; only then store the OpenLineage offsets.
A crash in between re-reads the batch and publishes it again: the
translator's ids are deterministic, so the worker drops the repeats.
Ignored input (job and dataset events, streaming runs, dbt's SQL sub-runs)
is counted, nothing else.

What it publishes fits where it goes: at start it reads ``max.message.bytes``
of the registry topic and of its own dead-letter topic, and translates to fit
the smaller of that and ``PUDATO_MAX_MESSAGE_BYTES`` (datasets are cut by bytes
to fit, see :mod:`pudato_registry.openlineage`). Should an event still be too
large for the broker (a topic's limit lowered while it runs), its OpenLineage
message is dead-lettered and the batch goes on: a size is never retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter

from pudato_registry import inputs, kafka, openlineage
from pudato_registry.loop import BROKER_AWAY_S, StoppedError
from pudato_registry.metrics import Metrics
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection

log = logging.getLogger(__name__)
T = TypeVar("T")
FRAMING_BYTES = 2048  # a record's key (a correlation id), headers and batch framing
MIN_EVENT_BYTES = 64 * 1024
BATCH_BYTES = 1_000_000  # librdkafka's default batch.size
Partition = tuple[str, int]


@dataclass
class BridgeStats:
    """Running totals, for tests and the exit line."""

    consumed: int = 0
    published: int = 0  # registry events
    dead_lettered: int = 0
    ignored: int = 0


class Bridge:
    """Consumes OpenLineage RunEvents and publishes the registry events they become."""

    def __init__(self, settings: Settings, *, decode: inputs.Decoder | None = None,
                 consumer: Consumer | None = None, producer: Producer | None = None,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self._decode_given = decode
        self.decode = decode or inputs.decoder(settings.input_format, settings)
        self.publish_limit = settings.max_message_bytes
        self._member = kafka.MemberSlot("bridge", settings.ol_group_id,
                                        settings.group_instance_id)
        self._broker = kafka.BrokerWatch("bridge")
        self.consumer = consumer or kafka.make_consumer(settings, **{
            **self._member.config(), "error_cb": self._broker.error,
            "group.id": settings.ol_group_id, "client.id": "pudato-openlineage-bridge",
            # A RunEvent may be 8 MiB (column lineage, plans).
            "max.partition.fetch.bytes": openlineage.INPUT_MAX_BYTES + 1024})
        # Made at start, once the topics' limits are known (no network in constructors).
        self._producer_given = producer
        self.producer: Producer | None = producer
        self.metrics = metrics or Metrics(stall_timeout_s=settings.stall_timeout_s, worker=False)
        self._batches = kafka.Batches(self.consumer, settings.batch_size,
                                      settings.batch_max_bytes, settings.batch_timeout_s)
        r = self.metrics.registry
        self.consumed = Counter("pudato_openlineage_consumed", "OpenLineage messages consumed",
                                registry=r)
        self.published = Counter("pudato_openlineage_published",
                                 "registry events published (acknowledged by the broker)",
                                 registry=r)
        self.dead_lettered = Counter("pudato_openlineage_dead_lettered",
                                     "OpenLineage messages sent to the bridge's dead-letter "
                                     "topic", ["kind"], registry=r)
        self.ignored = Counter("pudato_openlineage_ignored", "OpenLineage input ignored",
                               ["kind"], registry=r)
        self._lag_due = 0.0
        self.stats = BridgeStats()
        self._stop = threading.Event()
        self._assigned: set[Partition] = set()
        self._at_end: set[Partition] = set()
        self.dead_letters: kafka.DeadLetters | None = None

    def request_stop(self) -> None:
        """Finish the batch, store its offsets and return (signal handlers call this)."""
        self._stop.set()

    def run(self, *, drain: bool = False) -> None:
        """Bridge until stopped, or with ``drain`` until every assigned partition is caught up."""
        s = self.settings
        try:
            kafka.require_topics(s, s.ol_topic, s.ol_dlq_topic, s.topic)
            batch_bytes = self._fit_to_topic()
            if self.producer is None:
                # A record batch, not only a record, must fit the topic's limit.
                self.producer = kafka.make_producer(s, **{
                    "client.id": "pudato-openlineage-bridge", "batch.size": batch_bytes})
            self.dead_letters = kafka.DeadLetters(s, self.producer, s.ol_dlq_topic, self._stop)
            self.dead_letters.start()
            self.consumer.subscribe([s.ol_topic], on_assign=self._on_assign,
                                    on_revoke=self._on_revoke)
            self.metrics.set_ready(True)
            log.info("bridging %s to %s as group %s", s.ol_topic, s.topic, s.ol_group_id)
            while not self._stop.is_set():
                self._batch(self._batches.next())
                self._observe()
                self.metrics.progressed(work_pending=False)
                if (drain and self._assigned and self._assigned <= self._at_end
                        and not self._batches.waiting):
                    log.info("drained: every assigned partition is at its end")
                    break
        except StoppedError as exc:
            log.warning("%s; none of that batch's offsets were stored: it is bridged again "
                        "on the next start (the worker drops the repeats)", exc)
        finally:
            self.metrics.set_ready(False)
            self._close()

    def _close(self) -> None:
        stopping = self._stop.is_set()
        if not kafka.close_consumer(self.consumer, kafka.CLOSE_ON_STOP_S if stopping else 30.0):
            log.warning("Kafka is away: leaving without committing the last offsets; their "
                        "RunEvents are bridged again on the next start")
        self._member.release()
        if self.producer is not None:
            # What was acknowledged has its offsets stored; the rest is sent again later.
            kafka.abandon_unacknowledged(self.producer, 1.0 if stopping else 10.0)

    def _fit_to_topic(self) -> int:
        """Translate to fit the registry topic, whatever PUDATO_MAX_MESSAGE_BYTES says.

        Returns the most bytes a record batch to either topic may take.
        """
        s = self.settings
        topic_limit = kafka.max_message_bytes(s, s.topic) - FRAMING_BYTES
        dlq_limit = kafka.max_message_bytes(s, s.ol_dlq_topic) - FRAMING_BYTES
        if topic_limit < MIN_EVENT_BYTES:
            raise ValueError(
                f"topic {s.topic!r} takes messages of at most {topic_limit + FRAMING_BYTES} "
                f"bytes, too few for registry events; raise its max.message.bytes to "
                f"{s.max_message_bytes + kafka.DLQ_HEADROOM} (PUDATO_MAX_MESSAGE_BYTES plus "
                "64 KiB)")
        if topic_limit < s.max_message_bytes:
            log.warning("topic %s takes messages of at most %d bytes, fewer than "
                        "PUDATO_MAX_MESSAGE_BYTES (%d): translating to fit it", s.topic,
                        topic_limit + FRAMING_BYTES, s.max_message_bytes)
            self.publish_limit = topic_limit
            if self._decode_given is None:
                self.decode = inputs.decoder(s.input_format,
                                             s.replace(max_message_bytes=topic_limit))
        return max(MIN_EVENT_BYTES, min(BATCH_BYTES, topic_limit, dlq_limit))

    def _batch(self, messages: list[Message]) -> None:
        out: list[kafka.Outgoing] = []
        sources: list[Message] = []  # the OpenLineage message each event came from
        letters: list[tuple[Message, str, str]] = []
        offsets: dict[Partition, int] = {}
        for message in messages:
            where = cast(Partition, (message.topic(), message.partition()))
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(where)
                    self._broker.answered()
                elif error.fatal():
                    raise RuntimeError(f"Kafka consumer failed: {error.str()}")
                else:
                    self._broker.error(error)
                continue
            self._broker.answered()
            self.metrics.consumed_now()
            self._at_end.discard(where)
            offsets[where] = cast(int, message.offset()) + 1
            self.stats.consumed += 1
            result = self.decode(message.value())
            if isinstance(result, inputs.Translated):
                out += [(key, value, None) for key, value in result.messages]
                sources += [message] * len(result.messages)
            elif isinstance(result, Rejection):
                letters.append((message, result.kind.value, result.message))
            else:
                self.stats.ignored += 1
                self.ignored.labels(result.kind).inc()
        if not offsets:
            return
        # Durable before acknowledged: both topics have the batch before its offsets move.
        out = self._retry("publish", self._publish, out, sources, letters)
        assert self.dead_letters is not None, "run() sets it up"
        self._retry("dead_letter", self.dead_letters.send, letters)
        self.consumer.store_offsets(offsets=[TopicPartition(t, p, o)
                                             for (t, p), o in offsets.items()])
        self.stats.published += len(out)
        self.stats.dead_lettered += len(letters)
        self.consumed.inc(sum(1 for m in messages if m.error() is None))
        self.published.inc(len(out))
        for _message, kind, _reason in letters:
            self.dead_lettered.labels(kind).inc()

    def _observe(self) -> None:
        """Lag every few seconds; not ready while the broker has been away a while."""
        if self._broker.probe_due() and kafka.answers(self.consumer, self.settings.ol_topic,
                                                      0.5):
            self._broker.answered()
        self.metrics.set_ready(self._broker.away_for() <= BROKER_AWAY_S)
        now = time.monotonic()
        if now >= self._lag_due and self._assigned:
            self._lag_due = now + 5.0
            self.metrics.observe_lag(kafka.lags(self.consumer, self._assigned))

    def _publish(self, out: list[kafka.Outgoing], sources: list[Message],
                 letters: list[tuple[Message, str, str]]) -> list[kafka.Outgoing]:
        """Deliver what fits; an event the broker refuses for its size dead-letters its source.

        Returns what was delivered. Called again by the retry loop after a failure: the
        messages delivered before it are sent again, and the worker drops the repeats.
        """
        fits: list[kafka.Outgoing] = []
        refused = {id(message) for message, _kind, _why in letters}
        for event, source in zip(out, sources, strict=True):
            size = len(event[1] or b"") + len(event[0] or b"")
            if size > self.publish_limit:
                if id(source) not in refused:  # once per source, however many attempts
                    refused.add(id(source))
                    letters.append((source, "too_large", f"a translated event is {size} bytes, "
                                    f"over what topic {self.settings.topic} takes "
                                    f"({self.publish_limit})"))
            elif id(source) not in refused:
                fits.append(event)
        assert self.producer is not None, "run() makes it"
        try:
            kafka.deliver(self.producer, self.settings.topic, fits,
                          max(self.settings.retry_max_backoff_s, 10.0), self._stop)
        except (kafka.DeliveryError, KafkaException) as exc:
            too_large = (exc.too_large if isinstance(exc, kafka.DeliveryError)
                         else exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE)
            if too_large:  # the topic's limit fell while we ran: read it again, then retry
                self.publish_limit = min(self.publish_limit, kafka.max_message_bytes(
                    self.settings, self.settings.topic) - FRAMING_BYTES)
                if not fits:
                    raise
                self.publish_limit = min(self.publish_limit,
                                         max(len(e[1] or b"") for e in fits) - 1)
            raise
        return fits

    def _retry(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        from pudato_registry.loop import with_retries  # noqa: PLC0415 - one retry policy

        return with_retries(self.settings, operation, fn, *args, stop=self._stop,
                            on_retry=lambda: self.metrics.retries.labels(operation).inc())

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        got = {(p.topic, p.partition) for p in partitions}
        self._assigned |= got
        self._at_end -= got

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        self._assigned -= lost
        self._at_end -= lost
        self._batches.forget(lost)
        self.metrics.forget_lag(lost)
        try:
            consumer.commit(asynchronous=False)
        except Exception as exc:  # nothing stored yet, or partitions already gone
            log.debug("offset commit on revoke: %s", exc)


def create_topics(settings: Settings) -> list[str]:
    """The bridge's input topic and its dead-letter topic, sized for 8 MiB RunEvents."""
    return kafka.create_topics(settings.replace(
        topic=settings.ol_topic, dlq_topic=settings.ol_dlq_topic,
        max_message_bytes=openlineage.INPUT_MAX_BYTES))

