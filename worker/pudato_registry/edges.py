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

Rows are mappings with the tables' column names (database rows, or the golden
vectors' JSON); timestamps need only compare in time order (datetimes, or the
vectors' fixed-width UTC strings). Nothing here depends on the order of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

Row = Mapping[str, Any]
EdgeKey = tuple[str, str, str, str, str, str]  # location, direction, ns, env, pipeline, step
COLUMNS = ("location", "direction", "namespace", "environment", "pipeline", "step_name",
           "runs", "first_seen", "last_seen", "last_step_id", "last_job_id", "last_status",
           "ref_type")
DIRECTIONS = (("in", "inputs"), ("out", "outputs"))


@dataclass(frozen=True)
class Contribution:
    """One step's part in one edge."""

    key: EdgeKey
    seen: Any
    step_id: str
    job_id: str
    status: str
    ref_type: str


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


def contributions(step: Row, job: Row | None) -> list[Contribution]:
    """What one step row contributes, given its job's row (None: no job row yet)."""
    seen = step.get("started_at") or step.get("completed_at")
    if job is None or job.get("pipeline") is None or step.get("step_name") is None \
            or seen is None:
        return []
    found: list[Contribution] = []
    for direction, column in DIRECTIONS:
        named: set[str] = set()
        for reference in step.get(column) or ():
            location = reference["location"]
            if location in named:  # the first entry naming it gives the ref_type
                continue
            named.add(location)
            found.append(Contribution(
                (location, direction, job["namespace"], job["environment"], job["pipeline"],
                 step["step_name"]), seen, step["step_id"], step["job_id"], step["status"],
                reference["ref_type"]))
    return found


def aggregate(key: EdgeKey, parts: Iterable[Contribution]) -> Edge | None:
    """The edge ``key`` from its contributions (one per step); None if there are none."""
    chosen = list(parts)
    if not chosen:
        return None
    latest = max(chosen, key=lambda c: (c.seen, c.step_id))
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
