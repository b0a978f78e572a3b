"""The UI's pages and JSON API through Flask's test client, over a real registry."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from pudato_registry.cli import main
from pudato_registry.settings import Settings
from pudato_registry.web import app as web
from tests.web.registry import HOSTILE, HOSTILE_LOCATION, RUNNING, pool_for

pytestmark = pytest.mark.services


def _data(answer: Any) -> Any:
    """An answer's JSON (it has some)."""
    found = answer.json
    assert found is not None
    return found


def _cli(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert main([*args, "--database-url", settings.database_dsn, "--json"]) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_the_api_prints_what_the_cli_prints(client: FlaskClient, registry: Settings,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for api, cli in ((["/api/v1/jobs?pipeline=nightly"], ["jobs", "list", "--pipeline",
                                                          "nightly"]),
                     (["/api/v1/jobs/nightly-3"], ["jobs", "show", "nightly-3"]),
                     (["/api/v1/diff?first=nightly-3"], ["jobs", "diff", "nightly-3"]),
                     (["/api/v1/reproduce?job_id=nightly-2"], ["jobs", "reproduce",
                                                               "nightly-2"])):
        answer = client.get(api[0])
        assert answer.status_code == 200, answer.text
        assert answer.json == _cli(registry, capsys, *cli), api[0]
    graph = client.get("/api/v1/lineage?location=raw.orders&depth=2").json
    assert graph == _cli(registry, capsys, "lineage", "raw.orders", "--depth", "2")


def test_secrets_are_masked_in_the_api_the_page_and_the_cli(
        client: FlaskClient, registry: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    job = _data(client.get("/api/v1/jobs/nightly-1"))["job"]
    assert job["parameters"] == {"date": "2026-11-01", "db_password": "***",
                                 "nested": {"apiKey": "***", "monkey": "ok"}}
    page = client.get("/jobs/nightly-1").text
    assert "hunter2" not in page
    assert "k-123" not in page
    assert "monkey" in page
    assert "hunter2" not in json.dumps(_cli(registry, capsys, "jobs", "show", "nightly-1"))
    card = client.get("/api/v1/reproduce?job_id=nightly-1").text
    assert "hunter2" not in card
    assert "db_password" in card


def test_jobs_page_keyset_pages_through_every_job_once(client: FlaskClient) -> None:
    seen: list[str] = []
    url: str | None = "/api/v1/jobs?limit=25"
    while url:
        answer = client.get(url)
        seen += [j["job_id"] for j in _data(answer)]
        link = answer.headers.get("Link")
        url = link[1:link.index(">")] if link else None
    assert len(seen) == len(set(seen)) == 65
    page = client.get("/jobs?pipeline=small")
    assert page.text.count('class="row-success"') == 50
    assert "Older" in page.text
    older = page.text.split('class="older" href="')[1].split('"')[0].replace("&amp;", "&")
    rest = client.get(older).text
    assert rest.count('class="row-success"') == 10
    assert "Older" not in rest


def test_jobs_page_filters_counts_and_failed_steps(client: FlaskClient) -> None:
    page = client.get("/jobs?pipeline=nightly").text
    assert "1 failed" in page
    assert "2 success" in page
    assert "1 running" in page
    assert "4 jobs" in page
    failed = client.get("/jobs?pipeline=nightly&status=failed").text
    assert failed.count("<tr class=\"row-") == 1
    assert "transform broke" in failed
    assert client.get("/jobs?text=TRANSFORM+BROKE").text.count("<tr class=\"row-") == 1
    partial = client.get("/jobs?status=failed", headers={"HX-Request": "true"}).text
    assert "<html" not in partial
    assert '<section id="results">' in partial


def test_job_page_gantt_has_a_bar_per_step_and_the_failed_ones_red(
        client: FlaskClient) -> None:
    page = client.get("/jobs/nightly-3").text
    bars = page.count('class="bar ')
    assert bars == 2
    assert page.count('class="bar s-failed') == 1
    assert page.count('class="bar s-success') == 1
    assert "insert into mart.orders" in page  # what it executed, readable
    assert 'href="/lineage?location=raw.orders"' in page
    assert "hx-trigger" not in page.split("<h1>")[0]  # a finished job does not poll
    live = client.get(f"/jobs/{RUNNING}").text
    assert 'hx-trigger="every 0.5s"' in live
    assert 'class="bar s-running live"' in live


def test_pipeline_grid(client: FlaskClient) -> None:
    page = client.get("/pipelines/nightly").text
    assert page.count('class="sq s-') == 2 + 2 + 3 + 3  # running, failed night, two good nights
    assert page.count('data-status="failed"') == 1
    assert "<polyline" in page
    assert client.get("/pipelines/nope").status_code == 404


def test_lineage_page_and_runs_behind_an_edge(client: FlaskClient) -> None:
    page = client.get("/lineage?location=raw.orders&direction=downstream&depth=2").text
    data = json.loads(page.split('id="graph-data">')[1].split("</script>")[0])
    assert {n["id"] for n in data["nodes"]} >= {"dataset:raw.orders", "dataset:mart.orders"}
    runs = client.get("/lineage/runs?location=raw.orders&pipeline=nightly&step=transform",
                      headers={"HX-Request": "true"}).text
    assert runs.count("<tr class=\"row-") == 4  # three nights and the running job
    miss = client.get("/lineage?location=raw.ordrs").text
    assert "No step reads or writes" in miss
    found = client.get("/lineage?q=orders").text
    assert "mart.orders" in found


def test_hostile_names_are_text(client: FlaskClient) -> None:
    page = client.get("/jobs/evil-1").text
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(" in page
    listing = client.get("/jobs?pipeline=" + HOSTILE).text
    assert "<script>alert" not in listing
    graph = client.get("/lineage", query_string={"location": HOSTILE_LOCATION}).text
    block = graph.split('id="graph-data">')[1]
    assert block.index("</script>") > block.index("\\u003c/script\\u003e")
    assert "<img src=x" not in graph


@pytest.mark.parametrize(("url", "said"), [
    ("/api/v1/jobs?bogus=1", "unknown parameter 'bogus'"),
    ("/api/v1/jobs?limit=501", "limit=501 is out of range"),
    ("/api/v1/jobs?limit=ten", "is not a whole number"),
    ("/api/v1/jobs?status=FAILED", "is not one of"),
    ("/api/v1/jobs?since=yesterday", "ISO 8601"),
    ("/api/v1/jobs?before=junk", "not a cursor"),
    ("/api/v1/lineage?location=raw.orders&depth=6", "depth=6 is out of range"),
    ("/api/v1/lineage", "location= is required"),
    ("/api/v1/lineage/search?q=" + "x" * 201, "at most 200"),
])
def test_bad_parameters_are_a_400_in_one_line(client: FlaskClient, url: str, said: str) -> None:
    answer = client.get(url)
    assert answer.status_code == 400
    assert said in _data(answer)["error"]
    assert "\n" not in _data(answer)["error"]


def test_the_api_is_get_only_and_pages_send_a_strict_policy(client: FlaskClient) -> None:
    assert client.post("/api/v1/jobs").status_code == 405
    assert client.delete("/api/v1/jobs/nightly-1").status_code == 405
    answer = client.get("/jobs")
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in answer.text
    assert " on" + "click=" not in answer.text
    assert client.get("/api/v1/jobs/nope").status_code == 404


def test_dead_letters_page_reads_the_topic(client: FlaskClient) -> None:
    assert "No dead letters" in client.get("/dead-letters").text
    assert client.get("/api/v1/dead-letters").json == []


def test_a_token_guards_pages_and_api(app: Flask, registry: Settings) -> None:
    token = "t" * 32
    with pool_for(registry.database_dsn) as pool:
        guarded = web.create_app(pool, web.UiConfig(token=token)).test_client()
        assert guarded.get("/api/v1/jobs").status_code == 401
        assert guarded.get("/api/v1/jobs", headers={"Authorization": "Bearer nope"}
                           ).status_code == 401
        assert guarded.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}
                           ).status_code == 200
        first = guarded.get("/jobs/nightly-1")
        assert first.status_code == 303
        assert first.headers["Location"].startswith("/login?")
        assert guarded.post("/login", data={"token": "wrong", "next": "/jobs"}
                            ).status_code == 401
        off_site = guarded.post("/login", data={"token": token, "next": "//evil.example"})
        assert off_site.headers["Location"] == "/jobs"
        cookie = off_site.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert token not in cookie
        assert guarded.get("/jobs/nightly-1").status_code == 200
        assert guarded.get("/healthz").status_code == 200


def test_reads_only_and_a_slow_query_is_a_503(registry: Settings) -> None:
    with pool_for(registry.database_dsn, timeout_ms=50) as pool:
        with pool.connection() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM pudato_jobs")
        slow = web.create_app(pool)

        @slow.get("/slow")
        def _slow() -> str:
            with pool.connection() as conn:
                conn.execute("SELECT pg_sleep(1)")
            return "done"

        answer = slow.test_client().get("/slow")
        assert answer.status_code == 503
        assert "statement timeout" in answer.text
