"""OpenLineage in: RunEvents/s through the bridge and through the HTTP receiver.

    python bench/bench_openlineage.py [--runs 1000] [--clients 8]

RunEvents are the captured samples (dbt, the plain client), each copy given
fresh run ids, so that every run is new. The bridge drains them from its
topic into the registry topic (translation, publishing and acknowledgement
included); the receiver takes them from ``--clients`` concurrent HTTP
clients, each waiting for its 201 before the next.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from common import produce_all, services
from pudato_registry import bridge, kafka, receiver
from pudato_registry.settings import Settings

SAMPLES = Path(__file__).parents[1] / "tests" / "data" / "openlineage"
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def run_events(copies: int) -> list[bytes]:
    """``copies`` of the dbt and plain-client samples, each copy with run ids of its own."""
    lines = [line for name in ("dbt-build-success", "python-client-parent-children")
             for line in (SAMPLES / f"{name}.jsonl").read_bytes().splitlines()]
    out = []
    for _ in range(copies):
        fresh: dict[bytes, bytes] = {}

        def renamed(match: re.Match[bytes], fresh: dict[bytes, bytes] = fresh) -> bytes:
            return fresh.setdefault(match.group(0), str(uuid.uuid4()).encode())

        out += [_UUID.sub(renamed, line) for line in lines]
    return out


def main() -> None:
    """Time the bridge, then the receiver, on the same RunEvents."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000, help="copies of the samples")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    values = run_events(args.runs)
    with services() as (bootstrap, _database):
        name = f"bench-ol-{uuid.uuid4().hex[:8]}"
        settings = Settings(bootstrap_servers=bootstrap, topic=f"{name}.events",
                            dlq_topic=f"{name}.dlq", ol_topic=f"{name}.ol",
                            ol_dlq_topic=f"{name}.ol.dlq", ol_group_id=name, partitions=6,
                            metrics_port=0)
        kafka.create_topics(settings)
        bridge.create_topics(settings)
        produce_all(settings.replace(topic=settings.ol_topic),
                    [(b"run:bench", value) for value in values])
        running = bridge.Bridge(settings)
        started = time.perf_counter()
        running.run(drain=True)
        seconds = time.perf_counter() - started
        print(f"bridge: {len(values)} RunEvents in {seconds:.1f} s: {len(values) / seconds:,.0f}"
              f" RunEvents/s ({running.stats.published} registry events published, "
              f"{running.stats.ignored} ignored), start-up and group join included")

        app = receiver.Receiver(settings)
        server = receiver.make_server(app, "127.0.0.1", 0, threads=args.clients)
        threading.Thread(target=server.run, daemon=True).start()
        url = f"http://127.0.0.1:{server.effective_port}/api/v1/lineage"
        share = [values[i::args.clients] for i in range(args.clients)]
        failures: list[int] = []

        def client(mine: list[bytes]) -> None:
            for value in mine:
                request = urllib.request.Request(url, data=value, headers={
                    "Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                    if response.status not in (200, 201):
                        failures.append(response.status)

        threads = [threading.Thread(target=client, args=(mine,)) for mine in share]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        server.close()
        app.close()
        print(f"receiver: {len(values)} RunEvents from {args.clients} clients in {seconds:.1f} s:"
              f" {len(values) / seconds:,.0f} RunEvents/s, each answered after the broker's "
              f"acknowledgement ({len(failures)} not 2xx)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
