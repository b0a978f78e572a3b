"""The UI in a real Chromium (Debian's, driven by Playwright; nothing is downloaded).

Every test fails on a console error, an uncaught exception, a failed request
or an answer of 400 or more: a CDN reference or a script the CSP refuses is
caught that way. Screenshots go to $PUDATO_TEST_SCREENSHOTS (the README's come
from `./dev screenshots`), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from pudato_registry import kafka
from pudato_registry.web import app as web
from tests.helpers import drain, messages_of
from tests.services import Services, fresh_database, produce, settings_for
from tests.web.registry import (
    HOSTILE,
    HOSTILE_LOCATION,
    RUNNING,
    finish_running,
    pool_for,
    registry_events,
    serving,
)

pytestmark = pytest.mark.services

RED = "rgb(214, 51, 58)"  # --failed in app.css


def _chromium() -> str:
    found = os.environ.get("PUDATO_TEST_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no Chromium to drive: install Debian's chromium (./dev test does, as "
                    "root) or set PUDATO_TEST_CHROMIUM to a Chromium binary")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, for the module."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=_chromium(),
                                     args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(app: Flask) -> Iterator[str]:
    """The module's app served over HTTP on loopback."""
    with serving(app) as url:
        yield url


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go."""
    found = Path(os.environ.get("PUDATO_TEST_SCREENSHOTS") or tmp_path)
    found.mkdir(parents=True, exist_ok=True)
    return found


class Watched:
    """A page, and everything that went wrong on it."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        page = self.page
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.problems.append(f"exception: {e}"))
        # ERR_ABORTED: the page moved on before a request of the last one ended (a favicon).
        page.on("requestfailed", lambda r: self.problems.append(
            f"failed request {r.url}: {r.failure}") if r.failure != "net::ERR_ABORTED"
            else None)
        page.on("response", lambda r: self.problems.append(f"{r.status} for {r.url}")
                if r.status >= 400 else None)

        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    """A fresh page; the test fails if anything went wrong on it."""
    found = Watched(browser)
    yield found
    found.context.close()
    assert found.problems == []
    assert found.dialogs == []


def test_jobs_filter_without_a_reload_and_the_url_keeps_it(site: str, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{site}/jobs")
    assert page.locator("#results tbody tr").count() == 50
    page.evaluate("window.notReloaded = true")
    page.select_option("select[name=status]", "failed")
    page.wait_for_url(f"{site}/jobs?status=failed")
    page.wait_for_function("document.querySelectorAll('#results tbody tr').length === 1")
    assert page.evaluate("window.notReloaded") is True  # htmx swapped the results in
    assert "nightly-3" in page.locator("#results tbody").inner_text()
    page.fill("input[name=text]", "small-0")
    page.wait_for_url("**text=small-0**")
    page.wait_for_function("document.querySelectorAll('#results tbody tr').length <= 1")
    page.reload()  # a shared link shows the same jobs
    assert page.locator("select[name=status]").input_value() == "failed"
    assert page.locator("input[name=text]").input_value() == "small-0"
    assert "No jobs match" in page.locator("#results").inner_text()


def test_a_failed_jobs_gantt_has_a_bar_per_step_and_only_the_failed_red(
        site: str, watched: Watched, shots: Path) -> None:
    page = watched.page
    page.goto(f"{site}/jobs/nightly-3")
    bars = page.locator(".gantt rect.bar")
    assert bars.count() == 2
    colours = bars.evaluate_all(
        "bars => bars.map(b => [b.dataset.status, getComputedStyle(b).fill])")
    assert sorted(colours) == [["failed", RED], ["success", "rgb(46, 158, 91)"]]
    assert page.locator("h1 .status").inner_text() == "failed"
    page.click("table.steps a[href='#step-2']")  # a step's name opens what it did
    page.wait_for_selector("#step-2[open]")
    assert "insert into mart.orders" in page.locator("#step-2").inner_text()
    page.screenshot(path=str(shots / "job.png"), full_page=False)


def test_a_running_job_updates_itself_when_its_step_ends(
        services: Services, browser: Any) -> None:
    watched = Watched(browser)
    with fresh_database(services.admin_url(), services.database_url) as url:
        settings = settings_for(services.bootstrap_servers, url)
        kafka.create_topics(settings)
        produce(settings, messages_of(registry_events()))
        drain(settings)
        with pool_for(url) as pool, serving(web.create_app(pool, web.UiConfig(
                refresh_s=0.5))) as site:
            page = watched.page
            page.goto(f"{site}/jobs/{RUNNING}")
            assert page.locator("#job").get_attribute("data-status") == "running"
            assert page.locator(".gantt rect.bar.live").count() == 1
            produce(settings, messages_of(finish_running()))
            drain(settings)
            page.wait_for_selector('#job[data-status="success"]', timeout=15_000)
            assert page.locator(".gantt rect.bar.live").count() == 0
            statuses = page.locator(".gantt rect.bar").evaluate_all(
                "bars => bars.map(b => b.dataset.status)")
            assert statuses == ["success", "success"]
            watched.context.close()
    assert watched.problems == []
    assert watched.dialogs == []


def test_the_lineage_page_lays_out_the_graph_and_opens_the_runs_behind_an_edge(
        site: str, app: Flask, watched: Watched, shots: Path) -> None:
    page = watched.page
    page.goto(f"{site}/lineage?location=raw.orders&depth=2")
    page.wait_for_selector("#graph[data-drawn]")
    expected = app.test_client().get("/api/v1/lineage?location=raw.orders&depth=2").json
    drawn = page.locator("#graph g.node").evaluate_all("ns => ns.map(n => n.dataset.id)")
    assert expected is not None
    assert sorted(drawn) == sorted(n["id"] for n in expected["nodes"])
    assert page.locator("#graph g.node.selected").get_attribute("data-id") == \
        "dataset:raw.orders"
    boxes = page.locator("#graph g.node").evaluate_all(
        "ns => ns.map(n => n.getBoundingClientRect()).map(r => [r.x, r.y, r.width])")
    assert len({(round(x), round(y)) for x, y, _w in boxes}) == len(boxes)  # laid out
    assert all(w > 0 for _x, _y, w in boxes)
    transform = "step:sales\x1fprod\x1fnightly\x1ftransform"
    page.locator(f'#graph g.edge[data-target="{transform}"]').dispatch_event("click")
    page.wait_for_selector("#runs .runs-table tbody tr")
    runs = page.locator("#runs .runs-table tbody tr")
    assert runs.count() == 4
    assert "transform" in runs.first.inner_text()
    page.screenshot(path=str(shots / "lineage.png"), full_page=False)


def test_hostile_names_render_as_text(site: str, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{site}/jobs/evil-1")
    assert page.locator(".lane-label").first.inner_text() == HOSTILE
    page.goto(f"{site}/lineage?location=mart.evil&direction=upstream")
    page.wait_for_selector("#graph[data-drawn]")
    texts = "ns => ns.map(n => n.textContent)"
    labels = page.locator("#graph g.node text").evaluate_all(texts)
    assert any(label.startswith("raw.</script><img") for label in labels), labels
    assert any(label.startswith(HOSTILE[:20]) for label in labels), labels
    assert page.locator("#graph img, #graph script").count() == 0
    assert any(HOSTILE_LOCATION in t for t in page.locator("#graph title").evaluate_all(texts))


def test_every_page_loads_clean(site: str, watched: Watched, shots: Path) -> None:
    page = watched.page
    for path, name in (("/jobs", "jobs"), ("/pipelines/nightly", "pipeline"),
                       ("/dead-letters", "dead-letters"), ("/lineage?q=orders", None)):
        page.goto(site + path)
        assert page.locator("main h1").count() == 1
        if name:
            page.screenshot(path=str(shots / f"{name}.png"))
