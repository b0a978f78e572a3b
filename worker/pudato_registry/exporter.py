"""Registry metrics for on-call: what the tables say of each pipeline, for Prometheus.

The worker's ``/metrics`` says how ingestion goes; this says how the
pipelines go: when each last succeeded, how its last run ended, how many runs
failed lately, which jobs are running or stuck, how long each step of the
latest run took against its recent p95, and when chosen datasets were last
written.

A scrape never queries the database. A thread refreshes a snapshot every
``PUDATO_EXPORTER_INTERVAL_S`` with bounded, indexed queries on one
read-only connection (a statement timeout each), and scrapes read the last
snapshot; a refresh that fails keeps the previous snapshot and counts the
failure (``pudato_exporter_refresh_errors_total``), so a database restart
shows as stale figures, not as a hole.

Cardinality is bounded: at most ``PUDATO_EXPORTER_MAX_PIPELINES`` pipeline
scopes (namespace, environment, pipeline), the rest counted in
``pudato_exporter_scopes_left_out``; at most ``PUDATO_EXPORTER_MAX_STEPS``
step names per scope; ``PUDATO_EXPORTER_DATASETS`` (or the
``PUDATO_EXPORTER_TOP_DATASETS`` most written) locations.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pudato_registry import queries
from pudato_registry.metrics import serve_app
from pudato_registry.settings import Settings

log = logging.getLogger(__name__)
SCOPE = ("namespace", "environment", "pipeline")
_ANY_TIME = datetime.max.replace(tzinfo=UTC)  # baselines over every run, not those before one
STATUSES = ("pending", "running", "success", "failed", "cancelled")

# Every scope of a pipeline, by a loose scan of idx_jobs_pipeline_scope_created:
# one index descent per scope, whatever the number of runs.
_SCOPES = """
WITH RECURSIVE scopes AS (
    (SELECT pipeline, environment, namespace FROM pudato_jobs WHERE pipeline IS NOT NULL
      ORDER BY pipeline, environment, namespace LIMIT 1)
    UNION ALL
    SELECT n.pipeline, n.environment, n.namespace FROM scopes s CROSS JOIN LATERAL (
        SELECT pipeline, environment, namespace FROM pudato_jobs j
         WHERE (j.pipeline, j.environment, j.namespace)
             > (s.pipeline, s.environment, s.namespace)
         ORDER BY pipeline, environment, namespace LIMIT 1) n
)
SELECT s.namespace, s.environment, s.pipeline, last.status, last.job_id,
       (SELECT max(completed_at) FROM (
            SELECT completed_at FROM pudato_jobs j WHERE j.pipeline = s.pipeline
               AND j.environment = s.environment AND j.namespace = s.namespace
               AND j.status = 'success'
             ORDER BY j.created_at DESC LIMIT 1) ok) AS last_success,
       (SELECT count(*) FROM pudato_jobs j WHERE j.pipeline = s.pipeline
           AND j.environment = s.environment AND j.namespace = s.namespace
           AND j.created_at > now() - make_interval(secs => %(window)s)
           AND j.status IN ('failed', 'cancelled')) AS failed
  FROM (SELECT * FROM scopes LIMIT %(most)s) s
 CROSS JOIN LATERAL (
       SELECT status, job_id FROM pudato_jobs j WHERE j.pipeline = s.pipeline
          AND j.environment = s.environment AND j.namespace = s.namespace
        ORDER BY j.created_at DESC, j.job_id DESC LIMIT 1) last
"""
# Running jobs are few (a lost terminal event makes one more): idx_jobs_status.
_RUNNING = """
SELECT namespace, environment, coalesce(pipeline, ''), count(*),
       count(*) FILTER (WHERE started_at < now() - make_interval(secs => %(stuck)s))
  FROM pudato_jobs WHERE status = 'running' GROUP BY 1, 2, 3
"""
# Per scope, the steps of its latest finished run, and the durations of each step
# name over its last successful runs.
_STEPS = """
SELECT s.step_name, s.duration_ms FROM pudato_job_steps s
 WHERE s.job_id = %(job)s AND s.duration_ms IS NOT NULL AND s.step_name IS NOT NULL
 ORDER BY coalesce(s.started_at, s.completed_at), s.step_id
"""
_LATEST_FINISHED = """
SELECT job_id FROM pudato_jobs WHERE pipeline = %(pipeline)s AND environment = %(environment)s
   AND namespace = %(namespace)s AND completed_at IS NOT NULL
 ORDER BY created_at DESC LIMIT 1
"""
_DATASETS = """
SELECT location, max(last_seen) FILTER (WHERE last_status = 'success'), sum(runs)
  FROM pudato_lineage_edges WHERE direction = 'out' {where}
 GROUP BY location ORDER BY sum(runs) DESC, location LIMIT %(most)s
"""


@dataclass
class Snapshot:
    """What one refresh read: the families to serve."""

    families: list[GaugeMetricFamily] = field(default_factory=list)
    scopes_left_out: int = 0


def _family(name: str, doc: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _p95(values: list[int]) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))])


def read_snapshot(conn: psycopg.Connection[Any], settings: Settings) -> Snapshot:
    """The registry's figures now: a few indexed queries, bounded by the settings."""
    most = settings.exporter_max_pipelines
    rows = conn.execute(_SCOPES, {"window": settings.exporter_failed_window_s,
                                  "most": most + 1}).fetchall()
    snapshot = Snapshot(scopes_left_out=max(0, len(rows) - most))
    rows = rows[:most]
    last_success = _family("pudato_pipeline_last_success_timestamp_seconds",
                           "when the pipeline's last successful run completed", SCOPE)
    last_status = _family("pudato_pipeline_last_run_status",
                          "1 for the status of the pipeline's latest run, 0 for the others",
                          (*SCOPE, "status"))
    failed = _family("pudato_pipeline_runs_failed",
                     f"runs failed or cancelled among those created in the last "
                     f"{settings.exporter_failed_window_s:.0f} s", SCOPE)
    sla = _family("pudato_pipeline_freshness_sla_seconds",
                  "how long after its last success the pipeline counts as stale", SCOPE)
    for namespace, environment, pipeline, status, _job, succeeded, failures in rows:
        scope = [str(namespace), str(environment), str(pipeline)]
        if succeeded is not None:
            last_success.add_metric(scope, succeeded.timestamp())
        for each in STATUSES:
            last_status.add_metric([*scope, each], 1.0 if each == status else 0.0)
        failed.add_metric(scope, float(failures))
        sla.add_metric(scope, settings.freshness_slas.get(str(pipeline),
                                                          settings.freshness_sla_s))
    running = _family("pudato_jobs_running", "jobs running now", SCOPE)
    stuck = _family("pudato_jobs_stuck",
                    f"jobs running for more than {settings.exporter_stuck_after_s:.0f} s "
                    "with no terminal event", SCOPE)
    for namespace, environment, pipeline, count, stuck_count in conn.execute(
            _RUNNING, {"stuck": settings.exporter_stuck_after_s}).fetchall():
        scope = [str(namespace), str(environment), str(pipeline)]
        running.add_metric(scope, float(count))
        stuck.add_metric(scope, float(stuck_count))
    snapshot.families += [last_success, last_status, failed, sla, running, stuck,
                          _step_durations(conn, rows, settings), _datasets(conn, settings)]
    return snapshot


def _step_durations(conn: psycopg.Connection[Any], scopes: list[Any],
                    settings: Settings) -> GaugeMetricFamily:
    """Each step of a scope's latest finished run, and the p95 of its recent successes."""
    family = _family("pudato_step_duration_seconds",
                     "a step's duration: in the pipeline's latest finished run (of=latest), "
                     "and the p95 over its last successful runs (of=recent_p95)",
                     (*SCOPE, "step_name", "of"))
    for namespace, environment, pipeline, *_rest in scopes:
        scope = {"namespace": namespace, "environment": environment, "pipeline": pipeline}
        latest = conn.execute(_LATEST_FINISHED, scope).fetchone()
        if latest is None:
            continue
        # A retried step: its last attempt (one series per step name).
        steps = dict(conn.execute(_STEPS, {"job": latest[0]}).fetchall())
        names = sorted(str(name) for name in steps)[:settings.exporter_max_steps]
        recent = queries.step_baselines(conn, {**scope, "created_at": _ANY_TIME},
                                        settings.exporter_baseline_runs)
        labels = [str(namespace), str(environment), str(pipeline)]
        for name in names:
            family.add_metric([*labels, name, "latest"], float(steps[name]) / 1000)
        for name in names:
            if recent.get(name):
                family.add_metric([*labels, name, "recent_p95"], _p95(recent[name]) / 1000)
    return family


def _datasets(conn: psycopg.Connection[Any], settings: Settings) -> GaugeMetricFamily:
    """When the chosen (or most written) locations were last written by a successful run."""
    family = _family("pudato_dataset_last_written_timestamp_seconds",
                     "when the latest write of the location began (its step's started_at), "
                     "among the logical steps writing it whose latest run succeeded",
                     ("location",))
    named = list(settings.exporter_datasets)
    where = "AND location = ANY(%(named)s)" if named else ""
    for location, written, _runs in conn.execute(
            _DATASETS.format(where=where),
            {"named": named, "most": len(named) or settings.exporter_top_datasets}).fetchall():
        if written is not None:
            family.add_metric([str(location)], written.timestamp())
    return family


class RegistryCollector(Collector):
    """Serves the last snapshot; a thread of its own refreshes it."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self._settings = settings
        self.dsn = settings.database_dsn
        self._conn: psycopg.Connection[Any] | None = None
        self._snapshot = Snapshot()
        self._lock = threading.Lock()
        self.refreshed = threading.Event()  # set after each refresh, for callers that wait
        self.last_success: float | None = None
        self.seconds = Gauge("pudato_exporter_refresh_seconds",
                             "how long the last refresh of the registry figures took",
                             registry=registry)
        self.last = Gauge("pudato_exporter_last_refresh_timestamp_seconds",
                          "when the registry figures were last refreshed", registry=registry)
        self.errors = Counter("pudato_exporter_refresh_errors",
                              "refreshes that failed (the previous figures stay)",
                              registry=registry)
        self.left_out = Gauge("pudato_exporter_scopes_left_out",
                              "pipeline scopes beyond PUDATO_EXPORTER_MAX_PIPELINES, not shown",
                              registry=registry)
        registry.register(self)

    def collect(self) -> Iterator[Any]:
        """The families of the last snapshot."""
        with self._lock:
            yield from self._snapshot.families

    def refresh(self, conn: psycopg.Connection[Any]) -> None:
        """Read a new snapshot and serve it from now on."""
        began = time.perf_counter()
        snapshot = read_snapshot(conn, self._settings)
        conn.rollback()
        with self._lock:
            self._snapshot = snapshot
        self.seconds.set(time.perf_counter() - began)
        self.last_success = time.time()
        self.last.set(self.last_success)
        self.left_out.set(snapshot.scopes_left_out)

    def refresh_once(self) -> bool:
        """One refresh on the held connection (opened if need be); a failure is logged and
        counted, and the previous figures stay. Whether it succeeded."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = queries.reading_connection(self.dsn, timeout_ms=30_000)
            self.refresh(self._conn)
            return True
        except psycopg.Error as exc:
            self.errors.inc()
            log.warning("refreshing the registry figures failed (the previous ones stay): %s",
                        exc)
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
            self._conn = None
            return False
        finally:
            self.refreshed.set()

    def run(self, stop: threading.Event) -> None:
        """Refresh every interval until ``stop``."""
        while not stop.is_set():
            self.refresh_once()
            stop.wait(self._settings.exporter_interval_s)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()


class Exporter:
    """``pudato-registry exporter``: the registry figures on /metrics, refreshed in a thread.

    ``/healthz`` answers 503 once no refresh has succeeded for three intervals.
    """

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.collector = RegistryCollector(settings, self.registry)
        self.stop = threading.Event()
        self._interval = settings.exporter_interval_s
        self._thread = threading.Thread(target=self.collector.run, args=(self.stop,),
                                        name="pudato-exporter", daemon=True)
        self._server: Any = None

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/healthz":
            age = time.time() - (self.collector.last_success or 0.0)
            fresh = age < 3 * self._interval + 30
            start_response("200 OK" if fresh else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])
            return [b"ok\n" if fresh else f"no refresh for {age:.0f} s\n".encode()]
        return make_wsgi_app(self.registry)(environ, start_response)

    def start(self, host: str, port: int) -> int:
        """Start refreshing and serving; return the bound port."""
        self._thread.start()
        self._server = serve_app(self._app, host, port)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop refreshing and serving."""
        self.stop.set()
        self._thread.join(timeout=35)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
