"""The logical lineage graph against the per-run answer, at a million steps.

    python bench/bench_lineage.py [--jobs 100000] [--queries 200] [--fan-out 5000]

Loads ``--jobs`` runs of the sample pipelines (sample.pipeline_run: 5
pipelines of 10 steps, 7 namespaces, 3 environments, 5 % of runs failing at a
random step; 100,000 jobs make 1,000,000 steps, so every model table has
about 20,000 runs behind it), and one job of ``--fan-out`` steps that all
read ``shared.calendar``, each under a step name of its own. Rows and edges
are written through the worker's own path (loop.apply_events), so the edges
are kept as the worker keeps them.

Then, for the same questions in the same run, with one connection held
(as the web UI holds its pool's; opening a connection costs more than the
answer, and is given apart):

* one step from a random location, both ways: the logical graph
  (queries.lineage_graph) against the per-run answer (queries.lineage,
  cut at its 1,000 steps);
* ``--upstream --depth 5`` from a random model: the same two;
* the whole graph of a namespace (queries.namespace_graph) against
  aggregating it from the steps, as the definition does;
* ``shared.calendar``, one step both ways: 5,001 edges against 5,000 runs.

Targets (issue 19): one step p95 < 5 ms, depth 5 p95 < 30 ms, a namespace
< 100 ms. Services: PUDATO_BENCH_DATABASE_URL (its server gets a database
of its own), else a fresh dev stack.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import migrated_database, services
from pudato_registry import factory, queries, store
from pudato_registry.events import DataReference, Event
from pudato_registry.loop import apply_events
from pudato_registry.sample import PIPELINES, START, pipeline_run
from pudato_registry.wire import from_model

CHUNK = 500  # runs per transaction while loading


def load(url: str, jobs: int, width: int) -> float:
    """The sample runs and the fan, through the worker's write path; seconds taken."""
    target = store.Store(url)
    rng = random.Random(19)
    started = time.perf_counter()
    for first in range(0, jobs, CHUNK):
        batch = []
        for run in range(first, min(first + CHUNK, jobs)):
            fail = rng.randrange(10) if rng.random() < 0.05 else None
            batch += pipeline_run(run, rng=random.Random(run), fail_step=fail,
                                  start=START + timedelta(minutes=run))
        apply_events(target, [from_model(e) for e in batch])
        if first and first % 20_000 == 0:
            print(f"  {first:,} jobs loaded, {time.perf_counter() - started:.0f} s", flush=True)
    apply_events(target, [from_model(e) for e in fan_events(width)])
    target.close()
    return time.perf_counter() - started


@contextlib.contextmanager
def loaded(database: str, jobs: int, width: int, keep: str | None) -> Iterator[str]:
    """A database holding the load: a new one dropped afterwards, or (``keep``) one of
    that name, loaded if it is new and kept for the next run (of this or bench_diff)."""
    if keep is None:
        with migrated_database(database) as url:
            seconds = load(url, jobs, width)
            print(f"loaded in {seconds:.0f} s (rows and edges through the worker's write "
                  "path)")
            yield url
        return
    admin = database.rsplit("/", 1)[0] + "/postgres"
    url = database.rsplit("/", 1)[0] + "/" + keep
    with store.connect(admin) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (keep,)).fetchone()
    if exists is None:
        store.create_database(admin, keep)
        store.migrate(url)
        seconds = load(url, jobs, width)
        print(f"loaded into {keep} in {seconds:.0f} s (kept for the next run)")
    else:
        print(f"reusing {keep}, loaded before")
    yield url


def fan_events(width: int) -> list[Event]:
    """One job whose ``width`` steps, each of its own name, read ``shared.calendar``."""
    at = START
    out: list[Event] = [factory.job_submitted("fan", pipeline="fan", namespace="shared",
                                              occurred_at=at)]
    calendar = [DataReference(ref_type="table", location="shared.calendar")]
    for i in range(width):
        out.append(factory.step_succeeded(
            "fan", f"fan-read-{i}", step_name=f"read_{i:05d}", inputs=calendar,
            occurred_at=at + timedelta(seconds=i),
            outputs=[DataReference(ref_type="table", location=f"fan.out_{i:05d}")]))
    return out


def per_run_namespace(conn: Any, namespace: str) -> int:
    """The namespace's edges aggregated from the steps, as they were before the table."""
    rows = conn.execute(
        "SELECT r.entry->>'location', d.direction, j.environment, j.pipeline, s.step_name,"
        " count(DISTINCT s.step_id), max(coalesce(s.started_at, s.completed_at))"
        " FROM pudato_job_steps s JOIN pudato_jobs j ON j.job_id = s.job_id"
        " CROSS JOIN LATERAL (VALUES ('in', s.inputs), ('out', s.outputs)) d(direction, refs)"
        " CROSS JOIN LATERAL jsonb_array_elements(d.refs) r(entry)"
        " WHERE j.namespace = %s AND j.pipeline IS NOT NULL AND s.step_name IS NOT NULL"
        " AND coalesce(s.started_at, s.completed_at) IS NOT NULL"
        " GROUP BY 1, 2, 3, 4, 5", (namespace,)).fetchall()
    conn.rollback()
    return len(rows)


def timed(question: Callable[..., int], times: list[float]) -> int:
    """Run ``question``, add its milliseconds to ``times``; what it found."""
    began = time.perf_counter()
    found = question()
    times.append((time.perf_counter() - began) * 1000)
    return found


def summary(times: list[float]) -> str:
    """Median, p95 and max of a list of milliseconds."""
    times = sorted(times)
    return (f"median {statistics.median(times):7.1f}  p95 {times[int(len(times) * 0.95)]:7.1f}"
            f"  max {times[-1]:7.1f}")


def main() -> None:
    """Load, then time both answers to each question and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--fan-out", type=int, default=5_000)
    parser.add_argument("--keep", metavar="NAME",
                        help="load into database NAME once and reuse it on later runs")
    args = parser.parse_args()
    with services() as (_bootstrap, database), \
            loaded(database, args.jobs, args.fan_out, args.keep) as url:
        with store.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # as autovacuum would: GIN pending lists merged
            steps, edges = conn.execute(  # type: ignore[misc]
                "SELECT (SELECT count(*) FROM pudato_job_steps),"
                " (SELECT count(*) FROM pudato_lineage_edges)").fetchone()
        print(f"{args.jobs:,} jobs, {steps:,} steps, {edges:,} edges")
        rng = random.Random(1)
        models = [f"{p}.model_{n}" for p in PIPELINES for n in range(10)]
        connecting: list[float] = []
        def reconnect() -> int:
            store.connect(url).close()
            return 0

        for _ in range(20):
            timed(reconnect, connecting)
        with store.connect(url) as conn:
            rows: list[tuple[str, str, str, str]] = []

            def ask(label: str, graph: Callable[[str], int], per_run: Callable[[str], int],
                    locations: list[str]) -> None:
                g_times: list[float] = []
                r_times: list[float] = []
                g_found: list[int] = []
                r_found: list[int] = []
                for location in locations:  # alternately: the same drift for both
                    g_found.append(timed(lambda at=location: graph(at), g_times))
                    r_found.append(timed(lambda at=location: per_run(at), r_times))
                ratio = statistics.median(r_times) / statistics.median(g_times)
                rows.append((label,
                             f"{summary(g_times)}  ({statistics.mean(g_found):,.0f} edges)",
                             f"{summary(r_times)}  ({statistics.mean(r_found):,.0f} runs)",
                             f"{ratio:,.0f}x"))

            some = [rng.choice([*models, *(f"raw.{p}" for p in PIPELINES)])
                    for _ in range(args.queries)]
            ask("one step, both ways", lambda loc: len(queries.lineage_graph(conn, loc).edges),
                lambda loc: len(queries.lineage(conn, loc).hops), some)
            deep = [rng.choice([f"{p}.model_9" for p in PIPELINES]) for _ in range(args.queries)]
            ask("--upstream --depth 5",
                lambda loc: len(queries.lineage_graph(conn, loc, downstream=False,
                                                      depth=5).edges),
                lambda loc: len(queries.lineage(conn, loc, upstream=True, depth=5).hops), deep)
            spaces = [f"team_{n % 7}" for n in range(max(5, args.queries // 20))]
            ask("a namespace's whole graph",
                lambda ns: len(queries.namespace_graph(conn, ns).edges),
                lambda ns: per_run_namespace(conn, ns), spaces)
            ask(f"shared.calendar ({args.fan_out:,} readers), one step",
                lambda loc: len(queries.lineage_graph(conn, loc, max_edges=20_000).edges),
                lambda loc: len(queries.lineage(conn, loc, limit=20_000).hops),
                ["shared.calendar"] * 10)
        width = max(len(r[0]) for r in rows)
        print(f"\n{'ms, one connection held':{width}}  {'logical graph':<52}  "
              f"{'per-run answer':<52}  per-run / graph (medians)")
        for label, graph_text, run_text, ratio in rows:
            print(f"{label:{width}}  {graph_text:<52}  {run_text:<52}  {ratio}")
        print(f"\nopening a connection: {summary(connecting)} ms (not in the figures above)")
        print("targets: one step p95 < 5 ms, depth 5 p95 < 30 ms, a namespace < 100 ms")


if __name__ == "__main__":
    main()
