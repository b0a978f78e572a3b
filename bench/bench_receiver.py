"""The OpenLineage receiver under hostile load: what good clients see, what it costs.

    python bench/bench_receiver.py [--slow 200] [--posts 100] [--big 8]

Runs ``openlineage serve`` as its own process on a real broker, then:

1. ``--slow`` sockets that send a request's headers a line at a time (slowloris)
   while one good client posts ``--posts`` RunEvents: the good client's latency
   (p50, p99, max) against the same posts with no slow sockets;
2. ``--big`` concurrent valid 8 MiB RunEvents (a Spark write naming ~60,000 part
   files): the receiver's peak RSS (VmHWM) before and after, and their answers;
3. the broker away: how long a POST waits for its 503.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from common import services
from pudato_registry import kafka
from pudato_registry.devstack import free_port
from pudato_registry.settings import Settings

SAMPLE = (Path(__file__).parents[1] / "tests" / "data" / "openlineage" /
          "python-client-parent-children.jsonl").read_bytes().splitlines()


def post(url: str, body: bytes) -> tuple[int, float]:
    """POST one RunEvent; (status, seconds)."""
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}/api/v1/lineage", data=body,  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - started


def big_run_event(n: int) -> bytes:
    """A valid RunEvent of about 8 MiB: a Spark write naming many part files."""
    outputs = [{"namespace": "s3://lake",
                "name": f"mart/orders/part-{i:06d}-{uuid.uuid4()}.parquet",
                "outputFacets": {"outputStatistics": {"rowCount": i, "size": i * 100}}}
               for i in range(45_000)]
    return json.dumps({
        "eventType": "COMPLETE", "eventTime": "2026-11-30T01:00:00Z",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "bench", "name": f"big_write_{n}",
                "facets": {"jobType": {"integration": "SPARK", "jobType": "SQL_JOB"}}},
        "outputs": outputs, "producer": "bench"}).encode()


def hwm_kib(pid: int) -> int:
    """A process's peak resident set (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def serve(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    """``openlineage serve`` in a process of its own, once it listens."""
    env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PUDATO_TOPIC": settings.topic, "PUDATO_OL_HTTP_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "openlineage",
                                "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the receiver did not start")


def latencies(url: str, posts: int) -> list[float]:
    """Seconds each of ``posts`` sequential good posts took (each must be 201)."""
    took = []
    for i in range(posts):
        status, seconds = post(url, SAMPLE[i % len(SAMPLE)])
        assert status == 201, status
        took.append(seconds)
    return took


def describe(took: list[float]) -> str:
    """p50 / p99 / max in milliseconds."""
    ordered = sorted(took)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms")


def main() -> None:
    """Run the three measurements; print one line each."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--posts", type=int, default=100)
    parser.add_argument("--big", type=int, default=8)
    args = parser.parse_args()
    with services() as (bootstrap, _database):
        name = f"bench-rx-{uuid.uuid4().hex[:8]}"
        settings = Settings(bootstrap_servers=bootstrap, topic=f"{name}.events",
                            dlq_topic=f"{name}.dlq", partitions=3)
        kafka.create_topics(settings)
        port = free_port()
        process = serve(settings, port)
        url = f"http://127.0.0.1:{port}"
        try:
            latencies(url, 5)  # the producer's connections warmed
            calm = latencies(url, args.posts)
            slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.slow)]
            for conn in slow:
                conn.sendall(b"POST /api/v1/lineage HTTP/1.1\r\nHost: x\r\n")
            stop = threading.Event()

            def trickle() -> None:
                while not stop.wait(0.5):
                    for conn in slow:
                        with contextlib.suppress(OSError):
                            conn.sendall(b"X-Slow: 1\r\n")

            threading.Thread(target=trickle, daemon=True).start()
            under = latencies(url, args.posts)
            stop.set()
            for conn in slow:
                conn.close()
            print(f"good client, {args.posts} posts: alone {describe(calm)}; beside "
                  f"{args.slow} slowloris sockets {describe(under)}")

            bodies = [big_run_event(n) for n in range(args.big)]
            before = hwm_kib(process.pid)
            with concurrent.futures.ThreadPoolExecutor(args.big) as pool:
                answers = list(pool.map(post, [url] * args.big, bodies))
            after = hwm_kib(process.pid)
            print(f"{args.big} concurrent RunEvents of {len(bodies[0]) / 2**20:.1f} MiB: "
                  f"answers {sorted(s for s, _t in answers)}, slowest "
                  f"{max(t for _s, t in answers):.1f} s; receiver peak RSS "
                  f"{before / 1024:.0f} MB before, {after / 1024:.0f} MB after")
        finally:
            process.terminate()
            process.wait(30)
        away = settings.replace(bootstrap_servers=f"127.0.0.1:{free_port()}")
        port = free_port()
        env = {**os.environ, "PUDATO_BOOTSTRAP_SERVERS": away.bootstrap_servers,
               "PUDATO_OL_HTTP_PORT": str(port)}
        process = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "openlineage",
                                    "serve"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                timeout=1):
                        break
                except OSError:
                    time.sleep(0.1)
            waits = [post(f"http://127.0.0.1:{port}", SAMPLE[0]) for _ in range(5)]
            print(f"broker away: answers {[s for s, _t in waits]}, after "
                  f"{', '.join(f'{t:.2f}' for _s, t in waits)} s")
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
