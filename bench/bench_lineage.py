"""Lineage queries on 100,000 steps.

    python bench/bench_lineage.py [--jobs 10000] [--queries 200]

Builds 10,000 runs of 10-step pipelines (100,000 step rows) through the
worker's own write path, over 2,500 datasets, each rebuilt by 20 runs over
time, then times `lineage LOCATION` (one hop, both ways) and
`lineage LOCATION --upstream --depth 3` for random locations.
Target (issue 6): under 50 ms.

Then a fan-out: ``--fan-out`` (5,000) steps each write a table, one step
reads them all and writes ``fan.merged``, and as many steps read that.
Timed: ``lineage fan.merged`` (one hop both ways: 5,001 steps), ``--upstream``
from it and ``--downstream`` from one source (each about 5,001 steps).
Target (issue 12): well under a second.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import migrated_database, services
from pudato_registry import factory, queries, store
from pudato_registry.events import DataReference, Event
from pudato_registry.loop import apply_events
from pudato_registry.sample import START
from pudato_registry.wire import from_model

DATASETS = 250  # x 10 models = 2,500 locations


def run_events(run: int) -> list[Event]:
    """One run: dataset family ``run % DATASETS`` rebuilt model by model."""
    job = f"lineage-{run:06d}"
    family = run % DATASETS
    at = START + timedelta(minutes=run)
    out: list[Event] = [factory.job_submitted(job, pipeline=f"p{family}", logic_version="v",
                                              occurred_at=at)]
    source = DataReference(ref_type="table", location=f"raw.src_{family}")
    for n in range(10):
        target = DataReference(ref_type="table", location=f"wh.f{family}.model_{n}",
                               format="parquet", metadata={"rows": run})
        sid = f"{job}-{n}"
        out += [
            factory.step_started(job, sid, step_name=f"model_{n}", handler_type="transform",
                                 action="build", inputs=[source], occurred_at=at),
            factory.step_succeeded(job, sid, outputs=[target], duration_ms=10,
                                   occurred_at=at + timedelta(seconds=1)),
        ]
        source = target
    out.append(factory.job_succeeded(job, occurred_at=at + timedelta(seconds=30)))
    return out


def main() -> None:
    """Load the steps, then print query times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--fan-out", type=int, default=5_000)
    args = parser.parse_args()
    with services() as (_bootstrap, database), migrated_database(database) as url:
        target = store.Store(url)
        started = time.perf_counter()
        for first in range(0, args.jobs, 200):
            batch = [from_model(e) for run in range(first, min(first + 200, args.jobs))
                     for e in run_events(run)]
            apply_events(target, batch)
        target.close()
        with store.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # as autovacuum would: GIN pending lists merged
            (steps,) = conn.execute("SELECT count(*) FROM pudato_job_steps").fetchone()  # type: ignore[misc]
        print(f"loaded {steps} steps in {time.perf_counter() - started:.1f} s")
        rng = random.Random(1)
        for label, kwargs in (("one hop, both ways", {}),
                              ("--upstream --depth 3", {"upstream": True, "depth": 3})):
            times, found = [], []
            for _ in range(args.queries):
                location = f"wh.f{rng.randrange(DATASETS)}.model_{rng.randrange(3, 10)}"
                began = time.perf_counter()
                hops = queries.lineage(url, location, **kwargs).hops  # type: ignore[arg-type]
                times.append((time.perf_counter() - began) * 1000)
                found.append(len(hops))
            times.sort()
            print(f"lineage {label}: median {statistics.median(times):.1f} ms, "
                  f"p95 {times[int(len(times) * 0.95)]:.1f} ms, max {times[-1]:.1f} ms "
                  f"({statistics.mean(found):.0f} steps returned on average; "
                  "a new connection per query included)")
        fan_out(url, args.fan_out)


def fan_events(width: int) -> list[Event]:
    """``width`` sources, one step merging them, ``width`` steps reading the merge."""
    at = START
    job = "fan"
    out: list[Event] = [factory.job_submitted(job, pipeline="fan", logic_version="v",
                                              occurred_at=at)]
    for i in range(width):
        out.append(factory.step_succeeded(job, f"fan-src-{i}", step_name=f"src_{i}",
                                          outputs=[DataReference(ref_type="table",
                                                                 location=f"fan.src_{i}")],
                                          occurred_at=at))
    out.append(factory.step_succeeded(
        job, "fan-merge", step_name="merge", occurred_at=at + timedelta(minutes=1),
        inputs=[DataReference(ref_type="table", location=f"fan.src_{i}") for i in range(width)],
        outputs=[DataReference(ref_type="table", location="fan.merged")]))
    for i in range(width):
        out.append(factory.step_succeeded(
            job, f"fan-read-{i}", step_name=f"read_{i}", occurred_at=at + timedelta(minutes=2),
            inputs=[DataReference(ref_type="table", location="fan.merged")],
            outputs=[DataReference(ref_type="table", location=f"fan.out_{i}")]))
    return out


def fan_out(url: str, width: int) -> None:
    """Load the fan and time the three walks across it."""
    target = store.Store(url)
    events = [from_model(e) for e in fan_events(width)]
    for first in range(0, len(events), 2000):
        apply_events(target, events[first:first + 2000])
    target.close()
    with store.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # as autovacuum would: GIN pending lists merged
    for label, location, kwargs in (
            ("fan.merged, one hop both ways", "fan.merged", {}),
            ("fan.merged --upstream --depth 3", "fan.merged", {"upstream": True, "depth": 3}),
            ("fan.src_0 --downstream --depth 3", "fan.src_0",
             {"downstream": True, "depth": 3})):
        times, found = [], 0
        for _ in range(5):
            began = time.perf_counter()
            found = len(queries.lineage(url, location, limit=100_000,
                                        **kwargs).hops)  # type: ignore[arg-type]
            times.append((time.perf_counter() - began) * 1000)
        print(f"{width}-way fan-out, lineage {label}: median {statistics.median(times):.0f} ms, "
              f"max {max(times):.0f} ms, {found} steps")


if __name__ == "__main__":
    main()
