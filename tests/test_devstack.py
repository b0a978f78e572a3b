"""The dev stack: starts a real broker and server, and leaves nothing behind when stopped."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from pudato_registry import devstack


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (an exited, unreaped zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_stack_starts_answers_and_stops_without_leftovers(tmp_path: Path) -> None:
    stack = devstack.DevStack(tmp_path).start()
    try:
        kafka_pid = int((tmp_path / "kafka.pid").read_text())
        pgdata = Path((tmp_path / "pgdata").read_text())
        postgres_pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        assert AdminClient({"bootstrap.servers": stack.bootstrap_servers}).list_topics(
            timeout=10).brokers
        with psycopg.connect(stack.database_url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("pudato",)
        assert (tmp_path / "env").read_text().count("PUDATO_") == 2
    finally:
        stack.stop()
    assert not _alive(kafka_pid)
    assert not _alive(postgres_pid)
    assert not devstack.port_open(stack.kafka_port)
    assert not devstack.port_open(stack.postgres_port)
    assert not pgdata.exists()


def test_missing_tools_get_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(devstack, "CACHE", Path("/nonexistent-cache"))
    with pytest.raises(devstack.StackError, match="install Maven"):
        devstack.kafka_classpath()


def test_a_cluster_id_never_reads_as_an_option() -> None:
    # One uuid in 64 encodes to an id starting with "-", which Kafka's storage tool
    # took for an option: the stack failed to start, now and then, for no visible reason.
    ids = [devstack._cluster_id() for _ in range(5_000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)
