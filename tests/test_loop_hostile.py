"""No single event stops the worker: one hostile event among ordinary ones, on real services.

Each test puts the hostile message between ordinary events of the same
partition and batch, drains once, and checks that the worker came back on its
own, that every ordinary event's row is right, and that the hostile message
is in the dead-letter topic with the right kind and headers, nothing of it
in the tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from pudato_registry import factory, kafka, store
from pudato_registry.events import ENTITY_EVENTS_MAX, Event
from pudato_registry.loop import (
    FatalError,
    Isolated,
    Plan,
    UnstorableError,
    Worker,
    isolate,
    with_retries,
)
from pudato_registry.sample import workload
from pudato_registry.settings import MIB, Settings
from pudato_registry.store import Writes
from tests.helpers import drain, expected_rows, messages_of, table_rows
from tests.services import Record, Services, produce, read_topic, settings_for

KEY = b"one-partition"  # every message of a test under one key: one partition, in order


def _ordinary(count: int = 5_000) -> list[Event]:
    return workload(count, duplicates=0.02)[:count]


def _around(hostile: Sequence[bytes | None], ordinary: Sequence[Event]) -> list[
        tuple[bytes | None, bytes | None]]:
    """The ordinary events with the hostile values in their middle, all under one key."""
    values = [value for _key, value in messages_of(ordinary)]
    middle = len(values) // 2
    return [(KEY, v) for v in [*values[:middle], *hostile, *values[middle:]]]


def _letters(settings: Settings) -> list[Record]:
    return read_topic(settings, settings.dlq_topic)


def _drained_once(settings: Settings, hostile: Sequence[bytes | None],
                  ordinary: Sequence[Event]) -> tuple[Worker, list[Record]]:
    """Produce, drain once (the run must end by itself), and check the ordinary rows."""
    produce(settings, _around(hostile, ordinary))
    worker = drain(settings)
    assert worker.stats.consumed == len(ordinary) + len(hostile)
    assert table_rows(settings.database_dsn) == expected_rows(ordinary)
    letters = _letters(settings)
    assert len(letters) == len(hostile)
    for letter in letters:
        assert letter.headers["source.topic"] == settings.topic
        assert len(letter.headers["error"].encode()) <= kafka.ERROR_HEADER_MAX_BYTES
    return worker, letters


def _value(event: Event) -> bytes:
    return factory.encode(event)


def _execute(database_url: str, statement: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(statement.encode())


# --- invalid events: limits and rejections that stay small ----------------------------------


def test_an_over_long_pipeline_is_dead_lettered_and_everything_else_stored(
        settings: Settings) -> None:
    hostile = _value(factory.job_submitted("hostile", pipeline="p", logic_version="v")).replace(
        b'"pipeline":"p"', b'"pipeline":"' + secrets.token_urlsafe(2_300).encode() + b'"')
    worker, (letter,) = _drained_once(settings, [hostile], _ordinary())
    assert letter.headers["error.kind"] == "string_too_long"
    assert "data.pipeline" in letter.headers["error"]
    assert (letter.key, letter.value) == (KEY, hostile)
    assert worker.stats.batches <= 3  # one batch, give or take the fetch


def test_a_megabyte_rejection_stays_a_small_header(settings: Settings) -> None:
    # An unknown event_type of ~1 MB: its rejection quotes it, never copies it.
    hostile = json.dumps({"schema_version": 1, "event_id": "e", "event_type": "x" * (MIB - 300),
                          "occurred_at": "2026-11-01T12:00:00Z", "correlation_id": "c",
                          "job_id": "j"}).encode()
    assert len(hostile) < MIB
    _worker, (letter,) = _drained_once(settings, [hostile], _ordinary(2_000))
    assert letter.headers["error.kind"] == "unknown_event_type"
    assert len(letter.headers["error"]) < 400
    assert letter.value == hostile  # topics create leaves room for the whole value


def test_a_letter_too_large_for_the_dlq_carries_a_prefix_and_says_so(
        services: Services, database_url: str) -> None:
    settings = settings_for(services.bootstrap_servers, database_url)
    admin = kafka.make_admin(settings)
    # An event topic that takes 4 MiB, and a dead-letter topic at a stock broker's default.
    for future in admin.create_topics([
            NewTopic(settings.topic, 1, 1, config={"max.message.bytes": str(4 * MIB)}),
            NewTopic(settings.dlq_topic, 1, 1, config={
                "max.message.bytes": str(kafka.BROKER_DEFAULT_MAX_BYTES)})]).values():
        future.result(30)
    big = b"{" + b" " * (2 * MIB) + b"}"  # too large for events-v1
    near = b"[" + b"0," * ((MIB - 1_000) // 2) + b"0]"  # a JSON array, nearly the limit
    ordinary = _ordinary(1_000)
    producer = Producer(kafka.producer_config(settings, **{"message.max.bytes": 8 * MIB}))
    kafka.deliver(producer, settings.topic,
                  ((key, value, None) for key, value in _around([big, near], ordinary)), 60)
    drain(settings)
    assert table_rows(settings.database_dsn) == expected_rows(ordinary)
    letters = {r.headers["error.kind"]: r for r in _letters(settings)}
    assert letters.keys() == {"too_large", "not_object"}
    for kind, original in (("too_large", big), ("not_object", near)):
        letter = letters[kind]
        assert letter.key == KEY
        assert letter.headers["value.truncated"] == "true"
        assert letter.headers["value.size"] == str(len(original))
        assert letter.headers["value.sha256"] == hashlib.sha256(original).hexdigest()
        assert letter.value is not None
        assert original.startswith(letter.value)
        assert len(letter.value) > MIB // 2
        assert {"source.partition", "source.offset", "error"} <= letter.headers.keys()


def test_a_dlq_that_takes_less_than_it_said_gets_smaller_letters(
        services: Services, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(services.bootstrap_servers, database_url)
    kafka.create_topics(settings)
    admin = kafka.make_admin(settings)
    resource = ConfigResource(ResourceType.TOPIC, settings.dlq_topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(200_000),
                    incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(30)
    # As if the topic's config changed after the worker read it at start.
    monkeypatch.setattr(kafka, "max_message_bytes", lambda *_args, **_kw: 8 * MIB)
    big = os.urandom(600_000)  # not UTF-8, and compression cannot shrink it under the limit
    _worker, (letter,) = _drained_once(settings, [big], _ordinary(1_000))
    assert letter.headers["value.truncated"] == "true"
    assert letter.value is not None
    assert big.startswith(letter.value)
    assert len(letter.value) < 200_000


# --- events PostgreSQL refuses for their data: isolated, the rest applied -------------------


def _a_step_of(events: Sequence[Event]) -> Event:
    return next(e for e in reversed(events) if e.step_id is not None)


def _later(event: Event) -> Any:
    return event.occurred_at + timedelta(hours=1)


def test_a_check_constraint_a_dba_added_quarantines_only_the_event_it_refuses(
        settings: Settings) -> None:
    _execute(settings.database_dsn, "ALTER TABLE pudato_job_steps ADD CONSTRAINT "
                                    "step_name_short CHECK (length(step_name) < 40)")
    ordinary = _ordinary()
    known = _a_step_of(ordinary)  # the hostile event updates a step that ordinary ones write
    assert known.step_id is not None
    hostile = factory.step_started(known.job_id, known.step_id, step_name="s" * 60,
                                   handler_type="h", action="a",
                                   correlation_id=known.correlation_id, occurred_at=_later(known))
    worker, (letter,) = _drained_once(settings, [_value(hostile)], ordinary)
    assert letter.headers["error.kind"] == "unstorable"
    assert "23514" in letter.headers["error"]
    assert "step_name_short" in letter.headers["error"]
    assert letter.value == _value(hostile)
    assert worker.isolations == 1
    assert worker.stats.dead_lettered == 1


@pytest.mark.parametrize(("ddl", "hostile", "sqlstate"), [
    # Class 22: a column a DBA narrowed, and a value too long for it.
    ("ALTER TABLE pudato_jobs ALTER COLUMN dag_run_id TYPE varchar(64)",
     factory.job_submitted("hostile", pipeline="p", logic_version="v", dag_run_id="d" * 100),
     "22001"),
    # Class 54: an index a DBA added, and an entry over the btree maximum (2,704 bytes; the
    # metadata's text does not compress).
    ("CREATE INDEX jobs_metadata_text ON pudato_jobs ((metadata::text))",
     factory.job_started("hostile", metadata={"blob": secrets.token_hex(4_000)}), "54000"),
], ids=["narrowed-column", "btree-maximum"])
def test_a_value_postgresql_cannot_store_is_quarantined(settings: Settings, ddl: str,
                                                        hostile: Event, sqlstate: str) -> None:
    _execute(settings.database_dsn, ddl)
    _worker, (letter,) = _drained_once(settings, [_value(hostile)], _ordinary())
    assert letter.headers["error.kind"] == "unstorable"
    assert sqlstate in letter.headers["error"]


def test_many_unstorable_events_in_one_batch_are_each_isolated(settings: Settings) -> None:
    _execute(settings.database_dsn, "ALTER TABLE pudato_job_steps ADD CONSTRAINT "
                                    "step_name_short CHECK (length(step_name) < 40)")
    hostile = [_value(factory.step_started(f"bad-{i}", f"bad-{i}", step_name="s" * 50,
                                           handler_type="h", action="a")) for i in range(7)]
    _worker, letters = _drained_once(settings, hostile, _ordinary(3_000))
    assert sorted(r.value for r in letters) == sorted(hostile)  # type: ignore[type-var]
    assert {r.headers["error.kind"] for r in letters} == {"unstorable"}


# --- entity limits ---------------------------------------------------------------------------


def test_the_event_past_an_entity_limit_is_dead_lettered_whole(settings: Settings) -> None:
    ordinary = _ordinary(2_000)
    chatty = [factory.step_succeeded("chatty", "chatty-step", metadata={"n": i},
                                     event_id=f"chatty-{i:04}") for i in range(ENTITY_EVENTS_MAX)]
    over = factory.step_failed("chatty", "chatty-step", error="one too many")
    produce(settings, _around([*map(_value, chatty), _value(over)], ordinary))
    worker = drain(settings.replace(batch_size=700))  # the step's events span batches
    assert table_rows(settings.database_dsn) == expected_rows([*ordinary, *chatty])
    (letter,) = _letters(settings)
    assert letter.headers["error.kind"] == "entity_limit"
    assert letter.headers["error"] == ("step 'chatty-step' already has 1000 events, the most "
                                       "one entity may have")
    assert letter.value == _value(over)
    assert worker.stats.applied == len({e.event_id for e in [*ordinary, *chatty]})


# --- no other crash loop -----------------------------------------------------------------------


def test_a_row_without_a_saved_state_is_overwritten_from_the_fold(settings: Settings) -> None:
    ordinary = _ordinary(2_000)
    job_id = ordinary[0].job_id
    # A row restored from a backup, or inserted by hand: no saved fold state.
    with psycopg.connect(settings.database_dsn) as conn:
        conn.execute("INSERT INTO pudato_jobs (job_id, pipeline, status) VALUES (%s, 'old', "
                     "'running')", (job_id,))
    produce(settings, _around([], ordinary))
    worker = drain(settings)
    assert table_rows(settings.database_dsn) == expected_rows(ordinary)
    assert worker.metrics.retries.labels("apply")._value.get() == 1  # the key, then an upsert


def test_a_missing_dead_letter_topic_is_named_at_start(services: Services,
                                                       database_url: str) -> None:
    settings = settings_for(services.bootstrap_servers, database_url)
    admin = kafka.make_admin(settings)
    admin.create_topics([NewTopic(settings.topic, 1, 1)])[settings.topic].result(30)
    with pytest.raises(kafka.TopicMissingError) as caught:
        Worker(settings).run(drain=True)
    assert repr(settings.dlq_topic) in str(caught.value)
    assert repr(settings.topic) not in str(caught.value)
    assert "topics create" in str(caught.value)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a half-open peer)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_database_that_never_answers_is_a_failed_attempt_not_a_hang(
        silent_server: int) -> None:
    dsn = f"postgresql://pudato@127.0.0.1:{silent_server}/pudato?connect_timeout=2"
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        store.Store(dsn).ping()
    assert time.monotonic() - started < 10


def test_connections_carry_timeouts_and_keepalives_unless_the_url_sets_them(
        database_url: str) -> None:
    with store.connect(database_url) as conn:
        options = {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}
    for key, value in store.CONNECTION_DEFAULTS.items():
        assert options[key] == value, key
    with store.connect(database_url + "?keepalives_idle=77") as conn:
        options = {o.keyword.decode(): (o.val or b"").decode() for o in conn.pgconn.info}
    assert options["keepalives_idle"] == "77"


def test_retries_of_one_batch_end_at_its_deadline(services: Services,
                                                  silent_server: int) -> None:
    settings = settings_for(services.bootstrap_servers,
                            f"postgresql://pudato@127.0.0.1:{silent_server}/pudato"
                            "?connect_timeout=1", retry_timeout_s=60)
    unreachable = store.Store(settings.database_dsn)
    deadline = time.monotonic() + 3  # what is left of the batch's budget
    started = time.monotonic()
    with pytest.raises(FatalError, match="still failing after retries"):
        with_retries(settings, "read", unreachable.read_states, ["j"], [], deadline=deadline)
    assert time.monotonic() - started < 3 + 1.5  # one attempt may still be under way


# --- the isolation itself, without services -----------------------------------------------------


def _isolating(bad: set[int]) -> tuple[Any, list[list[int]]]:
    calls: list[list[int]] = []

    def apply(part: Sequence[Any]) -> Plan:
        calls.append(list(part))
        if bad & set(part):
            raise UnstorableError("apply", "refused")
        return Plan(Writes([], [], [], []), len(part), [])

    return apply, calls


@pytest.mark.parametrize("bad", [set(), {0}, {4_999}, {17, 18}, {3, 900, 2_500, 4_000}])
def test_isolation_applies_every_good_event_once_and_finds_each_bad_one(bad: set[int]) -> None:
    events = list(range(5_000))
    apply, calls = _isolating(bad)
    result: Isolated = isolate(apply, events)  # type: ignore[arg-type]
    found: list[Any] = [e for e, _reason in result.unstorable]
    assert sorted(found) == sorted(bad)
    assert result.new == len(events) - len(bad)
    applied = [e for part in calls if not bad & set(part) for e in part]
    assert sorted(applied) == sorted(set(events) - bad)
    assert result.transactions <= 1 + 2 * len(bad) * 13  # about 2 log2(n) per bad event



def test_the_documented_least_privilege_role_runs_the_worker_across_a_replay(
        settings: Settings) -> None:
    from pathlib import Path  # noqa: PLC0415
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415

    from pudato_registry import replay  # noqa: PLC0415

    role = f"worker_{secrets.token_hex(4)}"
    database = urlsplit(settings.database_dsn).path.lstrip("/")
    script = (Path(__file__).parents[1] / "docs" / "worker-role.sql").read_text()
    _execute(settings.database_dsn, script.replace("registry_worker", role)
             .replace("DATABASE registry", f'DATABASE "{database}"'))
    parts = urlsplit(settings.database_dsn)
    as_role = settings.replace(database_url=urlunsplit(parts._replace(
        netloc=f"{role}@{parts.hostname}:{parts.port}")))
    first, later = _ordinary(2_000), workload(1_000, prefix="later", seed=5)
    try:
        produce(settings, messages_of(first))
        drain(as_role)
        replay.rebuild(settings)  # the owner swaps in new tables: the grants must follow
        produce(settings, messages_of(later))
        drain(as_role)
        assert table_rows(settings.database_dsn) == expected_rows([*first, *later])
    finally:
        with psycopg.connect(settings.database_dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
