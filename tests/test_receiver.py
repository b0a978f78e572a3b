"""The OpenLineage HTTP receiver on a real broker: answers, publishing, keys, slow clients."""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from pudato_registry import openlineage, receiver
from pudato_registry.devstack import free_port
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection, validate
from tests.helpers import answers, wait_for
from tests.services import read_topic
from tests.test_openlineage import SAMPLES

PARENT_CHILDREN = (SAMPLES / "python-client-parent-children.jsonl").read_bytes().splitlines()


def _serving(settings: Settings) -> Iterator[str]:
    app = receiver.Receiver(settings, delivery_timeout_s=3)
    server = receiver.make_server(app, "127.0.0.1", 0, channel_timeout=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()
    app.close(5)


@pytest.fixture
def served(settings: Settings) -> Iterator[str]:
    yield from _serving(settings)


def _post(url: str, body: bytes, key: str | None = None,
          encoding: str | None = None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{url}/api/v1/lineage", data=body,  # noqa: S310
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_run_events_are_published_once_acknowledged(settings: Settings, served: str) -> None:
    answers = [_post(served, line) for line in PARENT_CHILDREN]
    assert [status for status, _body in answers] == [201] * len(PARENT_CHILDREN)
    published = read_topic(settings, settings.topic)
    assert len(published) == sum(int(body["events"]) for _s, body in answers)  # type: ignore[call-overload]
    for record in published:
        event = validate(record.value)
        assert not isinstance(event, Rejection)
        assert record.key == event.correlation_id.encode()


@pytest.mark.parametrize(("body", "status", "error"), [
    (b"not json", 400, "not_json"),
    (b'{"run": {"runId": "r"}, "job": {"namespace": "n"}, "eventTime": "2026-11-30T00:00:00Z"}',
     400, "missing_field"),
    (b'{"eventType": "EXPLODED", "eventTime": "2026-11-30T03:53:48Z",'
     b' "run": {"runId": "r"}, "job": {"namespace": "n", "name": "j"}}', 400,
     "unknown_event_type"),
    (b'{"job": {"namespace": "n", "name": "j"}}', 200, None),
    (b"{" + b" " * (8 * 1024 * 1024) + b"}", 413, "too_large"),
])
def test_bad_and_ignored_input_publishes_nothing(settings: Settings, served: str, body: bytes,
                                                  status: int, error: str | None) -> None:
    got, answer = _post(served, body)
    assert got == status
    assert answer.get("error") == error
    assert read_topic(settings, settings.topic) == []


def test_gzip_bodies_are_inflated_and_a_gzip_bomb_is_refused_in_bounded_memory(
        settings: Settings, served: str) -> None:
    status, first = _post(served, gzip.compress(PARENT_CHILDREN[0]), encoding="gzip")
    assert status == 201
    bomb = gzip.compress(b" " * (1024 * 1024 * 1024), compresslevel=9)  # 1 GiB in ~1 MB
    assert len(bomb) < 1_100_000
    status, answer = _post(served, bomb, encoding="gzip")
    assert (status, answer["error"]) == (413, "too_large")
    assert "inflated" in str(answer["reason"])
    assert _post(served, b"not gzip at all", encoding="gzip")[1]["error"] == "not_gzip"
    assert len(read_topic(settings, settings.topic)) == first["events"]  # the first's only
    tracemalloc.start()
    with pytest.raises(receiver.TooLargeError):
        receiver.inflate(bomb, 8 * 1024 * 1024)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 1024 * 1024  # the limit and a little, never the gigabyte


def test_a_body_sent_as_is_takes_its_length_of_the_decode_budget(settings: Settings) -> None:
    app = receiver.Receiver(settings, delivery_timeout_s=3)
    taken: list[int] = []
    take = app._budget.take

    def recording(size: int, timeout: float) -> bool:
        taken.append(size)
        return take(size, timeout)

    app._budget.take = recording  # type: ignore[method-assign]
    server = receiver.make_server(app, "127.0.0.1", 0, channel_timeout=2)
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{server.effective_port}"
    try:
        body = PARENT_CHILDREN[0]
        assert _post(url, body, encoding="identity")[0] == 201
        assert _post(url, body)[0] == 201
        assert _post(url, gzip.compress(body), encoding="gzip")[0] == 201
    finally:
        server.close()
        app.close(5)
    # Only a compressed body is budgeted at what it may inflate to.
    assert taken == [len(body), len(body), openlineage.INPUT_MAX_BYTES]


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "gzip, br"])
def test_other_encodings_are_refused_with_415_naming_them(served: str, encoding: str) -> None:
    status, answer = _post(served, PARENT_CHILDREN[0], encoding=encoding)
    assert (status, answer["error"]) == (415, "unsupported_encoding")
    assert repr(encoding) in str(answer["reason"])


def test_refusals_are_counted_on_metrics_and_logged_sparsely(
        served: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pudato_registry.receiver")
    for _ in range(20):
        assert _post(served, b"not json")[0] == 400
    assert _post(served, PARENT_CHILDREN[0], encoding="br")[0] == 415
    lines = [r.getMessage() for r in caplog.records if "refused a request" in r.getMessage()]
    assert len(lines) == 2  # one per kind of refusal, not one per request
    assert "not_json" in lines[0]
    assert "415 Unsupported Media Type unsupported_encoding" in lines[1]
    with urllib.request.urlopen(f"{served}/metrics", timeout=10) as response:  # noqa: S310
        metrics = response.read().decode()
    assert 'pudato_receiver_refused_total{reason="not_json"} 20.0' in metrics
    assert 'pudato_receiver_refused_total{reason="unsupported_encoding"} 1.0' in metrics
    assert 'pudato_receiver_requests_total{code="400"} 20.0' in metrics
    assert "pudato_receiver_decode_seconds_count 20.0" in metrics


def test_an_api_key_is_required_when_set(settings: Settings) -> None:
    keyed = settings.replace(ol_api_key=SecretStr("s3cret"))
    for url in _serving(keyed):
        assert _post(url, PARENT_CHILDREN[0])[0] == 401
        assert _post(url, PARENT_CHILDREN[0], key="wrong")[0] == 401
        assert _post(url, PARENT_CHILDREN[0], key="s3cret")[0] == 201


def test_a_broker_that_cannot_take_events_is_a_503(settings: Settings) -> None:
    away = settings.replace(bootstrap_servers=f"127.0.0.1:{free_port()}")
    for url in _serving(away):
        status, answer = _post(url, PARENT_CHILDREN[0])
        assert status == 503
        assert "try again" in str(answer["error"])


def test_idle_and_slow_clients_block_no_one(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /api/v1/lineage HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    try:
        started = time.monotonic()
        assert _post(served, PARENT_CHILDREN[1])[0] == 201
        assert time.monotonic() - started < 5
    finally:
        for conn in [*idle, slow]:
            conn.close()


def test_the_serve_command_answers_and_stops_on_sigterm(settings: Settings,
                                                        tmp_path: Path) -> None:
    port = free_port()
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PUDATO_TOPIC": settings.topic}
    process = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "openlineage",
                                "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--api-key-file", str(key_file)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
    url = f"http://127.0.0.1:{port}"

    try:
        wait_for(lambda: answers(f"{url}/healthz"), what="the receiver to listen")
        assert _post(url, PARENT_CHILDREN[0])[0] == 401
        assert _post(url, PARENT_CHILDREN[0], key="s3cret")[0] == 201
        idle = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
        idle.close()
        assert process.returncode == 0, output
        assert time.monotonic() - started < 10
        assert "receiver stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
