"""Dead letters on real services: listed, redriven after a fix, and only once."""

from __future__ import annotations

import json

import pytest

from pudato_registry.cli import main
from pudato_registry.sample import workload
from pudato_registry.settings import Settings
from tests.helpers import drain, expected_rows, messages_of, table_rows
from tests.services import produce, read_topic


def _args(settings: Settings, command: str = "redrive") -> list[str]:
    """The flags `dlq list` (broker, dead-letter topic) or `dlq redrive` (and the database
    and the event topic) takes."""
    found = ["--bootstrap-servers", settings.bootstrap_servers, "--dlq-topic",
             settings.dlq_topic]
    if command == "redrive":
        found += ["--database-url", settings.database_dsn, "--topic", settings.topic]
    return found


def test_redrive_after_a_fix_applies_each_letter_once(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    events = workload(400)
    produce(settings, messages_of(events))
    produce(settings, [(b"k", b"not json")])
    # A limit too small for the bigger events: they are dead-lettered as too large.
    drain(settings.replace(max_message_bytes=450))
    assert main(["dlq", "list", "--json", "--limit", "1000", *_args(settings, "list")]) == 0
    letters = json.loads(capsys.readouterr().out)
    too_large = [d for d in letters if d["kind"] == "too_large"]
    assert too_large
    assert len(letters) == len(too_large) + 1
    assert all(d["source"].startswith(settings.topic) for d in letters)
    # The JSON holds each letter whole; --kind picks one kind.
    [bad] = [d for d in letters if d["kind"] == "not_json"]
    assert (bad["key"], bad["value"], bad["headers"]["error.kind"]) == ("k", "not json",
                                                                         "not_json")
    assert main(["dlq", "list", "--json", "--kind", "not_json", *_args(settings, "list")]) == 0
    assert [d["offset"] for d in json.loads(capsys.readouterr().out)] == [bad["offset"]]
    assert table_rows(settings.database_dsn) != expected_rows(events)

    # The fix: the default limit. Redrive the too-large ones, twice; first, a dry run.
    assert main(["dlq", "redrive", "--kind", "too_large", "--dry-run", *_args(settings)]) == 0
    assert f"{len(too_large)} would be re-published" in capsys.readouterr().out
    for already in (0, len(too_large)):
        assert main(["dlq", "redrive", "--kind", "too_large", *_args(settings)]) == 0
        out = capsys.readouterr().out
        assert f"{len(too_large) - already} re-published" in out
        assert f"{already} redriven before" in out
    drain(settings)
    assert table_rows(settings.database_dsn) == expected_rows(events)
    topic = read_topic(settings, settings.topic)
    assert len(topic) == len(events) + 1 + len(too_large)
    assert sum(1 for r in topic if "redriven_from" in r.headers) == len(too_large)


def test_letters_with_bad_or_truncated_headers_are_listed_and_never_redriven_cut(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from confluent_kafka import Producer  # noqa: PLC0415

    from pudato_registry import kafka  # noqa: PLC0415

    producer = Producer(kafka.producer_config(settings))
    kafka.deliver(producer, settings.dlq_topic, [
        (b"k1", b"{}", [("error.kind", b"not_object"), ("source.partition", b"x"),
                        ("source.offset", b"-"), ("dead_lettered_at", b"yesterday")]),
        (b"k2", b'{"schema', [("error.kind", b"too_large"), ("value.truncated", b"true"),
                              ("value.size", b"2000000"), ("\x1b[2J", b"\x9b\x07")]),
    ], 30)
    assert main(["dlq", "list", *_args(settings, "list")]) == 0
    listed = capsys.readouterr().out
    assert "not_object" in listed
    assert "too_large" in listed
    # k1's value, {}, would be dead-lettered again as it is: left alone unless forced.
    assert main(["dlq", "redrive", *_args(settings)]) == 0
    out = capsys.readouterr().out
    assert "0 re-published" in out
    assert "1 truncated letters skipped" in out
    assert "1 the worker would refuse again as they are skipped (--force" in out
    assert main(["dlq", "redrive", "--force", "--dry-run", *_args(settings)]) == 0
    assert "redrive (dry run): 2 selected, 1 would be re-published" in capsys.readouterr().out
    assert read_topic(settings, settings.topic) == []
    assert main(["dlq", "redrive", "--force", *_args(settings)]) == 0
    assert "1 re-published" in capsys.readouterr().out
    redriven = [r for r in read_topic(settings, settings.topic) if "redriven_from" in r.headers]
    assert [r.key for r in redriven] == [b"k1"]


def test_letter_bytes_reach_json_losslessly() -> None:
    from pudato_registry.dlq import as_data  # noqa: PLC0415

    assert as_data(b'{"a": 1}', "value") == {"value": '{"a": 1}'}
    assert as_data(b"\xff\x00", "value") == {"value_base64": "/wA="}
    assert as_data(None, "key") == {"key": None}
