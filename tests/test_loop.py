"""The worker on a real broker and a real database: golden vectors, workloads, crashes, restarts."""

from __future__ import annotations

import gc
import signal
import time
import weakref
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, TopicPartition

from pudato_registry import factory, kafka
from pudato_registry.devstack import DevStack
from pudato_registry.events import DataReference, Event
from pudato_registry.factory import encode
from pudato_registry.loop import FatalError, Garbage, Worker
from pudato_registry.sample import workload
from pudato_registry.settings import MIB, Settings
from pudato_registry.validate import Rejection, validate
from tests.helpers import (
    count_rows,
    decoded,
    drain,
    expected_rows,
    messages_of,
    table_rows,
    wait_for,
    worker_process,
)
from tests.services import Services, fresh_database, produce, read_topic, settings_for
from tests.vectors import Vector, all_vectors, as_expected, edge_key

VECTORS = all_vectors()
DLQ_HEADERS = {"error", "error.kind", "source.topic", "source.partition", "source.offset",
               "dead_lettered_at"}


@pytest.mark.parametrize("order", ["given", "reversed"])
@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_golden_vector_through_kafka(settings: Settings, vector: Vector, order: str) -> None:
    messages = [(m.key, m.value) for m in vector.messages]
    produce(settings, messages if order == "given" else messages[::-1])
    worker = drain(settings)
    jobs, steps, edges = table_rows(settings.database_dsn)
    assert [as_expected(r) for r in jobs] == vector.jobs
    assert [as_expected(r) for r in steps] == vector.steps
    assert [as_expected(r) for r in edges] == sorted(vector.edges, key=edge_key)
    dead = read_topic(settings, settings.dlq_topic)
    assert len(dead) == vector.dead_letters == worker.stats.dead_lettered
    invalid = [(m.key, m.value) for m in vector.messages
               if isinstance(validate(m.value), Rejection)]
    assert sorted(((d.key, d.value) for d in dead), key=repr) == sorted(invalid, key=repr)


def test_every_invalid_kind_reaches_the_dlq_with_its_headers(settings: Settings) -> None:
    vector = next(v for v in VECTORS if v.name == "10-invalid-events")
    extra = [
        (b"corr-big", b"{" + b" " * (MIB + 1) + b"}"),
        (b"corr-nul", b'{"schema_version": 1, "event_id": "n", "event_type": "job.started",'
                      b' "occurred_at": "2026-11-01T12:00:00Z", "correlation_id": "c",'
                      b' "job_id": "bad\\u0000id"}'),
    ]
    sent = [(m.key, m.value) for m in vector.messages] + extra
    produce(settings, sent)
    drain(settings)
    dead = read_topic(settings, settings.dlq_topic)
    source = {(r.partition, r.offset): r for r in read_topic(settings, settings.topic)}
    kinds = set()
    for letter in dead:
        assert letter.headers.keys() >= DLQ_HEADERS
        assert letter.headers["source.topic"] == settings.topic
        original = source[(int(letter.headers["source.partition"]),
                           int(letter.headers["source.offset"]))]
        assert (letter.key, letter.value) == (original.key, original.value)
        rejection = validate(original.value, settings.max_message_bytes)
        assert isinstance(rejection, Rejection)
        assert letter.headers["error.kind"] == rejection.kind.value
        assert letter.headers["error"] == rejection.message
        kinds.add(rejection.kind.value)
    assert len(dead) == vector.dead_letters + len(extra)
    assert {"too_large", "nul_character", "tombstone", "not_utf8", "not_json", "not_object",
            "unsupported_schema_version", "unknown_event_type", "missing_field",
            "invalid_field", "naive_timestamp", "step_id_not_allowed", "string_too_long"} == kinds


def test_generated_workload_equals_the_pure_fold(settings: Settings) -> None:
    events = workload(10_000, duplicates=0.08, reorder_window=40)
    assert len(events) >= 10_000
    produce(settings, messages_of(events))
    worker = drain(settings.replace(batch_size=700))  # many batches: states reloaded often
    assert table_rows(settings.database_dsn) == expected_rows(events)
    assert worker.stats.applied == len({e.event_id for e in events})
    assert worker.stats.batches > 10


def test_a_batch_ends_at_its_byte_budget_and_a_larger_message_makes_its_own(
        settings: Settings) -> None:
    events = workload(600, duplicates=0.05)
    big = factory.job_submitted("job-big", pipeline="p", request={"blob": "x" * 30_000})
    events.insert(300, big)
    messages = messages_of(events)
    produce(settings, messages)
    budget = 10_000
    worker = drain(settings.replace(batch_max_bytes=budget))
    assert table_rows(settings.database_dsn) == expected_rows(events)
    assert worker.stats.consumed == len(messages)
    # Every batch kept to the budget, but for the one message larger than it, alone.
    assert worker.stats.largest_batch_bytes == len(encode(big)) > budget
    assert worker.stats.batches >= sum(len(v or b"") for _k, v in messages) // budget


def test_numbers_of_any_size_and_nanosecond_timestamps_are_stored(settings: Settings) -> None:
    big = 2**70
    events: list[Event] = [
        factory.job_submitted("j", pipeline="p", logic_version="v",
                              parameters={"seed": big, "ratio": 0.25}, metadata={"n": -big}),
        factory.step_succeeded("j", "s", outputs=[DataReference(
            ref_type="table", location="t", metadata={"rows": big})]),
    ]
    messages = messages_of(events)
    # Nanoseconds, as Go and Java write them: rounded to the microsecond.
    messages.append((b"c", b'{"schema_version": 1, "event_id": "x", "event_type": "job.started",'
                           b' "occurred_at": "2026-11-01T12:00:00.123456789+02:00",'
                           b' "correlation_id": "c", "job_id": "j"}'))
    produce(settings, messages)
    worker = drain(settings)
    assert worker.stats.applied == 3
    (job,), (step,), _edges = table_rows(settings.database_dsn)
    assert (job["parameters"], job["metadata"]) == ({"seed": big, "ratio": 0.25}, {"n": -big})
    assert step["outputs"][0]["metadata"] == {"rows": big}
    assert job["started_at"] == datetime(2026, 11, 1, 10, 0, 0, 123457, tzinfo=UTC)


def test_replaying_the_topic_changes_nothing(settings: Settings) -> None:
    events = workload(2_000, duplicates=0.05)
    produce(settings, messages_of(events))
    drain(settings)
    first = table_rows(settings.database_dsn)
    replay = drain(settings.replace(group_id=settings.group_id + ".replay"))
    assert replay.stats.applied == 0
    assert replay.stats.duplicates == len(events)
    assert table_rows(settings.database_dsn) == first == expected_rows(events)


def test_sigterm_finishes_commits_and_exits_zero(settings: Settings) -> None:
    events = workload(3_000)
    produce(settings, messages_of(events))
    process = worker_process(settings)
    expected = expected_rows(events)
    wait_for(lambda: table_rows(settings.database_dsn) == expected, what="all rows applied")
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    # Everything consumed was committed: the group's offsets are at each partition's end.
    consumer = Consumer(kafka.consumer_config(settings))
    try:
        partitions = [TopicPartition(settings.topic, p) for p in range(settings.partitions)]
        committed = consumer.committed(partitions, timeout=10)
        ends = [consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions]
        assert [c.offset for c in committed] == ends
    finally:
        consumer.close()


def test_sigkill_at_any_instant_converges(settings: Settings) -> None:
    events = workload(12_000, duplicates=0.05, reorder_window=30)
    produce(settings, messages_of(events))
    small = settings.replace(batch_size=300)
    for _ in range(3):
        before = count_rows(settings.database_dsn)
        process = worker_process(small)

        def progressed(before: int = before) -> bool:
            return count_rows(settings.database_dsn) > before + 100

        wait_for(progressed, what="progress before the kill")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    drain(small)
    assert table_rows(settings.database_dsn) == expected_rows(events)


def test_three_workers_one_killed_converge(services: Services, database_url: str) -> None:
    # A byte budget of about 30 messages: consumed messages wait for the next
    # batch while partitions move (those of revoked partitions are dropped).
    settings = settings_for(services.bootstrap_servers, database_url, partitions=6,
                            batch_size=300, batch_max_bytes=20_000)
    kafka.create_topics(settings)
    events = workload(12_000, duplicates=0.05)
    produce(settings, messages_of(events))
    workers = [worker_process(settings) for _ in range(3)]
    try:
        wait_for(lambda: count_rows(settings.database_dsn) > 500, what="progress")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=30)
        expected = expected_rows(events)
        wait_for(lambda: table_rows(settings.database_dsn) == expected, timeout=120,
                 what="the survivors to finish the work")
    finally:
        for process in workers[1:]:
            process.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in workers[1:]]
    assert codes == [0, 0]


def test_worker_survives_a_postgres_restart(services: Services, dev_stack: DevStack) -> None:
    admin = dev_stack.database_url.rsplit("/", 1)[0] + "/postgres"
    with fresh_database(admin, dev_stack.database_url) as url:
        settings = settings_for(dev_stack.bootstrap_servers, url, batch_size=200)
        kafka.create_topics(settings)
        events = workload(8_000, duplicates=0.05)
        produce(settings, messages_of(events))
        worker = Worker(settings)
        import threading  # noqa: PLC0415

        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_for(lambda: worker.stats.batches >= 2, what="progress before the restart")
            dev_stack.restart_postgres()
            expected = expected_rows(events)
            wait_for(lambda: table_rows(url) == expected, timeout=120,
                     what="rows after the restart")
            assert thread.is_alive()
        finally:
            worker.request_stop()
            thread.join(timeout=60)
        assert worker.metrics.retries.labels("apply")._value.get() >= 1


def test_missing_table_stops_the_worker_with_a_clear_error(services: Services) -> None:
    with fresh_database(services.admin_url(), services.database_url, migrated=False) as url:
        settings = settings_for(services.bootstrap_servers, url)
        kafka.create_topics(settings)
        with pytest.raises(FatalError, match=r"permanent failure.*pudato_jobs"):
            Worker(settings).run(drain=True)


def test_missing_topic_fails_clearly(services: Services, database_url: str) -> None:
    settings = settings_for(services.bootstrap_servers, database_url)
    with pytest.raises(kafka.TopicMissingError, match="topics create"):
        Worker(settings).run(drain=True)


def test_states_changed_under_a_folded_batch_are_folded_again(settings: Settings) -> None:
    from pudato_registry.loop import (  # noqa: PLC0415
        Batch,
        _Planned,
        apply_events,
        entity_ids,
        plan_writes,
    )
    from pudato_registry.store import States, Store  # noqa: PLC0415

    events = decoded(workload(600))
    first, second = events[:300], events[300:]
    store = Store(settings.database_dsn)
    apply_events(store, first)
    # Folded ahead from states that are out of date (as if another worker wrote since).
    stale = States(jobs={}, steps={})
    plan = plan_writes(second, stale)
    worker = Worker(settings, store=store)
    batch = Batch(deadline=time.monotonic() + 60, events=second)
    planned = _Planned(batch, *entity_ids(second), stale, plan)
    worker._write(planned)  # taken as new, so the first attempt fails on a primary key
    assert worker.refolds == 1
    assert table_rows(settings.database_dsn) == expected_rows(events)
    store.close()


def test_workers_writing_the_same_entities_from_different_partitions_converge(
        settings: Settings) -> None:
    import random  # noqa: PLC0415
    import threading  # noqa: PLC0415

    events = workload(4_000, duplicates=0.05)
    rng = random.Random(3)
    # One job's events under many keys: they land on different partitions,
    # so two workers write the same job and step rows at the same time.
    keyed = [(f"k{rng.randrange(16)}".encode(), value) for _key, value in messages_of(events)]
    produce(settings, keyed)
    small = settings.replace(batch_size=150)
    workers = [Worker(small), Worker(small)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    try:
        expected = expected_rows(events)
        wait_for(lambda: table_rows(settings.database_dsn) == expected, timeout=120,
                 what="two workers on shared entities to converge")
    finally:
        for w in workers:
            w.request_stop()
        for t in threads:
            t.join(timeout=60)


def test_sigterm_exits_at_once_whatever_a_metrics_client_does(settings: Settings) -> None:
    import socket  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from pudato_registry.devstack import free_port  # noqa: PLC0415

    produce(settings, messages_of(workload(500)))
    port = free_port()
    process = worker_process(settings, "--metrics-port", str(port))
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(ready, what="the worker's /readyz")
    idle = socket.create_connection(("127.0.0.1", port))  # says nothing, never hangs up
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:  # noqa: S310
            assert response.status == 200
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
        assert process.returncode == 0, output
        assert time.monotonic() - started < 5
    finally:
        idle.close()


def test_collection_is_off_while_a_worker_runs_and_cycles_are_collected_between_batches(
        ) -> None:
    class Node:
        other: object = None

    assert gc.isenabled()
    with Garbage() as garbage:
        assert not gc.isenabled()
        gc.collect()  # counts from zero
        node = Node()
        node.other = node  # a cycle: only the collector frees it
        gone = weakref.ref(node)
        del node
        garbage.between_batches()
        assert gone() is not None  # too little allocated since: not yet
        kept: list[list[int]] = [[] for _ in range(Garbage.YOUNG)]
        garbage.between_batches()
        assert gone() is None
        del kept
        with Garbage():  # a second worker in the same process, ending first
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
