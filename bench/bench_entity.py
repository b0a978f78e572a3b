"""What an entity's n-th event costs: the limits of amendment 1 bound every saved state.

    python bench/bench_entity.py [--events 1000] [--shape progress|lineage]

One step receives ``--events`` events, each in a transaction of its own (a
long-lived step whose events arrive in separate batches: the worst case for
its saved state, which every batch reads, folds into and writes back whole).
Printed per event number: the median wall time of the worker's path
(``apply_events``: read the state, fold, write row and state, commit) over a
window of events around it, its CPU in this process, the pure part alone
(decode the state, fold, row, encode the state), and the saved state's size.

Shapes: ``progress``, each event a status update with a metadata key of its
own (a streaming or chatty step); ``lineage``, each event adding 10 new
output references, so that its 1,000th event holds the 10,000 a list may.

Target (issue 11): the 1,000th event within 3x of the first.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import timedelta

from common import services
from pudato_registry import factory, store
from pudato_registry.events import DataReference
from pudato_registry.loop import apply_events
from pudato_registry.projection import EPOCH, StepState
from pudato_registry.sample import START
from pudato_registry.wire import Event, from_model


def events_of(shape: str, count: int) -> list[Event]:
    """The events of one step, in the order they arrive."""
    out = []
    for n in range(count):
        at = START + timedelta(seconds=n)
        if shape == "lineage":
            outputs = [DataReference(ref_type="table", location=f"wh.part_{n}_{i}")
                       for i in range(10)]
            event = factory.step_succeeded("job", "step", outputs=outputs, occurred_at=at,
                                           metadata={"batch": n})
        else:
            event = factory.step_succeeded("job", "step", occurred_at=at,
                                           metadata={f"progress_{n}": n, "rows": n * 100})
        out.append(from_model(event))
    return out


def pure_cost(saved: str, event: Event, repeat: int = 3) -> float:
    """Seconds to decode a state, fold one event into it, make the row, encode the state."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        state = StepState.load("step", saved)
        state.apply(event, (event.occurred_at - EPOCH) // timedelta(microseconds=1))  # type: ignore[arg-type]
        state.row()
        state.dump()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    """Apply one step's events one transaction each and print the cost by event number."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--shape", choices=("progress", "lineage"), default="progress")
    parser.add_argument("--window", type=int, default=10, help="events per median")
    args = parser.parse_args()
    events = events_of(args.shape, args.events)
    with services() as (_bootstrap, database):
        admin = database.rsplit("/", 1)[0] + "/postgres"
        name = f"bench_{uuid.uuid4().hex[:8]}"
        store.create_database(admin, name)
        url = database.rsplit("/", 1)[0] + "/" + name
        store.migrate(url)
        target = store.Store(url)
        wall, cpu, pure, sizes = [], [], [], []
        for event in events:
            saved = target.read_states([], ["step"]).steps.get("step")
            if saved is not None:
                pure.append(pure_cost(saved, event))
                sizes.append(len(saved))
            else:
                pure.append(pure_cost(StepState(step_id="step").dump(), event))
                sizes.append(0)
            began, began_cpu = time.perf_counter(), time.thread_time()
            apply_events(target, [event])
            wall.append(time.perf_counter() - began)
            cpu.append(time.thread_time() - began_cpu)
        target.close()
        store.drop_database(admin, name)

    def at(values: list[float], n: int) -> float:
        low = max(0, min(n - 1, len(values) - args.window))
        return statistics.median(values[low:low + args.window])

    print(f"one step, {args.events} events of shape {args.shape!r}, one transaction each; "
          f"medians over {args.window} events from the n-th")
    print(f"{'event n':>8} {'wall ms':>8} {'cpu ms':>8} {'pure ms':>8} {'state KB':>9}")
    marks = [n for n in (1, 10, 100, 500, 1000, 2000, 5000) if n <= args.events]
    for n in marks:
        print(f"{n:>8} {at(wall, n) * 1000:>8.2f} {at(cpu, n) * 1000:>8.2f} "
              f"{at(pure, n) * 1000:>8.3f} {sizes[n - 1] / 1024:>9.1f}")
    last = marks[-1]
    print(f"event {last} / event 1: wall {at(wall, last) / at(wall, 1):.2f}x, "
          f"cpu {at(cpu, last) / at(cpu, 1):.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
