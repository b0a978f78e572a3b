"""Mutations of captured OpenLineage RunEvents: for the fuzz test and its longer bench."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).parent / "data" / "openlineage"

# Values that have broken translators: wrong types, huge integers (str() of one raises),
# deep nesting, empty and long strings.
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**63, 10**5000, 1.5, float("1e308"), "", "x", "START", "FAIL",
    "x" * 5000, "2026-11-01T00:00:00", "2026-11-01T00:00:00Z", [], [1], [None], ["a"], [{}],
    {}, {"a": 1}, {"tags": 5}, {"runId": 5}, {"key": [], "value": {}}, [[[[[[[[]]]]]]]],
]


def samples() -> list[dict[str, Any]]:
    """Every captured RunEvent, decoded."""
    found = []
    for path in sorted(SAMPLES.rglob("*.jsonl")):
        found += [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return found


def places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key or index path inside a JSON value."""
    found = [path] if path else []
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, inner in items:
        found += places(inner, (*path, key))
    return found


def mutate(message: dict[str, Any], rng: random.Random, edits: int) -> dict[str, Any]:
    """A copy of ``message`` with ``edits`` values replaced by odd ones, or keys removed."""
    message = copy.deepcopy(message)
    for _ in range(edits):
        spots = places(message)
        if not spots:
            break
        *parent_path, last = rng.choice(spots)
        parent: Any = message
        for key in parent_path:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.2:
            del parent[last]
        else:
            parent[last] = copy.deepcopy(rng.choice(ODD_VALUES))
    return message


def encode(message: Any) -> bytes:
    """JSON bytes as a producer would send them (huge integers included)."""
    import sys  # noqa: PLC0415

    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(message).encode()
    finally:
        sys.set_int_max_str_digits(limit)
