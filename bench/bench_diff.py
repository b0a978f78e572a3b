"""`jobs diff` and `jobs reproduce` at a million steps.

    python bench/bench_diff.py [--jobs 100000] [--queries 200]

Loads the sample runs as bench_lineage.py does (100,000 jobs of 10 steps,
20,000 runs per pipeline, 5 % failing), then for random jobs times what the
commands do, from reading the rows to the text printed, with one read-only
connection held (opening one is given apart):

* ``jobs diff JOB``: the job, the run of its pipeline just before it, both
  runs' steps and the producers of their inputs, the step baselines of its
  last 20 successful runs, the comparison and its text;
* ``jobs reproduce JOB``: the job, its steps, its inputs' producers and
  whether each was written again since, the card and its text.

Target (issue 21): each p95 < 100 ms. Services: PUDATO_BENCH_DATABASE_URL,
else a fresh dev stack.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_lineage import loaded, summary
from common import services
from pudato_registry import diff, queries, store
from pudato_registry.present import card_text, diff_text


def explain(conn: Any, job_id: str) -> int:
    """What `jobs diff JOB` does; the number of steps compared."""
    later = queries.run_facts(conn, job_id)
    assert later is not None
    before = queries.previous_run(conn, dict(later.job))
    assert before is not None, job_id
    earlier = queries.run_facts(conn, before["job_id"])
    assert earlier is not None
    found = diff.compare(earlier, later,
                         baselines=queries.step_baselines(conn, dict(later.job), 20))
    diff_text(found)
    return len(found.steps)


def reproduce(conn: Any, job_id: str) -> int:
    """What `jobs reproduce JOB` does; the number of inputs on the card."""
    facts = queries.run_facts(conn, job_id)
    assert facts is not None
    found = diff.card(facts, queries.overwrites(conn, facts))
    card_text(found)
    return len(found.inputs)


def main() -> None:
    """Load, then time both commands over random jobs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--fan-out", type=int, default=5_000)
    parser.add_argument("--keep", metavar="NAME",
                        help="load into database NAME once and reuse it (bench_lineage's too)")
    args = parser.parse_args()
    with services() as (_bootstrap, database), \
            loaded(database, args.jobs, args.fan_out, args.keep) as url:
        with store.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            (steps,) = conn.execute(  # type: ignore[misc]
                "SELECT count(*) FROM pudato_job_steps").fetchone()
        print(f"{args.jobs:,} jobs, {steps:,} steps")
        rng = random.Random(21)
        # Not the first runs of a pipeline and scope: those have no run before them.
        picks = [f"job-{rng.randrange(args.jobs // 2, args.jobs):07d}"
                 for _ in range(args.queries)]
        times: dict[str, list[float]] = {"jobs diff JOB": [], "jobs reproduce JOB": []}
        with queries.reading(url) as conn:
            for job_id in picks:  # alternately: the same drift for both
                for label, command in (("jobs diff JOB", explain),
                                       ("jobs reproduce JOB", reproduce)):
                    began = time.perf_counter()
                    command(conn, job_id)
                    times[label].append((time.perf_counter() - began) * 1000)
        for label, measured in times.items():
            print(f"{label:20}  {summary(measured)} ms  ({len(measured)} random jobs, "
                  "one connection held)")
        print("target: each p95 < 100 ms")


if __name__ == "__main__":
    main()
