"""A stop ends every wait within a second: no database at start, a database or broker away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pudato_registry import kafka, store
from pudato_registry.devstack import DevStack, free_port
from pudato_registry.sample import workload
from pudato_registry.settings import Settings
from tests.helpers import count_rows, drain, expected_rows, messages_of, table_rows, wait_for
from tests.helpers import worker_process as _worker_process
from tests.services import Services, fresh_database, produce, read_topic, settings_for


class Output:
    """A child's output, read as it comes, so that a test can wait for a line."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.text = ""
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.text += line.decode(errors="replace")

    def wait_for(self, what: str, timeout: float = 60) -> None:
        """Until ``what`` is in the output."""
        wait_for(lambda: what in self.text, timeout=timeout, what=f"{what!r} in the output")

    def finish(self, timeout: float) -> str:
        """Wait for the child to exit and its output to end."""
        self._process.wait(timeout)
        self._thread.join(timeout)
        return self.text


def _stopped_within(process: subprocess.Popen[bytes], output: Output, seconds: float) -> str:
    return _stopped_within_code(process, output, seconds, code=0)


def _stopped_within_code(process: subprocess.Popen[bytes], output: Output, seconds: float, *,
                         code: int) -> str:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    text = output.finish(timeout=30)
    took = time.monotonic() - started
    assert process.returncode == code, text
    assert took < seconds, f"took {took:.1f} s to stop:\n{text}"
    assert "Traceback" not in text, text
    return text


def _stopped_during_a_broker_outage(process: subprocess.Popen[bytes], output: Output,
                                    stack: DevStack) -> None:
    """Stop the broker, SIGTERM the child: it must be gone within 5 s; the broker comes back."""
    try:
        stack.stop_kafka()
        try:
            _stopped_within(process, output, 5)
        finally:
            stack.start_kafka(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()


def worker_process(settings: Settings) -> subprocess.Popen[bytes]:
    """The worker as a child, with a long retry budget: only a stop may end its waits."""
    return _worker_process(settings.replace(retry_max_backoff_s=30.0))


def test_sigterm_while_the_database_is_not_there_at_start(services: Services) -> None:
    nowhere = f"postgresql://pudato@127.0.0.1:{free_port()}/pudato"
    settings = settings_for(services.bootstrap_servers, nowhere)
    kafka.create_topics(settings)
    process = worker_process(settings)
    output = Output(process)
    try:
        output.wait_for("connect failed (attempt 2)")
        text = _stopped_within(process, output, 5)
        assert "stopped while connect was waiting to be tried again" in text
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_during_a_database_outage_mid_run_loses_nothing(
        services: Services, dev_stack: DevStack) -> None:
    admin = dev_stack.database_url.rsplit("/", 1)[0] + "/postgres"
    with fresh_database(admin, dev_stack.database_url) as url:
        settings = settings_for(dev_stack.bootstrap_servers, url, batch_size=200)
        kafka.create_topics(settings)
        first, later = workload(2_000), workload(2_000, prefix="later", seed=5)
        produce(settings, messages_of(first))
        process = worker_process(settings)
        output = Output(process)
        try:
            wait_for(lambda: count_rows(url) > 100, what="progress before the outage")
            dev_stack.stop_postgres()
            try:
                produce(settings, messages_of(later))
                output.wait_for("failed (attempt 2)")
                _stopped_within(process, output, 5)
            finally:
                dev_stack.start_postgres()
        finally:
            if process.poll() is None:
                process.kill()
        drain(settings)
        assert table_rows(url) == expected_rows(first + later)


def test_sigterm_during_a_broker_outage_loses_nothing(
        services: Services, dev_stack: DevStack) -> None:
    admin = dev_stack.database_url.rsplit("/", 1)[0] + "/postgres"
    with fresh_database(admin, dev_stack.database_url) as url:
        settings = settings_for(dev_stack.bootstrap_servers, url, batch_size=200)
        kafka.create_topics(settings)
        events = workload(3_000)
        produce(settings, messages_of(events))
        process = worker_process(settings)
        output = Output(process)
        wait_for(lambda: count_rows(url) > 100, what="progress before the outage")
        _stopped_during_a_broker_outage(process, output, dev_stack)
        drain(settings)
        assert table_rows(url) == expected_rows(events)


def test_sigterm_stops_the_bridge_during_a_broker_outage(
        services: Services, dev_stack: DevStack) -> None:
    from tests.test_openlineage_real import lines  # noqa: PLC0415

    admin = dev_stack.database_url.rsplit("/", 1)[0] + "/postgres"
    with fresh_database(admin, dev_stack.database_url) as url:
        settings = settings_for(dev_stack.bootstrap_servers, url)
        settings = settings.replace(ol_topic=f"{settings.topic}.ol",
                                    ol_dlq_topic=f"{settings.topic}.ol.dlq",
                                    ol_group_id=f"{settings.group_id}.ol",
                                    retry_max_backoff_s=30.0)
        kafka.create_topics(settings)
        from pudato_registry import bridge  # noqa: PLC0415

        bridge.create_topics(settings)
        produce(settings, [(None, line) for line in lines("spark-failed")],
                topic=settings.ol_topic)
        env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
               "PUDATO_TOPIC": settings.topic, "PUDATO_OL_TOPIC": settings.ol_topic,
               "PUDATO_OL_DLQ_TOPIC": settings.ol_dlq_topic,
               "PUDATO_OL_GROUP_ID": settings.ol_group_id, "PUDATO_METRICS_PORT": "0"}
        process = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "openlineage",
                                    "bridge"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        output = Output(process)
        output.wait_for("bridging")
        _stopped_during_a_broker_outage(process, output, dev_stack)
        bridge.Bridge(settings).run(drain=True)
        drain(settings)
        [job] = table_rows(url)[0]
        assert (job["pipeline"], job["status"]) == ("olreal_fx_convert", "failed")


def store_has_shadow(settings: Settings) -> bool:
    """Whether a replay's shadow tables exist."""
    return store.shadow_bytes(settings.database_dsn) is not None


@pytest.fixture
def loaded_settings(settings: Settings) -> Settings:
    """A topic of 30,000 events, applied: a replay of it takes a few seconds."""
    produce(settings, messages_of(workload(30_000)))
    drain(settings)
    return settings


def test_sigterm_stops_a_replay_before_its_swap(loaded_settings: Settings) -> None:
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": loaded_settings.bootstrap_servers,
           "PUDATO_DATABASE_URL": loaded_settings.database_dsn,
           "PUDATO_TOPIC": loaded_settings.topic, "PUDATO_BATCH_SIZE": "50"}
    env.pop("PUDATO_LOG_LEVEL", None)
    before = table_rows(loaded_settings.database_dsn)
    process = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "replay"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = Output(process)
    try:
        wait_for(lambda: store_has_shadow(loaded_settings), what="the replay to build")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        text = output.finish(timeout=30)
        assert time.monotonic() - started < 5
        assert process.returncode == 1, text
        assert "stopped as asked; nothing was swapped" in text
        assert "Traceback" not in text
    finally:
        if process.poll() is None:
            process.kill()
    assert table_rows(loaded_settings.database_dsn) == before
    assert not store_has_shadow(loaded_settings)


def test_sigterm_stops_publish_waiting_on_a_silent_pipe(settings: Settings,
                                                       tmp_path: Path) -> None:
    kafka.create_topics(settings)
    events = workload(3)
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PUDATO_TOPIC": settings.topic, "PUDATO_SPOOL_DIR": str(tmp_path / "spool")}
    process = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "publish", "-"],
                               env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    assert process.stdin is not None
    output = Output(process)
    try:
        for _key, value in messages_of(events):
            process.stdin.write((value or b"") + b"\n")
        process.stdin.flush()  # and then nothing more: the pipe stays open and silent
        wait_for(lambda: len(read_topic(settings, settings.topic)) == len(events),
                 what="the lines written so far published")
        text = _stopped_within_code(process, output, 5, code=1)
        assert f"published {len(events)} of {len(events)} events" in text
        assert "stopped as asked" in text
    finally:
        process.stdin.close()
        if process.poll() is None:
            process.kill()
