"""Start-up and stop of the local dev stack, with the Kafka jars cached.

    python bench/bench_stack.py [--runs 3]

Each run starts a fresh stack (KRaft broker + PostgreSQL cluster), waits until
both accept connections, stops it and checks that its ports are free again.
Target (issue 2): start-up under 60 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pudato_registry import devstack


def main() -> None:
    """Print start and stop times of each run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    devstack.kafka_classpath()  # cached: this is the second run's situation
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            stack = devstack.DevStack(Path(tmp)).start()
            up = time.perf_counter() - started
            started = time.perf_counter()
            stack.stop()
            down = time.perf_counter() - started
            free = not devstack.port_open(stack.kafka_port) and not devstack.port_open(
                stack.postgres_port)
            print(f"run {run}: start {up:.1f} s, stop {down:.1f} s, ports free: {free}")


if __name__ == "__main__":
    main()
