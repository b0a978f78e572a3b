"""What `pudato-registry exporter` costs the database at a million steps, and its series.

    python bench/bench_exporter.py [--jobs 100000] [--refreshes 20] [--keep NAME]

Loads the sample runs as bench_lineage.py does (5 pipelines in 7 namespaces
and 3 environments: 105 pipeline scopes of 10 steps), then times refreshes
of the registry figures (every query of one refresh, on one read-only
connection) and counts the series a scrape returns, by metric.
Services: PUDATO_BENCH_DATABASE_URL, else a fresh dev stack.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench_lineage import loaded, summary
from common import services
from pudato_registry import queries
from pudato_registry.exporter import RegistryCollector
from pudato_registry.settings import Settings


def main() -> None:
    """Load, refresh, count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--refreshes", type=int, default=20)
    parser.add_argument("--fan-out", type=int, default=5_000)
    parser.add_argument("--keep", metavar="NAME", help="load once into NAME and reuse it")
    args = parser.parse_args()
    with services() as (_bootstrap, database), \
            loaded(database, args.jobs, args.fan_out, args.keep) as url:
        registry = CollectorRegistry()
        collector = RegistryCollector(Settings(database_url=url), registry)
        times: list[float] = []
        with queries.reading(url, timeout_ms=60_000) as conn:
            for _ in range(args.refreshes):
                began = time.perf_counter()
                collector.refresh(conn)
                times.append((time.perf_counter() - began) * 1000)
        text = generate_latest(registry).decode()
        series = Counter(family.name for family in text_string_to_metric_families(text)
                         for _sample in family.samples)
        print(f"a refresh of the registry figures: {summary(times)} ms "
              f"({args.refreshes} refreshes, every {Settings().exporter_interval_s:.0f} s "
              "by default)")
        print(f"series in a scrape: {sum(series.values())}")
        for name, count in sorted(series.items()):
            print(f"  {name:50} {count}")


if __name__ == "__main__":
    main()
