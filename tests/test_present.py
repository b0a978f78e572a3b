"""The commands' output: JSON for scripts, tables for people."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pudato_registry.present import as_json, table


def test_json_output_keeps_times_in_rfc_3339_and_integers_of_any_size() -> None:
    row = {"job_id": "j", "created_at": datetime(2026, 11, 1, 12, tzinfo=UTC),
           "metadata": {"seed": 2**70}}
    text = as_json([row])
    assert json.loads(text) == [{"job_id": "j", "created_at": "2026-11-01T12:00:00Z",
                                 "metadata": {"seed": 2**70}}]


def test_table_aligns_columns_and_shows_times_to_the_millisecond() -> None:
    rows: list[dict[str, Any]] = [
        {"job_id": "a", "created_at": datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)},
        {"job_id": "longer", "created_at": None},
    ]
    assert table(rows, ["job_id", "created_at"]).splitlines() == [
        "job_id  created_at",
        "a       2026-11-01 12:00:00.123",
        "longer",
    ]
