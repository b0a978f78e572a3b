"""The OpenLineage translator under a long fuzz: mutations of every captured RunEvent.

    python bench/bench_fuzz.py [--seconds 60] [--seed 1]

The test suite runs 1,500 hypothesis examples of the same mutations
(tests/test_openlineage_fuzz.py); this runs for a fixed time instead and
prints how many inputs it tried, how many the translator refused, ignored
or translated, and every input that made it raise (the test of totality
fails on the first). Exit 1 if any input raised.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from tests.fuzz import encode, mutate, samples

from pudato_registry import inputs
from pudato_registry import openlineage as ol
from pudato_registry.validate import Rejection


def main() -> int:
    """Fuzz for the given time; print the tally."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    found, rng = samples(), random.Random(args.seed)
    tally: collections.Counter[str] = collections.Counter()
    raised: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        value = encode(mutate(rng.choice(found), rng, rng.randint(1, 4)))
        try:
            result = ol.translate_strict(value)
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            raised[f"{type(exc).__name__} in {frame.name} line {frame.lineno}"] += 1
            continue
        tally["rejected" if isinstance(result, Rejection) else
              "translated" if isinstance(result, inputs.Translated) else "ignored"] += 1
    total = sum(tally.values()) + sum(raised.values())
    print(f"{total:,} inputs in {args.seconds:.0f} s from {len(found)} captured RunEvents: "
          f"{tally['translated']:,} translated, {tally['rejected']:,} rejected, "
          f"{tally['ignored']:,} ignored, {sum(raised.values()):,} raised")
    for site, count in raised.most_common():
        print(f"  raised {count:,} times: {site}")
    return 1 if raised else 0


if __name__ == "__main__":
    sys.exit(main())
