"""The metrics endpoint: Prometheus text, liveness and readiness."""

from __future__ import annotations

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
