"""The publisher at its edges: no spool directory, a topic that does not exist, ``fork()``,
a spool at its cap, a full disk, a close that keeps its timeout, an outage's first moments."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pudato_registry import cli, kafka
from pudato_registry import settings as settings_module
from pudato_registry.devstack import DevStack
from pudato_registry.publisher import Registry
from pudato_registry.settings import MIB, Settings
from pudato_registry.spool import Spool
from tests.helpers import wait_for
from tests.services import read_topic
from tests.test_publisher import on_the_dev_stack, pipeline

ROOT = Path(__file__).parents[1]


@pytest.fixture
def publisher_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(spool_dir=tmp_path / "spool", delivery_timeout_ms=30_000,
                            close_timeout_s=2.0)


@pytest.fixture
def own_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system's temporary directory, as the publisher's fallback sees it: the test's own."""
    where = tmp_path / "system-tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def _unbuildable(settings: Settings) -> Settings:
    """Settings whose Kafka client cannot be built (linger over the delivery timeout):
    every event is spooled at once, with no broker outage to arrange."""
    return settings.replace(kafka={"linger.ms": "60000"}, delivery_timeout_ms=2000)


def _topic_ids(settings: Settings) -> set[str]:
    import json  # noqa: PLC0415

    return {json.loads(r.value or b"{}")["event_id"] for r in read_topic(settings, settings.topic)}


# --- a spool directory that cannot be made --------------------------------------------------


def test_a_spool_directory_that_cannot_be_made_falls_back_to_the_temporary_one(
        publisher_settings: Settings, own_tempdir: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # as a read-only mount would, even for root
    wanted = blocker / "spool"
    registry = Registry(_unbuildable(publisher_settings.replace(spool_dir=wanted)))
    with caplog.at_level(logging.WARNING, "pudato_registry.spool"):
        pipeline(registry, steps=1)
        registry.close()
    fallback = settings_module.fallback_spool_dir()
    assert fallback.parent == own_tempdir
    assert registry.spool.path == fallback / "spool.sqlite3"
    assert Spool(fallback).count() == registry.stats.emitted == 5
    [line] = [r.getMessage() for r in caplog.records if "cannot keep the spool" in r.getMessage()]
    assert str(wanted) in line
    assert str(fallback) in line
    # The next publisher, with a working client, finds them there and sends them.
    fixed = Registry(publisher_settings.replace(spool_dir=wanted))
    assert fixed.drain_spool(60) == 0
    fixed.close()
    assert len(_topic_ids(publisher_settings)) == 5


def test_no_home_directory_gives_the_temporary_fallback(monkeypatch: pytest.MonkeyPatch,
                                                        own_tempdir: Path) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert Settings().spool_dir == own_tempdir / f"pudato-registry-spool-{os.getuid()}"


NOWHERE_SCRIPT = textwrap.dedent("""
    import sys, tempfile
    tempfile.tempdir = sys.argv[1]          # the fallback cannot be made either
    from pudato_registry.publisher import Registry
    from tests.test_publisher import on_the_dev_stack, pipeline
    registry = Registry()
    pipeline(registry, steps=1)
    print("pipeline done")
""")


def test_no_spool_anywhere_still_exits_0_with_one_line_and_no_traceback(
        publisher_settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": publisher_settings.bootstrap_servers,
           "PUDATO_TOPIC": publisher_settings.topic, "PUDATO_SPOOL_DIR": str(blocker / "s"),
           "PUDATO_KAFKA": '{"linger.ms": "60000"}', "PUDATO_DELIVERY_TIMEOUT_MS": "2000"}
    done = subprocess.run([sys.executable, "-c", NOWHERE_SCRIPT, str(blocker / "tmp")],
                          env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "pipeline done"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "5 events are lost: they could not be delivered, and the spool" in done.stderr


# --- a topic that does not exist ------------------------------------------------------------


def test_an_unknown_topic_is_named_at_once_and_nothing_is_lost(
        publisher_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    typo = publisher_settings.replace(topic=f"{publisher_settings.topic}-typo")
    registry = Registry(typo)
    with caplog.at_level(logging.WARNING, "pudato_registry.publisher"):
        pipeline(registry, steps=2)
        # Long before the client's own 30 s timeout, every event is in the spool.
        wait_for(lambda: registry.spool.count() == 7, timeout=10, what="7 events spooled")
    said = [r.getMessage() for r in caplog.records if "does not exist" in r.getMessage()]
    assert len(said) == 1
    assert repr(typo.topic) in said[0]
    assert "topics create" in said[0]
    registry.close()
    kafka.create_topics(typo)
    later = Registry(typo)
    assert later.drain_spool(60) == 0
    later.close()
    assert len(_topic_ids(typo)) == 7


def test_publish_refuses_an_unknown_topic_with_one_line(
        publisher_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    lines = tmp_path / "events.jsonl"
    lines.write_text("{}\n")
    monkeypatch.setenv("PUDATO_BOOTSTRAP_SERVERS", publisher_settings.bootstrap_servers)
    monkeypatch.setenv("PUDATO_SPOOL_DIR", str(publisher_settings.spool_dir))
    code = cli.main(["publish", str(lines), "--topic", "no-such-topic"])
    err = capsys.readouterr().err
    assert code == 1
    [line] = err.strip().splitlines()
    assert "'no-such-topic' does not exist" in line
    assert "topics create" in line
    assert not (publisher_settings.spool_dir / "spool.sqlite3").exists()


# --- fork -----------------------------------------------------------------------------------


def _child_pipelines(registry: Registry, n: int) -> None:
    for _ in range(n):
        pipeline(registry, steps=1)  # 5 events each


def test_forked_children_deliver_their_events_at_exit(publisher_settings: Settings) -> None:
    registry = Registry(publisher_settings)
    pipeline(registry, steps=1)
    assert registry.flush(10) == 0  # the parent's client and spool are in use at the fork
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_child_pipelines, args=(registry, 20))
    child.start()
    pid = os.fork()
    if pid == 0:  # a bare fork: the child closes, then leaves without exit code
        try:
            _child_pipelines(registry, 20)
            registry.close()
        finally:
            os._exit(0)
    child.join(60)
    _pid, status = os.waitpid(pid, 0)
    assert (child.exitcode, os.waitstatus_to_exitcode(status)) == (0, 0)
    pipeline(registry, steps=1)  # the parent goes on with its own client
    registry.close()
    assert registry.stats.delivered == 10
    assert len(_topic_ids(publisher_settings)) == 5 + 100 + 100 + 5
    assert Spool(publisher_settings.spool_dir).count() == 0


# --- the spool's cap and a full disk --------------------------------------------------------


def test_the_spool_stops_at_its_cap_and_counts_what_it_dropped(
        publisher_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    capped = _unbuildable(publisher_settings).replace(spool_max_bytes=MIB)
    registry = Registry(capped)
    with caplog.at_level(logging.ERROR, "pudato_registry.publisher"):
        for n in range(60):  # 60 x 2 events of ~60 KiB: 7 MiB
            registry.job_failed(f"j{n}", error="x" * 60_000)
            registry.step_failed(f"j{n}", f"s{n}", error="y" * 60_000)
        registry.close()
    stats = registry.stats
    assert stats.emitted == 120
    assert 0 < stats.spooled < 20
    assert stats.spooled + stats.dropped == 120
    spool_file = publisher_settings.spool_dir / "spool.sqlite3"
    # Closed, so checkpointed: the rows are in the file itself, no write-ahead log left.
    assert not spool_file.with_name("spool.sqlite3-wal").exists()
    assert 0.5 * MIB < spool_file.stat().st_size <= 1.2 * MIB
    assert Spool(publisher_settings.spool_dir).count() == stats.spooled
    told = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(told) == 1
    assert "PUDATO_SPOOL_MAX_BYTES" in told[0].getMessage()


FULL_DISK_SCRIPT = textwrap.dedent("""
    import json, resource, signal, sys
    from pudato_registry.publisher import Registry
    registry = Registry()
    for n in range(10):                     # spooled while the disk has room
        registry.job_submitted(f"early{n}", pipeline="p")
    registry.producer._flush_to_spool(now=True)
    assert registry.spool.count() == 10
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # From here no file of this process may grow: writes fail as on a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for n in range(3000):                   # 3000 x 60 KB: 180 MB
        registry.job_failed(f"j{n}", error="x" * 60_000)
    registry.close()
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
    print(json.dumps({"grew_mb": grew, "dropped": registry.stats.dropped,
                      "spooled": registry.stats.spooled}))
""")


def test_a_full_disk_neither_grows_memory_nor_loses_what_was_spooled(
        publisher_settings: Settings) -> None:
    import json  # noqa: PLC0415

    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": publisher_settings.bootstrap_servers,
           "PUDATO_TOPIC": publisher_settings.topic,
           "PUDATO_SPOOL_DIR": str(publisher_settings.spool_dir),
           "PUDATO_KAFKA": '{"linger.ms": "60000"}', "PUDATO_DELIVERY_TIMEOUT_MS": "2000",
           "PUDATO_CLOSE_TIMEOUT_S": "1"}
    done = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["spooled"] == 10
    assert report["dropped"] >= 3000 - (64 * MIB) // 60_000
    assert report["grew_mb"] < 150, report  # 64 MiB held at most, not 180 MB
    assert "cannot write the spool" in done.stderr
    assert Spool(publisher_settings.spool_dir).count() == 10  # what was spooled stays


# --- close keeps its timeout; an outage's events reach the spool at once --------------------


@pytest.fixture
def outage_settings(dev_stack: DevStack, tmp_path: Path) -> Iterator[Settings]:
    with on_the_dev_stack(dev_stack, tmp_path / "spool", delivery_timeout_ms=30_000,
                          close_timeout_s=2.0) as made:
        yield made


def test_an_outage_spools_at_once_and_close_keeps_its_timeout(
        dev_stack: DevStack, outage_settings: Settings) -> None:
    registry = Registry(outage_settings)
    pipeline(registry, steps=1)
    assert registry.flush(10) == 0
    dev_stack.stop_kafka()
    try:
        pipeline(registry, steps=3)  # 9 events, emitted as the outage begins
        # Not after the client's 30 s delivery timeout: within seconds.
        wait_for(lambda: registry.spool.count() == 9, timeout=10, what="9 events spooled")
        assert not registry.healthy
        started = time.monotonic()
        registry.close()
        took = time.monotonic() - started
    finally:
        dev_stack.start_kafka(timeout=120)
    assert took < 2.0 + 1.5, f"close took {took:.1f} s with a 2 s timeout"
    assert Spool(outage_settings.spool_dir).count() == 9
    later = Registry(outage_settings)
    assert later.drain_spool(60) == 0
    later.close()
    assert len(_topic_ids(outage_settings)) == 5 + 9


def test_a_misspelt_variable_is_a_warning_not_a_stop(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PUDATO_TOPK", "mine")
    with caplog.at_level(logging.WARNING, "pudato_registry.publisher"):
        Registry().close()
    assert "PUDATO_TOPK is not a setting and is ignored (did you mean PUDATO_TOPIC?)" in [
        r.getMessage() for r in caplog.records]
