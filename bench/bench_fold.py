"""Validate + fold throughput on one core, for realistic ~500-byte events.

    python bench/bench_fold.py [--events 200000] [--batch 5000]

Events come from ``pudato_registry.sample`` (dbt-like runs of 10 steps, 5 %
duplicates, local reordering), encoded to wire bytes first. Each pass runs
end to end over all of them, in batches as the worker does, freeing each
batch before the next: validate the bytes; validate and fold the batch into
a fresh projection (as if no state existed yet); and the whole of the
worker's pure work, which adds the changed rows and the encoded states.
Target (issue 3): validate + fold >= 100,000 events/s.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

from pudato_registry.factory import encode
from pudato_registry.projection import Projection
from pudato_registry.sample import workload
from pudato_registry.validate import Rejection, validate


def validating(batch: list[bytes]) -> None:
    """Validate each message."""
    for value in batch:
        validate(value)


def folding(batch: list[bytes]) -> Projection:
    """Validate each message and fold the valid ones."""
    projection = Projection()
    for value in batch:
        event = validate(value)
        if not isinstance(event, Rejection):
            projection.apply(event)
    return projection


def everything(batch: list[bytes]) -> None:
    """Validate, fold, make the changed rows and encode the changed states."""
    projection = folding(batch)
    projection.job_rows(only_changed=True)
    projection.step_rows(only_changed=True)
    for job_id in projection.changed_jobs:
        projection.jobs[job_id].dump()
    for step_id in projection.changed_steps:
        projection.steps[step_id].dump()


def rate(messages: list[bytes], size: int, stage: Callable[[list[bytes]], object],
         repeat: int) -> float:
    """Best events/s of ``repeat`` passes of ``stage`` over ``messages`` in batches."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for first in range(0, len(messages), size):
            stage(messages[first:first + size])
        best = min(best, time.perf_counter() - started)
    return len(messages) / best


def main() -> None:
    """Print events/s for default and worker-tuned garbage collection."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    messages = [encode(e) for e in workload(args.events, duplicates=0.05, reorder_window=50)]
    size = statistics.mean(len(m) for m in messages)
    print(f"{len(messages)} events, mean {size:.0f} bytes, batches of {args.batch}, "
          f"best of {args.repeat} passes")
    for label in ("default gc", "worker gc (frozen heap, gen0 threshold 50000)"):
        if label.startswith("worker"):
            from pudato_registry.loop import tune_interpreter  # noqa: PLC0415
            tune_interpreter()
        rates = [rate(messages, args.batch, stage, args.repeat)
                 for stage in (validating, folding, everything)]
        print(f"{label}: validate {rates[0]:,.0f}/s; validate + fold {rates[1]:,.0f} events/s; "
              f"+ rows and states {rates[2]:,.0f}/s")
    gc.enable()


if __name__ == "__main__":
    main()
