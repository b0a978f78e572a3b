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

from pudato_registry.diff import Card, Change, Input, RunDiff, execution_text, first_line

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


# --- jobs diff and jobs reproduce ---------------------------------------------------

def _value(value: Any) -> str:
    """A parameter's value as JSON text, controls escaped."""
    return safe(msgspec.json.encode(value).decode()) if value is not None else "(absent)"


def _changes(title: str, changes: Sequence[Change]) -> list[str]:
    if not changes:
        return []
    return ["", f"{title} (A -> B)"] + [f"  {safe(c.path)}: {_value(c.a)} -> {_value(c.b)}"
                                        for c in changes]


def _ms(value: Any) -> str:
    return "" if value is None else duration(int(value))


def _producer(found: Input | None) -> str:
    if found is None:
        return "(not read)"
    if found.producer is None:
        return "(no recorded writer)"
    return f"{found.producer['job_id']} / {found.producer['step_name']}"


def diff_text(d: RunDiff, *, sql: str = "changed") -> str:
    """A comparison for people: verdict, identity, configuration, inputs, steps, SQL."""
    lines = [f"verdict: {'; '.join(d.verdict)}", ""]
    lines.append(table([
        {"run": side, "job_id": job["job_id"], "status": job["status"],
         "duration": _ms(ms), "logic_version": job.get("logic_version"),
         "created_at": job.get("created_at")}
        for side, job, ms in (("A", d.a, d.duration_ms[0]), ("B", d.b, d.duration_ms[1]))],
        ["run", "job_id", "status", "duration", "logic_version", "created_at"]))
    lines += _changes("runtime", d.runtime)
    lines += _changes("parameters", d.parameters)
    lines += _changes("request", d.request)
    if d.inputs:
        lines += ["", "inputs no step of the run wrote, that moved (rows, producing run)"]
        lines.append(table([{"location": i.location, "rows_a": i.rows.a, "rows_b": i.rows.b,
                             "produced_for_a_by": _producer(i.a),
                             "produced_for_b_by": _producer(i.b)} for i in d.inputs],
                           ["location", "rows_a", "rows_b", "produced_for_a_by",
                            "produced_for_b_by"]))
    shown = [s for s in d.steps if s.differs or s.slower("B") or s.slower("A")]
    if shown:
        runs = max((s.baseline.runs for s in shown if s.baseline), default=0)
        lines += ["", f"steps that differ (durations against the median / p95 of up to "
                      f"{runs} recent successful runs)"]
        lines.append(table([{
            "step": s.key, "a": "(only in B)" if s.a is None else s.a["status"],
            "b": "(only in A)" if s.b is None else s.b["status"],
            "took_a": _ms((s.a or {}).get("duration_ms")),
            "took_b": _ms((s.b or {}).get("duration_ms")),
            "baseline": "" if s.baseline is None else
            f"{_ms(s.baseline.median_ms)} / {_ms(s.baseline.p95_ms)}"} for s in shown],
            ["step", "a", "b", "took_a", "took_b", "baseline"]))
        for s in shown:  # whole, not cut to a cell: the error is often the answer
            for side, row in (("A", s.a), ("B", s.b)):
                if row is not None and (error := first_line(row.get("error"))):
                    lines.append(f"  {safe(s.key)} in {side}: {safe(error)}")
    outputs = [(s.key, c) for s in d.steps for c in s.outputs]
    if outputs:
        lines += ["", "outputs (rows A -> B)"]
        for key, c in outputs:
            note = "  DROPPED TO 0" if c.dropped_to_zero else (
                f"  {c.moved * 100:+.0f} %" if c.moved is not None else "")
            lines.append(f"  {safe(key)}: {safe(c.location)}  {_value(c.a)} -> {_value(c.b)}"
                         f"{note}")
    lines += _sql(d, sql)
    return "\n".join(lines)


def _sql(d: RunDiff, mode: str) -> list[str]:
    """The executions: each distinct diff once, naming every step it applies to."""
    if mode == "none":
        return []
    lines: list[str] = []
    if mode == "full":
        for s in d.steps:
            for side, row in (("A", s.a), ("B", s.b)):
                if row is not None and row.get("executions"):
                    lines += ["", f"{safe(s.key)} in {side}:"]
                    lines += [safe(line) for e in row["executions"]
                              for line in execution_text(e).splitlines()]
        return lines
    by_text: dict[str, list[str]] = {}
    literal_only: list[str] = []
    for s in d.steps:
        if s.sql is None:
            continue
        if s.sql.only_literals:
            literal_only.append(s.key)
        else:
            by_text.setdefault(s.sql.diff, []).append(s.key)
    if literal_only:
        lines += ["", "executions differ only in literals: " + ", ".join(map(safe, literal_only))]
    for text, keys in by_text.items():
        lines += ["", f"executions of {', '.join(map(safe, keys))}:"]
        lines += [safe(line) for line in text.splitlines()]
    return lines


def card_text(c: Card) -> str:
    """A reproduction card for people."""
    job = c.job
    lines = [f"to re-run {safe(job['job_id'])} ({safe(str(job.get('pipeline')))}, "
             f"{safe(job['environment'])}/{safe(job['namespace'])}, it ended {job['status']})",
             "", f"logic_version  {_value(job.get('logic_version'))}",
             f"dag_run_id     {_value(job.get('dag_run_id'))}",
             f"runtime        {_value(c.runtime)}",
             f"parameters     {_value(c.parameters)}", f"request        {_value(c.request)}"]
    if c.inputs:
        lines += ["", "inputs from outside the run"]
        lines.append(table([{
            "location": i.location, "rows": i.rows, "version": i.version,
            "produced_by": _producer(i),
            "overwritten_since": "" if i.overwritten_by is None else
            f"YES, by {i.overwritten_by['job_id']} at {cell(i.overwritten_by['completed_at'])}"}
            for i in c.inputs], ["location", "rows", "version", "produced_by",
                                 "overwritten_since"]))
    lines += ["", "steps, in order"]
    for key, row in c.steps:
        lines.append(f"  {safe(key)} ({row['status']})")
        for e in row.get("executions") or []:
            lines += [f"      {safe(line)}" for line in execution_text(e).splitlines()]
    if c.overwritten:
        lines += ["", f"warning: {len(c.overwritten)} input(s) were written again since this "
                      "run read them: a re-run reads other data"]
    lines += ["", "not recorded by the registry:"] + [f"  - {n}" for n in c.not_recorded]
    return "\n".join(lines)
