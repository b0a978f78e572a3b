"""Kafka: consumer, producer and admin construction, topic checks, dead-letter records.

This module knows confluent-kafka and nothing of PostgreSQL. Constructors
only build clients from settings; the network is first touched when the
caller polls, produces or asks the admin client something.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from pudato_registry.settings import Settings

INFINITE_RETENTION = {"retention.ms": "-1"}
# A letter carries its original value plus headers: the dead-letter topic
# takes this much more than the event limit (docs: "A dead letter always fits").
DLQ_HEADROOM = 64 * 1024
ERROR_HEADER_MAX_BYTES = 1024
# What the broker takes when a topic says nothing (message.max.bytes' default).
BROKER_DEFAULT_MAX_BYTES = 1_048_588
# Record batch and record framing around key, value and headers, generously.
_FRAMING_BYTES = 1024


Headers = list[tuple[str, str | bytes | None]]


class DeliveryError(RuntimeError):
    """The broker did not acknowledge every message in time (transient: try again)."""

    def __init__(self, message: str, codes: frozenset[int] = frozenset()) -> None:
        super().__init__(message)
        self.codes = codes  # the KafkaError codes of the failed deliveries

    @property
    def too_large(self) -> bool:
        """Whether the broker refused a message for its size."""
        return KafkaError.MSG_SIZE_TOO_LARGE in self.codes


Outgoing = tuple[bytes | None, bytes | None, Headers | None]  # key, value, headers


def deliver(producer: Producer, topic: str, messages: Iterable[Outgoing],
            timeout: float, stop: threading.Event | None = None) -> int:
    """Produce ``messages`` in order and wait for every acknowledgement; return the count.

    A full local queue is waited out, not dropped. Raises :class:`DeliveryError`
    if any message failed or was still unacknowledged after ``timeout`` seconds,
    or once ``stop`` is set (a stop does not wait out a broker that is away).
    """
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    count = 0
    for key, value, headers in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers,
                                 on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        count += 1
    ends = time.monotonic() + timeout
    pending = producer.flush(0)
    while pending and not (stop is not None and stop.is_set()):
        left = ends - time.monotonic()
        if left <= 0:
            break
        pending = producer.flush(min(0.2, left))  # in slices, so that a stop ends the wait
    if pending or failures:
        detail = failures[0].str() if failures else f"{pending} not acknowledged in time"
        raise DeliveryError(f"{topic}: not delivered: {detail}",
                            frozenset(f.code() for f in failures))
    return count


class BrokerWatch:
    """Whether a consumer's broker is away: transport errors, unbroken by any message or end.

    librdkafka reconnects by itself; this only tells the loop how long it has been
    away (for readiness) and logs one line when it goes and one when it is back.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self._probe_at = 0.0

    def error(self, error: KafkaError) -> None:
        """A consumer error: the start of an outage if it is a transport one."""
        if error.code() in TRANSPORT_ERRORS and self.since is None:
            self.since = time.monotonic()
            log.warning("%s: Kafka is away (%s); the client reconnects by itself",
                        self.what, error.str())

    def answered(self) -> None:
        """A message or a partition's end came: the broker is there."""
        if self.since is not None:
            log.info("%s: Kafka answers again after %.0f s", self.what,
                     time.monotonic() - self.since)
            self.since = None

    def away_for(self) -> float:
        """Seconds the broker has been away (0 while it answers)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    def probe_due(self, every_s: float = 2.0) -> bool:
        """Whether to ask the broker again now (at most every ``every_s`` while away)."""
        now = time.monotonic()
        if self.since is None or now < self._probe_at:
            return False
        self._probe_at = now + every_s
        return True


def lags(consumer: Consumer, assigned: Iterable[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(topic, partition, messages behind its end) of the assigned partitions, from cache."""
    partitions = [TopicPartition(t, p) for t, p in sorted(assigned)]
    out = []
    for position in consumer.position(partitions):
        _low, high = consumer.get_watermark_offsets(position, cached=True)
        if position.offset >= 0 and high >= 0:
            out.append((position.topic, position.partition, high - position.offset))
    return out


CLOSE_ON_STOP_S = 2.0  # on a stop, the final commit and close get this long, then are left


def commit_stored(consumer: Consumer) -> None:
    """Commit the stored offsets now, and wait; a failure is logged (they are read again)."""
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:
            log.warning("offset commit failed: %s", exc)


def close_consumer(consumer: Consumer, within: float, *, commit: bool = False) -> bool:
    """Commit (if asked) and close ``consumer``, waiting at most ``within`` s; True if it did.

    With the broker away, committing and leaving the group wait for a coordinator
    that is not there, for as long as a session timeout: so the close runs in a
    daemon thread, and one that has not ended in time is left to the process's
    exit. The offsets stored since the last commit are then read again by the
    partitions' next owner (at least once; the worker drops the repeats).
    """

    def close() -> None:
        try:
            if commit:
                commit_stored(consumer)
        finally:
            consumer.close()

    closing = threading.Thread(target=close, name="consumer-close", daemon=True)
    closing.start()
    closing.join(within)
    return not closing.is_alive()


def abandon_unacknowledged(producer: Producer, within: float) -> int:
    """Wait up to ``within`` s for the producer's acknowledgements, then drop the rest.

    For a stop: what is still unacknowledged belongs to a batch whose offsets were
    not stored, so it is sent again on the next start; dropping it means the
    process need not wait for a broker that is away. Returns how many were dropped.
    """
    left = producer.flush(within)
    if left:
        producer.purge()
        producer.flush(0)  # serve the purged messages' callbacks
    return left


def answers(client: Consumer | Producer, topic: str, timeout: float = 1.0) -> bool:
    """Whether the broker answers a metadata request for ``topic`` within ``timeout`` s."""
    try:
        client.list_topics(topic, timeout=timeout)
    except KafkaException:
        return False
    return True


class TopicMissingError(RuntimeError):
    """The event topic does not exist (create it with `pudato-registry topics create`)."""


# What a client reports while it cannot reach the brokers (it reconnects by itself).
TRANSPORT_ERRORS = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                              KafkaError._RESOLVE, KafkaError._TIMED_OUT})

# librdkafka's own log lines go through Python logging, not straight to stderr.
CLIENT_LOG = logging.getLogger("pudato_registry.kafka.client")


class OneLinePerOutage(logging.Filter):
    """librdkafka logs every failed connection attempt, several a second per broker and
    client while a broker is away: keep the first of each client's, then one a minute
    saying how many were held back."""

    MARKS = ("Connect to ", "Connection refused", "Disconnected", "Failed to resolve",
             "brokers are down", "timed out")

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self._every = every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record unless it repeats a connection failure of the same client."""
        text = record.getMessage()
        if not any(mark in text for mark in self.MARKS):
            return True
        client = text.split("]", 1)[0]  # "FAIL [pudato-registry-worker#consumer-1"
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(client, -self._every) < self._every:
                self._held[client] = self._held.get(client, 0) + 1
                return False
            self._last[client] = now
            held = self._held.pop(client, 0)
        if held:
            record.msg, record.args = f"{text} (and {held} like it in the last minute)", None
        return True


CLIENT_LOG.addFilter(OneLinePerOutage())
log = logging.getLogger(__name__)


def _base(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.bootstrap_servers, "logger": CLIENT_LOG,
            **settings.kafka_config()}


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings of the worker's consumer: manual offset store, cooperative groups."""
    return {
        **_base(settings),
        "group.id": settings.group_id,
        "client.id": "pudato-registry-worker",
        "partition.assignment.strategy": "cooperative-sticky",
        "auto.offset.reset": "earliest",
        # Durable before acknowledged: the loop stores an offset only after the
        # database transaction that applied its event has committed; the
        # auto-committer then commits only stored offsets.
        "enable.auto.offset.store": False,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        "enable.partition.eof": True,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": max(settings.max_message_bytes + 1024, 1024 * 1024),
        # Longer than the retry budget, so the group keeps us while we retry.
        "max.poll.interval.ms": int(max(300.0, settings.retry_timeout_s + 60.0) * 1000),
        **overrides,
    }


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings of a producer: idempotent, acks=all, compressed, small linger.

    ``PUDATO_KAFKA`` may change any of these defaults (``linger.ms``, say).
    """
    return {
        **_base(settings),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "message.max.bytes": max(settings.max_message_bytes * 2, 1024 * 1024),
        **settings.kafka_config(),
        **overrides,
    }


def make_consumer(settings: Settings, **overrides: Any) -> Consumer:
    """Build (not connect) the worker's consumer."""
    return Consumer(consumer_config(settings, **overrides))


class MemberSlot:
    """A stable name for one consumer of a group on this host: ``group.instance.id``.

    Static membership: a member that comes back under the same name within the
    session timeout (a restart, or the broker's) gets its partitions back at once,
    without the group waiting for its old session to expire. The name is the
    role, the host and the lowest slot number no other process of this host holds
    (a lock file), so the first worker is always ``worker-HOST-0``.
    """

    def __init__(self, role: str, group: str, configured: str | None) -> None:
        self._fd: int | None = None
        if configured is not None:
            self.instance_id: str | None = None if configured == "off" else configured
            return
        folder = Path(tempfile.gettempdir()) / "pudato-registry-members"
        folder.mkdir(mode=0o700, exist_ok=True)
        tag = hashlib.sha256(group.encode()).hexdigest()[:12]
        for slot in range(4096):
            fd = os.open(folder / f"{tag}-{role}-{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._fd = fd
            self.instance_id = f"{role}-{socket.gethostname()}-{slot}"[:200]
            return
        self.instance_id = None  # every slot taken: dynamic membership

    def config(self) -> dict[str, str]:
        """The consumer settings that make the membership static (none if it is not)."""
        return {} if self.instance_id is None else {"group.instance.id": self.instance_id}

    def release(self) -> None:
        """Free the slot for the next process (the consumer is closed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    """Build (not connect) a producer."""
    return Producer(producer_config(settings, **overrides))


def make_admin(settings: Settings) -> AdminClient:
    """Build (not connect) an admin client."""
    return AdminClient(_base(settings))


def wait_for_broker(bootstrap_servers: str, timeout: float) -> None:
    """Block until the broker answers a metadata request, or raise TimeoutError."""
    # Quiet: refused connections are expected until the broker is up.
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout
    while True:
        try:
            metadata = admin.list_topics(timeout=2)
            if metadata.brokers:
                return
        except KafkaException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Kafka at {bootstrap_servers} did not answer in {timeout:.0f}s")
        time.sleep(0.2)


def topic_exists(admin: AdminClient, topic: str, timeout: float = 10.0) -> bool:
    """Whether ``topic`` exists on the cluster."""
    metadata = admin.list_topics(topic=topic, timeout=timeout)
    found = metadata.topics.get(topic)
    return found is not None and found.error is None


def topic_config(settings: Settings) -> dict[str, str]:
    """The config of the topics ``topics create`` makes: kept forever, room for a full letter."""
    return {**INFINITE_RETENTION,
            "max.message.bytes": str(settings.max_message_bytes + DLQ_HEADROOM)}


def create_topics(settings: Settings, *, partitions: int | None = None,
                  timeout: float = 30.0) -> list[str]:
    """Create the event topic (infinite retention) and the dead-letter topic if missing.

    Both take ``max_message_bytes`` plus 64 KiB, so that a letter carrying a
    value of the event limit fits whole. Returns the names created now;
    existing topics are left as they are.
    """
    admin = make_admin(settings)
    count = partitions or settings.partitions
    config = topic_config(settings)
    wanted = [
        NewTopic(settings.topic, count, settings.replication_factor, config=config),
        NewTopic(settings.dlq_topic, count, settings.replication_factor, config=config),
    ]
    created = []
    for topic, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    # Creation is asynchronous on the broker: wait until metadata shows the topics.
    deadline = time.monotonic() + timeout
    while not all(topic_exists(admin, t.topic) for t in wanted):
        if time.monotonic() > deadline:
            raise TimeoutError("created topics did not appear in the cluster metadata")
        time.sleep(0.1)
    return created


def require_topics(settings: Settings, *topics: str) -> None:
    """Raise :class:`TopicMissingError` naming each of ``topics`` that does not exist."""
    admin = make_admin(settings)
    missing = [topic for topic in topics if not topic_exists(admin, topic)]
    if missing:
        names = " and ".join(repr(t) for t in missing)
        raise TopicMissingError(
            f"topic {names} {'does' if len(missing) == 1 else 'do'} not exist on "
            f"{settings.bootstrap_servers}; create {'it' if len(missing) == 1 else 'them'} "
            "with `pudato-registry topics create` or start the worker with --create-topics"
        )


# What the broker says of a topic that does not exist (in metadata, or a delivery report).
UNKNOWN_TOPIC = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})


def topic_missing(settings: Settings, topic: str, timeout: float = 5.0) -> bool:
    """True if the broker answers and says ``topic`` does not exist; False if it is there,
    or if no broker answers within ``timeout`` s (an outage, not a missing topic)."""
    try:
        metadata = make_admin(settings).list_topics(topic=topic, timeout=timeout)
    except KafkaException:
        return False
    found = metadata.topics.get(topic)
    return found is None or (found.error is not None and found.error.code() in UNKNOWN_TOPIC)


def require_topic(settings: Settings) -> None:
    """Raise :class:`TopicMissingError` unless the event topic exists."""
    require_topics(settings, settings.topic)


def max_message_bytes(settings: Settings, topic: str, timeout: float = 10.0) -> int:
    """The most a message of ``topic`` may take: its ``max.message.bytes``, as the broker says.

    Where the broker will not say (no DescribeConfigs permission), its default.
    """
    admin = make_admin(settings)
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        described = admin.describe_configs([resource], request_timeout=timeout)[resource]
        entry = described.result(timeout)["max.message.bytes"]
        return int(entry.value)
    except (KafkaException, KeyError, ValueError) as exc:
        log.warning("cannot read max.message.bytes of topic %s (%s); assuming the broker "
                    "default, %d", topic, exc, BROKER_DEFAULT_MAX_BYTES)
        return BROKER_DEFAULT_MAX_BYTES


def cap_utf8(text: str, max_bytes: int, marker: str = "…") -> str:
    """``text`` cut at a character boundary to at most ``max_bytes`` in UTF-8, marked where cut."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    room = max_bytes - len(marker.encode())
    return encoded[:room].decode("utf-8", "ignore") + marker


def dead_letter_headers(message: Message, kind: str, error: str,
                        now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Headers:
    """The headers a dead letter carries: why it was rejected and where it came from."""
    return [
        ("error", cap_utf8(error, ERROR_HEADER_MAX_BYTES).encode()),
        ("error.kind", kind.encode()),
        ("source.topic", (message.topic() or "").encode()),
        ("source.partition", str(message.partition()).encode()),
        ("source.offset", str(message.offset()).encode()),
        ("dead_lettered_at", now().isoformat(timespec="microseconds").encode()),
    ]


def dead_letter(message: Message, kind: str, error: str, max_bytes: int) -> Outgoing:
    """The letter for ``message``: its key, value and why, cut so that it fits in ``max_bytes``.

    A letter too large carries the longest prefix of the value that fits and
    says so: ``value.truncated``, ``value.size`` and ``value.sha256`` of the
    original, which the event topic keeps (``source.*`` lead to it). A key
    too large for the letter is cut the same way (``key.*``).
    """
    key, value = message.key(), message.value()
    headers = dead_letter_headers(message, kind, error)
    budget = max_bytes - _FRAMING_BYTES
    if key is not None and len(key) + len(value or b"") + _size(headers) > budget \
            and len(key) > budget // 4:
        headers += _cut_headers("key", key)
        key = key[:budget // 4]
    room = budget - len(key or b"") - _size(headers)
    if value is not None and len(value) > room:
        headers += _cut_headers("value", value)
        value = value[:max(0, room - _size(headers[-3:]))]
    return key, value, headers


class DeadLetters:
    """Sends dead letters to one topic, each cut to what the topic takes (worker and bridge).

    The size is learnt from the topic at :meth:`start`; when the broker still
    refuses a letter as too large (the topic's config changed since), the
    raised :class:`DeliveryError` leaves every later letter cut to half as
    much, so a retry fits. Each letter is logged once, its reason capped.
    """

    SMALLEST = 64 * 1024  # never cut below this, whatever the topic says

    def __init__(self, settings: Settings, producer: Producer, topic: str,
                 stop: threading.Event | None = None) -> None:
        self.settings, self.producer, self.topic = settings, producer, topic
        self.stop = stop  # once set, waiting for the broker's acknowledgements ends
        self.max_bytes = BROKER_DEFAULT_MAX_BYTES

    def start(self) -> None:
        """Learn what a letter may take: both the topic's and our producer's limit."""
        self.max_bytes = min(max_message_bytes(self.settings, self.topic),
                             int(producer_config(self.settings)["message.max.bytes"]))

    def send(self, letters: Sequence[tuple[Message, str, str]]) -> None:
        """Deliver (message, kind, reason) letters and wait for the broker's acknowledgement."""
        if not letters:
            return
        max_bytes = self.max_bytes
        try:
            deliver(self.producer, self.topic,
                    (dead_letter(message, kind, reason, max_bytes)
                     for message, kind, reason in letters),
                    max(self.settings.retry_max_backoff_s, 10.0), self.stop)
        except DeliveryError as exc:
            if exc.too_large and max_bytes > self.SMALLEST:
                self.max_bytes = max(self.SMALLEST, max_bytes // 2)
                log.warning("the dead-letter topic refused a letter of up to %d bytes; "
                            "cutting letters to %d", max_bytes, self.max_bytes)
            raise
        for message, kind, reason in letters:
            # One line each, however large the message: the reason is capped as in the letter.
            log.warning("dead-lettered %s[%d]@%d: %s: %s", message.topic(), message.partition(),
                        message.offset(), kind, cap_utf8(reason, ERROR_HEADER_MAX_BYTES),
                        extra={"topic": message.topic(), "partition": message.partition(),
                               "offset": message.offset(), "kind": kind})


def _cut_headers(what: str, original: bytes) -> Headers:
    return [(f"{what}.truncated", b"true"), (f"{what}.size", str(len(original)).encode()),
            (f"{what}.sha256", hashlib.sha256(original).hexdigest().encode())]


def _size(headers: Headers) -> int:
    return sum(len(name) + len(value or b"") + 16 for name, value in headers)


def headers_dict(headers: Headers | Mapping[str, str | bytes | None] | None) -> dict[str, str]:
    """Message headers as a ``str`` dict (last value wins), for reading dead letters."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "")
            for k, v in items}


# --- reading a topic from given offsets (replay, dead letters) ---------------------------


def split_by_bytes(messages: Sequence[Message], max_bytes: int) -> Iterator[list[Message]]:
    """``messages`` in order, in runs of at most ``max_bytes`` of values (at least one each)."""
    run: list[Message] = []
    size = 0
    for message in messages:
        length = len(message.value() or b"")
        if run and size + length > max_bytes:
            yield run
            run, size = [], 0
        run.append(message)
        size += length
    if run:
        yield run


class Batches:
    """A subscribed consumer's messages in batches of a count and a byte budget.

    ``consume()`` hands over whatever the client prefetched, up to a count;
    with large messages that is far more bytes than a batch should hold in
    memory once decoded and folded. The batch ends at the budget (a message
    larger than it makes a batch of its own) and the rest waits, in order,
    for the next call. What waits for partitions revoked or lost meanwhile
    is dropped: their next owner reads it again from the committed offset.
    """

    def __init__(self, consumer: Consumer, count: int, max_bytes: int, timeout: float) -> None:
        self._consumer = consumer
        self._count = count
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._waiting: list[Message] = []

    def next(self) -> list[Message]:
        """The next batch: the messages left over from the last call first."""
        messages = self._waiting or self._consumer.consume(self._count, self._timeout)
        first = next(split_by_bytes(messages, self._max_bytes), [])
        self._waiting = messages[len(first):]
        return first

    @property
    def waiting(self) -> bool:
        """Whether messages consumed already wait for a later batch."""
        return bool(self._waiting)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the waiting messages of these (topic, partition)s."""
        gone = set(partitions)
        if self._waiting and gone:
            self._waiting = [m for m in self._waiting
                             if (m.topic(), m.partition()) not in gone]


def _partitions(client: Consumer | AdminClient, topic: str, timeout: float) -> list[int]:
    metadata = client.list_topics(topic, timeout=timeout)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise TopicMissingError(f"topic {topic!r} does not exist")
    return sorted(found.partitions)


class PartitionReader:
    """Reads every partition of a topic from chosen offsets, outside any consumer group.

    It keeps its position between calls of :meth:`read_until`, so a replay can
    catch up in several rounds against ends that move.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer({
            **_base(settings),
            "group.id": f"pudato-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # trimmed since we asked: from what is left
            "max.partition.fetch.bytes": max(settings.max_message_bytes + 1024, 1024 * 1024),
        })
        # Offsets are asked of an admin client: on the consumer's own connection a
        # ListOffsets request waits behind its long-poll fetch (fetch.wait.max.ms)
        # once it reads at the end, half a second a partition.
        self._admin = AdminClient(_base(settings))
        self._batch_size = settings.batch_size
        self._batch_max_bytes = settings.batch_max_bytes
        self.positions: dict[int, int] = {}

    def partitions(self, timeout: float = 10.0) -> list[int]:
        """The topic's partition ids."""
        return _partitions(self._admin, self.topic, timeout)

    def start_offsets(self, timeout: float = 10.0) -> dict[int, int]:
        """Each partition's first offset still held (above 0 once retention trimmed it)."""
        return self._list_offsets(OffsetSpec.earliest(), timeout)  # type: ignore[no-untyped-call]

    def end_offsets(self, timeout: float = 10.0) -> dict[int, int]:
        """Each partition's end (the offset the next message will get), asked of the broker."""
        return self._list_offsets(OffsetSpec.latest(), timeout)  # type: ignore[no-untyped-call]

    def _list_offsets(self, spec: Any, timeout: float) -> dict[int, int]:
        """One ListOffsets request per leader for every partition, on the admin's connection."""
        asked = {TopicPartition(self.topic, p): spec for p in self.partitions(timeout)}
        answers = self._admin.list_offsets(asked, request_timeout=timeout)
        return {tp.partition: int(future.result(timeout).offset)
                for tp, future in answers.items()}

    def offsets_at(self, when: datetime, timeout: float = 10.0) -> dict[int, int]:
        """Each partition's first offset whose timestamp is at or after ``when``."""
        ms = int(when.timestamp() * 1000)
        asked = [TopicPartition(self.topic, p, ms) for p in self.partitions(timeout)]
        ends = self.end_offsets(timeout)
        return {tp.partition: tp.offset if tp.offset >= 0 else ends[tp.partition]
                for tp in self._consumer.offsets_for_times(asked, timeout=timeout)}

    def start(self, offsets: dict[int, int] | None = None) -> None:
        """Begin at ``offsets`` (partition -> offset), or at the beginning of every partition."""
        # The first offsets as numbers, not OFFSET_BEGINNING: librdkafka resolves that
        # with a query of its own and starts fetching half a second later.
        chosen = offsets if offsets is not None else self.start_offsets()
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in chosen.items()])
        self.positions = {p: max(o, 0) for p, o in chosen.items()}

    def read_until(self, targets: dict[int, int], wait_s: float = 0.1) -> Iterator[list[Message]]:
        """Yield batches of messages until every partition's position reaches its target.

        A batch holds at most the settings' ``batch_size`` messages and
        ``batch_max_bytes`` of values, as the worker's (a larger message makes
        a batch of its own). ``wait_s``: how long a batch may wait to fill; it
        ends sooner once full, or once every partition has reached its target.
        """
        def behind() -> bool:
            return any(self.positions.get(p, 0) < end for p, end in targets.items())

        while behind():
            batch: list[Message] = []
            ends = time.monotonic() + wait_s
            # Short consumes: a batch ends once it is full, or the last message wanted has
            # come (not a whole wait later), or the wait is over.
            while len(batch) < self._batch_size and behind():
                left = ends - time.monotonic()
                if left <= 0:
                    break
                for message in self._consumer.consume(self._batch_size - len(batch),
                                                      min(0.01, left)):
                    error = message.error()
                    partition = cast(int, message.partition())
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            self.positions[partition] = max(self.positions.get(partition, 0),
                                                            cast(int, message.offset()))
                            continue
                        if error.fatal():
                            raise KafkaException(error)
                        continue
                    self.positions[partition] = cast(int, message.offset()) + 1
                    batch.append(message)
            yield from split_by_bytes(batch, self._batch_max_bytes)

    def close(self) -> None:
        """Leave; nothing is committed."""
        self._consumer.close()
