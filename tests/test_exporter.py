"""The exporter's registry metrics on a real PostgreSQL, after draining a known workload."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pudato_registry import factory, queries
from pudato_registry.events import DataReference, Event
from pudato_registry.exporter import Exporter, RegistryCollector
from pudato_registry.settings import Settings
from tests.helpers import drain, messages_of
from tests.services import produce

NOW = datetime.now(UTC).replace(microsecond=0)
PROD = {"namespace": "finance", "environment": "prod", "pipeline": "daily"}


def _run(job: str, at: datetime, *, ok: bool, took_ms: int) -> list[Event]:
    out = [DataReference(ref_type="table", location="wh.daily")] if ok else None
    step = [factory.step_started(job, f"{job}-load", step_name="load", handler_type="h",
                                 action="a", occurred_at=at),
            factory.step_succeeded(job, f"{job}-load", outputs=out, duration_ms=took_ms,
                                   occurred_at=at + timedelta(seconds=1)) if ok else
            factory.step_failed(job, f"{job}-load", error="boom", duration_ms=took_ms,
                                occurred_at=at + timedelta(seconds=1))]
    end = (factory.job_succeeded(job, occurred_at=at + timedelta(seconds=2)) if ok else
           factory.job_failed(job, error="boom", occurred_at=at + timedelta(seconds=2)))
    return [factory.job_submitted(job, pipeline="daily", environment="prod",
                                  namespace="finance", occurred_at=at),
            factory.job_started(job, occurred_at=at), *step, end]


@pytest.fixture
def known(settings: Settings) -> Settings:
    """daily: two good runs, then a failed one half an hour ago; hung: running for 8 h."""
    events = [*_run("d1", NOW - timedelta(hours=26), ok=True, took_ms=1000),
              *_run("d2", NOW - timedelta(hours=2), ok=True, took_ms=1200),
              *_run("d3", NOW - timedelta(minutes=30), ok=False, took_ms=3000),
              factory.job_submitted("h1", pipeline="hung", occurred_at=NOW - timedelta(hours=8)),
              factory.job_started("h1", occurred_at=NOW - timedelta(hours=8)),
              factory.job_submitted("h2", pipeline="hung", occurred_at=NOW - timedelta(hours=1)),
              factory.job_started("h2", occurred_at=NOW - timedelta(hours=1))]
    produce(settings, messages_of(events))
    drain(settings)
    return settings.replace(freshness_slas={"daily": 3600.0})


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _at(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def test_the_registry_figures_are_those_of_the_tables(known: Settings) -> None:
    registry = CollectorRegistry()
    collector = RegistryCollector(known, registry)
    with queries.reading(known.database_dsn) as conn:
        collector.refresh(conn)
    got = _samples(registry)
    d2_done = (NOW - timedelta(hours=2) + timedelta(seconds=2)).timestamp()
    assert got[_at("pudato_pipeline_last_success_timestamp_seconds", **PROD)] == d2_done
    assert {labels for (name, labels), value in got.items()
            if name == "pudato_pipeline_last_run_status" and value == 1
            and ("pipeline", "daily") in labels} == {frozenset({*PROD.items(),
                                                                ("status", "failed")})}
    assert got[_at("pudato_pipeline_runs_failed", **PROD)] == 1  # d3, in the last hour
    assert got[_at("pudato_pipeline_freshness_sla_seconds", **PROD)] == 3600
    hung = {"namespace": "default", "environment": "dev", "pipeline": "hung"}
    assert got[_at("pudato_pipeline_freshness_sla_seconds", **hung)] == 93600
    assert got[_at("pudato_jobs_running", **hung)] == 2
    assert got[_at("pudato_jobs_stuck", **hung)] == 1  # h1: over 6 h
    assert got[_at("pudato_step_duration_seconds", **PROD, step_name="load", of="latest")] == 3.0
    assert got[_at("pudato_step_duration_seconds", **PROD, step_name="load",
                   of="recent_p95")] == 1.2
    assert got[_at("pudato_dataset_last_written_timestamp_seconds", location="wh.daily")] == (
        NOW - timedelta(hours=2)).timestamp()  # d2's write: d3 wrote nothing
    assert got[_at("pudato_exporter_scopes_left_out")] == 0
    assert not any(name == "pudato_pipeline_last_success_timestamp_seconds"
                   and ("pipeline", "hung") in labels for name, labels in got)


def test_scopes_past_the_bound_are_counted_not_shown(known: Settings) -> None:
    registry = CollectorRegistry()
    collector = RegistryCollector(known.replace(exporter_max_pipelines=1), registry)
    with queries.reading(known.database_dsn) as conn:
        collector.refresh(conn)
    got = _samples(registry)
    assert got[_at("pudato_exporter_scopes_left_out")] == 1
    assert len({labels for name, labels in got
                if name == "pudato_pipeline_freshness_sla_seconds"}) == 1


def test_the_exporter_serves_and_a_failed_refresh_keeps_the_last_figures(
        known: Settings) -> None:
    exporter = Exporter(known.replace(exporter_interval_s=1.0))
    port = exporter.start("127.0.0.1", 0)
    try:
        assert exporter.collector.refreshed.wait(30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert 'pudato_pipeline_runs_failed{environment="prod",namespace="finance",' \
               'pipeline="daily"} 1.0' in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        exporter.close()
    registry = CollectorRegistry()
    collector = RegistryCollector(known, registry)
    assert collector.refresh_once()
    before = _samples(registry)
    collector.dsn = "postgresql://nobody@127.0.0.1:1/x"  # the database away
    collector._conn = None  # as after a lost connection
    assert not collector.refresh_once()
    after = _samples(registry)
    assert after[_at("pudato_exporter_refresh_errors_total")] == 1
    assert after[_at("pudato_pipeline_runs_failed", **PROD)] == 1
    assert {k: v for k, v in after.items() if "error" not in k[0]} == {
        k: v for k, v in before.items() if "error" not in k[0]}
