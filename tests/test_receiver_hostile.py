"""The receiver serves good clients whatever others do: slow sockets, big bodies, no broker."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.uuid import generate_new_uuid
from pydantic import SecretStr, ValidationError

from pudato_registry import receiver
from pudato_registry.devstack import free_port
from pudato_registry.settings import Settings
from tests.helpers import answers, wait_for
from tests.test_receiver import PARENT_CHILDREN, _post


def _serve(settings: Settings, **server: float) -> Iterator[tuple[receiver.Receiver, str]]:
    app = receiver.Receiver(settings, probe_interval_s=0.5)
    httpd = receiver.make_server(app, "127.0.0.1", 0, **server)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=receiver.serve, args=(httpd, app, stop), daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{httpd.effective_port}"
    stop.set()
    thread.join(10)
    app.close(5)


@pytest.fixture
def slow_deadline(settings: Settings) -> Iterator[tuple[receiver.Receiver, str]]:
    yield from _serve(settings, request_timeout_s=3, channel_timeout=30)


def _metric(url: str, line: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310
        for row in response.read().decode().splitlines():
            if row.startswith(line + " "):
                return float(row.split()[-1])
    return 0.0


def test_200_slowloris_sockets_stop_no_good_client_and_are_dropped_at_their_deadline(
        settings: Settings, slow_deadline: tuple[receiver.Receiver, str]) -> None:
    _app, url = slow_deadline
    port = int(url.rsplit(":", 1)[1])
    slow = []
    for _ in range(200):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"POST /api/v1/lineage HTTP/1.1\r\nHost: x\r\n")
        slow.append(conn)
    stop = threading.Event()

    def trickle() -> None:  # a header line every half second: any byte resets an idle timer
        while not stop.wait(0.5):
            for conn in slow:
                with contextlib.suppress(OSError):
                    conn.sendall(b"X-Slow: 1\r\n")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        took: list[float] = []
        for line in PARENT_CHILDREN * (100 // len(PARENT_CHILDREN) + 1):
            if len(took) == 100:
                break
            started = time.monotonic()
            assert _post(url, line)[0] == 201
            took.append(time.monotonic() - started)
        assert len(took) == 100
        assert max(took) < 1.0, sorted(took)[-5:]
        # Past the 3 s deadline every slow socket has been closed by the server.
        wait_for(lambda: _metric(url, 'pudato_receiver_refused_total{reason="request_timeout"}')
                 >= 200, timeout=15, what="the slow sockets to be dropped")
        for conn in slow[:5]:
            conn.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(1) == b""  # closed, not waiting
    finally:
        stop.set()
        trickler.join()
        for conn in slow:
            conn.close()


def test_a_request_without_the_key_is_refused_on_its_headers_and_its_body_never_kept(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pudato_registry.receiver")
    keyed = settings.replace(ol_api_key=SecretStr("s3cret"))
    for app, url in _serve(keyed):
        body = b"{" + b" " * (8 * 1024 * 1024 - 2) + b"}"
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(_post, [url] * 10, [body] * 10))
        assert {(status, answer["error"]) for status, answer in answers} == {
            (401, "unauthorized")}
        assert app._budget.used == 0  # none of them reached the decoder
        assert _metric(url, 'pudato_receiver_refused_total{reason="unauthorized"}') == 10
        assert _post(url, PARENT_CHILDREN[0], key="s3cret")[0] == 201
    assert "refused a request from 127.0.0.1: 401 Unauthorized unauthorized" in caplog.text


def test_an_empty_api_key_is_a_start_up_error() -> None:
    with pytest.raises(ValidationError, match="the API key is empty"):
        Settings(ol_api_key=SecretStr("  "))
    done = subprocess.run([sys.executable, "-m", "pudato_registry.cli", "openlineage", "serve"],
                          env={**os.environ, "PUDATO_OL_API_KEY": ""}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "bad setting PUDATO_OL_API_KEY" in done.stderr
    assert "the API key is empty" in done.stderr


def test_while_the_broker_is_away_a_503_comes_within_2_s_and_the_real_client_retries(
        settings: Settings) -> None:
    away = settings.replace(bootstrap_servers=f"127.0.0.1:{free_port()}")
    for app, url in _serve(away):
        started = time.monotonic()
        assert _post(url, PARENT_CHILDREN[0])[0] == 503
        assert time.monotonic() - started < 2.0
        wait_for(lambda app=app: not app.broker_reachable, timeout=10,  # type: ignore[misc]
                 what="the probe to notice")
        with pytest.raises(urllib.error.HTTPError) as ready:
            urllib.request.urlopen(f"{url}/readyz", timeout=5)  # noqa: S310
        assert ready.value.code == 503
        before = app.counts["unavailable"]
        transport = HttpTransport(HttpConfig(url=url, timeout=5.0, retry={
            "total": 3, "backoff_factor": 0.1, "status_forcelist": [503],
            "allowed_methods": ["POST"]}))
        client = OpenLineageClient(transport=transport)
        with pytest.raises(Exception):  # noqa: B017, PT011 - the client gives up, as configured
            client.emit(RunEvent(eventType=RunState.START, eventTime="2026-11-30T03:53:00Z",
                                 run=Run(runId=str(generate_new_uuid())),
                                 job=Job(namespace="n", name="j"), producer="tests"))
        assert app.counts["unavailable"] - before == 4  # the first try and three retries


def test_sigterm_answers_what_is_in_flight_and_logs_no_traceback(settings: Settings) -> None:
    port = free_port()
    # No broker, a long publish timeout and a slow probe: requests wait in flight.
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
           "PUDATO_OL_HTTP_PUBLISH_TIMEOUT_S": "30", "PUDATO_OL_HTTP_PROBE_INTERVAL_S": "60"}
    process = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "openlineage",
                                "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    try:
        wait_for(lambda: answers(f"{url}/healthz"), what="the receiver to listen")
        idle = socket.create_connection(("127.0.0.1", port))
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"POST /api/v1/lineage HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                        b"\r\n{")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            posts = [pool.submit(_post, url, line) for line in PARENT_CHILDREN[:4]]
            wait_for(lambda: _metric(url, "pudato_receiver_requests_in_flight") == 4,
                     what="four requests waiting for the broker")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=30)[0].decode()
            replies = [post.result() for post in posts]
        assert process.returncode == 0, output
        assert time.monotonic() - started < 5
        assert {(status, str(body["error"])) for status, body in replies} == {
            (503, "the receiver is stopping; try again")}
        assert "Traceback" not in output, output
        assert "receiver stopped" in output
        idle.close()
        partial.close()
    finally:
        if process.poll() is None:
            process.kill()
