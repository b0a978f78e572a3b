"""Replay's rebuild against the worker's drain of the same topic, and how long readers wait.

    python bench/bench_replay.py [--sizes 10000,1000000] [--partitions 12]

For each size: produce that many events (the worker bench's workload, 20 runs in
flight, 1 % duplicates) to a topic of their own; `pudato-registry worker --drain`
them into an empty database (events/s over its wall time, peak RSS); then
`pudato-registry replay` rebuilds the tables from the topic with the worker's
group still there: the rebuild's events/s over its wall time and against the
drain's (target >= 0.8x), and its peak RSS. Each starts from a quiet server
(VACUUM ANALYZE and CHECKPOINT first: the drain's autovacuum would otherwise
run during the rebuild). A second replay, with a reader on another connection
querying the live tables a thousand times a second or so (on 2 cores it takes
one of them, so it is not in the rate), gives how long the replay held the
live tables locked (target < 100 ms) and the longest the reader waited.

Services: PUDATO_BENCH_BOOTSTRAP_SERVERS / PUDATO_BENCH_DATABASE_URL, else a
fresh dev stack.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from bench_worker import PeakRss, fresh, settings_for
from common import produce_all, services
from pudato_registry import kafka
from pudato_registry.factory import encode
from pudato_registry.sample import workload
from pudato_registry.settings import Settings


def command(settings: Settings, *args: str) -> tuple[float, int, str]:
    """Run `pudato-registry ARGS` on ``settings``: (seconds, peak RSS in MB, stderr)."""
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PUDATO_DATABASE_URL": settings.database_dsn, "PUDATO_TOPIC": settings.topic,
           "PUDATO_DLQ_TOPIC": settings.dlq_topic, "PUDATO_GROUP_ID": settings.group_id,
           "PUDATO_METRICS_PORT": "0", "PUDATO_LOG_LEVEL": "INFO"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rss = PeakRss(process.pid)
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{output[-3000:]}")
    return seconds, rss.peak_kb // 1024, output


class Reader:
    """Queries the live tables over and over on a connection of its own; keeps the longest."""

    def __init__(self, url: str) -> None:
        self.longest = 0.0
        self.queries = 0
        self._stop = threading.Event()
        self._url = url
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.is_set():
                started = time.perf_counter()
                conn.execute("SELECT count(*) FROM pudato_jobs WHERE status = 'failed'")
                self.longest = max(self.longest, time.perf_counter() - started)
                self.queries += 1
                time.sleep(0.001)

    def stop(self) -> None:
        """End the queries."""
        self._stop.set()
        self._thread.join()


def quiesce(url: str) -> None:
    """Leave the server with nothing to do: vacuumed, analyzed, checkpointed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):  # not a superuser
            conn.execute("CHECKPOINT")


def one_size(bootstrap: str, database: str, events: int, partitions: int) -> list[str]:
    """Produce, drain, replay one topic; a row of figures."""
    admin = database.rsplit("/", 1)[0] + "/postgres"
    url = fresh(admin, database)
    settings = settings_for(bootstrap, url, partitions)
    kafka.create_topics(settings)
    batch = workload(events, duplicates=0.01)
    produce_all(settings, [(e.correlation_id.encode(), encode(e)) for e in batch])
    quiesce(url)
    drain_s, drain_mb, _ = command(settings, "worker", "--drain")
    quiesce(url)
    replay_s, replay_mb, _ = command(settings, "replay")
    quiesce(url)
    reader = Reader(url)
    try:
        _seconds, _mb, output = command(settings, "replay")
    finally:
        reader.stop()
    locked = re.search(r"readers blocked (\d+) ms|live tables locked (\d+) ms", output)
    lock_ms = next(int(g) for g in locked.groups() if g) if locked else -1
    return [f"{len(batch):,}", f"{len(batch) / drain_s:,.0f} ev/s ({drain_s:.1f} s), "
            f"{drain_mb} MB", f"{len(batch) / replay_s:,.0f} ev/s ({replay_s:.1f} s), "
            f"{replay_mb} MB", f"{drain_s / replay_s:.2f}x", f"{lock_ms} ms",
            f"{reader.longest * 1000:.0f} ms ({reader.queries:,} queries)"]


def main() -> None:
    """Each size in turn, one table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--partitions", type=int, default=12)
    args = parser.parse_args()
    rows = []
    with services() as (bootstrap, database):
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(one_size(bootstrap, database, size, args.partitions))
            print(" | ".join(rows[-1]), flush=True)
    names = ["events", "worker drain", "replay rebuild", "rebuild / drain",
             "lock held (with a reader)", "longest reader query"]
    print("| " + " | ".join(names) + " |")
    print("|" + " --- |" * len(names))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
