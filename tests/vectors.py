"""The golden vectors of ``events-v1.md``: loading them, producing their bytes, comparing rows."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent / "data" / "vectors"


@dataclass(frozen=True)
class Message:
    """One message of a vector: its key and value bytes as the spec says to produce them."""

    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Vector:
    """One golden case."""

    name: str
    messages: list[Message]
    jobs: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    dead_letters: int
    edges: list[dict[str, Any]]  # amendment 3's pudato_lineage_edges


def _value(message: dict[str, Any]) -> bytes | None:
    if "value_text" in message:
        return str(message["value_text"]).encode()
    if "value_base64" in message:
        return base64.b64decode(message["value_base64"])
    if message["value"] is None:
        return None
    return json.dumps(message["value"]).encode()


def load(path: Path) -> Vector:
    """Read one vector file."""
    raw = json.loads(path.read_text())
    return Vector(
        name=raw["name"],
        messages=[
            Message(None if m["key"] is None else m["key"].encode(), _value(m))
            for m in raw["messages"]
        ],
        jobs=raw["expected"]["jobs"],
        steps=raw["expected"]["steps"],
        dead_letters=raw["expected"]["dead_letters"],
        edges=raw["expected"]["edges"],
    )


def all_vectors() -> list[Vector]:
    """Every vector, in file order."""
    return [load(p) for p in sorted(VECTORS.glob("*.json"))]


def edge_key(edge: dict[str, Any]) -> tuple[str, ...]:
    """An edge's key, as pudato_lineage_edges orders its rows."""
    return tuple(edge[c] for c in ("location", "direction", "namespace", "environment",
                                   "pipeline", "step_name"))


def as_expected(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the vectors spell it: timestamps as UTC RFC 3339 with microseconds."""
    return {k: _spell(v) for k, v in row.items()}


def _spell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value
