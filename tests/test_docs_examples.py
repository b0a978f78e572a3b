"""The docs' example events: each valid, each a line of the backfill file, which publishes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pudato_registry.cli import main
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection, validate
from tests.helpers import drain, expected_rows, table_rows

DOCS = Path(__file__).parents[1] / "docs"
BACKFILL = DOCS / "examples" / "backfill.jsonl"


def _examples() -> list[dict[str, object]]:
    blocks = re.findall(r"```json\n(.*?)\n```", (DOCS / "events-v1.md").read_text(), re.S)
    return [json.loads(block) for block in blocks]


def test_the_docs_show_one_valid_example_of_each_type_from_the_backfill_file() -> None:
    examples = _examples()
    assert sorted(str(e["event_type"]) for e in examples) == sorted(
        f"{entity}.{what}" for entity, whats in (
            ("job", ("submitted", "started", "succeeded", "failed", "cancelled")),
            ("step", ("submitted", "started", "succeeded", "failed", "skipped")))
        for what in whats)
    lines = [json.loads(line) for line in BACKFILL.read_text().splitlines()]
    assert all(example in lines for example in examples)
    for line in BACKFILL.read_bytes().splitlines():
        assert not isinstance(validate(line), Rejection), line


def test_the_backfill_file_publishes_and_gives_the_rows_of_its_fold(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.topic,
            "--spool-dir", str(tmp_path / "spool")]
    assert main(["publish", str(BACKFILL), "--dry-run", *base]) == 0
    assert "dry run: 14 valid events would be sent" in capsys.readouterr().err
    assert main(["publish", str(BACKFILL), *base]) == 0
    assert "published 14 of 14 events" in capsys.readouterr().err
    drain(settings)
    events = [validate(line) for line in BACKFILL.read_bytes().splitlines()]
    jobs, steps, edges = table_rows(settings.database_dsn)
    assert (jobs, steps, edges) == expected_rows(
        e for e in events if not isinstance(e, Rejection))
    status = {j["job_id"]: j["status"] for j in jobs}
    assert status == {"dept_budget-2026-11-01": "failed", "dept_budget-rerun-1": "cancelled",
                      "dept_budget-rerun-2": "success"}
    assert sorted(s["status"] for s in steps) == ["failed", "skipped", "success"]
