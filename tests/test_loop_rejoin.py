"""A broker restart: the worker says it is not ready meanwhile, and has its partitions back fast."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Consumer, TopicPartition

from pudato_registry import kafka
from pudato_registry.devstack import DevStack
from pudato_registry.loop import BROKER_AWAY_S, Worker
from pudato_registry.sample import workload
from pudato_registry.settings import Settings
from tests.helpers import expected_rows, messages_of, table_rows, wait_for
from tests.services import Services, fresh_database, produce, settings_for


def test_a_broker_restart_during_a_drain(services: Services, dev_stack: DevStack) -> None:
    admin = dev_stack.database_url.rsplit("/", 1)[0] + "/postgres"
    with fresh_database(admin, dev_stack.database_url) as url:
        settings: Settings = settings_for(dev_stack.bootstrap_servers, url, batch_size=200)
        kafka.create_topics(settings)
        first, later = workload(3_000), workload(3_000, prefix="later", seed=9)
        produce(settings, messages_of(first))
        worker = Worker(settings)
        assigned_at: list[float] = []
        original = worker._on_assign

        def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            assigned_at.append(time.monotonic())
            original(consumer, partitions)

        worker._on_assign = on_assign  # type: ignore[method-assign,assignment]
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_for(lambda: table_rows(url) == expected_rows(first), timeout=120,
                     what="the first events applied")
            assert worker.metrics._ready
            dev_stack.stop_kafka()
            wait_for(lambda: not worker.metrics._ready, timeout=BROKER_AWAY_S + 30,
                     what="readiness to turn false while the broker is away")
            dev_stack.start_kafka(timeout=120)
            back = time.monotonic()
            produce(settings, messages_of(later))
            wait_for(lambda: table_rows(url) == expected_rows(first + later), timeout=120,
                     what="the later events applied")
            wait_for(lambda: worker.metrics._ready, timeout=30, what="ready again")
            # Partitions back (static membership: no waiting out the old session) or
            # never lost: either way, consuming again within 10 s of the broker.
            resumed = [t for t in assigned_at if t > back]
            assert not resumed or resumed[0] - back < 10, resumed[0] - back
        finally:
            worker.request_stop()
            thread.join(timeout=60)
