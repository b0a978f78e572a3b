"""Plain-text tables and JSON for the commands' output."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec


def cell(value: Any, width: int = 48) -> str:
    """A value as a table cell: times in UTC to the millisecond, long text cut."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned columns under a header line."""
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines)


def as_json(value: Any) -> str:
    """JSON for scripts: times as RFC 3339, numbers of any size."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()
