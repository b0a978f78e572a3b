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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client import Counter

from pudato_registry import inputs, kafka, openlineage
from pudato_registry.metrics import Metrics
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection

log = logging.getLogger(__name__)
T = TypeVar("T")
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
        self.decode = decode or inputs.decoder(settings.input_format, settings)
        self.consumer = consumer or kafka.make_consumer(settings, **{
            "group.id": settings.ol_group_id, "client.id": "pudato-openlineage-bridge",
            # A RunEvent may be 8 MiB (column lineage, plans).
            "max.partition.fetch.bytes": openlineage.INPUT_MAX_BYTES + 1024})
        self.producer = producer or kafka.make_producer(settings, **{
            "client.id": "pudato-openlineage-bridge"})
        self.metrics = metrics or Metrics(stall_timeout_s=settings.stall_timeout_s)
        self._batches = kafka.Batches(self.consumer, settings.batch_size,
                                      settings.batch_max_bytes, settings.batch_timeout_s)
        self.ignored = Counter("pudato_openlineage_ignored", "OpenLineage input ignored",
                               ["kind"], registry=self.metrics.registry)
        self.stats = BridgeStats()
        self._stop = threading.Event()
        self._assigned: set[Partition] = set()
        self._at_end: set[Partition] = set()
        self.dead_letters = kafka.DeadLetters(settings, self.producer, settings.ol_dlq_topic)

    def request_stop(self) -> None:
        """Finish the batch, store its offsets and return (signal handlers call this)."""
        self._stop.set()

    def run(self, *, drain: bool = False) -> None:
        """Bridge until stopped, or with ``drain`` until every assigned partition is caught up."""
        s = self.settings
        try:
            kafka.require_topics(s, s.ol_topic, s.ol_dlq_topic, s.topic)
            self.dead_letters.start()
            self.consumer.subscribe([s.ol_topic], on_assign=self._on_assign,
                                    on_revoke=self._on_revoke)
            self.metrics.set_ready(True)
            log.info("bridging %s to %s as group %s", s.ol_topic, s.topic, s.ol_group_id)
            while not self._stop.is_set():
                self._batch(self._batches.next())
                self.metrics.progressed(work_pending=False)
                if (drain and self._assigned and self._assigned <= self._at_end
                        and not self._batches.waiting):
                    log.info("drained: every assigned partition is at its end")
                    break
        finally:
            self.metrics.set_ready(False)
            self.consumer.close()
            self.producer.flush(10)

    def _batch(self, messages: list[Message]) -> None:
        out: list[kafka.Outgoing] = []
        letters: list[tuple[Message, str, str]] = []
        offsets: dict[Partition, int] = {}
        for message in messages:
            where = cast(Partition, (message.topic(), message.partition()))
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(where)
                elif error.fatal():
                    raise RuntimeError(f"Kafka consumer failed: {error.str()}")
                continue
            self._at_end.discard(where)
            offsets[where] = cast(int, message.offset()) + 1
            self.stats.consumed += 1
            result = self.decode(message.value())
            if isinstance(result, inputs.Translated):
                out += [(key, value, None) for key, value in result.messages]
            elif isinstance(result, Rejection):
                letters.append((message, result.kind.value, result.message))
                self.metrics.dead_lettered.labels(result.kind.value).inc()
            else:
                self.stats.ignored += 1
                self.ignored.labels(result.kind).inc()
        if not offsets:
            return
        # Durable before acknowledged: both topics have the batch before its offsets move.
        self._retry("publish", kafka.deliver, self.producer, self.settings.topic, out,
                    max(self.settings.retry_max_backoff_s, 10.0))
        self._retry("dead_letter", self.dead_letters.send, letters)
        self.consumer.store_offsets(offsets=[TopicPartition(t, p, o)
                                             for (t, p), o in offsets.items()])
        self.stats.published += len(out)
        self.stats.dead_lettered += len(letters)
        self.metrics.consumed.inc(len(messages))
        self.metrics.applied.inc(len(out))

    def _retry(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        from pudato_registry.loop import with_retries  # noqa: PLC0415 - one retry policy

        return with_retries(self.settings, operation, fn, *args,
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
        try:
            consumer.commit(asynchronous=False)
        except Exception as exc:  # nothing stored yet, or partitions already gone
            log.debug("offset commit on revoke: %s", exc)


def create_topics(settings: Settings) -> list[str]:
    """The bridge's input topic and its dead-letter topic, made like the registry's."""
    return kafka.create_topics(settings.replace(topic=settings.ol_topic,
                                                dlq_topic=settings.ol_dlq_topic))

