"""The web UI and its JSON API at 100,000 jobs and a million steps, over HTTP.

    python bench/bench_ui.py [--jobs 100000] [--requests 100] [--keep bench_1m]

Loads the sample runs as bench_lineage.py does (100,000 jobs of 10 steps) and
the skewed cases: a rare pipeline (3 runs among them all) and a step with a
year of hourly runs (8,760). Then starts `pudato-registry ui` as a process
(its pool of read-only connections, waitress) and asks every page and API call
``--requests`` times over one keep-alive HTTP connection on loopback, in
rounds (each round asks each URL once, with its own random job or location):

1. quiet: nothing else runs;
2. draining: a `pudato-registry worker` applies 10,000 new runs (about
   300,000 events) into the same tables meanwhile.

Both phases run in the same process, side by side, so the ratio between them
holds whatever this host's speed is that hour. Targets (issue 20): every page
and API call p95 < 50 ms, the lineage graph p95 < 20 ms. The dead-letters
page reads the dead-letter topic from Kafka (kept 10 s) and is timed apart.
Services: PUDATO_BENCH_* if set, else a fresh dev stack.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_lineage import loaded, summary
from common import produce_all, services
from pudato_registry import factory, kafka, store
from pudato_registry.events import DataReference, Event
from pudato_registry.loop import apply_events
from pudato_registry.sample import PIPELINES, START, pipeline_run
from pudato_registry.settings import Settings
from pudato_registry.wire import from_model

HOURS = 8_760
LINEAGE = ("lineage graph", "API lineage")


def skew_events() -> list[Event]:
    """A rare pipeline's 3 runs, and a year of hourly runs of one step."""
    out: list[Event] = []
    for n in range(3):
        job, at = f"rare-{n}", START + timedelta(days=30 * n)
        out += [factory.job_submitted(job, pipeline="rare", namespace="finance",
                                      occurred_at=at),
                factory.step_succeeded(job, f"{job}-only", step_name="only",
                                       outputs=[DataReference(ref_type="table",
                                                              location="finance.rare")],
                                       occurred_at=at + timedelta(minutes=1)),
                factory.job_succeeded(job, occurred_at=at + timedelta(minutes=2))]
    source = [DataReference(ref_type="table", location="ops.source")]
    for n in range(HOURS):
        job, at = f"hourly-{n:05d}", START - timedelta(days=365) + timedelta(hours=n)
        out += [factory.job_submitted(job, pipeline="hourly", namespace="ops", occurred_at=at),
                factory.step_succeeded(job, f"{job}-load", step_name="load", inputs=source,
                                       outputs=[DataReference(ref_type="table",
                                                              location="ops.hourly")],
                                       duration_ms=1000 + n % 97, occurred_at=at
                                       + timedelta(minutes=1)),
                factory.job_succeeded(job, occurred_at=at + timedelta(minutes=2))]
    return out


def add_skew(url: str) -> None:
    """Load the skewed cases once (a kept database may have them already)."""
    with store.connect(url) as conn:
        if conn.execute("SELECT 1 FROM pudato_jobs WHERE job_id = 'rare-0'").fetchone():
            return
    target = store.Store(url)
    events = [from_model(e) for e in skew_events()]
    for first in range(0, len(events), 6_000):
        apply_events(target, events[first:first + 6_000])
    target.close()
    with store.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def start_ui(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    """`pudato-registry ui --port 0`; the process and its port."""
    child = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "ui", "--port", "0"],
                             env=env, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    line = child.stderr.readline()
    found = re.search(r":(\d+)/", line)
    if not found:
        child.kill()
        raise SystemExit(f"ui did not start: {line}")
    return child, int(found.group(1))


def urls(rng: random.Random, jobs: int) -> list[tuple[str, str]]:
    """One round: (label, path) for every page and API call, with random subjects."""
    job = f"job-{rng.randrange(jobs):07d}"
    pipeline = rng.choice(PIPELINES)
    model = f"{pipeline}.model_{rng.randrange(10)}"
    older = START + timedelta(minutes=rng.randrange(jobs))
    deep = urllib.parse.urlencode({"before": f"{older.isoformat()}|job-9999999"})
    q = urllib.parse.quote
    return [
        ("jobs, no filter", "/jobs"),
        ("jobs, a pipeline", f"/jobs?pipeline={pipeline}"),
        ("jobs, failed", "/jobs?status=failed"),
        ("jobs, the rare pipeline", "/jobs?pipeline=rare"),
        ("jobs, the hourly pipeline", "/jobs?pipeline=hourly"),
        ("jobs, text search", f"/jobs?text=job-{rng.randrange(jobs):07d}"),
        ("jobs, deep page (keyset)", f"/jobs?{deep}"),
        ("job page", f"/jobs/{job}"),
        ("job page, hourly step", f"/jobs/hourly-{rng.randrange(HOURS):05d}"),
        ("pipeline grid", f"/pipelines/{pipeline}"),
        ("pipeline grid, hourly", "/pipelines/hourly"),
        ("lineage graph", f"/lineage?location={q(model)}"),
        ("lineage depth 5 up", f"/lineage?location={q(model)}&direction=upstream&depth=5"),
        ("lineage runs of an edge", f"/lineage/runs?location={q(model)}&pipeline={pipeline}"
                                    f"&step=build_{q(model)}"),
        ("lineage runs of a dataset", f"/lineage/runs?location={q(model)}"),
        ("lineage runs, hourly", "/lineage/runs?location=ops.hourly"),
        ("lineage search", f"/lineage?q=model_{rng.randrange(10)}"),
        ("API jobs", f"/api/v1/jobs?pipeline={pipeline}&limit=100"),
        ("API job", f"/api/v1/jobs/{job}"),
        ("API lineage", f"/api/v1/lineage?location={q(model)}"),
        ("API pipeline, hourly", "/api/v1/pipelines/hourly"),
        ("API diff", f"/api/v1/diff?first={job}"),
        ("API reproduce", f"/api/v1/reproduce?job_id={job}"),
    ]


def measure(port: int, rounds: int, jobs: int, seed: int) -> dict[str, list[float]]:
    """Milliseconds per label over ``rounds`` rounds, on one keep-alive connection."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, path in urls(rng, jobs):
            began = time.perf_counter()
            conn.request("GET", path)
            answer = conn.getresponse()
            answer.read()
            took = (time.perf_counter() - began) * 1000
            if answer.status != 200:
                raise SystemExit(f"{path}: {answer.status}")
            times.setdefault(label, []).append(took)
    conn.close()
    return times


def p95(values: list[float]) -> float:
    """The 95th percentile."""
    return sorted(values)[int(len(values) * 0.95)]


def report(quiet: dict[str, list[float]], busy: dict[str, list[float]]) -> None:
    """Both phases side by side, with the target each meets or misses."""
    print(f"\n{'':28} {'quiet':>44}   {'worker draining':>44}  ratio  target")
    for label, alone in quiet.items():
        target = 20.0 if label in LINEAGE else 50.0
        verdict = "ok" if p95(busy[label]) < target else "MISSED"
        ratio = p95(busy[label]) / p95(alone)
        print(f"{label:28} {summary(alone)}   {summary(busy[label])}  {ratio:5.2f}  "
              f"p95 < {target:.0f} ms {verdict}")


def main() -> None:
    """Load, serve, measure quiet and while the worker drains."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--drain-runs", type=int, default=10_000)
    parser.add_argument("--keep", metavar="NAME",
                        help="load into database NAME once and reuse it on later runs")
    args = parser.parse_args()
    with services() as (bootstrap, database), \
            loaded(database, args.jobs, 5_000, args.keep) as url:
        store.migrate(url)  # a kept database may predate the UI's index
        add_skew(url)
        name = f"ui-{uuid.uuid4().hex[:8]}"
        settings = Settings(bootstrap_servers=bootstrap, database_url=url, topic=name,
                            dlq_topic=f"{name}.dlq", group_id=name, partitions=3,
                            metrics_port=0)
        kafka.create_topics(settings)
        env = {**os.environ, "PUDATO_DATABASE_URL": url, "PUDATO_BOOTSTRAP_SERVERS": bootstrap,
               "PUDATO_TOPIC": settings.topic, "PUDATO_DLQ_TOPIC": settings.dlq_topic,
               "PUDATO_GROUP_ID": settings.group_id, "PUDATO_METRICS_PORT": "0"}
        env = {k: v for k, v in env.items() if not k.startswith("PUDATO_BENCH_")}
        child, port = start_ui(env)
        try:
            measure(port, 3, args.jobs, 0)  # the pool's connections opened, plans cached
            quiet = measure(port, args.requests, args.jobs, 1)
            events = [e for run in range(args.jobs + 1_000_000,
                                         args.jobs + 1_000_000 + args.drain_runs)
                      for e in pipeline_run(run, start=START + timedelta(days=200))]
            produce_all(settings, [(e.correlation_id.encode(), factory.encode(e))
                                   for e in events])
            worker = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "worker",
                                       "--drain"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            began = time.perf_counter()
            busy = measure(port, args.requests, args.jobs, 1)
            measured = time.perf_counter() - began
            still = worker.poll() is None
            worker.wait()
            drained = time.perf_counter() - began
            dead = timed_dead_letters(port)
        finally:
            child.terminate()
            child.wait()
        report(quiet, busy)
        print(f"\nthe worker drained {len(events):,} events in {drained:.0f} s; the busy "
              f"phase took {measured:.0f} s and "
              f"{'ended while it was still draining' if still else 'outlasted the drain'}")
        print(f"dead-letters page: {summary(dead)} (read from Kafka, kept 10 s)")


def timed_dead_letters(port: int) -> list[float]:
    """The dead-letters page: its first read from Kafka, then what it kept."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out: list[float] = []
    for _ in range(20):
        began = time.perf_counter()
        conn.request("GET", "/dead-letters")
        conn.getresponse().read()
        out.append((time.perf_counter() - began) * 1000)
    conn.close()
    return out


if __name__ == "__main__":
    main()
