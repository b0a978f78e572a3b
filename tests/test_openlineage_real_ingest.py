"""The real Spark and Airflow captures through ``serve`` (gzip on) and the bridge, into rows."""

from __future__ import annotations

import gzip
import json
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from pudato_registry import bridge, queries, receiver
from pudato_registry.settings import Settings
from tests.helpers import drain, table_rows
from tests.services import produce
from tests.test_openlineage_real import CAPTURES, declared_datasets, lines


@pytest.fixture
def served(settings: Settings) -> Iterator[str]:
    app = receiver.Receiver(settings)
    server = receiver.make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.run, daemon=True).start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()
    app.close()


def _post_gzip(url: str, body: bytes) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{url}/api/v1/lineage", data=gzip.compress(body),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return int(response.status)


def _check_rows(settings: Settings, names: list[str]) -> None:
    jobs, steps, _edges = table_rows(settings.database_dsn)
    by_pipeline = {j["pipeline"]: j for j in jobs}
    assert not [s for s in steps if s["status"] == "pending"]
    assert all(s["metadata"]["ol_job_type"]["jobType"] == "RDD_JOB" and (
        s["inputs"] or s["outputs"]) for s in steps if s["status"] == "running")
    assert not [s for s in steps if ".query." in (s["step_name"] or "")]
    if "spark-failed" in names:
        job = by_pipeline["olreal_fx_convert"]
        assert job["status"] == "failed"
        [write] = [s for s in steps if s["step_name"].endswith("mart_payments_usd")]
        assert write["status"] == "failed"
        assert "no FX rate for currency 'XXX'" in write["error"]
        assert "no FX rate for currency 'XXX'" in job["error"]
    if "spark-success" in names:
        assert by_pipeline["olreal_dept_budget"]["status"] == "success"
    for name in names:
        for location in declared_datasets(name):
            assert queries.lineage(settings.database_dsn, location).hops, location
    for name in ("airflow-dag", "airflow-scheduler-dag"):
        if name not in names:
            continue
        mine = {s["step_name"]: s for s in steps if s["job_id"] == _root_of(name)}
        assert len(mine) == 5
        assert mine["olreal_orders_pg.publish_report"]["status"] == "skipped"
        assert {j["error"] for j in jobs if j["job_id"] == _root_of(name)} == {
            "task_failure: check_totals failed"}


def _root_of(name: str) -> str:
    last = json.loads(lines(name)[-1])
    return str(last["run"]["runId"])


def test_every_real_capture_through_serve_with_gzip(settings: Settings, served: str) -> None:
    for name in CAPTURES:
        for line in lines(name):
            assert _post_gzip(served, line) in (200, 201)
    drain(settings)
    _check_rows(settings, CAPTURES)
    [missing] = [j for j in table_rows(settings.database_dsn)[0]
                 if j["pipeline"] == "olreal_missing_input"]
    assert missing["status"] == "success"  # its events say nothing of the failure (docs)


def test_the_spark_captures_through_kafka_and_the_bridge(ol_settings: Settings) -> None:
    spark = [name for name in CAPTURES if name.startswith("spark-")]
    produce(ol_settings, [(b"run:olreal-spark/app", line) for name in spark
                          for line in lines(name)], topic=ol_settings.ol_topic)
    bridge.Bridge(ol_settings).run(drain=True)
    drain(ol_settings)
    _check_rows(ol_settings, spark)
