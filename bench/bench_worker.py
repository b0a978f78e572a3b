"""The worker's speed on this machine, with broker and database on the same machine.

    python bench/bench_worker.py [--concurrent N] [--events 200000] [--partitions 6]

By default two workloads side by side, in one run: 20 pipeline runs in flight
(jobs of 10 steps: most entities are created and finished in one batch), and
12,000 runs of 6 steps all in flight at once (a step's events land in
different batches: nearly every event updates an entity that has a row and a
saved state, as on a busy platform or in the replay of its topic). With
``--concurrent N``, one workload of --events events with N runs in flight.
Both have 1 % duplicates. For each:

1. `pudato-registry worker --drain` from an empty database: events/s over the
   wall time (start-up and group join included) and from assignment to
   drained; peak RSS; the CPU seconds the worker, PostgreSQL and the broker
   spent; bytes of WAL per event; row versions written per event, and how
   many of the updates were HOT;
2. a plain binary COPY (the worker's own) of the final rows and their fold
   states into empty tables: the physical floor of what the worker writes;
   the ratio of the drain's time to it;
3. a naive loop that applies each event in its own transaction (read the
   entity states, fold one event, INSERT ... ON CONFLICT, commit), over 5,000
   events from the middle of the workload: events/s, and the drain's multiple
   of it (targets: >= 30x with 20 in flight, >= 25x interleaved).

Then:

4. a burst of 200 valid events of about 1 MB each: the drain's peak RSS
   (target < 1 GB: batches have a byte budget);
5. live: events published at --rate per second for --live-seconds with
   --live-concurrent runs in flight (1,000), each stamped with the time it is
   sent; the event-to-row p99 (commit time minus occurred_at, from the
   worker's histogram; target <= 250 ms) and peak RSS.

Services: PUDATO_BENCH_BOOTSTRAP_SERVERS / PUDATO_BENCH_DATABASE_URL, else a
fresh dev stack.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from common import produce_all, services
from pudato_registry import events as models
from pudato_registry import factory, kafka, store
from pudato_registry.devstack import free_port
from pudato_registry.factory import encode
from pudato_registry.loop import plan_writes
from pudato_registry.sample import START, workload
from pudato_registry.settings import Settings
from pudato_registry.store import JOB_COLUMNS, STEP_COLUMNS, States
from pudato_registry.wire import Event, from_model


def fresh(admin: str, base: str) -> str:
    """A new migrated database; its URL."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    store.create_database(admin, name)
    url = base.rsplit("/", 1)[0] + "/" + name
    store.migrate(url)
    return url


def settings_for(bootstrap: str, url: str, partitions: int, **more: object) -> Settings:
    """Settings with a topic and group of their own."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    return Settings(bootstrap_servers=bootstrap, database_url=url,
                    topic=f"{name}.events", dlq_topic=f"{name}.dlq", group_id=name,
                    partitions=partitions, metrics_port=0, **more)  # type: ignore[arg-type]


def worker(settings: Settings, *args: str) -> subprocess.Popen[str]:
    """`pudato-registry worker` as a child process."""
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PUDATO_DATABASE_URL": settings.database_dsn, "PUDATO_TOPIC": settings.topic,
           "PUDATO_DLQ_TOPIC": settings.dlq_topic, "PUDATO_GROUP_ID": settings.group_id,
           "PUDATO_METRICS_PORT": str(settings.metrics_port), "PUDATO_LOG_LEVEL": "INFO",
           "PUDATO_BATCH_SIZE": str(settings.batch_size),
           "PUDATO_LINEAGE_EDGES": str(settings.lineage_edges).lower()}
    return subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "worker", *args],
                            env=env, stderr=subprocess.PIPE, text=True)


class PeakRss:
    """Samples a process's resident set size every 50 ms; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.peak_kb = 0
        self._status = Path(f"/proc/{pid}/status")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                text = self._status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.05)


def _logged_at(log: str, what: str) -> float:
    """The time of the first log line saying ``what``, in seconds since the epoch."""
    line = next(line for line in log.splitlines() if what in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds spent on this machine between two points, split by who spent them.

    The split: this process, its reaped children (the worker processes), the
    broker (processes named ``java``) and the rest of the machine, which
    during a drain or a COPY is PostgreSQL (its backends are children of the
    postmaster, so summing ``postgres`` processes could miss one not reaped
    yet; the machine's own counters miss nothing).
    """

    def __init__(self) -> None:
        self._start = self._now()
        self.spent: dict[str, float] = {}

    @staticmethod
    def _now() -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        broker = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:  # the process ended meanwhile
                continue
            if text[text.index("(") + 1:text.rindex(")")] == "java":
                broker += sum(map(int, text[text.rindex(")") + 2:].split()[11:13]))
        ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return {"self": own.ru_utime + own.ru_stime,
                "children": children.ru_utime + children.ru_stime,
                "broker": broker / CLOCK_TICKS,
                "machine": (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS}  # not idle, iowait

    def stop(self) -> Cpu:
        """Take the second reading; ``spent`` then holds the differences and ``rest``."""
        end = self._now()
        self.spent = {key: end[key] - self._start[key] for key in end}
        self.spent["rest"] = self.spent["machine"] - sum(
            self.spent[key] for key in ("self", "children", "broker"))
        return self


STATE_COLUMNS = {"pudato_job_state": ("job_id", "state"),
                 "pudato_step_state": ("step_id", "state")}


def copy_baseline(source: str, target: str, *,
                  states: bool = False) -> tuple[int, float, Cpu]:
    """COPY the final rows of ``source`` into the empty tables of ``target``: rows, seconds, CPU.

    The COPY is the worker's own (``store.copy_rows``): binary, JSON encoded by msgspec.
    With ``states``, the fold states are copied too (what the worker writes).
    """
    tables = {"pudato_jobs": JOB_COLUMNS, "pudato_job_steps": STEP_COLUMNS,
              **(STATE_COLUMNS if states else {})}
    with psycopg.connect(source) as conn:
        rows = {table: conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
                for table, columns in tables.items()}
    with store.connect(target) as conn:
        cpu = Cpu()
        started = time.perf_counter()
        with conn.cursor() as cur:
            for table, columns in tables.items():
                store.copy_rows(cur, f"COPY {table} ({', '.join(columns)}) FROM STDIN "
                                "(FORMAT BINARY)", rows[table], store.column_types(columns))
        conn.commit()
        seconds = time.perf_counter() - started
        cpu.stop()
    return sum(len(r) for r in rows.values()), seconds, cpu


def naive(url: str, events: list[Event], *, only_changed: bool = False) -> float:
    """Events/s of one transaction per event: read states, fold, upsert, commit.

    It writes the row and state of every entity a new event names (a step
    event: its step and its job), as the worker did when the targets were set.
    With ``only_changed``, only those the fold marks changed, as the worker
    does now (a step event leaves its job alone unless it is the job's earliest).
    """
    jobs_sql = (f"INSERT INTO pudato_jobs ({', '.join(JOB_COLUMNS)}) VALUES "
                f"({', '.join(['%s'] * len(JOB_COLUMNS))}) ON CONFLICT (job_id) DO UPDATE SET "
                + ", ".join(f"{c} = EXCLUDED.{c}" for c in JOB_COLUMNS[1:]))
    steps_sql = (f"INSERT INTO pudato_job_steps ({', '.join(STEP_COLUMNS)}) VALUES "
                 f"({', '.join(['%s'] * len(STEP_COLUMNS))}) ON CONFLICT (step_id) DO UPDATE SET "
                 + ", ".join(f"{c} = EXCLUDED.{c}" for c in STEP_COLUMNS[1:]))
    from psycopg.types.json import Jsonb  # noqa: PLC0415

    def adapt(row: tuple[object, ...]) -> list[object]:
        return [Jsonb(v) if isinstance(v, dict | list) else v for v in row]

    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        for event in events:
            with conn.transaction():
                job = conn.execute("SELECT job_id, state FROM pudato_job_state WHERE job_id = %s",
                                   (event.job_id,)).fetchall()
                step = conn.execute(
                    "SELECT step_id, state FROM pudato_step_state WHERE step_id = %s",
                    (event.step_id,)).fetchall() if event.step_id else []
                plan = plan_writes([event], States(dict(job), dict(step)),
                                   rewrite=not only_changed)
                if not plan.new:
                    continue  # a duplicate: nothing to write
                writes = plan.writes
                for row in writes.jobs:
                    conn.execute(jobs_sql, adapt(row))  # type: ignore[arg-type]
                for row in writes.steps:
                    conn.execute(steps_sql, adapt(row))  # type: ignore[arg-type]
                for key, state in writes.job_states:
                    conn.execute("INSERT INTO pudato_job_state VALUES (%s, %s) ON CONFLICT "
                                 "(job_id) DO UPDATE SET state = EXCLUDED.state", (key, state))
                for key, state in writes.step_states:
                    conn.execute("INSERT INTO pudato_step_state VALUES (%s, %s) ON CONFLICT "
                                 "(step_id) DO UPDATE SET state = EXCLUDED.state", (key, state))
    return len(events) / (time.perf_counter() - started)


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The worker's metrics: name -> labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def p99_bound(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> tuple[float, int]:
    """The smallest histogram bound holding >= 99 % of event-to-row latencies, and the count."""
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for labels, count in metrics["pudato_event_to_row_seconds_bucket"].items()
    )
    total = buckets[-1][1]
    print("  event-to-row distribution: " + ", ".join(
        f"<={bound * 1000:g}ms {100 * count / total:.1f}%" for bound, count in buckets
        if count < total or bound <= 1))
    return next(bound for bound, count in buckets if count >= 0.99 * total), int(total)



def wal_lsn(admin: str) -> str:
    """The server's current write-ahead log position."""
    with psycopg.connect(admin) as conn:
        return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]


def wal_bytes(admin: str, since: str) -> int:
    """Bytes of write-ahead log written on the server since ``since``."""
    with psycopg.connect(admin) as conn:
        return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)",
                                (since,)).fetchone()[0])  # type: ignore[index]


def tuple_stats(url: str) -> dict[str, tuple[int, int, int]]:
    """Per projection or state table: rows inserted, updated, and updated HOT (no index entry)."""
    with psycopg.connect(url) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        return {str(name): (int(ins), int(upd), int(hot)) for name, ins, upd, hot in conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE relname IN ('pudato_jobs', 'pudato_job_steps', 'pudato_job_state',"
            " 'pudato_step_state')").fetchall()}


@dataclass
class Drained:
    """What one ``worker --drain`` over a workload measured."""

    events: int
    jobs: int
    seconds: float
    consuming: float  # from assignment to drained
    busy: float
    peak_mb: float
    cpu: dict[str, float]
    wal: int
    tuples: dict[str, tuple[int, int, int]]
    url: str

    @property
    def rate(self) -> float:
        """Events per second over the wall time."""
        return self.events / self.seconds


def drain(bootstrap: str, admin: str, base: str, events: Sequence[models.Event],
          args: argparse.Namespace,
          **settings: object) -> Drained:
    """Produce ``events`` to a new topic, then time ``worker --drain`` into a new database."""
    url = fresh(admin, base)
    config = settings_for(bootstrap, url, args.partitions, batch_size=args.batch_size, **settings)
    kafka.create_topics(config)
    produce_all(config, [(e.correlation_id.encode(), encode(e)) for e in events])
    lsn = wal_lsn(admin)
    cpu = Cpu()
    started = time.perf_counter()
    processes = [worker(config, "--drain") for _ in range(args.workers)]
    peaks = [PeakRss(p.pid) for p in processes]
    logs = [p.communicate()[1] for p in processes]
    assert all(p.returncode == 0 for p in processes), logs
    seconds = time.perf_counter() - started
    spent = cpu.stop().spent
    return Drained(
        events=len(events), jobs=len({e.job_id for e in events}), seconds=seconds,
        consuming=max(_logged_at(log, "drained") for log in logs) - min(
            _logged_at(log, "assigned") for log in logs),
        busy=max(float(re.findall(r"busy ([0-9.]+) s", log)[-1]) for log in logs),
        peak_mb=max(r.peak_kb for r in peaks) / 1024, cpu=spent,
        wal=wal_bytes(admin, lsn), tuples=tuple_stats(url), url=url)


@dataclass(frozen=True)
class Workload:
    """A named workload: its events, and the naive loop's sample of them."""

    name: str
    events: list[models.Event]

    def naive_sample(self, count: int) -> list[models.Event]:
        """``count`` consecutive events from the middle (a prefix would be mostly creations)."""
        middle = max(0, len(self.events) // 2 - count // 2)
        return self.events[middle:middle + count]


def workloads(args: argparse.Namespace) -> list[Workload]:
    """The workloads to measure: both by default, or the one ``--concurrent`` names."""
    if args.concurrent is not None:
        return [Workload(f"{args.concurrent} in flight",
                         workload(args.events, steps=args.steps, concurrent=args.concurrent,
                                  duplicates=0.01))]
    return [Workload("20 in flight", workload(args.events, steps=10, concurrent=20,
                                                duplicates=0.01)),
            Workload("all interleaved", workload(0, steps=6, concurrent=args.interleaved_runs,
                                                   runs=args.interleaved_runs, duplicates=0.01))]


def print_table(names: list[str], rows: list[tuple[str, list[str]]]) -> None:
    """Figures side by side: one column per workload."""
    width = max(len(label) for label, _ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{name:>18}" for name in names))
    for label, values in rows:
        print(f"{label:{width}}  " + "  ".join(f"{value:>18}" for value in values))


def measure(bootstrap: str, admin: str, database: str, args: argparse.Namespace) -> None:
    """Drain each workload, COPY its result, run the naive loop on it; print side by side."""
    chosen = workloads(args)
    drained = [drain(bootstrap, admin, database, w.events, args) for w in chosen]
    copies = [copy_baseline(d.url, fresh(admin, database), states=True) for d in drained]
    samples = [[from_model(e) for e in w.naive_sample(args.naive_events)] for w in chosen]
    naives = [naive(fresh(admin, database), sample) for sample in samples]
    naives_changed = [naive(fresh(admin, database), sample, only_changed=True)
                      for sample in samples]
    cores = os.cpu_count() or 1

    def per_event(d: Drained, table: str, column: int) -> str:
        return f"{d.tuples.get(table, (0, 0, 0))[column] / d.events:.3f}"

    def hot(d: Drained, table: str) -> str:
        _ins, upd, hot_upd = d.tuples.get(table, (0, 0, 0))
        return f"{100 * hot_upd / upd:.0f} %" if upd else "-"

    rows: list[tuple[str, list[str]]] = [
        ("events", [f"{d.events:,}" for d in drained]),
        ("jobs", [f"{d.jobs:,}" for d in drained]),
        (f"drain events/s (wall, x{args.workers} worker)", [f"{d.rate:,.0f}" for d in drained]),
        ("  assignment to drained, events/s",
         [f"{d.events / d.consuming:,.0f}" for d in drained]),
        ("  busy with batches, s", [f"{d.busy:.1f}" for d in drained]),
        ("naive loop events/s", [f"{n:,.0f}" for n in naives]),
        ("drain / naive", [f"{d.rate / n:.1f}x" for d, n in zip(drained, naives, strict=True)]),
        ("naive loop writing only what changed", [f"{n:,.0f}" for n in naives_changed]),
        ("drain / that", [f"{d.rate / n:.1f}x"
                          for d, n in zip(drained, naives_changed, strict=True)]),
        ("COPY of rows + states, s", [f"{c[1]:.2f}" for c in copies]),
        ("drain time / that COPY's", [f"{d.seconds / c[1]:.1f}x"
                                      for d, c in zip(drained, copies, strict=True)]),
        ("CPU-s worker", [f"{d.cpu['children']:.1f}" for d in drained]),
        ("CPU-s PostgreSQL (rest of machine)", [f"{d.cpu['rest']:.1f}" for d in drained]),
        ("CPU-s broker", [f"{d.cpu['broker']:.1f}" for d in drained]),
        (f"CPU-s used of {cores} cores x wall",
         [f"{d.cpu['machine']:.0f} / {cores * d.seconds:.0f}" for d in drained]),
        ("WAL bytes / event", [f"{d.wal / d.events:,.0f}" for d in drained]),
        ("job rows inserted / event", [per_event(d, "pudato_jobs", 0) for d in drained]),
        ("job rows updated / event", [per_event(d, "pudato_jobs", 1) for d in drained]),
        ("step rows inserted / event", [per_event(d, "pudato_job_steps", 0) for d in drained]),
        ("step rows updated / event", [per_event(d, "pudato_job_steps", 1) for d in drained]),
        ("job / step states updated / event", [
            f"{per_event(d, 'pudato_job_state', 1)} / {per_event(d, 'pudato_step_state', 1)}"
            for d in drained]),
        ("HOT updates: jobs / steps", [f"{hot(d, 'pudato_jobs')} / {hot(d, 'pudato_job_steps')}"
                                       for d in drained]),
        ("HOT updates: job / step states", [
            f"{hot(d, 'pudato_job_state')} / {hot(d, 'pudato_step_state')}" for d in drained]),
        ("worker peak RSS, MB", [f"{d.peak_mb:.0f}" for d in drained]),
    ]
    print_table([w.name for w in chosen], rows)
    if len(drained) == 2:
        print(f"targets: 20 in flight >= 30x naive: {drained[0].rate / naives[0]:.1f}x; "
              f"interleaved >= 25x naive: {drained[1].rate / naives[1]:.1f}x; interleaved / "
              f"20 in flight drain: {drained[1].rate / drained[0].rate:.2f}")


def edge_upkeep(bootstrap: str, admin: str, database: str, args: argparse.Namespace) -> None:
    """Each workload drained alternately with and without the lineage edges' upkeep."""
    chosen = workloads(args)
    print(f"drain with the edge upkeep against without it, {args.pairs} pairs per workload,"
          " alternating which goes first (wall events/s):")
    for w in chosen:
        ratios = []
        for n in range(args.pairs):
            order = (True, False) if n % 2 == 0 else (False, True)
            rates = {keep: drain(bootstrap, admin, database, w.events, args,
                                 lineage_edges=keep).rate for keep in order}
            ratios.append(rates[True] / rates[False])
            print(f"  {w.name}, pair {n + 1}: with {rates[True]:,.0f}, without "
                  f"{rates[False]:,.0f}: {ratios[-1]:.3f}", flush=True)
        print(f"  {w.name}: with / without, mean {statistics.mean(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f}); target >= 0.90")


def burst(bootstrap: str, admin: str, database: str, args: argparse.Namespace) -> None:
    """Drain 200 valid events of about 1 MB each; print the worker's peak RSS."""
    rows = [{"id": i, "name": f"row-{i:06d}", "ok": i % 2 == 0} for i in range(24_000)]
    events = [factory.job_submitted(f"burst-{n:04d}", pipeline="burst", request={"rows": rows},
                                    occurred_at=START) for n in range(args.burst_events)]
    size = len(encode(events[0]))
    result = drain(bootstrap, admin, database, events, args)
    print(f"burst: {len(events)} events of {size / 1e6:.2f} MB each "
          f"({len(events) * size / 1e6:,.0f} MB): drained in {result.seconds:.1f} s, "
          f"worker peak RSS {result.peak_mb:.0f} MB (target < 1,024)")


def live(bootstrap: str, admin: str, base: str, args: argparse.Namespace) -> None:
    """Publish at a steady rate to a running worker; print its latency p99 and peak RSS."""
    url = fresh(admin, base)
    port = free_port()
    settings = settings_for(bootstrap, url, args.partitions).replace(metrics_port=port)
    kafka.create_topics(settings)
    process = worker(settings)
    threading.Thread(target=process.communicate, daemon=True).start()  # drain its log
    rss = PeakRss(process.pid)
    total = args.rate * args.live_seconds
    events = workload(total, concurrent=args.live_concurrent)[:total]
    producer = kafka.make_producer(settings)
    for _ in range(200):  # the worker is up when its metrics answer
        try:
            scrape(port)
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(3)  # let the group settle: this phase measures steady-state latency
    started = time.perf_counter()
    for index, event in enumerate(events):
        due = started + index / args.rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        stamped = event.model_copy(update={"occurred_at": datetime.now(UTC)})
        producer.produce(settings.topic, key=event.correlation_id.encode(),
                         value=encode(stamped))
        producer.poll(0)
    producer.flush(60)
    sent_in = time.perf_counter() - started
    while scrape(port)["pudato_events_applied_total"][()] < len(events):
        time.sleep(0.2)
    bound, count = p99_bound(scrape(port))
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    print(f"live: {len(events)} events at {len(events) / sent_in:,.0f}/s, "
          f"{args.live_concurrent} runs in flight; event-to-row p99 <= {bound * 1000:.0f} ms "
          f"(histogram bound, {count} events; target <= 250); worker peak RSS "
          f"{rss.peak_kb / 1024:.0f} MB")


def main() -> None:
    """Run the measurements and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=None,
                        help="one workload with this many runs in flight (default: both)")
    parser.add_argument("--events", type=int, default=200_000,
                        help="events of the 20-in-flight (or --concurrent) workload")
    parser.add_argument("--steps", type=int, default=10, help="steps per job with --concurrent")
    parser.add_argument("--interleaved-runs", type=int, default=12_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes draining together (one group)")
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--burst-events", type=int, default=200)
    parser.add_argument("--rate", type=int, default=2_000)
    parser.add_argument("--live-seconds", type=int, default=30)
    parser.add_argument("--live-concurrent", type=int, default=1_000)
    parser.add_argument("--only", choices=("drain", "burst", "live", "edges"), default=None)
    parser.add_argument("--pairs", type=int, default=3,
                        help="with --only edges: drains with and without the edge upkeep")
    args = parser.parse_args()
    with services() as (bootstrap, database):
        admin = database.rsplit("/", 1)[0] + "/postgres"
        if args.only in (None, "drain"):
            measure(bootstrap, admin, database, args)
        if args.only in (None, "burst"):
            burst(bootstrap, admin, database, args)
        if args.only in (None, "live"):
            live(bootstrap, admin, database, args)
        if args.only in (None, "edges"):
            edge_upkeep(bootstrap, admin, database, args)


if __name__ == "__main__":
    main()
