"""`pudato-registry demo --ui`: the demo runs to its end, then serves the UI on its data."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

pytestmark = pytest.mark.services


def _lines(child: subprocess.Popen[str]) -> queue.Queue[str]:
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            found.put(line)
        found.put("")

    threading.Thread(target=read, daemon=True).start()
    return found


def _until(lines: queue.Queue[str], pattern: str, seen: list[str]) -> re.Match[str]:
    while True:
        line = lines.get(timeout=180)
        seen.append(line)
        assert line, "".join(seen[-30:])  # the demo ended first
        found = re.search(pattern, line)
        if found:
            return found


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
        return str(answer.read().decode())


def test_demo_then_the_ui_on_its_data_until_ctrl_c() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUDATO_")}
    child = subprocess.Popen(
        [sys.executable, "-m", "pudato_registry.cli", "demo", "--ui", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        lines = _lines(child)
        _until(lines, r"^jobs diff ", seen)
        site = _until(lines, r"ui: the registry on (http://127\.0\.0\.1:\d+/)", seen).group(1)
        assert any("worker: consumed 22 events, applied 22" in line for line in seen)
        jobs = _get(site + "api/v1/jobs?pipeline=dept_budget")
        assert jobs.count('"job_id"') == 8  # seven nights and one still going
        assert '"status": "running"' in jobs
        assert '"status": "failed"' in jobs
        assert "fct_dept_budget" in _get(site + "lineage?location=main.fct_dept_budget")
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0
        assert "ui: stopped" in "".join(seen) + "".join(iter(lines.get, ""))
    finally:
        child.kill()
        child.wait()
