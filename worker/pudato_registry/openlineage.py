"""OpenLineage RunEvents to events-v1 events: one pure translator (docs: OpenLineage mapping).

:func:`translate` takes the bytes of one OpenLineage message and gives either
the registry events it becomes (each already checked by the worker's own
:func:`~pudato_registry.validate.validate`, keyed by its correlation id), or
a :class:`~pudato_registry.validate.Rejection` (dead-letter it), or
:class:`Ignored` (count it). No I/O, and deterministic: the same RunEvent
always gives the same events with the same ids, so re-sending or
re-bridging one is harmless (the fold drops the repeats by event id).

Which run becomes what: a run with a parent facet naming another run is a
*step* of its root run's *job* (``parent.root.run.runId``, else
``parent.run.runId``); any other run is a job. Every root event but RUNNING
also yields a ``job.submitted`` carrying the job's name, namespace and
version; a child's event yields one for its root, built from the parent
facet (``ol:<rootRunId>:from-child``), so a job whose orchestrator never
emits still gets its pipeline and namespace.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from pudato_registry import events
from pudato_registry.factory import cut_error
from pudato_registry.inputs import Ignored, Translated
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection, RejectionKind, validate

MIB = 1024 * 1024
INPUT_MAX_BYTES = 8 * MIB  # OpenLineage events can carry column lineage and plans
STATEMENT_MAX_BYTES = 20_000
EVENT_TYPES = frozenset({"START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"})
_ROOT_JOB_TYPES = frozenset({"DAG", "JOB", "APPLICATION", "COMMAND"})
_FALLBACK_ERROR = "OpenLineage FAIL without errorMessage facet"
_TABLE_FORMATS = frozenset({"iceberg", "delta", "hudi", "paimon"})
_FILE_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "hdfs", "abfs", "abfss", "wasb",
                           "wasbs", "dbfs", "box", "filenet", "mssharepoint"})
_STREAM_SCHEMES = frozenset({"kafka", "pubsub", "kinesis", "pulsar"})
_API_SCHEMES = frozenset({"http", "https"})
_DATASET_TYPES = {"table": "table", "view": "table", "file": "file", "topic": "stream",
                  "stream": "stream", "model": "model"}
_DBT_PREFIXES = {"model.": "MODEL", "seed.": "SEED", "snapshot.": "SNAPSHOT", "test.": "TEST"}
_NEVER_RAN = frozenset({"upstream_failed", "skipped", "removed"})  # Airflow task states
_canonical = msgspec.json.Encoder(order="sorted").encode


@dataclass(frozen=True)
class Options:
    """What the contract leaves to configuration (decisions 2, 6, 7), from ``PUDATO_OL_*``."""

    # Sub-runs ignored rather than made steps: (jobType.integration, jobType.jobType);
    # the second set only when the event names no input and no output dataset.
    skip_subruns: frozenset[tuple[str, str]] = frozenset({("DBT", "SQL"), ("AIRFLOW", "QUERY")})
    skip_datasetless: frozenset[tuple[str, str]] = frozenset({("SPARK", "RDD_JOB")})
    # Integrations whose failed child also fails the root job (decision 16).
    child_fails_root: frozenset[str] = frozenset({"SPARK"})
    ignore_processing: frozenset[str] = frozenset({"STREAMING", "SERVICE"})
    location_by_name: bool = False  # `location` = the dataset name alone, not namespace/name
    environments: Mapping[str, str] = field(default_factory=dict)  # OL job namespace -> env
    namespaces: frozenset[str] | None = None  # only these OL job namespaces (None: all)
    max_message_bytes: int = MIB  # every translated event fits (PUDATO_MAX_MESSAGE_BYTES)

    @classmethod
    def from_settings(cls, settings: Settings) -> Options:
        """The options ``PUDATO_OL_*`` settings describe."""
        skip: set[tuple[str, str]] = set()
        datasetless: set[tuple[str, str]] = set()
        for item in settings.ol_skip_subruns:
            integration, job_type, *only = item.upper().split(":")
            (datasetless if only else skip).add((integration, job_type))
        return cls(skip_subruns=frozenset(skip), skip_datasetless=frozenset(datasetless),
                   child_fails_root=frozenset(i.upper() for i in settings.ol_child_fails_root),
                   location_by_name=settings.ol_location_by_name,
                   environments=dict(settings.ol_environments),
                   namespaces=None if settings.ol_namespaces is None
                   else frozenset(settings.ol_namespaces),
                   max_message_bytes=settings.max_message_bytes)


def decoder(settings: Settings) -> Callable[[bytes | None], Translated | Ignored | Rejection]:
    """:func:`translate` with the options ``settings`` describe (``inputs.FORMATS`` entry)."""
    return functools.partial(translate, options=Options.from_settings(settings))


def _invalid(kind: RejectionKind, message: str) -> Rejection:
    return Rejection(kind, message)


def translate(value: bytes | None, options: Options = Options(),
              max_bytes: int = INPUT_MAX_BYTES) -> Translated | Ignored | Rejection:
    """One OpenLineage message to registry events, a rejection, or ignored. Never raises."""
    try:
        return translate_strict(value, options, max_bytes)
    except RecursionError:
        return _invalid(RejectionKind.NOT_JSON, "value is not JSON this bridge can read: "
                                                "nested too deeply")
    except Exception as exc:  # defence in depth: one odd message must never stop a bridge
        return _invalid(RejectionKind.INVALID_FIELD,
                        f"a field of this RunEvent could not be read ({type(exc).__name__}: "
                        f"{str(exc)[:200]})")


def translate_strict(value: bytes | None, options: Options = Options(),
                     max_bytes: int = INPUT_MAX_BYTES) -> Translated | Ignored | Rejection:
    """:func:`translate` without its last resort: the fuzz test wants to see every raise."""
    if value is None:
        return _invalid(RejectionKind.TOMBSTONE, "a null value (tombstone) is not a RunEvent")
    if len(value) > max_bytes:
        return _invalid(RejectionKind.TOO_LARGE,
                        f"value is {len(value)} bytes, over the limit of {max_bytes}")
    try:
        message = msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        kind = RejectionKind.NOT_UTF8 if "UTF-8" in str(exc) else RejectionKind.NOT_JSON
        return _invalid(kind, f"value is not UTF-8 JSON: {exc}")
    if not isinstance(message, dict):
        return _invalid(RejectionKind.NOT_OBJECT, "value is not a JSON object")
    run_event = _read(message, options)
    if not isinstance(run_event, _RunEvent):
        return run_event
    out = []
    for event in run_event.events():
        encoded = msgspec.json.encode(event)
        checked = validate(encoded, options.max_message_bytes)
        if isinstance(checked, Rejection) and checked.kind is RejectionKind.TOO_LARGE:
            # What is not cut to fit (an error, a stack trace, tags) can still be too much.
            return _invalid(checked.kind, f"its {event['event_type']} would be {len(encoded)} "
                                          f"bytes, over the limit of {options.max_message_bytes}"
                                          " (PUDATO_MAX_MESSAGE_BYTES, or what the registry "
                                          "topic takes)")
        if isinstance(checked, Rejection):  # a bridge bug: dead-letter the input, not drop it
            return _invalid(checked.kind, f"translated {event['event_type']} is not a valid "
                                          f"registry event: {checked.message}")
        out.append((str(event["correlation_id"]).encode(), encoded))
    return Translated(out)


def _read(message: dict[str, Any], options: Options) -> _RunEvent | Ignored | Rejection:
    """The RunEvent's envelope checked (§14), or why it is dead-lettered or ignored."""
    if "run" not in message:
        what = "a DatasetEvent" if "dataset" in message else "a JobEvent (no run)"
        return Ignored(f"{what}: the registry records runs", "not_a_run")
    run, job = message.get("run"), message.get("job")
    if not isinstance(run, dict) or not isinstance(job, dict):
        return _invalid(RejectionKind.INVALID_FIELD, "run and job must be objects")
    run_id = run.get("runId")
    if not _is_id(run_id):
        return _invalid(RejectionKind.MISSING_FIELD if run_id is None
                        else RejectionKind.INVALID_FIELD,
                        "run.runId must be a string of 1 to 200 characters")
    namespace, name = job.get("namespace"), job.get("name")
    if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
        return _invalid(RejectionKind.MISSING_FIELD, "job.namespace and job.name are required")
    event_type = message.get("eventType")
    if event_type is not None and not (isinstance(event_type, str) and event_type in EVENT_TYPES):
        return _invalid(RejectionKind.UNKNOWN_EVENT_TYPE,
                        f"eventType must be one of {', '.join(sorted(EVENT_TYPES))}")
    when = _event_time(message.get("eventTime"))
    if isinstance(when, Rejection):
        return when
    facets, job_facets = _object(run.get("facets")), _object(job.get("facets"))
    parent = facets.get("parent")
    if parent is not None and not _is_id(_object(_object(parent).get("run")).get("runId")):
        return _invalid(RejectionKind.INVALID_FIELD, "the parent facet has no run.runId")
    root_run = _object(_object(_object(parent).get("root")).get("run")).get("runId")
    if root_run is not None and not _is_id(root_run):
        return _invalid(RejectionKind.INVALID_FIELD, "the parent facet's root.run.runId must "
                                                     "be a string of 1 to 200 characters")
    job_type = _object(job_facets.get("jobType"))
    if options.namespaces is not None and namespace not in options.namespaces:
        return Ignored(f"job namespace {namespace!r} is not on the allowlist", "namespace")
    if _text(job_type.get("processingType")).upper() in options.ignore_processing:
        return Ignored(f"a {job_type['processingType']} run: its state is not a run's",
                       "streaming")
    run_event = _RunEvent(message, str(run_id), namespace, name, event_type, when, facets,
                          job_facets, job_type, _object(parent) if parent is not None else None,
                          options)
    kind = (_text(job_type.get("integration")).upper(), _text(job_type.get("jobType")).upper())
    if run_event.is_step and (kind in options.skip_subruns or (
            kind in options.skip_datasetless and not _list(message.get("inputs"))
            and not _list(message.get("outputs")))):
        return Ignored(f"a {kind[0]} {kind[1]} sub-run", "subrun")
    return run_event


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= events.ID_MAX_CHARS


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    """A string field, or "" for anything else (``str()`` of a huge integer raises)."""
    return value if isinstance(value, str) else ""


def _event_time(value: Any) -> str | Rejection:
    if value is None:
        return _invalid(RejectionKind.MISSING_FIELD, "eventTime is required")
    if not isinstance(value, str):
        return _invalid(RejectionKind.INVALID_FIELD, "eventTime must be a string")
    try:
        msgspec.convert(value, events.RFC3339)
    except msgspec.ValidationError:
        try:
            msgspec.convert(value, datetime)
        except msgspec.ValidationError:
            return _invalid(RejectionKind.INVALID_FIELD, "eventTime is not an RFC 3339 time")
        return _invalid(RejectionKind.NAIVE_TIMESTAMP, "eventTime has no UTC offset")
    return value


def _cut_id(text: str) -> str:
    """An id cut to the id limit with a hash of the whole, as names are."""
    return _cut_name(text, events.ID_MAX_CHARS)


def _cut_name(text: str, limit: int = events.NAME_MAX_CHARS) -> str:
    """A name cut to ``limit`` characters with a hash of the whole, so that cut names stay apart."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[:limit - 17]}~{digest}"


def _strip(facet: Any) -> Any:
    """A facet without its ``_producer`` and ``_schemaURL``."""
    if isinstance(facet, dict):
        return {k: v for k, v in facet.items() if k not in ("_producer", "_schemaURL")}
    return facet


@dataclass
class _RunEvent:
    message: dict[str, Any]
    run_id: str
    namespace: str
    name: str
    event_type: str | None
    when: str
    facets: dict[str, Any]
    job_facets: dict[str, Any]
    job_type: dict[str, Any]
    parent: dict[str, Any] | None
    options: Options

    @property
    def is_step(self) -> bool:
        """R1: a run with a parent naming another run is a step."""
        return self.parent is not None and self._parent_run() != self.run_id

    def _parent_run(self) -> str:
        return str(_object(_object(self.parent).get("run")).get("runId"))

    def _root(self) -> tuple[str, dict[str, Any]]:
        """R2: the root run's id and job (namespace, name), as the parent facet names them."""
        parent = _object(self.parent)
        root = _object(parent.get("root"))
        root_run = _object(root.get("run")).get("runId")
        if _is_id(root_run):
            return str(root_run), _object(root.get("job"))
        return self._parent_run(), _object(parent.get("job"))

    def _id(self, suffix: str = "") -> str:
        if self.event_type == "RUNNING":  # decision 3: a chatty run counts once
            return f"ol:{self.run_id}:RUNNING{suffix}"
        digest = hashlib.sha256(_canonical(self.message)).hexdigest()[:40]
        return f"ol:{self.event_type or 'NONE'}:{digest}{suffix}"

    def events(self) -> list[dict[str, Any]]:
        """The registry events (as JSON objects) this RunEvent becomes."""
        if not self.is_step:
            return self._root_events()
        job_id, root_job = self._root()
        out: list[dict[str, Any]] = self._step_events(job_id, self.run_id,
                                                      self._step_metadata())
        root_name, root_namespace = root_job.get("name"), root_job.get("namespace")
        if isinstance(root_name, str) and root_name and isinstance(root_namespace, str):
            out.append(self._envelope("job.submitted", job_id, f"ol:{job_id}:from-child",
                                      data={"pipeline": _cut_name(root_name),
                                            "namespace": _cut_name(root_namespace)}))
        if self.event_type == "FAIL" and \
                _text(self.job_type.get("integration")).upper() in self.options.child_fails_root:
            # Decision 16: Spark's listener ends every application COMPLETE, whatever its
            # jobs did; a failed job fails its application, finally.
            out.append(self._envelope("job.failed", job_id, self._id(":root"), data={
                "error": cut_error(f"{self._step_name()} failed: {self._error()}"),
                "final": True}))
        return [e for e in out if e is not None]

    # --- the job --------------------------------------------------------------------

    def _root_events(self) -> list[dict[str, Any]]:
        job_id = self.run_id
        out: list[dict[str, Any] | None] = []
        metadata = self._metadata()
        if self.event_type != "RUNNING":
            out.append(self._envelope("job.submitted", job_id, self._id(":submitted"),
                                      data=self._carrier(metadata)))
        status = {"START": "job.started", "RUNNING": "job.started",
                  "COMPLETE": "job.succeeded", "FAIL": "job.failed",
                  "ABORT": "job.cancelled"}.get(self.event_type or "")
        if status is not None:
            data: dict[str, Any] = {"metadata": metadata}
            if status == "job.failed":
                data["error"] = self._with_failed_tasks(self._error() or _FALLBACK_ERROR)
            elif status == "job.cancelled":
                data["error"] = self._error(required=False)
            if status in ("job.failed", "job.cancelled"):
                data["final"] = True  # decision 15: a COMPLETE after it never turns it green
            out.append(self._envelope(status, job_id, self._id(), data=data))
            if status != "job.started":
                out += self._tasks_that_never_ran(job_id)
        if str(self.job_type.get("jobType", "")).upper() not in _ROOT_JOB_TYPES:
            # R5: a leaf run with no parent keeps its datasets as a step of itself.
            out += self._step_events(job_id, self.run_id,
                                     {**self._step_metadata(), "ol_self_step": True},
                                     suffix=":step")
        return [e for e in out if e is not None]

    def _task_states(self) -> dict[str, str]:
        """Airflow's ``airflowState`` facet on a DAG run's terminal event: task id -> state."""
        states = _object(_object(self.facets.get("airflowState")).get("tasksState"))
        return {task: state for task, state in states.items() if isinstance(state, str)}

    def _with_failed_tasks(self, error: str) -> str:
        """Decision 19: the DAG's error names its failed tasks (``task_failure: x failed``)."""
        failed = sorted(t for t, state in self._task_states().items() if state == "failed")
        return cut_error(f"{error}: {', '.join(failed)} failed") if failed else error

    def _tasks_that_never_ran(self, job_id: str) -> list[dict[str, Any]]:
        """Decision 19: a task that never ran has no run of its own; it is a skipped step."""
        out = []
        for task, state in sorted(self._task_states().items()):
            if state not in _NEVER_RAN:
                continue
            tag = hashlib.sha256(task.encode()).hexdigest()[:16]
            event = self._envelope("step.skipped", job_id, self._id(f":task:{tag}"), data={
                "step_name": _cut_name(f"{self.name}.{task}"), "handler_type": "airflow",
                "action": "task", "error": state,
                "metadata": {"source": "openlineage", "ol_job_namespace": self.namespace,
                             "ol_job_name": f"{self.name}.{task}", "ol_task_state": state}})
            event["step_id"] = _cut_id(f"ol:{self.run_id}:task:{task}")
            out.append(event)
        return out

    def _carrier(self, metadata: dict[str, Any]) -> dict[str, Any]:
        tags = self._tags()
        version = _object(self.job_facets.get("sourceCodeLocation")).get("version") or \
            _object(self.facets.get("dbt_run")).get("project_version")
        dag_run = _object(_object(self.facets.get("airflowDagRun")).get("dagRun"))
        environment = tags.get("environment") or self.options.environments.get(self.namespace)
        data: dict[str, Any] = {
            "pipeline": _cut_name(self.name), "namespace": _cut_name(self.namespace),
            "metadata": metadata,
        }
        if isinstance(version, str) and version:
            data["logic_version"] = version[:events.VERSION_MAX_CHARS]
        if isinstance(environment, str) and environment:
            data["environment"] = _cut_name(environment)
        if isinstance(dag_run.get("run_id"), str):
            data["dag_run_id"] = dag_run["run_id"][:events.VERSION_MAX_CHARS]
        if isinstance(dag_run.get("conf"), dict):
            data["parameters"] = dag_run["conf"]
        return data

    # --- steps ---------------------------------------------------------------------

    def _step_events(self, job_id: str, step_id: str, metadata: dict[str, Any],
                     suffix: str = "") -> list[dict[str, Any]]:
        """The step's events: its status, alone when the run names datasets, then those.

        The status never rides with the datasets: the worker refuses an event that
        would take a step past 10,000 references per list, and a run's end must not
        be refused for what it read. The datasets follow in events of the same kind
        and time (so whichever wins, the status is the same), cut to fit the
        message limit: at most 10,000 per list, the rest counted in metadata.
        """
        kind = {"START": "step.started", "RUNNING": "step.started",
                "COMPLETE": "step.succeeded", "FAIL": "step.failed",
                "ABORT": "step.skipped"}.get(self.event_type or "", "step.submitted")
        action = (_text(self.job_type.get("jobType")) or "run").lower()
        identity: dict[str, Any] = {
            "step_name": self._step_name(), "action": _cut_name(action),
            "handler_type": _cut_name((_text(self.job_type.get("integration")) or
                                       "openlineage").lower()),
        }
        if kind == "step.failed":
            identity["error"] = self._error()
        elif kind == "step.skipped":
            identity["error"] = self._error(required=False)
        if kind in ("step.failed", "step.skipped"):
            identity["final"] = True  # decision 15: FAIL and ABORT stand
        references: dict[str, list[dict[str, Any]]] = {}
        if kind != "step.skipped":
            references["inputs"] = self._references("inputs", "inputFacets", "inputStatistics")
        if kind in ("step.succeeded", "step.failed") and action != "test":
            references["outputs"] = self._references(
                "outputs", "outputFacets", "outputStatistics",
                only_with_statistics=kind == "step.failed")
        data = {**identity, "metadata": metadata}
        if kind in ("step.succeeded", "step.failed"):
            data["executions"] = self._executions()
        if not any(references.values()):
            return [self._step_envelope(kind, job_id, step_id, self._id(suffix), data)]
        chunks, dropped = _pack(references, self._chunk_room(kind, job_id, step_id, identity))
        for which, count in dropped.items():
            metadata[f"ol_{which}_dropped"] = count
        out = [self._step_envelope(kind, job_id, step_id, self._id(suffix), data)]
        for n, chunk in enumerate(chunks):
            out.append(self._step_envelope(kind, job_id, step_id, self._id(f"{suffix}:refs:{n}"),
                                           {**identity, **chunk}))
        return out

    def _chunk_room(self, kind: str, job_id: str, step_id: str,
                    identity: dict[str, Any]) -> int:
        """Bytes left for datasets in one event of ``kind`` that carries ``identity``."""
        empty = self._step_envelope(kind, job_id, step_id, self._id(":refs:00000"),
                                    {**identity, "inputs": [], "outputs": []})
        return self.options.max_message_bytes - len(msgspec.json.encode(empty)) - 64

    def _step_envelope(self, kind: str, job_id: str, step_id: str, event_id: str,
                       data: dict[str, Any]) -> dict[str, Any]:
        envelope = self._envelope(kind, job_id, event_id, data=data)
        envelope["step_id"] = step_id
        return envelope

    def _step_name(self) -> str:
        unique_id = _object(self.job_facets.get("dbt_node")).get("unique_id")
        job_type = _text(self.job_type.get("jobType")).upper()
        if isinstance(unique_id, str):
            for prefix, kind in _DBT_PREFIXES.items():
                if unique_id.startswith(prefix) and kind == job_type:
                    return _cut_name(unique_id)
        return _cut_name(self.name)

    def _references(self, which: str, facet_name: str, statistics: str, *,
                    only_with_statistics: bool = False) -> list[dict[str, Any]]:
        out = []
        for dataset in _list(self.message.get(which)):
            if not isinstance(dataset, dict):
                continue
            namespace, name = dataset.get("namespace"), dataset.get("name")
            if not (isinstance(namespace, str) and isinstance(name, str)):
                continue
            stats = _object(_object(dataset.get(facet_name)).get(statistics))
            if only_with_statistics and not stats:
                continue  # a failed run lists what it meant to write, not what it wrote
            facets = _object(dataset.get("facets"))
            metadata: dict[str, Any] = {"ol_namespace": namespace, "ol_name": name}
            for source, target in (("rowCount", "row_count"), ("size", "bytes"),
                                   ("fileCount", "file_count")):
                if stats.get(source) is not None:
                    metadata[target] = stats[source]
            storage = _object(facets.get("storage"))
            layer = _text(storage.get("storageLayer")).lower()
            file_format = _text(storage.get("fileFormat"))
            out.append({
                "ref_type": _ref_type(namespace, facets),
                "location": _location(namespace, name, by_name=self.options.location_by_name),
                "format": (layer if layer in _TABLE_FORMATS else
                           (str(file_format)[:events.REF_TYPE_MAX_CHARS] if file_format
                            else None)),
                "metadata": metadata,
            })
        return out

    def _executions(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        sql = _object(self.job_facets.get("sql"))
        if isinstance(sql.get("query"), str):
            statement = sql["query"].encode()[:STATEMENT_MAX_BYTES].decode("utf-8", "ignore")
            out.append({"execution_type": "sql",
                        "details": {"dialect": sql.get("dialect"), "statements": [statement]}})
        unique_id = _object(self.job_facets.get("dbt_node")).get("unique_id")
        if _text(self.job_type.get("integration")).upper() == "DBT" and unique_id:
            command = ("build" if ".build." in self.name
                       else (_text(self.job_type.get("jobType")) or "run").lower())
            out.append({"execution_type": "dbt", "details": {
                "command": "run" if command == "model" else command, "models": [unique_id],
                "project_dir": None,
                "original_file_path": _object(self.job_facets.get("dbt_node")).get(
                    "original_file_path"),
                "invocation_id": _object(self.facets.get("dbt_run")).get("invocation_id"),
            }})
        engine = _object(self.facets.get("processing_engine"))
        if _text(engine.get("name")).lower() == "spark":
            out.append({"execution_type": "spark", "details": {"version": engine.get("version")}})
        return out

    # --- shared --------------------------------------------------------------------

    def _envelope(self, event_type: str, job_id: str, event_id: str, *,
                  data: dict[str, Any]) -> dict[str, Any]:
        return {"schema_version": 1, "event_id": event_id[:events.ID_MAX_CHARS],
                "event_type": event_type, "occurred_at": self.when,
                "correlation_id": job_id, "job_id": job_id,
                "data": {k: v for k, v in data.items() if v is not None}}

    def _error(self, *, required: bool = True) -> str | None:
        """Decisions 11 and 17: the error message, Spark's exception, failed assertions."""
        for facet in ("errorMessage", "spark.exception"):
            message = _object(self.facets.get(facet)).get("message")
            if isinstance(message, str) and message:
                return cut_error(message)
        failed = [f"{_text(a.get('assertion'))}({_text(a.get('column'))})"
                  if _text(a.get("column")) else _text(a.get("assertion"))
                  for dataset in _list(self.message.get("inputs")) if isinstance(dataset, dict)
                  for a in _list(_object(_object(dataset.get("inputFacets")).get(
                      "dataQualityAssertions")).get("assertions"))
                  if isinstance(a, dict) and a.get("success") is False]
        failed += [_text(t.get("name")) for t in _list(_object(self.facets.get("test")).get(
                   "tests")) if isinstance(t, dict) and _text(t.get("status")).lower() == "fail"]
        if failed:
            return cut_error(f"failed assertions: {', '.join(failed)}")
        return _FALLBACK_ERROR if required else None

    def _tags(self) -> dict[str, Any]:
        tags = _list(_object(self.facets.get("tags")).get("tags"))
        return {t["key"]: t.get("value") for t in tags
                if isinstance(t, dict) and isinstance(t.get("key"), str)}

    def _metadata(self) -> dict[str, Any]:
        """§12: where it came from, for people and for finding it again."""
        meta: dict[str, Any] = {
            "source": "openlineage", "ol_job_namespace": self.namespace,
            "ol_job_name": self.name, "ol_last_event_type": self.event_type or "NONE",
        }
        if isinstance(self.message.get("producer"), str):
            meta["ol_producer"] = self.message["producer"]
        if self.job_type:
            meta["ol_job_type"] = {k: self.job_type.get(k) for k in
                                   ("processingType", "integration", "jobType")}
        for facet, key in (("nominalTime", "ol_nominal_time"),
                           ("processing_engine", "ol_processing_engine"),
                           ("dbt_version", "ol_dbt_version"), ("dbt_run", "ol_dbt_run")):
            if facet in self.facets:
                meta[key] = _strip(self.facets[facet])
        if self._tags():
            meta["ol_tags"] = self._tags()
        for facet in ("errorMessage", "spark.exception"):
            trace = _object(self.facets.get(facet)).get("stackTrace")
            if isinstance(trace, str) and trace:
                meta["ol_error_stack_trace"] = cut_error(trace)
                break
        return meta

    def _step_metadata(self) -> dict[str, Any]:
        meta = self._metadata()
        if self.parent is not None:
            meta["ol_parent_run_id"] = self._parent_run()
            parent_job = _object(self.parent.get("job"))
            meta["ol_parent_job"] = (f"{_text(parent_job.get('namespace'))}/"
                                     f"{_text(parent_job.get('name'))}")
        if "dbt_node" in self.job_facets:
            meta["ol_dbt_node"] = _strip(self.job_facets["dbt_node"])
        return meta


def _pack(references: dict[str, list[dict[str, Any]]],
          room: int) -> tuple[list[dict[str, list[dict[str, Any]]]], dict[str, int]]:
    """The references in chunks of at most ``room`` bytes of JSON, and how many were dropped.

    At most 10,000 of a list are kept (a step holds no more); a reference too large
    for any chunk is dropped too, and counted.
    """
    chunks: list[dict[str, list[dict[str, Any]]]] = []
    dropped: dict[str, int] = {}
    current: dict[str, list[dict[str, Any]]] = {}
    used = 0
    for which, listed in references.items():
        kept = listed[:events.REFERENCES_MAX]
        if len(listed) > len(kept):
            dropped[which] = len(listed) - len(kept)
        for reference in kept:
            size = len(msgspec.json.encode(reference)) + 1  # and its comma
            if size > room:
                dropped[which] = dropped.get(which, 0) + 1
                continue
            if used + size > room:
                chunks.append(current)
                current, used = {}, 0
            current.setdefault(which, []).append(reference)
            used += size
    if current:
        chunks.append(current)
    return chunks, dropped


def _ref_type(namespace: str, facets: dict[str, Any]) -> str:
    """§10: the dataset's type, else its symlinks, else its namespace's scheme, else a table."""
    declared = _text(_object(facets.get("datasetType")).get("datasetType")).lower()
    if declared in _DATASET_TYPES:
        return _DATASET_TYPES[declared]
    identifiers = _list(_object(facets.get("symlinks")).get("identifiers"))
    if any(isinstance(i, dict) and _text(i.get("type")).lower() == "table"
           for i in identifiers):
        return "table"
    scheme = namespace.split("://", 1)[0].lower() if "://" in namespace else namespace.lower()
    if scheme in _FILE_SCHEMES:
        return "file"
    if scheme in _STREAM_SCHEMES:
        return "stream"
    if scheme in _API_SCHEMES:
        return "api"
    return "table"


def _location(namespace: str, name: str, *, by_name: bool) -> str:
    """§10: ``namespace/name`` (``file://name`` for the ``file`` namespace), or the name alone."""
    if namespace == "file":  # decision 21: a file is file:///path, however it is looked up
        location = "file://" + name if name.startswith("/") else "file:///" + name
    elif by_name:
        location = name
    else:
        location = namespace.rstrip("/") + "/" + name.lstrip("/")
    if len(location) > events.LOCATION_MAX_CHARS:
        digest = hashlib.sha256(location.encode()).hexdigest()[:16]
        location = f"{location[:events.LOCATION_MAX_CHARS - 18]}~{digest}"
    return location
