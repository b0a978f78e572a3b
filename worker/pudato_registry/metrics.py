"""Prometheus metrics and the ``/healthz`` / ``/readyz`` endpoints, served over HTTP.

Each worker has its own registry, so several workers can live in one process
(tests do that). The server starts in :meth:`Metrics.serve`, never in the
constructor. It serves each connection in a thread of its own (daemon
threads: none keeps the process from exiting) and drops a connection that
sends nothing for ``timeout`` seconds, so that no client, idle or slow, can
block the probes or the worker's shutdown.

``/healthz`` answers 503 when the loop has made no progress for
``stall_timeout_s`` while it had work (a batch in flight, or lag): a worker
stuck somewhere is restarted by its orchestrator. ``/readyz`` answers 503
while the worker retries a failure.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5, 10,
                    30, 60, 300)


class BulkHistogram(Collector):
    """A histogram fed a batch of observations at once.

    prometheus_client's Histogram takes a lock and searches the buckets in
    Python for every observation; a batch of thousands of event latencies
    would spend more there than in folding them. This one counts a batch with
    one C-level bisect per value and one lock per batch.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name, self._doc = name, documentation
        self._bounds = [*buckets, math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        """Count every value of ``values``."""
        counts = [0] * len(self._bounds)
        total = 0.0
        bounds = self._bounds
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
            total += value
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        """The cumulative buckets, count and sum, as Prometheus wants them."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        family = HistogramMetricFamily(self._name, self._doc)
        cumulative = list(itertools.accumulate(counts))
        family.add_metric([], [(_bound(b), c) for b, c in zip(self._bounds, cumulative,
                                                               strict=True)], total)
        yield family


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(value)


class _QuietHandler(WSGIRequestHandler):
    timeout = 10.0  # seconds a client may stay silent before its connection is dropped

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class _Server(ThreadingMixIn, WSGIServer):
    """One daemon thread per connection: a slow client holds only its own thread."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or hung up is its own affair: no traceback on stderr."""


def serve_app(app: Any, host: str, port: int) -> WSGIServer:
    """Serve a WSGI app (metrics, health) from a daemon thread, quietly, a thread per request."""
    server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="pudato-metrics", daemon=True).start()
    return server


class Metrics:
    """The worker's collectors, and readiness as the loop reports it."""

    def __init__(self, stall_timeout_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, *, worker: bool = True) -> None:
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self.registry = CollectorRegistry()
        # A bridge serves the same endpoints with series of its own (bridge.py).
        r = self.registry if worker else CollectorRegistry()
        self.consumed = Counter("pudato_events_consumed", "messages consumed", registry=r)
        self.applied = Counter("pudato_events_applied", "new events applied to the tables",
                               registry=r)
        self.duplicates = Counter("pudato_events_duplicate",
                                  "events dropped as already applied", registry=r)
        self.dead_lettered = Counter("pudato_events_dead_lettered",
                                     "invalid messages sent to the dead-letter topic",
                                     ["kind"], registry=r)
        self.batches = Counter("pudato_batches", "batches committed", registry=r)
        self.retries = Counter("pudato_retries", "transient failures retried", ["operation"],
                               registry=self.registry)
        self.batch_seconds = Histogram("pudato_batch_seconds",
                                       "time to validate, fold and commit one batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.event_to_row = BulkHistogram("pudato_event_to_row_seconds",
                                          "commit time minus the event's occurred_at",
                                          _LATENCY_BUCKETS, r)
        self.outside_window = Counter(
            "pudato_event_to_row_outside_window",
            "events left out of pudato_event_to_row_seconds: occurred too long before their "
            "commit (past: a backfill) or after it (future: a wrong clock)", ["side"], registry=r)
        self.lag = Gauge("pudato_consumer_lag", "messages behind the partition's end",
                         ["topic", "partition"], registry=self.registry)
        self._last_consumed: float | None = None
        self.since_consumed = Gauge("pudato_seconds_since_last_consumed",
                                    "seconds since a message was last consumed (-1: none yet)",
                                    registry=self.registry)
        self.since_consumed.set_function(
            lambda: -1.0 if self._last_consumed is None else clock() - self._last_consumed)
        self._ready = False
        self._last_progress = clock()
        self._work_pending = False
        self._server: WSGIServer | None = None

    def set_ready(self, ready: bool) -> None:
        """The loop says whether it holds a working consumer and database connection."""
        self._ready = ready

    def progressed(self, *, work_pending: bool) -> None:
        """The loop moved on (acknowledged a batch, or found nothing to do)."""
        self._last_progress = self._clock()
        self._work_pending = work_pending

    def stalled_for(self) -> float | None:
        """Seconds without progress while there was work, once over the limit; else None."""
        idle = self._clock() - self._last_progress
        return idle if self._work_pending and idle > self.stall_timeout_s else None

    def observe_lag(self, lags: Iterable[tuple[str, int, int]]) -> None:
        """Record (topic, partition, lag) of the assigned partitions."""
        for topic, partition, lag in lags:
            self.lag.labels(topic, str(partition)).set(lag)

    def observe_latencies(self, seconds: Iterable[float], window_s: float) -> None:
        """Event-to-row latencies: those in the window into the histogram, the rest counted.

        So that one backfill of last year's events (or an event dated year 9999)
        cannot make the histogram's sum and mean say nothing.
        """
        kept, past, future = [], 0, 0
        for value in seconds:
            if value > window_s:
                past += 1
            elif value < -60.0:
                future += 1
            else:
                kept.append(value)
        self.event_to_row.observe_many(kept)
        if past:
            self.outside_window.labels("past").inc(past)
        if future:
            self.outside_window.labels("future").inc(future)

    def forget_lag(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions no longer assigned: their lag is another member's to say."""
        for topic, partition in partitions:
            with contextlib.suppress(KeyError):
                self.lag.remove(topic, str(partition))

    def consumed_now(self) -> None:
        """A message was consumed (for ``pudato_seconds_since_last_consumed``)."""
        self._last_consumed = self._clock()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            stalled = self.stalled_for()
            if stalled is None:
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"stalled: no progress for {stalled:.0f} s with work pending\n".encode()]
        if path == "/readyz":
            if self._ready:
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ready\n"]
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"not ready\n"]
        return make_wsgi_app(self.registry)(environ, start_response)  # type: ignore[no-any-return]

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics, /healthz and /readyz in a daemon thread; return the bound port."""
        self._server = serve_app(self._app, host, port)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop the HTTP server, if serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
