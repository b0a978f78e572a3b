"""Why did tonight's run differ? Two runs compared, and a run's reproduction card; pure.

Everything here is a function of rows (a job row, its step rows, and what
the registry knows around them: the recent successful runs of each step, and
which run produced each input), so the answer depends on the set of events
only. :mod:`queries` reads those rows; the CLI and the web UI render the
result.

What counts as a difference: everything the runs *did* (status, code
version, parameters, request, which steps ran and how they ended, what they
read and wrote and how many rows, what they executed), never their ids and
times. Durations are reported against the step's own recent history rather
than compared to each other: a run is "slower" when a step took longer than
the p95 of its last successful runs, not when it took 3 s more than
yesterday's.

Steps are matched by ``step_name``; the k-th run of one name within a job (a
retry) is ``name#k`` (``name`` for the first), so a retried step is matched
attempt by attempt.
"""

from __future__ import annotations

import difflib
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from pudato_registry import masking

Row = Mapping[str, Any]
SECRET_WORDS = masking.DEFAULT_KEYS
MASK = masking.MASK
_FAILED = frozenset({"failed", "cancelled", "skipped"})
_ROW_COUNT_KEYS = ("row_count", "rows", "num_rows", "rowCount")
_SQL_KEYS = ("sql", "compiled_sql", "compiled_code", "query", "statement")
_canonical = msgspec.json.Encoder(order="sorted").encode


# --- values as paths ------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON value as ``{path: leaf}``: ``a.b[0].c``; an empty object or list inside is a
    leaf, the empty top level has no paths."""
    if not prefix and value in ({}, [], None):
        return {}
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for n, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{n}]"))
        return out
    return {prefix: value}


def is_secret(path: str, words: Sequence[str] = SECRET_WORDS) -> bool:
    """Whether a path's last key looks like it holds a secret (``db.password``, ``api_key``)."""
    return masking.secret_key(re.split(r"[.\[]", path)[-1], words)


def masked(path: str, value: Any, words: Sequence[str] = SECRET_WORDS) -> Any:
    """The value to show: ``***`` for a secret-looking key (whatever the value)."""
    return MASK if value is not None and is_secret(path, words) else value


@dataclass(frozen=True)
class Change:
    """One path whose value differs; None on a side that lacks it."""

    path: str
    a: Any
    b: Any

    def flipped(self) -> Change:
        """The same change seen from the other run."""
        return Change(self.path, self.b, self.a)


_ABSENT = object()


def path_diff(a: Any, b: Any, words: Sequence[str] = SECRET_WORDS) -> list[Change]:
    """The paths whose values differ, sorted; secrets masked (a changed secret still shows
    as changed, ``*** -> ***``)."""
    left, right = flatten(a), flatten(b)
    changes = []
    for path in sorted(set(left) | set(right)):
        x, y = left.get(path, _ABSENT), right.get(path, _ABSENT)
        if x != y or type(x) is not type(y):
            changes.append(Change(path, None if x is _ABSENT else masked(path, x, words),
                                  None if y is _ABSENT else masked(path, y, words)))
    return changes


# --- steps ----------------------------------------------------------------------------


def _seen(step: Row) -> Any:
    return step.get("started_at") or step.get("completed_at")


def step_keys(steps: Iterable[Row]) -> dict[str, Row]:
    """Steps by match key, in run order: ``name`` for a name's first run, ``name#k`` for
    its k-th (a retry); a step without a name by its id."""
    ordered = sorted(steps, key=lambda s: (_seen(s) is None, _seen(s) or 0, s["step_id"]))
    counts: dict[str, int] = {}
    out: dict[str, Row] = {}
    for step in ordered:
        name = step.get("step_name") or f"(unnamed {step['step_id']})"
        counts[name] = counts.get(name, 0) + 1
        out[name if counts[name] == 1 else f"{name}#{counts[name]}"] = step
    return out


def row_count(reference: Row) -> int | None:
    """A reference's row count, if its metadata gives one."""
    metadata = reference.get("metadata") or {}
    for key in _ROW_COUNT_KEYS:
        value = metadata.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def version_of(reference: Row) -> Any:
    """A reference's data version (``metadata.version``), if it gives one."""
    return (reference.get("metadata") or {}).get("version")


def execution_text(execution: Row) -> str:
    """What a step executed, as text to diff: its SQL if it has some, else its details."""
    details = execution.get("details") or {}
    for key in _SQL_KEYS:
        value = details.get(key) if isinstance(details, Mapping) else None
        if isinstance(value, str):
            return value.strip() + "\n"
    rendered = msgspec.json.format(_canonical(details), indent=2).decode()
    return f"-- {execution.get('execution_type', '?')}\n{rendered}\n"


_LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")


def normalize_literals(text: str) -> str:
    """SQL with its string and number literals replaced by ``?``."""
    return _LITERALS.sub("?", text)


@dataclass(frozen=True)
class Baseline:
    """A step's recent successful runs: how many, and their median and p95 duration."""

    runs: int
    median_ms: float
    p95_ms: float


def baseline(durations: Sequence[int]) -> Baseline | None:
    """The baseline of these durations (None without any)."""
    if not durations:
        return None
    ordered = sorted(durations)
    return Baseline(len(ordered), statistics.median(ordered),
                    ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))])


@dataclass(frozen=True)
class CountChange:
    """A location's row count in both runs, and how far it moved."""

    location: str
    a: int | None
    b: int | None

    @property
    def moved(self) -> float | None:
        """The relative change, b against a (None if either is unknown or a is 0)."""
        if self.a is None or self.b is None or self.a == 0:
            return None
        return (self.b - self.a) / self.a

    @property
    def dropped_to_zero(self) -> bool:
        """Rows in one run, none in the other."""
        return ((self.a or 0) > 0 and self.b == 0) or ((self.b or 0) > 0 and self.a == 0)

    def flipped(self) -> CountChange:
        """The same seen from the other run."""
        return CountChange(self.location, self.b, self.a)


def _counts(references: Iterable[Row]) -> dict[str, int | None]:
    return {r["location"]: row_count(r) for r in references}


def _count_changes(a: Iterable[Row], b: Iterable[Row]) -> list[CountChange]:
    left, right = _counts(a), _counts(b)
    return [CountChange(loc, left.get(loc), right.get(loc))
            for loc in sorted(set(left) | set(right))
            if left.get(loc) != right.get(loc) or (loc in left) != (loc in right)]


@dataclass(frozen=True)
class SqlChange:
    """How what a step executed differs: a unified diff, and whether only literals differ."""

    diff: str
    only_literals: bool


def sql_change(a: Row | None, b: Row | None, *, literals: bool = False) -> SqlChange | None:
    """The change of a matched step's executions (None if they are the same); with
    ``literals``, whether it is only in string and number literals."""
    left = "".join(execution_text(e) for e in (a or {}).get("executions") or [])
    right = "".join(execution_text(e) for e in (b or {}).get("executions") or [])
    if left == right:
        return None
    lines = difflib.unified_diff(left.splitlines(keepends=True),
                                 right.splitlines(keepends=True), "A", "B", n=2)
    return SqlChange("".join(lines),
                     literals and normalize_literals(left) == normalize_literals(right))


def first_line(text: str | None) -> str | None:
    """The first non-empty line of an error."""
    if not text:
        return None
    return next((line.strip() for line in text.splitlines() if line.strip()), None)


@dataclass(frozen=True)
class StepDiff:
    """One matched (or unmatched) step of the two runs."""

    key: str
    a: Row | None
    b: Row | None
    baseline: Baseline | None  # of the step name, over the recent successful runs
    outputs: list[CountChange]
    sql: SqlChange | None
    inputs_changed: list[str]  # locations read by one run only

    @property
    def only_in(self) -> str | None:
        """"A" or "B" for a step of one run only."""
        return "A" if self.b is None else "B" if self.a is None else None

    @property
    def status_changed(self) -> bool:
        """Whether the two runs' attempts ended differently."""
        return self.a is not None and self.b is not None and self.a["status"] != self.b["status"]

    def slower(self, side: str) -> float | None:
        """How many times its baseline median a side took, if beyond the baseline's p95."""
        row = self.a if side == "A" else self.b
        if row is None or self.baseline is None or not row.get("duration_ms"):
            return None
        if row["duration_ms"] <= self.baseline.p95_ms or not self.baseline.median_ms:
            return None
        return float(row["duration_ms"]) / self.baseline.median_ms

    @property
    def differs(self) -> bool:
        """Whether anything but times and ids differs."""
        return bool(self.only_in or self.status_changed or self.outputs or self.sql
                    or self.inputs_changed)


@dataclass(frozen=True)
class Input:
    """A location a run read that none of its own steps wrote, and who produced it."""

    location: str
    rows: int | None  # as the reading step reported it
    version: Any
    producer: Row | None  # the last successful writer before the reading step started:
    # {job_id, step_id, step_name, pipeline, completed_at, rows}
    overwritten_by: Row | None = None  # a successful write after that, if any (reproduce)


def external_inputs(steps: Iterable[Row], producers: Mapping[str, Row | None],
                    overwrites: Mapping[str, Row | None] | None = None) -> list[Input]:
    """The run's inputs that no step of the run produced, by location."""
    steps = list(steps)
    produced = {r["location"] for s in steps for r in s.get("outputs") or []}
    found: dict[str, Input] = {}
    for step in sorted(steps, key=lambda s: (_seen(s) is None, _seen(s) or 0, s["step_id"])):
        for ref in step.get("inputs") or []:
            location = ref["location"]
            if location in produced or location in found:
                continue
            found[location] = Input(location, row_count(ref), version_of(ref),
                                    producers.get(location),
                                    (overwrites or {}).get(location))
    return [found[k] for k in sorted(found)]


@dataclass(frozen=True)
class RunFacts:
    """What the registry knows of one run, as the comparison needs it."""

    job: Row
    steps: Sequence[Row]
    producers: Mapping[str, Row | None] = field(default_factory=dict)  # of external inputs


@dataclass(frozen=True)
class InputChange:
    """An external input of either run: its rows and producing run in each."""

    location: str
    a: Input | None
    b: Input | None

    @property
    def rows(self) -> CountChange:
        """The row counts A -> B."""
        return CountChange(self.location, self.a.rows if self.a else None,
                           self.b.rows if self.b else None)

    @property
    def producer_changed(self) -> bool:
        """Whether another run produced it (or only one run read it)."""
        def job(i: Input | None) -> Any:
            return None if i is None or i.producer is None else i.producer.get("job_id")
        return self.a is None or self.b is None or job(self.a) != job(self.b)

    @property
    def version_changed(self) -> bool:
        """Whether the data versions differ (where references carry one)."""
        return (self.a.version if self.a else None) != (self.b.version if self.b else None)


@dataclass(frozen=True)
class RunDiff:
    """Two runs compared, in root-cause order."""

    a: Row
    b: Row
    verdict: list[str]
    status: Change | None
    logic_version: Change | None
    runtime: list[Change]
    parameters: list[Change]
    request: list[Change]
    inputs: list[InputChange]  # external inputs whose rows, producer or version moved
    steps: list[StepDiff]  # every matched and unmatched step
    duration_ms: tuple[int | None, int | None]
    threshold: float

    @property
    def differs(self) -> bool:
        """Whether the runs differ in anything but times and ids (``diff``'s exit 1)."""
        return bool(self.status or self.logic_version or self.runtime or self.parameters
                    or self.request or any(self._input_differs(i) for i in self.inputs)
                    or any(s.differs for s in self.steps))

    def _input_differs(self, change: InputChange) -> bool:
        return change.a is None or change.b is None or change.rows.a != change.rows.b \
            or change.version_changed


def _duration(job: Row) -> int | None:
    start, end = job.get("started_at"), job.get("completed_at")
    if isinstance(start, datetime) and isinstance(end, datetime):
        return int((end - start).total_seconds() * 1000)
    return None


def _change(a: Any, b: Any, path: str) -> Change | None:
    return None if a == b else Change(path, a, b)


def compare(a: RunFacts, b: RunFacts, *, baselines: Mapping[str, Sequence[int]] | None = None,
            threshold: float = 0.5, literals: bool = False,
            words: Sequence[str] = SECRET_WORDS) -> RunDiff:
    """Run ``a`` against run ``b``: what differs, and a verdict in root-cause order.

    ``baselines``: per step name, the durations of its recent successful runs.
    ``threshold``: a row count that moves by more than this fraction is named
    in the verdict. ``literals``: tell SQL that differs only in literals apart.
    """
    baselines = baselines or {}
    left, right = step_keys(a.steps), step_keys(b.steps)
    order = list(dict.fromkeys([*right, *left]))  # B's order, then A's leftovers
    steps = []
    for key in order:
        x, y = left.get(key), right.get(key)
        name = (y or x or {}).get("step_name")
        ins_x = {r["location"] for r in (x or {}).get("inputs") or []}
        ins_y = {r["location"] for r in (y or {}).get("inputs") or []}
        steps.append(StepDiff(
            key, x, y, baseline(list(baselines.get(name, ()))) if name else None,
            _count_changes((x or {}).get("outputs") or [], (y or {}).get("outputs") or [])
            if x is not None and y is not None else [],
            sql_change(x, y, literals=literals) if x is not None and y is not None else None,
            sorted(ins_x ^ ins_y) if x is not None and y is not None else []))
    ext_a = {i.location: i for i in external_inputs(a.steps, a.producers)}
    ext_b = {i.location: i for i in external_inputs(b.steps, b.producers)}
    inputs = [InputChange(loc, ext_a.get(loc), ext_b.get(loc))
              for loc in sorted(set(ext_a) | set(ext_b))]
    inputs = [i for i in inputs if i.a is None or i.b is None or i.rows.a != i.rows.b
              or i.producer_changed or i.version_changed]
    meta_a, meta_b = a.job.get("metadata") or {}, b.job.get("metadata") or {}
    found = RunDiff(
        a=a.job, b=b.job, verdict=[],
        status=_change(a.job["status"], b.job["status"], "status"),
        logic_version=_change(a.job.get("logic_version"), b.job.get("logic_version"),
                              "logic_version"),
        runtime=path_diff(meta_a.get("runtime"), meta_b.get("runtime"), words)
        if "runtime" in meta_a or "runtime" in meta_b else [],
        parameters=path_diff(a.job.get("parameters") or {}, b.job.get("parameters") or {},
                             words),
        request=path_diff(a.job.get("request") or {}, b.job.get("request") or {}, words),
        inputs=inputs, steps=steps, duration_ms=(_duration(a.job), _duration(b.job)),
        threshold=threshold)
    found.verdict.extend(verdict(found))
    return found


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def verdict(d: RunDiff) -> list[str]:
    """The differences in root-cause order, a phrase each."""
    out = [*_outcomes(d), *_identity(d), *_sources(d), *_steps(d)]
    return out or ["no differences (times and ids aside)"]


def _outcomes(d: RunDiff) -> list[str]:
    """Which run failed, and where: the first thing on-call asks."""
    out = []
    first_divergence = next((s.key for s in d.steps if s.status_changed or s.only_in), None)
    for side, run in (("B", d.b), ("A", d.a)):
        if run["status"] not in _FAILED:
            continue
        failed = _unrecovered(d.steps, side)
        where = f" at step {failed[0]}" if failed else ""
        note = ", the first divergence" if failed and first_divergence == failed[0] else ""
        out.append(f"{side} {run['status']}{where}{note}")
    return out


def _unrecovered(steps: Sequence[StepDiff], side: str) -> list[str]:
    """A side's failed steps, in run order, but for attempts a later one of the same name
    made good (a retry that succeeded is not why a run failed)."""
    rows = [(s.key, row) for s in steps if (row := s.b if side == "B" else s.a) is not None]
    ordered = sorted(rows, key=lambda kr: (_seen(kr[1]) is None, _seen(kr[1]) or 0,
                                           kr[1]["step_id"]))
    out = []
    for n, (key, row) in enumerate(ordered):
        if row["status"] not in _FAILED:
            continue
        name = row.get("step_name")
        if any(later.get("step_name") == name and later["status"] not in _FAILED
               for _key, later in ordered[n + 1:]):
            continue
        out.append(key)
    return out


def _identity(d: RunDiff) -> list[str]:
    """Code, runtime and configuration."""
    out = []
    if d.logic_version:
        out.append(f"logic_version changed ({d.logic_version.a} -> {d.logic_version.b})")
    for changes, what in ((d.runtime, "runtime value"), (d.parameters, "parameter"),
                          (d.request, "request value")):
        if changes:
            out.append(f"{_plural(len(changes), what)} changed")
    return out


def _sources(d: RunDiff) -> list[str]:
    """The data the runs read from outside themselves."""
    out = []
    moved = [i for i in d.inputs if (m := i.rows.moved) is not None and abs(m) > d.threshold]
    if moved:
        out.append(f"row counts of {_plural(len(moved), 'input')} moved > "
                   f"{d.threshold * 100:.0f} %")
    elsewhere = [i for i in d.inputs if i.a is not None and i.b is not None
                 and i.producer_changed and i not in moved]
    if elsewhere:
        out.append(f"{_plural(len(elsewhere), 'input')} from other producing runs")
    read_once = [i for i in d.inputs if i.a is None or i.b is None]
    if read_once:
        out.append(f"{_plural(len(read_once), 'input')} read by one run only")
    return out


def _steps(d: RunDiff) -> list[str]:
    """Steps: which ran, what they executed, what they wrote, how long they took."""
    out = []
    for side in ("B", "A"):
        only = [s.key for s in d.steps if s.only_in == side]
        if only:
            out.append(f"{_plural(len(only), 'step')} only in {side}: "
                       + ", ".join(only[:3]) + (" ..." if len(only) > 3 else ""))
    changed = [s.sql for s in d.steps if s.sql]
    literal = [c for c in changed if c.only_literals]
    if len(changed) > len(literal):
        out.append(f"SQL of {_plural(len(changed) - len(literal), 'step')} changed")
    if literal:
        out.append(f"SQL of {_plural(len(literal), 'step')} differs only in literals")
    outputs = [c for s in d.steps for c in s.outputs]
    zero = [c for c in outputs if c.dropped_to_zero]
    if zero:
        out.append(f"{_plural(len(zero), 'output')} dropped to 0 rows")
    moved = [c for c in outputs if not c.dropped_to_zero
             and (m := c.moved) is not None and abs(m) > d.threshold]
    if moved:
        out.append(f"row counts of {_plural(len(moved), 'output')} moved > "
                   f"{d.threshold * 100:.0f} %")
    slow = [(s.key, f) for s in d.steps if (f := s.slower("B")) is not None]
    if slow:
        key, factor = max(slow, key=lambda kf: kf[1])
        more = f" (and {_plural(len(slow) - 1, 'other step')})" if len(slow) > 1 else ""
        out.append(f"B slower: {key} took {factor:.1f}x its median{more}")
    return out


# --- a run's reproduction card ----------------------------------------------------------

NOT_RECORDED = (
    "the data itself: inputs are named, not snapshotted (a re-run reads what is there now)",
    "the runtime (interpreter, engine, library versions) unless the job's metadata.runtime "
    "says",
    "secrets and connection settings: parameters with secret-looking keys are masked here",
    "the environment's state outside the named inputs (other tables a query reads, "
    "clocks, random seeds)",
)


@dataclass(frozen=True)
class Card:
    """Everything the registry holds to re-run a job, and what it does not hold."""

    job: Row
    parameters: dict[str, Any]
    request: dict[str, Any]
    runtime: Any
    inputs: list[Input]
    steps: list[tuple[str, Row]]  # match key and row, in run order
    not_recorded: tuple[str, ...] = NOT_RECORDED

    @property
    def overwritten(self) -> list[Input]:
        """Inputs written again since the run read them: a re-run reads other data."""
        return [i for i in self.inputs if i.overwritten_by is not None]


def card(facts: RunFacts, overwrites: Mapping[str, Row | None],
         words: Sequence[str] = SECRET_WORDS) -> Card:
    """A run's reproduction card; ``overwrites``: per external input, a later successful
    write of it, if any."""
    job = facts.job
    return Card(
        job=masking.masked_job(job, words),
        parameters=masking.masked(job.get("parameters") or {}, words),
        request=masking.masked(job.get("request") or {}, words),
        runtime=(job.get("metadata") or {}).get("runtime"),
        inputs=external_inputs(facts.steps, facts.producers, overwrites),
        steps=list(step_keys(facts.steps).items()))


# --- as data, for --json and the API ---------------------------------------------------


def _change_dict(c: Change | None) -> dict[str, Any] | None:
    return None if c is None else {"path": c.path, "a": c.a, "b": c.b}


def _input_dict(i: Input | None) -> dict[str, Any] | None:
    if i is None:
        return None
    return {"location": i.location, "rows": i.rows, "version": i.version,
            "producer": i.producer, "overwritten_by": i.overwritten_by}


def _brief(step: Row | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return {k: step.get(k) for k in ("step_id", "status", "started_at", "completed_at",
                                     "duration_ms")} | {"error": first_line(step.get("error"))}


def diff_as_dict(d: RunDiff) -> dict[str, Any]:
    """A comparison as JSON-ready data: what ``jobs diff --json`` prints."""
    return {
        "a": d.a["job_id"], "b": d.b["job_id"], "differs": d.differs, "verdict": d.verdict,
        "status": _change_dict(d.status), "logic_version": _change_dict(d.logic_version),
        "duration_ms": {"a": d.duration_ms[0], "b": d.duration_ms[1]},
        "runtime": [_change_dict(c) for c in d.runtime],
        "parameters": [_change_dict(c) for c in d.parameters],
        "request": [_change_dict(c) for c in d.request],
        "inputs": [{"location": i.location, "a": _input_dict(i.a), "b": _input_dict(i.b),
                    "rows_moved": i.rows.moved, "producer_changed": i.producer_changed}
                   for i in d.inputs],
        "steps": [{
            "step": s.key, "only_in": s.only_in, "a": _brief(s.a), "b": _brief(s.b),
            "baseline": None if s.baseline is None else {
                "runs": s.baseline.runs, "median_ms": s.baseline.median_ms,
                "p95_ms": s.baseline.p95_ms},
            "slower": {"a": s.slower("A"), "b": s.slower("B")},
            "outputs": [{"location": c.location, "a": c.a, "b": c.b, "moved": c.moved,
                         "dropped_to_zero": c.dropped_to_zero} for c in s.outputs],
            "inputs_of_one_run": s.inputs_changed,
            "sql": None if s.sql is None else {"diff": s.sql.diff,
                                               "only_literals": s.sql.only_literals},
        } for s in d.steps],
    }


def card_as_dict(c: Card) -> dict[str, Any]:
    """A reproduction card as JSON-ready data: what ``jobs reproduce --json`` prints."""
    job = c.job
    return {
        "job_id": job["job_id"], "pipeline": job.get("pipeline"),
        "environment": job.get("environment"), "namespace": job.get("namespace"),
        "status": job["status"], "logic_version": job.get("logic_version"),
        "dag_run_id": job.get("dag_run_id"), "parameters": c.parameters,
        "request": c.request, "runtime": c.runtime,
        "inputs": [_input_dict(i) for i in c.inputs],
        "overwritten_since": [i.location for i in c.overwritten],
        "steps": [{"step": key, "step_id": row["step_id"], "status": row["status"],
                   "inputs": [r["location"] for r in row.get("inputs") or []],
                   "outputs": [r["location"] for r in row.get("outputs") or []],
                   "executions": row.get("executions") or []} for key, row in c.steps],
        "not_recorded": list(c.not_recorded),
    }
