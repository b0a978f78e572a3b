"""Amendment 3: the logical lineage graph, as a pure function of the two tables' rows.

An *edge* joins a location to the named step of a pipeline that reads (``in``)
or writes (``out``) it, whatever the number of runs behind it. Its key is
(location, direction, namespace, environment, pipeline, step_name); a step
row ``s`` of a job row ``j`` contributes to the edges of every entry of its
``inputs`` and ``outputs`` when ``j.pipeline``, ``s.step_name`` and
``seen(s) = coalesce(s.started_at, s.completed_at)`` are all known. An edge
holds:

* ``runs``: the distinct steps contributing (a step listing a location twice,
  under two ``ref_type`` values, counts once);
* ``first_seen`` / ``last_seen``: the least and greatest ``seen`` of them;
* ``last_step_id``, ``last_job_id``, ``last_status``: those of the *latest*
  contributor, the greatest (``seen``, ``step_id``);
* ``ref_type``: that of the latest contributor's first entry naming the
  location, in its list for the direction.

:func:`edges_of` computes that in full. The worker instead keeps the table by
*deltas* (:func:`delta`): for every step a batch changes, what it contributed
before the batch and what it contributes after. A new contribution (the
common case: a step starts, or reports its outputs) is merged into the stored
edge by sums, minima and maxima, whatever the edge's history; so is a change
of the latest contributor's status. Only a contribution that goes away or
moves in time (a step renamed, moved to another job, a job re-declared, a
late ``started_at``) has its edge aggregated afresh from the rows.

Rows are mappings with the tables' column names (database rows, or the golden
vectors' JSON); timestamps need only compare in time order (datetimes, or the
vectors' fixed-width UTC strings). Nothing here depends on the order of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Row = Mapping[str, Any]
EdgeKey = tuple[str, str, str, str, str, str]  # location, direction, ns, env, pipeline, step
JobKey = tuple[str, str, str]  # namespace, environment, pipeline: what a job gives its edges
KEY_COLUMNS = ("location", "direction", "namespace", "environment", "pipeline", "step_name")
COLUMNS = (*KEY_COLUMNS, "runs", "first_seen", "last_seen", "last_step_id", "last_job_id",
           "last_status", "ref_type")
DIRECTIONS = (("in", "inputs"), ("out", "outputs"))


@dataclass(frozen=True, slots=True)
class StepView:
    """What of a step row its edges depend on."""

    step_id: str
    job_id: str
    step_name: str | None
    status: str
    seen: Any  # coalesce(started_at, completed_at)
    # (location, ref_type) of the first entry naming each location, in list order
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]


def _firsts(references: Iterable[Mapping[str, Any]]) -> tuple[tuple[str, str], ...]:
    if isinstance(references, list) and len(references) < 2:  # most lists: one entry or none
        return tuple((r["location"], r["ref_type"]) for r in references)
    named: dict[str, str] = {}
    for reference in references:
        named.setdefault(reference["location"], reference["ref_type"])
    return tuple(named.items())


def view(step_id: str, job_id: str, step_name: str | None, status: str, *, started_at: Any,
         completed_at: Any, inputs: Iterable[Mapping[str, Any]] | None,
         outputs: Iterable[Mapping[str, Any]] | None) -> StepView:
    """A step's view from the columns it is made of."""
    return StepView(step_id, job_id, step_name, status,
                    started_at if started_at is not None else completed_at,
                    _firsts(inputs or ()), _firsts(outputs or ()))


def view_of(step: Row) -> StepView:
    """A step row's view."""
    return view(step["step_id"], step["job_id"], step.get("step_name"), step["status"],
                started_at=step.get("started_at"), completed_at=step.get("completed_at"),
                inputs=step.get("inputs"), outputs=step.get("outputs"))


def job_key(namespace: str, environment: str, pipeline: str | None) -> JobKey | None:
    """What a job gives its steps' edges; None while it has no pipeline."""
    return None if pipeline is None else (namespace, environment, pipeline)


def job_key_of(job: Row | None) -> JobKey | None:
    """A job row's key (None: no row, or no pipeline)."""
    return None if job is None else job_key(job["namespace"], job["environment"],
                                            job.get("pipeline"))


@dataclass(frozen=True, slots=True)
class Contribution:
    """One step's part in one edge."""

    key: EdgeKey
    seen: Any
    step_id: str
    job_id: str
    status: str
    ref_type: str


def contributions_of(step: StepView, job: JobKey | None) -> dict[EdgeKey, Contribution]:
    """What a step contributes, by edge, given its job's key."""
    if job is None or step.step_name is None or step.seen is None:
        return {}
    namespace, environment, pipeline = job
    found = {}
    for direction, references in (("in", step.inputs), ("out", step.outputs)):
        for location, ref_type in references:
            key = (location, direction, namespace, environment, pipeline, step.step_name)
            found[key] = Contribution(key, step.seen, step.step_id, step.job_id, step.status,
                                      ref_type)
    return found


def contributions(step: Row, job: Row | None) -> list[Contribution]:
    """What one step row contributes, given its job's row (None: no job row yet)."""
    return list(contributions_of(view_of(step), job_key_of(job)).values())


@dataclass(frozen=True)
class Edge:
    """One row of ``pudato_lineage_edges``."""

    location: str
    direction: str
    namespace: str
    environment: str
    pipeline: str
    step_name: str
    runs: int
    first_seen: Any
    last_seen: Any
    last_step_id: str
    last_job_id: str
    last_status: str
    ref_type: str

    @property
    def key(self) -> EdgeKey:
        """The primary key."""
        return (self.location, self.direction, self.namespace, self.environment,
                self.pipeline, self.step_name)

    def row(self) -> dict[str, Any]:
        """The row as a mapping of column names."""
        return asdict(self)


def _rank(part: Contribution) -> tuple[Any, str]:
    return (part.seen, part.step_id)


def aggregate(key: EdgeKey, parts: Iterable[Contribution]) -> Edge | None:
    """The edge ``key`` from its contributions (one per step); None if there are none."""
    chosen = list(parts)
    if not chosen:
        return None
    latest = max(chosen, key=_rank)
    return Edge(*key, runs=len({c.step_id for c in chosen}),
                first_seen=min(c.seen for c in chosen), last_seen=latest.seen,
                last_step_id=latest.step_id, last_job_id=latest.job_id,
                last_status=latest.status, ref_type=latest.ref_type)


def edges_of(jobs: Iterable[Row], steps: Iterable[Row]) -> list[Edge]:
    """Every edge the rows make, sorted by key: the definition, computed in full."""
    by_job = {job["job_id"]: job for job in jobs}
    grouped: dict[EdgeKey, list[Contribution]] = {}
    for step in steps:
        for part in contributions(step, by_job.get(step["job_id"])):
            grouped.setdefault(part.key, []).append(part)
    return [edge for key in sorted(grouped) if (edge := aggregate(key, grouped[key]))]


# --- keeping the table: what a batch changes ---------------------------------------


@dataclass
class Increment:
    """What merges into a stored edge: runs to add, and the batch's earliest and latest part.

    Merged as ``runs + runs``, ``least(first_seen)`` and the greater of the two
    latest contributors: the same whatever the edge's history, and whatever
    the order batches come in.
    """

    runs: int
    first_seen: Any
    latest: Contribution

    def take(self, part: Contribution, new: bool) -> None:
        """Fold one more contribution of this edge in."""
        self.runs += new
        seen, latest = part.seen, self.latest
        self.first_seen = min(self.first_seen, seen)
        if seen > latest.seen or (seen == latest.seen and part.step_id > latest.step_id):
            self.latest = part

    def row(self) -> tuple[Any, ...]:
        """The stage row: the key, then :data:`COLUMNS`' other values."""
        latest = self.latest
        return (*latest.key, self.runs, self.first_seen, latest.seen, latest.step_id,
                latest.job_id, latest.status, latest.ref_type)


@dataclass
class Delta:
    """A batch's change to the edges: increments, and the edges to aggregate afresh."""

    increments: dict[EdgeKey, Increment] = field(default_factory=dict)
    recompute: set[EdgeKey] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.increments or self.recompute)


def delta(changes: Iterable[tuple[Mapping[EdgeKey, Contribution],
                                  Mapping[EdgeKey, Contribution]]],
          *, rewrite: bool = False) -> Delta:
    """The change of (before, after) contributions of each step to the stored edges.

    A contribution that is new adds a run; one whose step is unchanged in time
    but changed in status, job or ref_type is merged in too (it is the edge's
    latest only if it was). One that vanished or moved in time makes its edge
    aggregated afresh. ``rewrite`` (a repair) aggregates every edge touched.
    """
    out = Delta()
    increments, recompute = out.increments, out.recompute
    for before, after in changes:
        if rewrite:
            recompute.update(before)
            recompute.update(after)
            continue
        if not before:  # a step new to the edges (the common case): every part adds a run
            for key, part in after.items():
                held = increments.get(key)
                if held is None:
                    increments[key] = Increment(1, part.seen, part)
                else:
                    held.take(part, True)
            continue
        for key, part in after.items():
            old = before.get(key)
            if old == part:
                continue
            if old is not None and old.seen != part.seen:
                recompute.add(key)
                continue
            held = increments.get(key)
            if held is None:
                increments[key] = Increment(int(old is None), part.seen, part)
            else:
                held.take(part, old is None)
        recompute.update(key for key in before if key not in after)
    for key in recompute:
        increments.pop(key, None)
    return out


@dataclass
class BatchLineage:
    """What a batch did to what the edges are made of; the store completes it from the tables.

    ``steps`` pairs each changed step's view before the batch (None: new) with
    its view after. ``jobs_before``/``jobs_after`` give the keys of the jobs
    the batch read; a job a view names that is not among them was not touched
    by the batch, so its stored row gives its key (:meth:`unknown_jobs`).
    """

    steps: list[tuple[StepView | None, StepView]]
    jobs_before: dict[str, JobKey | None]
    jobs_after: dict[str, JobKey | None]
    rewrite: bool = False

    def unknown_jobs(self) -> set[str]:
        """Jobs the views name whose key the batch does not know."""
        named = {v.job_id for pair in self.steps for v in pair if v is not None}
        return {j for j in named if j not in self.jobs_before and j not in self.jobs_after}

    def moved_jobs(self) -> list[str]:
        """Jobs whose key the batch changed: every stored step of theirs moves its edges."""
        return sorted(j for j, key in self.jobs_after.items()
                      if j in self.jobs_before and self.jobs_before[j] != key)

    def delta(self, stored_jobs: Mapping[str, JobKey | None],
              unchanged_steps: Sequence[StepView]) -> Delta:
        """The change to the edges, given the keys of :meth:`unknown_jobs` and the stored
        steps of :meth:`moved_jobs` that the batch did not change."""
        before_keys = {**stored_jobs, **self.jobs_before}
        after_keys = {**stored_jobs, **self.jobs_after}
        changes = [
            ({} if old is None else contributions_of(old, before_keys.get(old.job_id)),
             contributions_of(new, after_keys.get(new.job_id)))
            for old, new in self.steps
            # A step whose view and job key stay the same changes no edge (unless repaired).
            if self.rewrite or old != new
            or before_keys.get(new.job_id) != after_keys.get(new.job_id)]
        changes += [(contributions_of(step, before_keys.get(step.job_id)),
                     contributions_of(step, after_keys.get(step.job_id)))
                    for step in unchanged_steps]
        return delta(changes, rewrite=self.rewrite)
