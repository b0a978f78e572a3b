"""The real openlineage-python client, unchanged, into the registry: Kafka and HTTP transports."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import error_message_run, parent_run
from openlineage.client.transport.http import (
    ApiKeyTokenProvider,
    HttpCompression,
    HttpConfig,
    HttpTransport,
)
from openlineage.client.transport.kafka import KafkaConfig, KafkaTransport
from openlineage.client.uuid import generate_new_uuid
from pydantic import SecretStr

from pudato_registry import bridge, receiver
from pudato_registry.settings import Settings
from tests.helpers import drain, table_rows

START = datetime(2026, 11, 30, 3, 53, tzinfo=UTC)


def _emit_parent_with_children(client: OpenLineageClient) -> str:
    """A parent run with two children, the second failing with an errorMessage facet."""
    parent_id = str(generate_new_uuid())
    parent_job = Job(namespace="pudato-test", name="nightly")
    root = parent_run.Root(run=parent_run.RootRun(runId=parent_id),
                           job=parent_run.RootJob(namespace="pudato-test", name="nightly"))

    def at(seconds: int) -> str:
        return (START + timedelta(seconds=seconds)).isoformat()

    def child_run(child_id: str, facets: dict[str, Any] | None = None) -> Run:
        return Run(runId=child_id, facets={
            "parent": parent_run.ParentRunFacet(run=parent_run.Run(runId=parent_id),
                                                job=parent_run.Job(namespace="pudato-test",
                                                                   name="nightly"),
                                                root=root), **(facets or {})})

    client.emit(RunEvent(eventType=RunState.START, eventTime=at(0),
                         run=Run(runId=parent_id), job=parent_job, producer="tests"))
    extract, load = str(generate_new_uuid()), str(generate_new_uuid())
    source = InputDataset(namespace="s3://lake", name="raw/departments.parquet")
    target = OutputDataset(namespace="postgres://db:5432", name="wh.public.departments")
    for event_type, when, run, name, inputs, outputs in (
            (RunState.START, 1, child_run(extract), "nightly.extract", [source], []),
            (RunState.COMPLETE, 3, child_run(extract), "nightly.extract", [source], [target]),
            (RunState.START, 4, child_run(load), "nightly.load", [], []),
            (RunState.FAIL, 6, child_run(load, {"errorMessage":
                                               error_message_run.ErrorMessageRunFacet(
                                                   message="duplicate key",
                                                   programmingLanguage="python")}),
             "nightly.load", [], [])):
        client.emit(RunEvent(eventType=event_type, eventTime=at(when), run=run,
                             job=Job(namespace="pudato-test", name=name), inputs=inputs,
                             outputs=outputs, producer="tests"))
    client.emit(RunEvent(eventType=RunState.FAIL, eventTime=at(7), run=Run(runId=parent_id),
                         job=parent_job, producer="tests"))
    return parent_id


def _assert_rows(settings: Settings, parent_id: str) -> None:
    drain(settings)
    jobs, steps, _edges = table_rows(settings.database_dsn)
    assert [(j["job_id"], j["pipeline"], j["namespace"], j["status"]) for j in jobs] == [
        (parent_id, "nightly", "pudato-test", "failed")]
    by_name = {s["step_name"]: s for s in steps}
    assert (by_name["nightly.extract"]["status"], by_name["nightly.load"]["status"]) == (
        "success", "failed")
    assert by_name["nightly.load"]["error"] == "duplicate key"
    assert [o["location"] for o in by_name["nightly.extract"]["outputs"]] == [
        "postgres://db:5432/wh.public.departments"]



def test_the_kafka_transport_through_the_bridge(ol_settings: Settings) -> None:
    transport = KafkaTransport(KafkaConfig(
        config={"bootstrap.servers": ol_settings.bootstrap_servers}, topic=ol_settings.ol_topic))
    parent_id = _emit_parent_with_children(OpenLineageClient(transport=transport))
    transport.close()
    bridge.Bridge(ol_settings).run(drain=True)
    _assert_rows(ol_settings, parent_id)


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[Settings, str]]:
    keyed = settings.replace(ol_api_key=SecretStr("s3cret"))
    app = receiver.Receiver(keyed)
    server = receiver.make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.run, daemon=True).start()
    yield keyed, f"http://127.0.0.1:{server.effective_port}"
    server.close()
    app.close()


@pytest.mark.parametrize("compression", [None, HttpCompression.GZIP])
def test_the_http_transport_against_the_receiver(served: tuple[Settings, str],
                                                 compression: HttpCompression | None) -> None:
    settings, url = served
    transport = HttpTransport(HttpConfig(url=url, auth=ApiKeyTokenProvider({"apiKey": "s3cret"}),
                                         compression=compression))
    parent_id = _emit_parent_with_children(OpenLineageClient(transport=transport))
    _assert_rows(settings, parent_id)
