"""The publisher SDK's cost to a pipeline, with the broker up and with it down.

    python bench/bench_publisher.py [--events 50000] [--jobs 40]

1. `Registry.emit` with the broker up: median and p99 of the call's own time,
   over realistic ~500-byte events (target: median <= 20 us).
2. The same pipeline (jobs of 10 steps, each step doing ~2 ms of CPU work,
   as a light dbt wrapper would) timed with the broker up and with it stopped
   (target: down within 5 % of up). With the broker down, events wait in the
   client's queue for `delivery_timeout_ms` (2 s here), then go to the spool,
   all during the run.
Runs its own dev stack, since it stops the broker.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pudato_registry import devstack, kafka
from pudato_registry.events import DataReference, ExecutionRecord
from pudato_registry.publisher import Registry
from pudato_registry.sample import workload
from pudato_registry.settings import Settings


def work(milliseconds: float) -> None:
    """Burn CPU like a step's own code would."""
    end = time.perf_counter() + milliseconds / 1000
    data = b"x" * 1024
    while time.perf_counter() < end:
        data = hashlib.sha256(data).digest() * 32


def pipeline(registry: Registry, jobs: int) -> float:
    """Seconds to run ``jobs`` jobs of 10 steps through the context managers."""
    started = time.perf_counter()
    for n in range(jobs):
        with registry.job(pipeline="bench", logic_version="v1",
                          parameters={"n": n}) as job:
            source = DataReference(ref_type="table", location="raw.input", format="csv")
            for s in range(10):
                with job.step(f"model_{s}", handler_type="transform", action="build",
                              inputs=[source]) as step:
                    work(2.0)
                    target = DataReference(ref_type="table", location=f"main.model_{s}",
                                           format="parquet", metadata={"row_count": 1000 + s})
                    step.output(target)
                    step.execution(ExecutionRecord(execution_type="dbt", details={
                        "command": "build", "models": [f"model_{s}"], "project_dir": "dbt/"}))
                    source = target
    return time.perf_counter() - started


def main() -> None:
    """Print the emit cost and the pipeline wall times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, devstack.running(Path(tmp) / "stack") as stack:
        settings = Settings(bootstrap_servers=stack.bootstrap_servers, topic="bench.events",
                            dlq_topic="bench.dlq", partitions=6, delivery_timeout_ms=2000,
                            close_timeout_s=5.0, spool_dir=Path(tmp) / "spool")
        kafka.create_topics(settings)
        events = workload(args.events)
        registry = Registry(settings)
        registry.emit(events[0])
        registry.flush(30)  # connected and warm
        costs = []
        for event in events:
            started = time.perf_counter_ns()
            registry.emit(event)
            costs.append(time.perf_counter_ns() - started)
            if len(costs) % 1000 == 0:
                registry.flush(30)  # measure emit, not a full local queue
        costs.sort()
        print(f"emit, broker up: median {statistics.median(costs) / 1000:.1f} us, "
              f"p99 {costs[int(len(costs) * 0.99)] / 1000:.1f} us over {len(costs)} events "
              f"(~{statistics.mean(len(e.model_dump_json()) for e in events[:1000]):.0f} bytes)")
        registry.close()

        up = [pipeline(Registry(settings), args.jobs) for _ in range(2)]
        stack.stop_kafka()
        down_registry = Registry(settings)
        down = [pipeline(down_registry, args.jobs) for _ in range(2)]
        spooled = down_registry.pending()
        close_started = time.perf_counter()
        down_registry.close()
        closing = time.perf_counter() - close_started
        best_up, best_down = min(up), min(down)
        print(f"pipeline of {args.jobs} jobs x 10 steps ({args.jobs * 23} events): broker up "
              f"{best_up:.3f} s, broker down {best_down:.3f} s "
              f"({100 * (best_down / best_up - 1):+.1f} %); {spooled} events spooled during "
              f"the run, close() took {closing:.1f} s")


if __name__ == "__main__":
    main()
