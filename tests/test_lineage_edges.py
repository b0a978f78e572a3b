"""pudato_lineage_edges as the worker keeps it, batch by batch, on a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pudato_registry import factory, queries, store
from pudato_registry.events import DataReference
from pudato_registry.loop import apply_events
from pudato_registry.sample import workload
from pudato_registry.store import Store, connect
from pudato_registry.wire import Event, from_model
from tests.helpers import decoded, expected_rows, table_rows
from tests.services import Services, fresh_database
from tests.test_projection_properties import pipelines

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def definition(jobs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Amendment 3 written out plainly, apart from edges.py: the test's own oracle."""
    by_job = {job["job_id"]: job for job in jobs}
    found: dict[tuple[str, ...], list[dict[str, Any]]] = {}

    def seen(step: dict[str, Any]) -> Any:
        return step["started_at"] if step["started_at"] is not None else step["completed_at"]

    for step in steps:
        job = by_job.get(step["job_id"])
        if job is None or job["pipeline"] is None or step["step_name"] is None \
                or seen(step) is None:
            continue
        for direction, column in (("in", "inputs"), ("out", "outputs")):
            for location in dict.fromkeys(r["location"] for r in step[column]):
                found.setdefault((location, direction, job["namespace"], job["environment"],
                                  job["pipeline"], step["step_name"]), []).append(step)
    rows = []
    for key in sorted(found):
        contributors = found[key]
        latest = max(contributors, key=lambda s: (seen(s), s["step_id"]))
        column = "inputs" if key[1] == "in" else "outputs"
        rows.append(dict(zip(("location", "direction", "namespace", "environment", "pipeline",
                              "step_name"), key, strict=True)) | {
            "runs": len(contributors), "first_seen": min(seen(s) for s in contributors),
            "last_seen": seen(latest), "last_step_id": latest["step_id"],
            "last_job_id": latest["job_id"], "last_status": latest["status"],
            "ref_type": next(r["ref_type"] for r in latest[column]
                             if r["location"] == key[0])})
    return rows


def _empty(url: str) -> None:
    with connect(url) as conn:
        conn.execute("TRUNCATE pudato_jobs, pudato_job_steps, pudato_job_state,"
                     " pudato_step_state, pudato_lineage_edges")


# Renamed pipelines (job.submitted is last-writer-wins), renamed steps, steps
# that move between jobs, late started_at: every way an edge moves or vanishes.
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pipelines, st.lists(st.integers(1, 8), max_size=8), st.randoms(use_true_random=False))
def test_any_batching_and_order_keeps_the_edges_of_the_definition(
        database_url: str, events: list[Event], sizes: list[int], rng: Any) -> None:
    _empty(database_url)
    shuffled = list(events)
    rng.shuffle(shuffled)
    target = Store(database_url)
    start = 0
    try:
        for size in [*sizes, len(shuffled)]:
            batch = shuffled[start:start + size]
            start += size
            if batch:
                apply_events(target, batch)
    finally:
        target.close()
    jobs, steps, edges = table_rows(database_url)
    assert (jobs, steps) == expected_rows(events)[:2]
    assert edges == definition(jobs, steps)


def test_a_step_that_moves_job_or_name_moves_its_edges(database_url: str) -> None:
    ref = [DataReference(ref_type="table", location="raw.a")]
    first = [from_model(e) for e in (
        factory.job_submitted("j1", pipeline="p1", occurred_at=T0),
        factory.job_submitted("j2", pipeline="p2", occurred_at=T0),
        factory.step_started("j1", "s", step_name="load", handler_type="h", action="a",
                             inputs=ref, occurred_at=T0))]
    target = Store(database_url)
    apply_events(target, first)
    [edge] = queries.all_edges(database_url)
    assert (edge["pipeline"], edge["step_name"], edge["runs"]) == ("p1", "load", 1)
    # A later event names another job (rule 11) and another step name.
    later = [from_model(factory.step_succeeded("j2", "s", step_name="load2",
                                               occurred_at=T0 + timedelta(seconds=5)))]
    apply_events(target, later)
    [edge] = queries.all_edges(database_url)
    assert (edge["pipeline"], edge["step_name"], edge["last_job_id"],
            edge["last_status"]) == ("p2", "load2", "j2", "success")
    # The job re-declared: every stored step of it moves, though no step event came.
    apply_events(target, [from_model(factory.job_submitted(
        "j2", pipeline="p3", occurred_at=T0 + timedelta(seconds=9)))])
    target.close()
    [edge] = queries.all_edges(database_url)
    assert edge["pipeline"] == "p3"
    jobs, steps, edges = table_rows(database_url)
    assert edges == definition(jobs, steps)


def test_names_and_locations_as_long_as_the_limits_allow_have_their_edge(
        database_url: str) -> None:
    # 4,096 characters of 4 UTF-8 bytes each, 512-character names: far over a
    # btree entry, which is why the key is a digest.
    location, name = "\U0001f4be" * 4096, "\u00e9" * 512
    events = decoded([
        factory.job_submitted("j", pipeline=name, namespace=name, environment=name,
                              occurred_at=T0),
        factory.step_started("j", "s", step_name=name, handler_type="h", action="a",
                             occurred_at=T0,
                             inputs=[DataReference(ref_type="table", location=location)])])
    target = Store(database_url)
    apply_events(target, events)
    target.close()
    [edge] = queries.all_edges(database_url)
    assert (edge["location"], edge["pipeline"], edge["runs"]) == (location, name, 1)


def test_the_migration_fills_the_edges_of_rows_already_there(services: Services) -> None:
    before = [m for m in store.load_migrations() if m.version < 4]
    with fresh_database(services.admin_url(), services.database_url, migrated=False) as url:
        store.migrate(url, before)
        target = Store(url, lineage_edges=False)  # a registry as it was before migration 004
        apply_events(target, decoded(workload(2_000, duplicates=0.05)))
        target.close()
        assert [m.version for m in store.migrate(url)][:1] == [4]
        jobs, steps, edges = table_rows(url)
        assert edges == definition(jobs, steps)
        assert len(edges) > 100
