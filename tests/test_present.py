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
        "a       2026-11-01 12:00:00.123Z",
        "longer",
    ]


def test_long_cells_are_cut_in_the_middle_so_that_their_ends_differ() -> None:
    stem = "spark_app.execute_insert_into_hadoop_fs_relation_command."
    rows = [{"step_name": stem + "mart_payments_usd"}, {"step_name": stem + "mart_payments_eur"}]
    first, second = table(rows, ["step_name"]).splitlines()[1:]
    assert len(first) == 48
    assert first.startswith("spark_app.execute_inse")
    assert first.endswith("mart_payments_usd")
    assert second.endswith("mart_payments_eur")
    assert "..." in first


def test_durations_show_beside_the_raw_milliseconds() -> None:
    from pudato_registry.present import duration  # noqa: PLC0415

    assert [duration(ms) for ms in (850, 4_200, 298_000, 7_500_000, 273_600_000)] == [
        "850ms", "4.2s", "4m58s", "2h05m", "3d04h"]
    assert table([{"duration_ms": 298_000}], ["duration_ms"]).splitlines()[1] == (
        "298000 (4m58s)")


def test_bidirectional_and_invisible_controls_are_escaped_in_tables_and_json() -> None:
    from pudato_registry.present import safe  # noqa: PLC0415

    sneaky = "job\u202egnp.exe\u2066x\u2069\u200b\ufeff"
    assert safe(sneaky) == "job\\u202egnp.exe\\u2066x\\u2069\\u200b\\ufeff"
    assert "\u202e" not in table([{"job_id": sneaky}], ["job_id"])
    text = as_json([{"job_id": sneaky}])
    assert "\u202e" not in text
    assert "\u2066" not in text
    assert json.loads(text) == [{"job_id": sneaky}]  # still the same value to a script


def test_the_latency_histogram_leaves_out_events_outside_its_window() -> None:
    from pudato_registry.metrics import Metrics  # noqa: PLC0415

    metrics = Metrics()
    year_9999, year_1 = -2.5e11, 6.4e10  # commit minus occurred_at, in seconds
    metrics.observe_latencies([0.05, 0.2, year_9999, year_1, 7200.0], window_s=3600.0)
    histogram = {s.name: s.value for f in metrics.event_to_row.collect() for s in f.samples}
    assert histogram["pudato_event_to_row_seconds_count"] == 2
    assert abs(histogram["pudato_event_to_row_seconds_sum"] - 0.25) < 1e-9
    assert metrics.outside_window.labels("past")._value.get() == 2
    assert metrics.outside_window.labels("future")._value.get() == 1
