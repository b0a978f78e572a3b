"""Validate + fold throughput on one core, for realistic ~500-byte events.

    python bench/bench_fold.py [--events 200000] [--batch 5000]

Events come from ``pudato_registry.sample`` (dbt-like runs of 10 steps, 5 %
duplicates, local reordering), encoded to wire bytes first; the timed part is
what the worker does per batch: validate each message's bytes, fold the batch
into a fresh projection (as if no state existed yet), compute the changed
rows and encode the states; each stage's cumulative rate is printed.
Target (issue 3): >= 100,000 events/s.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from pudato_registry.factory import encode
from pudato_registry.projection import Projection
from pudato_registry.sample import workload
from pudato_registry.validate import Rejection, validate


def run(messages: list[bytes], batch: int) -> tuple[float, float, float, float]:
    """Seconds spent validating, folding, making rows and encoding states, in batches."""
    spent = [0.0, 0.0, 0.0, 0.0]
    for first in range(0, len(messages), batch):
        t0 = time.perf_counter()
        events = [validate(value) for value in messages[first:first + batch]]
        t1 = time.perf_counter()
        projection = Projection()
        for event in events:
            if not isinstance(event, Rejection):
                projection.apply(event)
        t2 = time.perf_counter()
        projection.job_rows(only_changed=True)
        projection.step_rows(only_changed=True)
        t3 = time.perf_counter()
        for job_id in projection.changed_jobs:
            projection.jobs[job_id].dump()
        for step_id in projection.changed_steps:
            projection.steps[step_id].dump()
        t4 = time.perf_counter()
        for i, (a, b) in enumerate(((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
            spent[i] += b - a
    return spent[0], spent[1], spent[2], spent[3]


def main() -> None:
    """Print events/s for default and worker-tuned garbage collection."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    messages = [encode(e) for e in workload(args.events, duplicates=0.05, reorder_window=50)]
    size = statistics.mean(len(m) for m in messages)
    print(f"{len(messages)} events, mean {size:.0f} bytes, batches of {args.batch}")
    for label in ("default gc", "worker gc (frozen heap, gen0 threshold 50000)"):
        if label.startswith("worker"):
            from pudato_registry.loop import tune_gc  # noqa: PLC0415
            tune_gc()
        best = min((run(messages, args.batch) for _ in range(args.repeat)), key=sum)
        validating, folding, rows, _states = best
        n = len(messages)
        print(f"{label}: validate {n / validating:,.0f}/s; validate+fold "
              f"{n / (validating + folding):,.0f} events/s; + rows "
              f"{n / (validating + folding + rows):,.0f}/s; + state encoding "
              f"{n / sum(best):,.0f}/s (best of {args.repeat})")
    gc.enable()


if __name__ == "__main__":
    main()
