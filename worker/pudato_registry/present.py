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
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:  # only the attributes are used: this module reads no database
    from pudato_registry.queries import GraphEdge, LineageGraph

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


# --- lineage graphs as Graphviz DOT and Mermaid -------------------------------------

_FAILED = frozenset({"failed", "cancelled"})


def _edge_colour(status: str) -> str:
    """Red for a failure, green for a success, grey while running: a failure never shows green."""
    if status in _FAILED:
        return "#c62828"
    return "#2e7d32" if status in {"success", "succeeded"} else "#757575"


def _edge_text(edge: GraphEdge) -> str:
    runs = f"{edge.runs} run" + ("" if edge.runs == 1 else "s")
    return f"{runs}, last {edge.last_status} {edge.last_seen.astimezone(UTC):%Y-%m-%d %H:%MZ}"


def _step_labels(graph: LineageGraph) -> dict[str, str]:
    """Step labels, with their namespace and environment when the graph spans several."""
    scopes = {(s.namespace, s.environment) for s in graph.steps}
    return {s.id: s.label if len(scopes) < 2 else f"{s.label} [{s.namespace}/{s.environment}]"
            for s in graph.steps}


def graph_table(graph: LineageGraph) -> str:
    """The graph as a heading and one line per edge, upstream first, nearest first."""
    labels = _step_labels(graph)

    def name(node_id: str) -> str:
        return labels.get(node_id) or node_id.removeprefix("dataset:")

    sides = " and ".join(s for s, on in (("upstream", graph.upstream),
                                        ("downstream", graph.downstream)) if on)
    rows = [{"side": e.side, "depth": e.depth, "from": name(e.source), "to": name(e.target),
             "runs": e.runs, "last_status": e.last_status, "last_seen": e.last_seen}
            for e in graph.edges]
    shape = f"{sides}, depth {graph.depth}" if graph.whole is None else "the whole namespace"
    heading = (f"{safe(graph.location)}: {len(graph.datasets)} datasets, {len(graph.steps)} "
               f"steps, {len(graph.edges)} edges ({shape})")
    return heading + "\n\n" + table(rows, ["side", "depth", "from", "to", "runs",
                                           "last_status", "last_seen"])


def _dot_text(text: str) -> str:
    return '"' + safe(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def graph_dot(graph: LineageGraph) -> str:
    """The graph in Graphviz DOT: datasets as boxes, steps as ellipses, failures in red."""
    labels = _step_labels(graph)
    lines = ["digraph lineage {", "  rankdir=LR;",
             '  node [fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for location in graph.datasets:
        bold = ", penwidth=2" if location == graph.location else ""
        lines.append(f"  {_dot_text('dataset:' + location)} [shape=box, "
                     f"label={_dot_text(location)}{bold}];")
    for step in graph.steps:
        lines.append(f"  {_dot_text(step.id)} [shape=ellipse, label={_dot_text(labels[step.id])}];")
    for edge in graph.edges:
        colour = _edge_colour(edge.last_status)
        lines.append(f"  {_dot_text(edge.source)} -> {_dot_text(edge.target)} "
                     f'[label={_dot_text(_edge_text(edge))}, color="{colour}", '
                     f'fontcolor="{colour}"];')
    lines.append("}")
    return "\n".join(lines)


_MERMAID = str.maketrans({'"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;", "`": "#96;",
                          "|": "#124;"})


def _mermaid_text(text: str) -> str:
    return '"' + safe(text).translate(_MERMAID) + '"'


def graph_mermaid(graph: LineageGraph) -> str:
    """The graph as a Mermaid flowchart (paste into Markdown): datasets as cylinders, steps
    as rounded boxes, edges of failed runs in red."""
    labels = _step_labels(graph)
    ids: dict[str, str] = {}
    lines = ["flowchart LR"]
    for n, location in enumerate(graph.datasets):
        ids["dataset:" + location] = f"d{n}"
        lines.append(f"  d{n}[({_mermaid_text(location)})]")
    for n, step in enumerate(graph.steps):
        ids[step.id] = f"s{n}"
        lines.append(f"  s{n}([{_mermaid_text(labels[step.id])}])")
    styles = []
    for n, edge in enumerate(graph.edges):
        lines.append(f"  {ids[edge.source]} -->|{_mermaid_text(_edge_text(edge))}| "
                     f"{ids[edge.target]}")
        styles.append(f"  linkStyle {n} stroke:{_edge_colour(edge.last_status)}")
    if graph.location in graph.datasets:
        lines.append(f"  style {ids['dataset:' + graph.location]} stroke-width:3px")
    return "\n".join(lines + styles)
