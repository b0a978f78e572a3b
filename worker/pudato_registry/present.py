"""Plain-text tables and JSON for the commands' output.

Event data reaches a terminal here, so every control character in it (C0,
DEL, C1: ESC, BEL, CSI ...) and every bidirectional or invisible format
character (U+202E, U+2066-U+2069 ...) is shown escaped, never sent as is: an
event cannot move the cursor, ring the bell, retitle the window or reverse
the text of the person reading ``jobs``, ``lineage``, ``dlq list`` or
``replay --verify``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})
# Bidirectional and invisible format controls: "\u202e" in a job id would show the
# rest of a line reversed; they are escaped in text and in JSON alike.
_FORMAT = {c: f"\\u{c:04x}" for c in (0x061C, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F,
                                      *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF)}
_CONTROL.update(_FORMAT)
_C1 = {c: f"\\u{c:04x}" for c in range(0x80, 0xA0)}  # JSON escapes C0 itself
_C1.update(_FORMAT)


def safe(text: str) -> str:
    """``text`` with every control character escaped, fit for a terminal."""
    return text.translate(_CONTROL)


def cell(value: Any, width: int = 48) -> str:
    """A value as a table cell: times in UTC to the millisecond (marked Z), long text cut in
    the middle (ids and locations that share a start differ at their end), controls escaped."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    text = "" if value is None else safe(str(value))
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return f"{text[:head]}...{text[len(text) - (width - 3 - head):]}"


def duration(ms: int) -> str:
    """Milliseconds as a person reads them: 850ms, 4.2s, 4m58s, 2h05m, 3d04h."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    if seconds < 60:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _cell_of(column: str, value: Any) -> str:
    if column.endswith("_ms") and isinstance(value, int) and not isinstance(value, bool) \
            and value >= 0:
        return f"{value} ({duration(value)})"  # the raw value stays, for copying
    return cell(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned columns under a header line."""
    cells = [[_cell_of(c, r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines)


def as_json(value: Any) -> str:
    """JSON for scripts: times as RFC 3339, numbers of any size."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode().translate(_C1)
