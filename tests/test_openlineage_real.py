"""The translator on real Spark and Airflow runs (amendment O1): the rows say what happened."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pudato_registry import inputs
from pudato_registry import openlineage as ol
from pudato_registry.projection import Projection, StepRow, fold
from pudato_registry.validate import Rejection, validate
from pudato_registry.wire import Event

REAL = Path(__file__).parent / "data" / "openlineage" / "real"
CAPTURES = sorted(p.stem for p in REAL.glob("*.jsonl"))
DEFAULTS = ol.Options()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def lines(name: str) -> list[bytes]:
    """The RunEvents of one capture, in the order they were sent."""
    return (REAL / f"{name}.jsonl").read_bytes().splitlines()


def translated(raw: list[bytes], options: ol.Options = DEFAULTS) -> list[Event]:
    """Every registry event the RunEvents become (none may be refused)."""
    out: list[Event] = []
    for line in raw:
        result = ol.translate(line, options)
        assert not isinstance(result, Rejection), result
        if isinstance(result, inputs.Translated):
            for _key, value in result.messages:
                event = validate(value)
                assert not isinstance(event, Rejection), event
                out.append(event)
    return out


def folded(name: str, options: ol.Options = DEFAULTS) -> Projection:
    """One capture translated and folded."""
    return fold(translated(lines(name), options))


def step_named(projection: Projection, suffix: str) -> StepRow:
    """The one step whose name ends with ``suffix``."""
    [step] = [s for s in projection.step_rows() if (s.step_name or "").endswith(suffix)]
    return step


def declared_datasets(name: str) -> set[str]:
    """Every dataset location a capture's RunEvents name as an input or output."""
    found = set()
    for line in lines(name):
        message = json.loads(line)
        for dataset in message.get("inputs", []) + message.get("outputs", []):
            found.add(ol._location(dataset["namespace"], dataset["name"], by_name=False))
    return found


def _rows(events: list[Event], *, created_at: bool) -> tuple[list[object], list[StepRow]]:
    jobs = fold(events).job_rows()
    return ([j if created_at else j._replace(created_at=EPOCH) for j in jobs],
            fold(events).step_rows())


@pytest.mark.parametrize("name", CAPTURES)
def test_every_capture_folds_to_the_same_rows_in_any_order(name: str) -> None:
    events = translated(lines(name))
    # Known limit (decision 4): where the root run never emits (`airflow dags test` sends
    # no DAG START), every child yields the one carrier `ol:<root>:from-child` at its own
    # time, and which copy the fold keeps decides the job's created_at.
    whole = name != "airflow-dag"
    rows = _rows(events, created_at=whole)
    rng = random.Random(name)
    for _ in range(10):
        rng.shuffle(events)
        assert _rows(events, created_at=whole) == rows


def test_a_failed_spark_write_stays_failed_with_sparks_error_and_fails_its_application() -> None:
    projection = folded("spark-failed")
    write = step_named(projection, "hadoop_fs_relation_command.mart_payments_usd")
    assert write.status == "failed"  # FAIL, then COMPLETE 19 ms later: the FAIL is final
    assert write.error is not None
    assert "ValueError: no FX rate for currency 'XXX'" in write.error
    assert write.metadata["ol_error_stack_trace"].startswith(
        "org.apache.spark.api.python.PythonException")
    assert [o["location"] for o in write.outputs] == [
        "file:///srv/olreal/data/fail_udf/mart/payments_usd"]
    [job] = projection.job_rows()
    assert (job.pipeline, job.status) == ("olreal_fx_convert", "failed")
    assert job.error is not None
    assert job.error.startswith(f"{write.step_name} failed: [PYTHON_EXCEPTION]")
    assert job.completed_at == write.completed_at  # the child's eventTime
    first = step_named(projection, "raw_payments")
    assert (first.status, first.error) == ("success", None)


def test_a_failed_child_fails_the_root_only_for_the_integrations_the_setting_names() -> None:
    [job] = folded("spark-failed", ol.Options(child_fails_root=frozenset())).job_rows()
    assert job.status == "success"  # what the listener says of the application
    airflow = lines("airflow-scheduler-dag")[:-1]  # without the DAG's own FAIL
    [dag] = fold(translated(airflow)).job_rows()
    assert dag.status == "running"  # a failed task try may be retried: the DAG decides


def test_spark_internal_runs_without_datasets_make_no_step_and_the_rest_keep_lineage() -> None:
    for name in ("spark-success", "spark-failed"):
        projection = folded(name)
        steps = projection.step_rows()
        assert not [s for s in steps if s.status == "pending"]
        # Decision 18 keeps an RDD_JOB run that names datasets, for its lineage; the
        # listener sends such runs a START only, so they are the only ones left running.
        assert {s.metadata["ol_job_type"]["jobType"] for s in steps
                if s.status == "running"} <= {"RDD_JOB"}
        assert all(s.inputs or s.outputs for s in steps if s.status == "running")
        assert not any((s.step_name or "").endswith(".5") for s in steps)  # dataset-less
        touched = {r["location"] for s in steps for r in s.inputs + s.outputs}
        assert touched == declared_datasets(name)
    [job] = folded("spark-success").job_rows()
    assert (job.status, job.error) == ("success", None)
    everything = ol.Options(skip_datasetless=frozenset(),
                            skip_subruns=frozenset({("SPARK", "RDD_JOB")}))
    assert not [s for s in folded("spark-success", everything).step_rows()
                if s.metadata["ol_job_type"]["jobType"] == "RDD_JOB"]


def test_a_spark_application_that_fails_before_any_job_says_nothing_of_it() -> None:
    """openlineage-spark 1.53 sends START and COMPLETE only: the registry cannot know (docs)."""
    projection = folded("spark-failed-missing-input")
    [job] = projection.job_rows()
    assert (job.pipeline, job.status) == ("olreal_missing_input", "success")
    assert projection.step_rows() == []


@pytest.mark.parametrize("name", ["airflow-scheduler-dag", "airflow-dag"])
def test_an_airflow_dag_has_its_five_tasks_and_names_the_failed_one(name: str) -> None:
    projection = folded(name)
    [job] = projection.job_rows()
    assert (job.pipeline, job.namespace, job.status) == (
        "olreal_orders_pg", "olreal-airflow", "failed")
    assert job.error == "task_failure: check_totals failed"
    steps = {s.step_name: s for s in projection.step_rows()}
    assert {n: s.status for n, s in steps.items()} == {
        "olreal_orders_pg.extract_orders": "success",
        "olreal_orders_pg.load_raw_orders": "success",
        "olreal_orders_pg.summarise_orders": "success",
        "olreal_orders_pg.check_totals": "failed",
        "olreal_orders_pg.publish_report": "skipped",
    }  # no AIRFLOW/QUERY sub-run (`dags test` leaks them) became a step
    never_ran = steps["olreal_orders_pg.publish_report"]
    assert never_ran.error == "upstream_failed"
    assert never_ran.step_id == f"ol:{job.job_id}:task:publish_report"
    assert steps["olreal_orders_pg.check_totals"].error == (
        "Bash command failed. The command returned a non-zero exit code 3.")
    assert [o["location"] for o in steps["olreal_orders_pg.extract_orders"].outputs] == [
        "file:///srv/olreal/airflow/data/orders.csv"]
