"""The metrics endpoint: Prometheus text, liveness and readiness."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pudato_registry.metrics import Metrics


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    metrics = Metrics()
    port = metrics.serve("127.0.0.1", 0)
    yield metrics, f"http://127.0.0.1:{port}"
    metrics.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_and_readiness(served: tuple[Metrics, str]) -> None:
    metrics, base = served
    assert _get(f"{base}/healthz")[0] == 200
    assert _get(f"{base}/readyz")[0] == 503
    metrics.set_ready(True)
    assert _get(f"{base}/readyz")[0] == 200


def test_bulk_histogram_counts_like_prometheus(served: tuple[Metrics, str]) -> None:
    metrics, base = served
    metrics.event_to_row.observe_many([0.004, 0.005, 0.2, 0.26, 1e6])
    metrics.applied.inc(5)
    status, text = _get(f"{base}/metrics")
    assert status == 200
    samples = {(s.name, s.labels.get("le")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("pudato_event_to_row_seconds_bucket", "0.005")] == 2
    assert samples[("pudato_event_to_row_seconds_bucket", "0.2")] == 3
    assert samples[("pudato_event_to_row_seconds_bucket", "0.25")] == 3
    assert samples[("pudato_event_to_row_seconds_bucket", "+Inf")] == 5
    assert samples[("pudato_event_to_row_seconds_count", None)] == 5
    assert samples[("pudato_events_applied_total", None)] == 5


def test_idle_connections_block_no_one(served: tuple[Metrics, str]) -> None:
    _metrics, base = served
    port = int(base.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a request that never ends
    try:
        started = time.monotonic()
        for path in ("/healthz", "/readyz", "/metrics"):
            assert _get(f"{base}{path}")[0] in (200, 503)
        assert time.monotonic() - started < 2
    finally:
        for conn in [*idle, half]:
            conn.close()


def test_healthz_fails_when_the_loop_stalls_with_work_pending() -> None:
    now = [1000.0]
    metrics = Metrics(stall_timeout_s=60, clock=lambda: now[0])
    port = metrics.serve("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        metrics.progressed(work_pending=True)
        now[0] += 59
        assert _get(f"{base}/healthz")[0] == 200
        now[0] += 2
        status, text = _get(f"{base}/healthz")
        assert (status, text) == (503, "stalled: no progress for 61 s with work pending\n")
        metrics.progressed(work_pending=False)  # caught up: idle is healthy however long
        now[0] += 3600
        assert _get(f"{base}/healthz")[0] == 200
    finally:
        metrics.close()
