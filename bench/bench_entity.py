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

from msgspec.structs import replace

from common import migrated_database, services
from pudato_registry import factory, store
from pudato_registry.events import DataReference
from pudato_registry.loop import apply_events, tune_interpreter
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
    parser.add_argument("--window", type=int, default=20, help="events per median")
    parser.add_argument("--fresh-every", type=int, default=10,
                        help="apply a fresh step's first event after every N events")
    args = parser.parse_args()
    events = events_of(args.shape, args.events)
    tune_interpreter()  # the worker's own garbage-collector settings
    with services() as (_bootstrap, database), migrated_database(database) as url:
        target = store.Store(url)

        def timed(event: Event) -> tuple[float, float]:
            began, began_cpu = time.perf_counter(), time.thread_time()
            apply_events(target, [event])
            return time.perf_counter() - began, time.thread_time() - began_cpu

        for warm_up in events_of(args.shape, 20):  # connections, caches, plans
            timed(replace(warm_up, step_id=f"warm-{uuid.uuid4().hex}"))
        wall, cpu, pure, sizes = [], [], [], []
        first_wall, first_cpu = [], []  # a fresh step's first event, all along the run
        for n, event in enumerate(events, 1):
            saved = target.read_states([], ["step"]).steps.get("step")
            saved = saved if saved is not None else StepState(step_id="step").dump()
            pure.append(pure_cost(saved, event))
            sizes.append(len(saved))
            spent = timed(event)
            wall.append(spent[0])
            cpu.append(spent[1])
            if n % args.fresh_every == 0:
                spent = timed(replace(events[0], step_id=f"fresh-{n}",
                                      event_id=f"fresh-{n}"))
                first_wall.append(spent[0])
                first_cpu.append(spent[1])
        target.close()

    def at(values: list[float], n: int) -> float:
        low = max(0, min(n - 1, len(values) - args.window))
        return statistics.median(values[low:low + args.window])

    print(f"one step, {args.events} events of shape {args.shape!r}, one transaction each; "
          f"medians over {args.window} events from the n-th; 'fresh' is the first event of "
          f"a new step, {len(first_wall)} of them spread over the run")
    print(f"{'event n':>8} {'wall ms':>8} {'cpu ms':>8} {'pure ms':>8} {'state KB':>9}")
    print(f"{'fresh':>8} {statistics.median(first_wall) * 1000:>8.2f} "
          f"{statistics.median(first_cpu) * 1000:>8.2f}")
    marks = [n for n in (1, 10, 100, 500, 1000, 2000, 5000) if n <= args.events]
    for n in marks:
        print(f"{n:>8} {at(wall, n) * 1000:>8.2f} {at(cpu, n) * 1000:>8.2f} "
              f"{at(pure, n) * 1000:>8.3f} {sizes[n - 1] / 1024:>9.1f}")
    last = marks[-1]
    ratio_wall = at(wall, last) / statistics.median(first_wall)
    ratio_cpu = at(cpu, last) / statistics.median(first_cpu)
    print(f"event {last} / a first event: wall {ratio_wall:.2f}x, cpu {ratio_cpu:.2f}x "
          "(target <= 3x)")


if __name__ == "__main__":
    main()
