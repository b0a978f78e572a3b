"""Real Kafka and PostgreSQL for the tests, and per-test topics and databases.

Where the services come from, in order:
1. ``PUDATO_TEST_BOOTSTRAP_SERVERS`` and ``PUDATO_TEST_DATABASE_URL``, if set;
2. testcontainers, if a Docker engine answers;
3. the project's own dev stack (Kafka jars from Maven Central, the machine's
   PostgreSQL), started once for the session.

Each test gets its own topics, consumer group and database, so tests never
see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from pudato_registry import devstack, kafka, store
from pudato_registry.settings import Settings


@dataclass
class Services:
    """Addresses of the session's broker and database server."""

    bootstrap_servers: str
    database_url: str
    stack: devstack.DevStack | None = None

    def admin_url(self) -> str:
        """The server's maintenance database, for CREATE/DROP DATABASE."""
        return _with_database(self.database_url, "postgres")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _docker_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    try:
        import docker  # noqa: PLC0415 - only with testcontainers installed

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _containers() -> Iterator[Services]:
    from testcontainers.kafka import KafkaContainer  # noqa: PLC0415
    from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

    with KafkaContainer("confluentinc/cp-kafka:7.7.1").with_kraft() as kafka_c, \
            PostgresContainer("postgres:16", username="pudato", password="pudato",
                              dbname="pudato", driver=None) as pg:
        yield Services(kafka_c.get_bootstrap_server(), pg.get_connection_url())


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The session's Kafka broker and PostgreSQL server."""
    bootstrap = os.environ.get("PUDATO_TEST_BOOTSTRAP_SERVERS")
    database = os.environ.get("PUDATO_TEST_DATABASE_URL")
    if bootstrap and database:
        yield Services(bootstrap, database)
    elif _docker_answers():
        with _containers() as found:
            yield found
    else:
        with devstack.running(tmp_path_factory.mktemp("stack")) as stack:
            yield Services(stack.bootstrap_servers, stack.database_url, stack)


@pytest.fixture(scope="session")
def dev_stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        devstack.DevStack]:
    """A dev stack whose processes the tests may stop and restart."""
    if services.stack is not None:
        yield services.stack
        return
    with devstack.running(tmp_path_factory.mktemp("own-stack")) as stack:
        yield stack


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def fresh_database(admin_url: str, base_url: str, *, migrated: bool = True) -> Iterator[str]:
    """A new database on the server, dropped afterwards; migrated unless told not to."""
    name = _unique("test")
    store.create_database(admin_url, name)
    url = _with_database(base_url, name)
    try:
        if migrated:
            store.migrate(url)
        yield url
    finally:
        store.drop_database(admin_url, name)


@pytest.fixture
def database_url(services: Services) -> Iterator[str]:
    """A migrated database of this test's own."""
    with fresh_database(services.admin_url(), services.database_url) as url:
        yield url


def settings_for(bootstrap_servers: str, database_url: str, **changes: object) -> Settings:
    """Settings with topics and group of their own (not yet created)."""
    name = _unique("t")
    values: dict[str, object] = {
        "bootstrap_servers": bootstrap_servers, "database_url": database_url,
        "topic": f"{name}.events", "dlq_topic": f"{name}.events.dlq",
        "group_id": f"{name}.group", "metrics_port": 0, "partitions": 3,
        "batch_timeout_s": 0.1, "retry_timeout_s": 60, "retry_max_backoff_s": 1.0,
    }
    return Settings(**{**values, **changes})  # type: ignore[arg-type]


@pytest.fixture
def settings(services: Services, database_url: str) -> Settings:
    """Settings for this test: its own database, topics (created, 3 partitions) and group."""
    made = settings_for(services.bootstrap_servers, database_url)
    kafka.create_topics(made)
    return made


@pytest.fixture
def ol_settings(settings: Settings) -> Settings:
    """Settings with an OpenLineage topic, dead-letter topic and group of their own (created)."""
    from pudato_registry import bridge  # noqa: PLC0415

    made = settings.replace(ol_topic=f"{settings.topic}.ol",
                            ol_dlq_topic=f"{settings.topic}.ol.dlq",
                            ol_group_id=f"{settings.group_id}.ol")
    bridge.create_topics(made)
    return made


def produce(settings: Settings, messages: Sequence[tuple[bytes | None, bytes | None]],
            topic: str | None = None) -> None:
    """Produce (key, value) messages in order and wait until the broker has them all."""
    producer = Producer(kafka.producer_config(settings))
    kafka.deliver(producer, topic or settings.topic,
                  ((key, value, None) for key, value in messages), 60.0)


@dataclass(frozen=True)
class Record:
    """A message read back from a topic."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int


def read_topic(settings: Settings, topic: str) -> list[Record]:
    """Every message of ``topic``, read from the beginning to the end of each partition."""
    consumer = Consumer({
        **kafka.consumer_config(settings, **{"group.id": _unique("reader")}),
        "enable.auto.commit": False,
    })
    partitions = kafka.make_admin(settings).list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    at_end: set[int] = set()
    records = []
    try:
        while len(at_end) < len(partitions):
            for message in consumer.consume(500, 1.0):
                error = message.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    at_end.add(cast(int, message.partition()))
                    continue
                records.append(Record(message.key(), message.value(),
                                      kafka.headers_dict(message.headers()),
                                      cast(int, message.partition()),
                                      cast(int, message.offset())))
    finally:
        consumer.close()
    return records
