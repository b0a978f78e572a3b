"""Shared by the benches: services to measure against, and producing a workload."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Producer

from pudato_registry import devstack, kafka
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
        yield stack.bootstrap_servers, stack.database_url


def produce_all(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    """Produce every message and wait for the broker's acknowledgements."""
    producer = Producer(kafka.producer_config(settings, **{"linger.ms": 20}))
    kafka.deliver(producer, settings.topic, ((key, value, None) for key, value in messages),
                  120.0)
