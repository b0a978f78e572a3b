"""Big runs still end: datasets cut to fit by bytes, the status never refused for them."""

from __future__ import annotations

import json
from typing import Any

from pudato_registry import bridge, inputs
from pudato_registry import openlineage as ol
from pudato_registry.projection import fold
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection, validate
from pudato_registry.wire import Event
from tests.helpers import drain, table_rows
from tests.services import produce

APP, WRITE = "01a235e9-0000-7000-8000-00000000a99a", "01a235e9-0000-7000-8000-00000000b00b"


def _datasets(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"namespace": "s3://lake", "name": f"{prefix}/part-{n:05d}.parquet",
             "outputFacets": {"outputStatistics": {"rowCount": n, "size": 10 * n}}}
            for n in range(count)]


def run_events(*, outputs: int = 0, start_inputs: int = 0, end_inputs: int = 0,
               end: str = "COMPLETE") -> list[bytes]:
    """A Spark application with one write: START and ``end``, naming that many datasets."""
    parent = {"run": {"runId": APP}, "job": {"namespace": "big", "name": "app"},
              "root": {"run": {"runId": APP}, "job": {"namespace": "big", "name": "app"}}}
    job = {"namespace": "big", "name": "app.write",
           "facets": {"jobType": {"integration": "SPARK", "jobType": "SQL_JOB",
                                  "processingType": "BATCH"}}}
    app_job = {"namespace": "big", "name": "app",
               "facets": {"jobType": {"integration": "SPARK", "jobType": "APPLICATION"}}}
    events = [
        {"eventType": "START", "eventTime": "2026-11-30T01:00:00Z", "run": {"runId": APP},
         "job": app_job},
        {"eventType": "START", "eventTime": "2026-11-30T01:00:01Z",
         "run": {"runId": WRITE, "facets": {"parent": parent}}, "job": job,
         "inputs": _datasets("in-a", start_inputs)},
        {"eventType": end, "eventTime": "2026-11-30T01:05:00Z",
         "run": {"runId": WRITE, "facets": {"parent": parent}}, "job": job,
         "inputs": _datasets("in-b", end_inputs), "outputs": _datasets("out", outputs)},
        {"eventType": "COMPLETE", "eventTime": "2026-11-30T01:06:00Z", "run": {"runId": APP},
         "job": app_job},
    ]
    return [json.dumps(e).encode() for e in events]


def _translated(values: list[bytes], options: ol.Options) -> list[bytes]:
    out = []
    for value in values:
        result = ol.translate(value, options)
        assert isinstance(result, inputs.Translated), result
        out += [event for _key, event in result.messages]
    return out


def test_50000_outputs_are_cut_to_fit_and_the_rest_counted() -> None:
    options = ol.Options()
    events = _translated(run_events(outputs=50_000), options)
    assert max(len(e) for e in events) <= options.max_message_bytes
    decoded: list[Event] = []
    for value in events:
        event = validate(value)
        assert not isinstance(event, Rejection)
        decoded.append(event)
    projection = fold(decoded)
    assert not projection.refused
    [step] = projection.step_rows()
    assert step.status == "success"
    assert len(step.outputs) == 10_000
    assert step.metadata["ol_outputs_dropped"] == 40_000


def test_a_smaller_message_limit_gives_smaller_events() -> None:
    options = ol.Options(max_message_bytes=100_000)
    events = _translated(run_events(outputs=2_000), options)
    assert max(len(e) for e in events) <= 100_000
    decoded = [validate(e) for e in events]
    assert not any(isinstance(e, Rejection) for e in decoded)
    [step] = fold(decoded).step_rows()  # type: ignore[arg-type]
    assert (step.status, len(step.outputs)) == ("success", 2_000)
    assert "ol_outputs_dropped" not in step.metadata


def test_big_runs_end_with_their_status_through_the_bridge_and_the_worker(
        ol_settings: Settings) -> None:
    big = run_events(outputs=50_000)
    # The second job: 6,000 inputs on START and 6,000 more on a FAIL, past the
    # step's limit of 10,000; the worker refuses what crosses it, never the status.
    split = [v.replace(APP.encode(), b"01a235e9-0000-7000-8000-0000000000c2")
             .replace(WRITE.encode(), b"01a235e9-0000-7000-8000-0000000000d2")
             for v in run_events(start_inputs=6_000, end_inputs=6_000, end="FAIL")]
    produce(ol_settings.replace(max_message_bytes=8 * 1024 * 1024),
            [(b"run:big/app", v) for v in big + split], topic=ol_settings.ol_topic)
    bridge.Bridge(ol_settings).run(drain=True)
    worker = drain(ol_settings)
    jobs, steps, _edges = table_rows(ol_settings.database_dsn)
    assert sorted((j["job_id"][-2:], j["status"]) for j in jobs) == [("9a", "success"),
                                                                      ("c2", "failed")]
    by_job = {s["job_id"][-2:]: s for s in steps}
    assert (by_job["9a"]["status"], len(by_job["9a"]["outputs"])) == ("success", 10_000)
    failed = by_job["c2"]
    assert failed["status"] == "failed"
    assert len(failed["inputs"]) == 6_000  # the START's; the FAIL's would pass 10,000
    assert worker.stats.dead_lettered == 1  # those, quarantined with the reason
