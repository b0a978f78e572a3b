"""The worker's speed on this machine, with broker and database on the same machine.

    python bench/bench_worker.py [--events 200000] [--partitions 6]

Prints, for issue 4's targets:
1. `pudato-registry worker --drain` from an empty database over a realistic
   workload (jobs of 10 steps, 1 % duplicates): events/s over the wall time
   (start-up and group join included) and from assignment to drained; peak RSS;
   the CPU seconds the worker, PostgreSQL and the broker spent meanwhile;
2. a plain COPY (binary, as the worker's) of the resulting final rows into
   empty tables of the same schema: rows/s, and the ratio worker events/s
   (wall) / COPY rows/s (target >= 1.5); the CPU seconds PostgreSQL spent on
   it, and the CPU the whole machine has in the wall time the target allows;
3. a naive loop that applies each event in its own transaction (read the
   entity states, fold one event, INSERT ... ON CONFLICT, commit): events/s and
   the worker's multiple of it (target >= 30);
4. live: events published at --rate per second for --live-seconds, each
   stamped with the time it is sent; the worker's event-to-row p99 (commit
   time minus occurred_at, from its histogram; target <= 250 ms) and peak RSS
   (target < 300 MB).
Services: PUDATO_BENCH_BOOTSTRAP_SERVERS / PUDATO_BENCH_DATABASE_URL, else a
fresh dev stack.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from common import produce_all, services
from pudato_registry import kafka, store
from pudato_registry.devstack import free_port
from pudato_registry.factory import encode
from pudato_registry.loop import plan_writes
from pudato_registry.sample import workload
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
           "PUDATO_BATCH_SIZE": str(settings.batch_size)}
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


def naive(url: str, events: list[Event]) -> float:
    """Events/s of one transaction per event: read states, fold, upsert, commit."""
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
                writes = plan_writes([event], States(dict(job), dict(step))).writes
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
    events = workload(total, concurrent=50, duplicates=0.0)[:total]
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
    print(f"live: {len(events)} events at {len(events) / sent_in:,.0f}/s; event-to-row p99 <= "
          f"{bound * 1000:.0f} ms (histogram bound, {count} events); worker peak RSS "
          f"{rss.peak_kb / 1024:.0f} MB")


def main() -> None:
    """Run the four measurements and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes draining together (one group)")
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--rate", type=int, default=2_000)
    parser.add_argument("--live-seconds", type=int, default=30)
    parser.add_argument("--live-only", action="store_true")
    args = parser.parse_args()
    with services() as (bootstrap, database):
        if args.live_only:
            live(bootstrap, database.rsplit("/", 1)[0] + "/postgres", database, args)
            return
        admin = database.rsplit("/", 1)[0] + "/postgres"
        events = workload(args.events, steps=10, concurrent=50, duplicates=0.01)
        url = fresh(admin, database)
        settings = settings_for(bootstrap, url, args.partitions, batch_size=args.batch_size)
        kafka.create_topics(settings)
        produce_all(settings, [(e.correlation_id.encode(), encode(e)) for e in events])
        print(f"workload: {len(events)} events, {len({e.job_id for e in events})} jobs, "
              f"{args.partitions} partitions")

        cpu = Cpu()
        started = time.perf_counter()
        processes = [worker(settings, "--drain") for _ in range(args.workers)]
        peaks = [PeakRss(p.pid) for p in processes]
        logs = [p.communicate()[1] for p in processes]
        assert all(p.returncode == 0 for p in processes), logs
        seconds = time.perf_counter() - started
        spent = cpu.stop().spent
        worker_rate = len(events) / seconds
        busy = max(float(re.findall(r"busy ([0-9.]+) s", log)[-1]) for log in logs)
        consuming = max(_logged_at(log, "drained") for log in logs) - min(
            _logged_at(log, "assigned") for log in logs)
        print(f"worker --drain x{args.workers}: {seconds:.1f} s wall, start-up and group join "
              f"included: {worker_rate:,.0f} events/s; {consuming:.1f} s from assignment to "
              f"drained: {len(events) / consuming:,.0f} events/s ({busy:.1f} s busy with "
              f"batches); peak RSS {max(r.peak_kb for r in peaks) / 1024:.0f} MB")
        cores = os.cpu_count() or 1
        print(f"  CPU: worker {spent['children']:.1f} s, the rest of the machine (PostgreSQL, "
              f"mostly) {spent['rest']:.1f} s, broker {spent['broker']:.1f} s; "
              f"{spent['machine']:.1f} of the {cores * seconds:.1f} CPU-s of {cores} cores over "
              "the wall time")

        rows, copy_seconds, copy_cpu = copy_baseline(url, fresh(admin, database))
        copy_rate = rows / copy_seconds
        print(f"plain COPY of the {rows} final rows: {copy_seconds:.2f} s, {copy_rate:,.0f} rows/s;"
              f" worker events/s / COPY rows/s = {worker_rate / copy_rate:.2f} (target >= 1.5)")
        allowed = len(events) / (1.5 * copy_rate)
        print(f"  CPU: PostgreSQL {copy_cpu.spent['rest']:.1f} s, client "
              f"{copy_cpu.spent['self']:.1f} s. At 1.5x the drain may take {allowed:.1f} s wall: "
              f"{cores * allowed:.1f} CPU-s on {cores} cores, against the {spent['machine']:.1f} "
              "it used")
        rows, copy_seconds, copy_cpu = copy_baseline(url, fresh(admin, database), states=True)
        print(f"  for comparison, COPY of those rows and their fold states ({rows} rows): "
              f"{copy_seconds:.2f} s, PostgreSQL CPU {copy_cpu.spent['rest']:.1f} s; the worker "
              f"takes {seconds / copy_seconds:.1f}x as long")

        naive_rate = naive(fresh(admin, database),
                           [from_model(e) for e in events[:args.naive_events]])
        print(f"naive per-event transaction loop: {naive_rate:,.0f} events/s; worker is "
              f"{worker_rate / naive_rate:.1f}x (target >= 30)")

        live(bootstrap, admin, database, args)


if __name__ == "__main__":
    main()
