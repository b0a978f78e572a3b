"""Shared by the benches: services to measure against, and producing a workload."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Consumer, Producer

from pudato_registry import devstack, kafka, store
from pudato_registry.settings import Settings


@contextlib.contextmanager
def services() -> Iterator[tuple[str, str]]:
    """(bootstrap servers, database URL): PUDATO_BENCH_* if set, else a fresh dev stack."""
    bootstrap = os.environ.get("PUDATO_BENCH_BOOTSTRAP_SERVERS")
    database = os.environ.get("PUDATO_BENCH_DATABASE_URL")
    if bootstrap and database:
        yield bootstrap, database
        return
    with tempfile.TemporaryDirectory(prefix="pudato-bench-") as tmp, \
            devstack.running(Path(tmp)) as stack:
        warm_up_groups(stack.bootstrap_servers)
        yield stack.bootstrap_servers, stack.database_url


@contextlib.contextmanager
def migrated_database(database: str) -> Iterator[str]:
    """The URL of a new, migrated database on ``database``'s server, dropped afterwards."""
    admin = database.rsplit("/", 1)[0] + "/postgres"
    name = f"bench_{uuid.uuid4().hex[:8]}"
    store.create_database(admin, name)
    try:
        url = database.rsplit("/", 1)[0] + "/" + name
        store.migrate(url)
        yield url
    finally:
        store.drop_database(admin, name)


def warm_up_groups(bootstrap: str) -> None:
    """Join a throwaway group once, so that no timed run pays for a fresh broker's first.

    A broker creates its offsets topic when a group first asks for a
    coordinator: about 3 s here, once in the broker's life (a running
    cluster has long done it); later groups join in under 0.1 s.
    """
    name = f"warm-{uuid.uuid4().hex[:8]}"
    settings = Settings(bootstrap_servers=bootstrap, topic=name, dlq_topic=f"{name}.dlq",
                        group_id=name, partitions=1)
    kafka.create_topics(settings)
    consumer = Consumer(kafka.consumer_config(settings))
    assigned: list[object] = []
    consumer.subscribe([settings.topic], on_assign=lambda _c, parts: assigned.append(parts))
    deadline = time.monotonic() + 60
    while not assigned and time.monotonic() < deadline:
        consumer.poll(0.1)
    consumer.close()


def produce_all(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    """Produce every message and wait for the broker's acknowledgements."""
    producer = Producer(kafka.producer_config(settings, **{"linger.ms": 20}))
    kafka.deliver(producer, settings.topic, ((key, value, None) for key, value in messages),
                  120.0)
