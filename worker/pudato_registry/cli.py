"""The ``pudato-registry`` command: parse flags, build settings once, call the right module."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import queue
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from pydantic import ValidationError
from pydantic_settings import SettingsError

from pudato_registry import logs
from pudato_registry.present import safe
from pudato_registry.settings import Settings, redact_dsn, unknown_variables, weak_ui_token

if TYPE_CHECKING:
    from pudato_registry.metrics import Metrics

log = logging.getLogger("pudato_registry")

# flag -> Settings field; a flag given on the command line wins over PUDATO_*.
_FLAGS: dict[str, tuple[str, type, str]] = {
    "--bootstrap-servers": ("bootstrap_servers", str, "Kafka bootstrap servers"),
    "--database-url": ("database_url", str, "PostgreSQL URL (sslmode=... for TLS)"),
    "--topic": ("topic", str, "event topic"),
    "--dlq-topic": ("dlq_topic", str, "dead-letter topic"),
    "--group-id": ("group_id", str, "consumer group"),
    "--batch-size": ("batch_size", int, "most messages per transaction"),
    "--batch-max-bytes": ("batch_max_bytes", int, "most bytes of message values per batch"),
    "--batch-timeout": ("batch_timeout_s", float, "seconds to wait to fill a batch"),
    "--metrics-port": ("metrics_port", int, "port of /metrics, /healthz, /readyz (0: off)"),
    "--partitions": ("partitions", int, "partitions of topics created"),
    "--log-level": ("log_level", str, "DEBUG, INFO, WARNING, ..."),
    "--spool-dir": ("spool_dir", Path, "publisher: where undelivered events wait"),
}


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        field: getattr(args, field) for field, _t, _h in _FLAGS.values()
        if getattr(args, field, None) is not None
    }
    if getattr(args, "log_json", False):
        overrides["log_json"] = True
    base = Settings(**overrides)
    if getattr(args, "kafka_config", None):
        extra = base.kafka_config()
        for item in args.kafka_config:
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--kafka-config takes KEY=VALUE, not {item!r}")
            extra[key] = value
        base = base.replace(kafka=extra)
    return base


# What a job's status can be (the fold's): `jobs list --status` and the UI's filter.
JOB_STATUSES = ("pending", "running", "success", "failed", "cancelled")

# validate.RejectionKind's values, written out: importing the models costs every command's
# start-up (a test keeps the two equal).
DEAD_LETTER_KINDS = ("tombstone", "too_large", "not_utf8", "not_json", "not_object",
                     "unsupported_schema_version", "unknown_event_type", "missing_field",
                     "invalid_field", "naive_timestamp", "step_id_not_allowed",
                     "nul_character", "string_too_long", "too_many_items", "too_many_keys",
                     "entity_limit", "unstorable")

# The flags of each concern; a command takes the concerns it reads, and only those.
_CONCERNS: dict[str, tuple[str, ...]] = {
    "log": ("--log-level", "--log-json"),
    "kafka": ("--bootstrap-servers", "--kafka-config"),
    "database": ("--database-url",),
    "topic": ("--topic",),
    "dlq": ("--dlq-topic",),
    "group": ("--group-id",),
    "batch": ("--batch-size", "--batch-max-bytes", "--batch-timeout"),
    "metrics": ("--metrics-port",),
    "partitions": ("--partitions",),
    "spool": ("--spool-dir",),
}
# Each command: the concerns it reads (log always), and one example of it.
_COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "migrate": (("database",), "pudato-registry migrate --database-url postgresql://u@db/reg"),
    "worker": (("kafka", "database", "topic", "dlq", "group", "batch", "metrics",
                "partitions"), "pudato-registry worker --migrate --create-topics"),
    "topics create": (("kafka", "topic", "dlq", "partitions"),
                      "pudato-registry topics create --partitions 24"),
    "schema": ((), "pudato-registry schema > events-v1.schema.json"),
    "publish": (("kafka", "topic", "spool"),
                "pudato-registry publish docs/examples/backfill.jsonl --dry-run"),
    "spool list": (("spool",), "pudato-registry spool list"),
    "spool flush": (("kafka", "topic", "spool"), "pudato-registry spool flush --wait 120"),
    "dev up": (("topic", "dlq", "partitions"), "pudato-registry dev up --dir .stack --keep"),
    "demo": ((), "pudato-registry demo --ui"),
    "exporter": (("database",), "pudato-registry exporter --port 9110"),
    "ui": (("database", "kafka", "dlq"),
           "PUDATO_UI_TOKEN=... pudato-registry ui --host 0.0.0.0 --port 8088"),
    "replay": (("kafka", "database", "topic"), "pudato-registry replay --verify"),
    "dlq list": (("kafka", "dlq"), "pudato-registry dlq list --kind invalid_event --limit 20"),
    "dlq redrive": (("kafka", "database", "topic", "dlq"),
                    "pudato-registry dlq redrive --kind invalid_field --dry-run"),
    "jobs list": (("database",), "pudato-registry jobs list --pipeline nightly --status failed"),
    "jobs show": (("database",), "pudato-registry jobs show nightly-2026-12-01"),
    "jobs diff": (("database",), "pudato-registry jobs diff nightly-2026-12-02 "
                                 "--previous-succeeded"),
    "jobs reproduce": (("database",), "pudato-registry jobs reproduce nightly-2026-12-02"),
    "lineage": (("database",), "pudato-registry lineage main.fct_orders --upstream --depth 3"),
    "openlineage bridge": (("kafka", "topic", "batch", "metrics", "partitions"),
                           "PUDATO_OL_TOPIC=openlineage pudato-registry openlineage bridge "
                           "--create-topics"),
    "openlineage serve": (("kafka", "topic"),
                          "pudato-registry openlineage serve --port 5000 --api-key-file key"),
}


def _concern(flags: Sequence[str], *, shown: bool = True) -> argparse.ArgumentParser:
    """A parent parser of ``flags``: absent unless given (SUPPRESS), so that a flag given
    before the command is not overwritten by the command's default."""
    parent = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for flag in flags:
        if flag == "--kafka-config":
            parent.add_argument(flag, action="append", metavar="KEY=VALUE", help=(
                "any librdkafka setting, e.g. security.protocol=SASL_SSL (repeat)"
                if shown else argparse.SUPPRESS))
        elif flag == "--log-json":
            parent.add_argument(flag, action="store_true",
                                help="log JSON lines" if shown else argparse.SUPPRESS)
        else:
            field, kind, text = _FLAGS[flag]
            parent.add_argument(flag, dest=field, type=kind,
                                help=text if shown else argparse.SUPPRESS)
    return parent


def _parser() -> argparse.ArgumentParser:
    concerns = {name: _concern(flags) for name, flags in _CONCERNS.items()}
    # Every flag is parsed before the command and after it (hidden where the command does
    # not use it); one the command does not use is refused (_refuse_unused), never ignored.
    everything = [flag for flags in _CONCERNS.values() for flag in flags]

    def common(path: str) -> dict[str, Any]:
        """What a command's parser is built with: its concerns' flags and its example."""
        wanted, example = _COMMANDS[path]
        taken = {f for c in ("log", *wanted) for f in _CONCERNS[c]}
        # The others hidden but parsed, so that _refuse_unused names them in one line.
        others = _concern([f for f in everything if f not in taken], shown=False)
        return {"parents": [concerns["log"], *(concerns[c] for c in wanted), others],
                "epilog": f"example:\n  {example}",
                "formatter_class": argparse.RawDescriptionHelpFormatter}

    parser = argparse.ArgumentParser(
        prog="pudato-registry",
        parents=[concerns["log"], _concern([f for f in everything
                                            if f not in _CONCERNS["log"]], shown=False)],
        description="The pudato job registry: lifecycle events from Kafka into PostgreSQL. "
        "Settings come from flags (before or after the command) or PUDATO_* variables; "
        "`pudato-registry COMMAND --help` lists what each command takes.",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {importlib.metadata.version('pudato-registry')}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", **common("migrate"), help="apply pending schema migrations")
    worker = sub.add_parser("worker", **common("worker"), help="run the ingestion worker")
    worker.add_argument("--drain", action="store_true",
                        help="exit 0 once every assigned partition is caught up and committed")
    worker.add_argument("--create-topics", action="store_true",
                        help="create the event and dead-letter topics if missing")
    worker.add_argument("--migrate", action="store_true", help="apply migrations first")
    topics = sub.add_parser("topics", help="manage the topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    topics_sub.add_parser("create", **common("topics create"),
                          help="create the event topic (infinite retention) and the DLQ")
    sub.add_parser("schema", **common("schema"), help="print the v1 event JSON Schema")
    publish = sub.add_parser("publish", **common("publish"),
                             help="publish JSON lines of events (backfills, scripts)")
    publish.add_argument("file", nargs="?", default="-",
                         help="a file of one event per line; - (default) reads stdin")
    publish.add_argument("--wait", type=float, default=60.0,
                         help="seconds to wait for delivery before leaving the rest spooled")
    publish.add_argument("--dry-run", action="store_true",
                         help="validate every line and say what would be sent; send nothing")
    publish.add_argument("--fail-on-spooled", action="store_true",
                         help="exit 3 if events are left in the spool (not on the topic yet)")
    spool = sub.add_parser("spool", help="the publisher's spool of undelivered events")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    spool_sub.add_parser("list", **common("spool list"),
                         help="where the spool is and what waits in it")
    flush = spool_sub.add_parser("flush", **common("spool flush"),
                                 help="send what waits in the spool now")
    flush.add_argument("--wait", type=float, default=60.0,
                       help="seconds to wait for the broker to take it all")
    dev = sub.add_parser("dev", help="the local Kafka + PostgreSQL stack (no Docker needed)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", **common("dev up"),
                            help="start the stack, migrate, create topics; Ctrl-C stops it")
    up.add_argument("--dir", type=Path, default=Path(".stack"),
                    help="where the stack keeps its files and writes `env` (one stack each)")
    up.add_argument("--keep", action="store_true",
                    help="keep the data and ports when it stops (default: fresh each time)")
    _readers(sub, common)
    _operations(sub, common)
    openlineage = sub.add_parser("openlineage", help="OpenLineage RunEvents in")
    ol_sub = openlineage.add_subparsers(dest="ol_command", required=True)
    bridge = ol_sub.add_parser("bridge", **common("openlineage bridge"),
                               help="consume PUDATO_OL_TOPIC, publish registry events")
    bridge.add_argument("--drain", action="store_true",
                        help="exit 0 once every assigned partition is caught up")
    bridge.add_argument("--create-topics", action="store_true",
                        help="create the OpenLineage topic and its dead-letter topic if missing")
    serve = ol_sub.add_parser("serve", **common("openlineage serve"),
                              help="POST /api/v1/lineage for OpenLineage's HttpTransport")
    serve.add_argument("--host", help="address to bind (PUDATO_OL_HTTP_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (PUDATO_OL_HTTP_PORT, 5000; 0: any free)")
    serve.add_argument("--api-key-file", type=Path, metavar="FILE",
                       help="a file holding the Bearer key clients must send "
                            "(PUDATO_OL_API_KEY holds the key itself)")
    for path, command in _leaves(parser):
        wanted, _example = _COMMANDS[path]
        command.set_defaults(command_path=path, command_flags=frozenset(
            flag for concern in ("log", *wanted) for flag in _CONCERNS[concern]))
    return parser


def _leaves(parser: argparse.ArgumentParser, path: str = "") -> Iterator[
        tuple[str, argparse.ArgumentParser]]:
    """Every command's parser, by its path (``jobs list``)."""
    for action in parser._actions:  # argparse lists subparsers nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _leaves(child, f"{path} {name}".strip())
            return
    yield path, parser


def _refuse_unused(args: argparse.Namespace) -> None:
    """A flag the command does not use is an error (exit 2), never silently ignored."""
    for flag in (f for flags in _CONCERNS.values() for f in flags):
        dest = _FLAGS[flag][0] if flag in _FLAGS else flag[2:].replace("-", "_")
        if hasattr(args, dest) and flag not in args.command_flags:
            takes = sorted(args.command_flags - set(_CONCERNS["log"]))
            print(f"pudato-registry: {flag} does nothing for `{args.command_path}`"
                         + (f": it takes {', '.join(takes)}" if takes else
                            ": it takes no connection flags")
                         + f" (see `pudato-registry {args.command_path} --help`)",
                         file=sys.stderr)
            raise SystemExit(2)


def _readers(sub: Any, common: Callable[[str], dict[str, Any]]) -> None:
    """The commands that serve what the registry holds: demo, exporter, ui."""
    demo = sub.add_parser(
        "demo", **common("demo"),
        help="the main job on local defaults: stack, worker, a sample pipeline")
    demo.add_argument("--ui", action="store_true",
                      help="then keep the stack and serve the web UI on the sample data "
                      "until Ctrl-C")
    demo.add_argument("--port", type=int, help="the UI's port with --ui (PUDATO_UI_PORT, "
                      "8088; 0: any free one)")
    exporter = sub.add_parser(
        "exporter", **common("exporter"),
        help="registry metrics for Prometheus: pipelines' last success, failures, stuck jobs")
    exporter.add_argument("--host", help="address to bind (PUDATO_EXPORTER_HOST, 127.0.0.1)")
    exporter.add_argument("--port", type=int,
                          help="port (PUDATO_EXPORTER_PORT, 9110; 0: any free one)")

    ui = sub.add_parser(
        "ui", **common("ui"),
        help="the web UI and JSON API over the registry (read-only)")
    ui.add_argument("--host", help="address to bind (PUDATO_UI_HOST, 127.0.0.1); elsewhere "
                    "needs a token or --no-auth")
    ui.add_argument("--port", type=int, help="port (PUDATO_UI_PORT, 8088; 0: any free one)")
    ui.add_argument("--token-file", type=Path, metavar="FILE",
                    help="file holding the token to sign in with (else PUDATO_UI_TOKEN)")
    ui.add_argument("--no-auth", action="store_true",
                    help="serve without a token on any address (behind your own proxy)")


def _operations(sub: Any, common: Callable[[str], dict[str, Any]]) -> None:
    """The operator's commands: replay, dead letters, queries."""
    replay = sub.add_parser("replay", **common("replay"),
                            help="rebuild the tables from the topic, swapping them in live")
    mode = replay.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true",
                      help="compare the rebuild with the live tables instead of swapping")
    replay.add_argument("--accept-trimmed", action="store_true",
                        help="rebuild although the topic lost its first events (their jobs "
                             "are then gone from the tables)")
    mode.add_argument("--since", type=parse_time, metavar="TIME",
                      help="re-apply events since TIME (ISO 8601, or 2h / 30m / 1d ago)")
    mode.add_argument("--correlation-id", metavar="ID",
                      help="re-apply the events of one correlation id")

    dlq = sub.add_parser("dlq", help="dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", **common("dlq list"), help="list the dead letters")
    dlq_list.add_argument("--json", action="store_true",
                          help="JSON, with each letter's key, value and headers")
    dlq_list.add_argument("--kind", choices=DEAD_LETTER_KINDS, metavar="KIND",
                          help="only letters of this error kind: "
                               + ", ".join(DEAD_LETTER_KINDS))
    dlq_list.add_argument("--limit", type=_count, default=100,
                          help="at most this many letters (100); a line says how many more")
    redrive = dlq_sub.add_parser("redrive", **common("dlq redrive"),
                                 help="re-publish dead letters to the event topic, once each")
    redrive.add_argument("--kind", choices=DEAD_LETTER_KINDS, metavar="KIND",
                         help="only letters of this error kind (as dlq list --help lists)")
    redrive.add_argument("--since", type=parse_time, metavar="TIME",
                         help="only letters dead-lettered since TIME")
    redrive.add_argument("--dry-run", action="store_true",
                         help="say what would be re-published; publish nothing")
    redrive.add_argument("--force", action="store_true",
                         help="re-publish letters the worker would refuse again as they are")

    jobs = sub.add_parser("jobs", help="query jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = jobs_sub.add_parser("list", **common("jobs list"), help="jobs, newest first")
    for name in ("pipeline", "environment", "namespace"):
        listing.add_argument(f"--{name}", help=f"only jobs of this {name}")
    listing.add_argument("--status", choices=JOB_STATUSES, type=str.lower,
                         help="only jobs in this status")
    listing.add_argument("--since", type=parse_time, metavar="TIME", help="created since TIME")
    listing.add_argument("--stuck", type=_duration, metavar="DURATION",
                         help="running longer than DURATION with no terminal event")
    listing.add_argument("--limit", type=_count, default=50, help="most jobs shown (50)")
    listing.add_argument("--json", action="store_true", help="every column of each job, as JSON")
    show = jobs_sub.add_parser("show", **common("jobs show"), help="a job and its steps")
    show.add_argument("job_id", help="the job's id (jobs list shows them)")
    show.add_argument("--json", action="store_true", help="the job and its steps as JSON")
    show.add_argument("--limit", type=_count, default=1000,
                      help="at most this many steps (1,000); a line says how many more")

    _comparisons(jobs_sub, common)
    _lineage_options(sub, common)


def _comparisons(jobs_sub: Any, common: Callable[[str], dict[str, Any]]) -> None:
    """`jobs diff` and `jobs reproduce`."""
    compare = jobs_sub.add_parser(
        "diff", **common("jobs diff"),
        help="what changed between two runs, in root-cause order (exit 1 if they differ)")
    compare.add_argument("first", metavar="A", help="a job id (alone: the run to explain)")
    compare.add_argument("second", metavar="B", nargs="?",
                         help="the other job id; without it, A is compared with the run of "
                              "its pipeline just before it")
    compare.add_argument("--previous-succeeded", action="store_true",
                         help="with one id: compare with the last successful run before it")
    compare.add_argument("--baseline", type=_count, default=20, metavar="N",
                         help="durations against the last N successful runs (20)")
    compare.add_argument("--threshold", type=_percent, default=50.0, metavar="PCT",
                         help="row counts that move by more than PCT %% are named (50)")
    compare.add_argument("--sql", choices=("changed", "full", "none"), default="changed",
                         help="executions: the changed ones as a diff (default), all, none")
    compare.add_argument("--normalize-literals", action="store_true",
                         help="say so when SQL differs only in string and number literals")
    compare.add_argument("--json", action="store_true", help="the comparison as JSON")
    reproduce = jobs_sub.add_parser(
        "reproduce", **common("jobs reproduce"),
        help="everything needed to re-run a job, and what the registry does not record")
    reproduce.add_argument("job_id", help="the job's id")
    reproduce.add_argument("--json", action="store_true", help="the card as JSON")


def _lineage_options(sub: Any, common: Callable[[str], dict[str, Any]]) -> None:
    """`lineage`: the graph, the runs, the search."""
    lineage = sub.add_parser(
        "lineage", **common("lineage"),
        help="what reads and writes a location: the logical graph, or its runs (--runs)")
    lineage.add_argument("location", nargs="?",
                         help="a location as steps name it (a file path in any spelling)")
    lineage.add_argument("--search", metavar="TEXT",
                         help="list the known locations containing TEXT, instead")
    direction = lineage.add_mutually_exclusive_group()
    direction.add_argument("--upstream", action="store_true",
                           help="only what it came from: its writers, what they read ...")
    direction.add_argument("--downstream", action="store_true",
                           help="only what it fed: its readers, what they wrote ...")
    direction.add_argument("--both", action="store_true",
                           help="upstream and downstream, each --depth steps (the default, "
                                "one step)")
    lineage.add_argument("--depth", type=_hops, default=None,
                         help="steps to walk from the location (1 by default, 3 with a "
                              "direction; at most 20)")
    lineage.add_argument("--namespace",
                         help="only steps of this namespace; without a LOCATION, its whole "
                              "graph")
    lineage.add_argument("--environment", help="only steps of this environment")
    lineage.add_argument("--format", choices=("table", "dot", "mermaid", "json"),
                         default="table",
                         help="table (default), dot (Graphviz), mermaid (Markdown) or json")
    lineage.add_argument("--json", action="store_true", help="the same as --format json")
    lineage.add_argument("--runs", action="store_true",
                         help="the step runs that read or wrote the location, newest first")
    lineage.add_argument("--pipeline", help="with --runs: only runs of this pipeline")
    lineage.add_argument("--step", help="with --runs: only runs of this step name")
    lineage.add_argument("--limit", type=_count, default=None,
                         help="with --runs: runs per page (50); else: most edges (2000)")
    lineage.add_argument("--offset", type=_at_least_zero, default=0,
                         help="with --runs: skip this many of the newest (the next page)")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LONGEST = timedelta(days=36_500)  # a century: anything longer is a typo


def _duration(text: str) -> timedelta:
    """`90s`, `15m`, `2h`, `1.5d`."""
    number, unit = text[:-1], text[-1:]
    try:
        duration = timedelta(seconds=float(number) * _UNITS[unit])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: a number and s, m, h or d") from None
    except OverflowError:
        duration = timedelta.max
    if duration < timedelta(0) or duration > _LONGEST:
        raise argparse.ArgumentTypeError(f"{text!r}: from 0 to {_LONGEST.days}d")
    return duration


def _hops(text: str) -> int:
    """A depth of 1 to 20 hops."""
    value = _count(text)
    if value > 20:
        raise argparse.ArgumentTypeError(f"{text!r}: at most 20 hops")
    return value


def _percent(text: str) -> float:
    """A percentage above 0."""
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage, e.g. 50") from None
    if not 0 < value < 100_000:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage above 0")
    return value


def _at_least_zero(text: str) -> int:
    """A whole number of at least 0."""
    return 0 if text.strip() == "0" else _count(text)


def _count(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1")
    return value


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (UTC if it names no offset), or a duration ago."""
    if text[-1:] in _UNITS and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - _duration(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: ISO 8601 time or e.g. 2h") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: one clear line and exit 1 for any failure."""
    args = _parser().parse_args(argv)
    _refuse_unused(args)
    for variable, near in unknown_variables(os.environ)[:1]:  # a misspelling is no default
        hint = f"did you mean {near}? " if near else ""
        print(f"pudato-registry: {variable} is not a setting: {hint}(unset or rename it; the "
              "README lists every PUDATO_* variable)", file=sys.stderr)
        return 2
    try:
        settings = _settings(args)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        print(f"pudato-registry: bad setting {_setting_names(field)}: {error['msg']}",
              file=sys.stderr)
        return 2
    except SettingsError as exc:  # a variable that does not parse (PUDATO_KAFKA='not json')
        found = re.search(r'field "([^"]+)"', str(exc))
        name = _setting_names(found.group(1)) if found else "a PUDATO_* variable"
        print(f"pudato-registry: bad setting {name}: not valid JSON (give a JSON value, "
              "e.g. PUDATO_KAFKA='{\"security.protocol\": \"SASL_SSL\"}')", file=sys.stderr)
        return 2
    scrub = logs.Scrub(settings.secrets())
    logs.configure(settings.log_level, settings.log_json, scrub.secrets)
    try:
        return _dispatch(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every failure a person can meet: one line, no traceback
        if log.isEnabledFor(logging.DEBUG):
            log.exception("%s failed", args.command)
        line = safe(" ".join(scrub.text(explain(exc, settings)).split()))
        print(f"pudato-registry {args.command}: {line}", file=sys.stderr)
        # `jobs diff` exits as diff(1) does: 1 is "they differ", trouble is 2.
        return 2 if getattr(args, "jobs_command", None) == "diff" else 1


def _setting_names(field: str) -> str:
    """A setting as a user writes it: its PUDATO_* variable, and its flag if it has one."""
    flags = [flag for flag, (name, _kind, _text) in _FLAGS.items() if name == field]
    if field == "kafka":
        flags.append("--kafka-config")
    variable = f"PUDATO_{field.upper()}"
    return f"{variable} ({flags[0]})" if flags else variable


# What the [server] extra brings (pyproject.toml): a base install lacks them.
_SERVER_MODULES = frozenset({"psycopg", "psycopg_pool", "tenacity", "prometheus_client",
                             "waitress", "flask", "werkzeug", "jinja2"})


def explain(exc: BaseException, settings: Settings) -> str:
    """What failed, where, and what to try, for a person: one line, no traceback."""
    missing = (getattr(exc, "name", None) or "").split(".")[0]
    if isinstance(exc, ModuleNotFoundError) and missing in _SERVER_MODULES:
        return (f"this command needs the registry's server install ({missing} is not "
                "installed): pip install 'pudato-registry[server]' (the base install "
                "publishes: publish, spool, schema)")
    from confluent_kafka import KafkaException  # noqa: PLC0415

    from pudato_registry import kafka  # noqa: PLC0415

    told = _database_trouble(exc, settings)
    if told is not None:
        return told
    if isinstance(exc, kafka.TopicMissingError):
        return str(exc)
    if isinstance(exc, KafkaException | kafka.DeliveryError | TimeoutError):
        why = str(exc)
        if isinstance(exc, KafkaException) and exc.args and hasattr(exc.args[0], "str"):
            error = exc.args[0]  # a KafkaError: its text, else its code's name, not its repr
            why = error.str() or error.name()
        elif isinstance(exc, TimeoutError) and not why:
            why = "no answer in time"
        return (f"cannot use Kafka at {settings.bootstrap_servers}: {why}; is it running and "
                "reachable? For a local one: `pudato-registry dev up`, then "
                "`pudato-registry topics create`")
    if isinstance(exc, OSError | ValueError | RuntimeError):
        return f"{exc}" if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {exc} (--log-level DEBUG shows the traceback)"


def _database_trouble(exc: BaseException, settings: Settings) -> str | None:
    """What a PostgreSQL error means for a person (None: it is none, or this is the base
    install, which has no database driver to raise one)."""
    try:
        import psycopg  # noqa: PLC0415 - fast start-up for the commands that need no database

        from pudato_registry import store  # noqa: PLC0415
    except ImportError:
        return None
    database = redact_dsn(settings.database_dsn)
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return (f"the registry's tables are missing or old in {database} "
                f"({exc.diag.message_primary}); run `pudato-registry migrate`")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (f"the database user of {database} lacks a privilege: "
                f"{exc.diag.message_primary}; grant it (see the README's production example)")
    if isinstance(exc, psycopg.OperationalError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"cannot use PostgreSQL at {database}: {first}; is it running and reachable? "
                "For a local one: `pudato-registry dev up`")
    if isinstance(exc, psycopg.Error):
        return f"PostgreSQL at {database} refused: {store.describe(exc)}"
    return None


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "schema": _schema, "migrate": lambda _a, s: _migrate(s), "topics": _topics,
        "worker": _worker, "spool": _spool, "replay": _replay, "dlq": _dlq,
        "exporter": _exporter, "ui": _ui,
        "jobs": _query, "lineage": _query, "openlineage": _openlineage, "demo": _demo,
        "publish": lambda a, s: _publish(a.file, a.wait, s, dry_run=a.dry_run,
                                         fail_on_spooled=a.fail_on_spooled),
        "dev": lambda a, s: _dev_up(a.dir, s, keep=a.keep),
    }
    return commands[args.command](args, settings)  # argparse enforces the choices


def _schema(_args: argparse.Namespace, _settings: Settings) -> int:
    from pudato_registry.events import json_schema  # noqa: PLC0415 - fast start-up

    schema = msgspec.json.format(msgspec.json.encode(json_schema()), indent=2)
    sys.stdout.write(schema.decode() + "\n")
    return 0


def _topics(_args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry import kafka  # noqa: PLC0415

    created = kafka.create_topics(settings)
    print(f"created: {', '.join(created) or 'nothing (both exist)'}")
    return 0


def _openlineage(args: argparse.Namespace, settings: Settings) -> int:
    if args.ol_command == "bridge":
        return _bridge(args, settings)
    return _serve(_serve_settings(args, settings))


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry.demo import run_demo  # noqa: PLC0415

    if not args.ui:
        return run_demo(settings)
    port = settings.ui_port if args.port is None else args.port
    stop = _stop_on_signals()  # set before the stack starts: Ctrl-C while it starts stops it
    return run_demo(settings, then=lambda local: _serve_ui(
        local, settings.ui_host, port, None, stop), history=True)


def _migrate(settings: Settings) -> int:
    from pudato_registry import store  # noqa: PLC0415

    applied = store.migrate(settings.database_dsn)
    names = ", ".join(f"{m.version:03d}_{m.name}" for m in applied)
    print(f"{redact_dsn(settings.database_dsn)}: applied {names or 'nothing (up to date)'}")
    return 0


class _Service(Protocol):
    metrics: Metrics

    def request_stop(self) -> None: ...
    def run(self, *, drain: bool = False) -> None: ...


def _run_service(service: _Service, settings: Settings, *, drain: bool) -> None:
    """Run a consuming service: signals only ask it to stop; its metrics are served meanwhile."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _n, _f: service.request_stop())
    if settings.metrics_port:
        try:
            port = service.metrics.serve(settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                f"{exc.strerror or exc} (another worker or bridge on this host?); choose "
                "another port with --metrics-port (PUDATO_METRICS_PORT), or 0 to serve "
                "none") from None
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    try:
        service.run(drain=drain)
    finally:
        service.metrics.close()


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry import kafka, store  # noqa: PLC0415
    from pudato_registry.loop import FatalError, Worker  # noqa: PLC0415

    log.info("worker starting: kafka %s (%s), database %s", settings.bootstrap_servers,
             settings.kafka_config_redacted(), redact_dsn(settings.database_dsn))
    if args.migrate:
        store.migrate(settings.database_dsn)
    if args.create_topics:
        kafka.create_topics(settings)
    worker = Worker(settings)
    try:
        _run_service(worker, settings, drain=args.drain)
    except (FatalError, kafka.TopicMissingError) as exc:
        log.error("worker stopped: %s", exc)
        return 1
    s = worker.stats
    log.info("worker stopped: consumed %d, applied %d, duplicates %d, dead-lettered %d, "
             "batches %d, busy %.2f s", s.consumed, s.applied, s.duplicates, s.dead_lettered,
             s.batches, s.busy_seconds)
    return 0


BRIDGE_METRICS_PORT = 9109  # the worker has 9108: both run on one host by default


def _bridge(args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry import bridge  # noqa: PLC0415

    if "metrics_port" not in settings.model_fields_set:  # neither flag nor variable
        settings = settings.replace(metrics_port=BRIDGE_METRICS_PORT)
    if args.create_topics:
        bridge.create_topics(settings)
    running = bridge.Bridge(settings)
    _run_service(running, settings, drain=args.drain)
    s = running.stats
    log.info("bridge stopped: consumed %d, published %d events, dead-lettered %d, ignored %d",
             s.consumed, s.published, s.dead_lettered, s.ignored)
    return 0


def _exporter(args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry.exporter import Exporter  # noqa: PLC0415

    host = args.host or settings.exporter_host
    port = settings.exporter_port if args.port is None else args.port
    stop = _stop_on_signals()
    exporter = Exporter(settings)
    try:
        bound = exporter.start(host, port)
    except OSError as exc:
        raise OSError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (choose another "
                      "with --port or PUDATO_EXPORTER_PORT)") from None
    print(f"exporter: registry metrics on http://{host}:{bound}/metrics, read from the tables "
          f"every {settings.exporter_interval_s:.0f} s; Ctrl-C stops it", file=sys.stderr,
          flush=True)
    try:
        stop.wait()
    finally:
        exporter.close()
    print("exporter: stopped", file=sys.stderr)
    return 0


def _ui_token(args: argparse.Namespace, settings: Settings) -> str | None:
    """The token `ui` asks for: --token-file's, else PUDATO_UI_TOKEN, else none."""
    if args.token_file is None:
        return settings.ui_token.get_secret_value() if settings.ui_token else None
    try:
        token: str = args.token_file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read --token-file {args.token_file}: "
                         f"{exc.strerror or exc}") from None
    weak = weak_ui_token(token)
    if weak:
        raise ValueError(f"the token in --token-file {args.token_file} is {weak}")
    return token


def _loopback(host: str) -> bool:
    import ipaddress  # noqa: PLC0415

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ui(args: argparse.Namespace, settings: Settings) -> int:
    host = args.host or settings.ui_host
    port = settings.ui_port if args.port is None else args.port
    token = None if args.no_auth else _ui_token(args, settings)
    if token is None and not args.no_auth and not _loopback(host):
        raise ValueError(f"serving on {host} needs a token: set PUDATO_UI_TOKEN or give "
                         "--token-file FILE (or --no-auth, to serve it open behind a proxy "
                         "of your own)")
    return _serve_ui(settings, host, port, token, _stop_on_signals())


def _serve_ui(settings: Settings, host: str, port: int, token: str | None,
              stop: threading.Event) -> int:
    """Serve the UI until ``stop`` is set (`ui`, and `demo --ui`)."""
    from pudato_registry.web import app as web  # noqa: PLC0415

    pool = web.open_pool(settings.ui_database_dsn,
                         statement_timeout_ms=settings.ui_statement_timeout_ms)
    try:
        app = web.create_app(pool, web.UiConfig(
            token=token, mask_keys=tuple(settings.mask_keys),
            refresh_s=settings.ui_refresh_s,
            dead_letters=_dead_letter_reader(settings)))
        try:
            server = web.make_server(app, host, port)
        except OSError as exc:
            raise OSError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (choose "
                          "another with --port or PUDATO_UI_PORT)") from None
        shown = f"[{host}]" if ":" in host else host
        print(f"ui: the registry on http://{shown}:{server.effective_port}/ "
              f"({'sign in with the token' if token else 'no sign-in'}); Ctrl-C stops it",
              file=sys.stderr, flush=True)
        web.serve(server, stop.is_set)
    finally:
        pool.close()
    print("ui: stopped", file=sys.stderr)
    return 0


def _dead_letter_reader(settings: Settings) -> Callable[
        [str | None, int], tuple[list[dict[str, Any]], int]]:
    """`dlq list`'s reader for the UI: its rows, kept 10 s (a page view does not read the
    whole dead-letter topic again)."""
    import time  # noqa: PLC0415

    from pudato_registry import dlq  # noqa: PLC0415

    kept: dict[tuple[str | None, int], tuple[float, tuple[list[dict[str, Any]], int]]] = {}
    lock = threading.Lock()

    def read(kind: str | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        with lock:
            found = kept.get((kind, limit))
            if found is None or time.monotonic() - found[0] > 10:
                letters, more = dlq.read(settings, limit, kind=kind)
                found = (time.monotonic(), (dlq.rows(letters, full=True), more))
                kept[(kind, limit)] = found
            return found[1]

    return read


def _stop_on_signals() -> threading.Event:
    """An event SIGTERM and Ctrl-C set (they only set it: every wait checks it)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():  # (commands run in tests' threads)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _n, _f: stop.set())
    return stop


def _serve_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """``openlineage serve``'s own flags over the settings."""
    changes: dict[str, Any] = {}
    if args.host is not None:
        changes["ol_http_host"] = args.host
    if args.port is not None:
        changes["ol_http_port"] = args.port
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read --api-key-file {args.api_key_file}: "
                             f"{exc.strerror or exc}") from None
        if not key:
            raise ValueError(f"--api-key-file {args.api_key_file} is empty; put the key in it")
        changes["ol_api_key"] = key
    return settings.replace(**changes) if changes else settings


def _serve(settings: Settings) -> int:
    from pudato_registry import receiver  # noqa: PLC0415

    app = receiver.Receiver(settings)
    try:
        server = receiver.make_server(app, settings.ol_http_host, settings.ol_http_port)
    except OSError as exc:
        app.close(1)
        raise OSError(f"cannot listen on {settings.ol_http_host}:{settings.ol_http_port}: "
                      f"{exc.strerror or exc}; choose another with --port (or "
                      "PUDATO_OL_HTTP_PORT)") from None
    stop = threading.Event()

    def stopping(_signum: int, _frame: object) -> None:
        stop.set()  # the loop sees it within 0.2 s, then answers what is in flight

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopping)
    log.info("receiving OpenLineage on http://%s:%s%s (to topic %s)%s",
             settings.ol_http_host, server.effective_port, receiver.LINEAGE_PATH,
             settings.topic, "" if settings.ol_api_key else "; no API key required")
    try:
        receiver.serve(server, app, stop)
    finally:
        app.close()
    log.info("receiver stopped: %s", ", ".join(f"{n} {what}" for what, n in app.counts.items()))
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry import replay  # noqa: PLC0415
    from pudato_registry.loop import FatalError, StoppedError  # noqa: PLC0415

    stop = _stop_on_signals()
    repair = args.since is not None or args.correlation_id is not None
    try:
        if repair:
            report = replay.reapply(settings, since=args.since,
                                    correlation_id=args.correlation_id, stop=stop)
        else:
            report = replay.rebuild(settings, verify=args.verify,
                                    accept_trimmed=args.accept_trimmed, stop=stop)
    except FatalError as exc:
        log.error("replay stopped: %s", exc)
        return 1
    except StoppedError:
        print("pudato-registry replay: stopped as asked; " + (
            "the rows re-applied so far are rewritten (a repair can be run again)" if repair
            else "nothing was swapped, the live tables are as they were"), file=sys.stderr)
        return 1
    print(report.summary())
    return 1 if args.verify and any(n for n, _ in report.differences.values()) else 0


def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry import dlq  # noqa: PLC0415
    from pudato_registry.present import as_json, table  # noqa: PLC0415

    if args.dlq_command == "list":
        letters, more = dlq.read(settings, args.limit, kind=args.kind)
        rows = dlq.rows(letters, full=args.json)
        print(as_json(rows) if args.json else table(
            rows, ["partition", "offset", "kind", "source", "dead_lettered_at", "error",
                   "preview"]))
        if more:
            print(f"... and {more} more dead letters, not shown: raise --limit (now "
                  f"{args.limit})", file=sys.stderr if args.json else sys.stdout)
        return 0
    report = dlq.redrive(settings, kind=args.kind, since=args.since, dry_run=args.dry_run,
                         force=args.force)
    done = "would be re-published" if report.dry_run else "re-published"
    print(f"redrive{' (dry run)' if report.dry_run else ''}: {report.selected} selected, "
          f"{report.redriven} {done} to {settings.topic}, {report.already} redriven before "
          "(skipped)"
          + (f", {report.truncated} truncated letters skipped (their originals stay at their "
             "source.* offsets in the event topic)" if report.truncated else "")
          + (f", {report.hopeless} the worker would refuse again as they are skipped "
             "(--force sends them anyway)" if report.hopeless else ""))
    return 0


def _query(args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry import masking, queries  # noqa: PLC0415
    from pudato_registry.present import as_json, table  # noqa: PLC0415

    dsn = settings.database_dsn
    if args.command == "lineage":
        return _lineage(args, dsn)
    if args.jobs_command in ("diff", "reproduce"):
        keys = tuple(settings.mask_keys)
        return (_compare(args, dsn, keys) if args.jobs_command == "diff"
                else _reproduce(args, dsn, keys))
    if args.jobs_command == "list":
        found = queries.list_jobs(dsn, queries.JobFilter(
            pipeline=args.pipeline, environment=args.environment, namespace=args.namespace,
            status=args.status, since=args.since, stuck_for=args.stuck, limit=args.limit))
        print(as_json(found) if args.json else table(
            found, ["job_id", "pipeline", "environment", "namespace", "status", "created_at",
                    "started_at", "completed_at", "error"]))
        return 0
    job, steps, more = queries.job_with_steps(dsn, args.job_id, args.limit)
    if job is None:
        print(f"no job {safe(repr(args.job_id))}", file=sys.stderr)
        return 1
    job = masking.masked_job(job, settings.mask_keys)
    if args.json:
        print(as_json({"job": job, "steps": steps}))
    else:
        print(table([job], ["job_id", "pipeline", "status", "created_at", "started_at",
                            "completed_at", "error"]))
        print()
        print(table(steps, ["step_name", "status", "started_at", "completed_at",
                            "duration_ms", "error"]))
    if more:
        print(f"... and {more} more steps, not shown: raise --limit (now {args.limit})",
              file=sys.stderr if args.json else sys.stdout)
    return 0


def _compare(args: argparse.Namespace, dsn: str, keys: tuple[str, ...]) -> int:
    """``jobs diff``: 0 the same, 1 different, 2 an error, as diff(1) exits."""
    from pudato_registry import diff, queries  # noqa: PLC0415
    from pudato_registry.present import as_json, diff_text  # noqa: PLC0415

    with queries.reading(dsn) as conn:
        later = queries.run_facts(conn, args.second or args.first)
        if later is None:
            print(f"no job {safe(repr(args.second or args.first))}", file=sys.stderr)
            return 2
        if args.second is None:
            before = queries.previous_run(conn, dict(later.job),
                                          succeeded=args.previous_succeeded)
            if before is None:
                kind = "successful run" if args.previous_succeeded else "run"
                print(f"no earlier {kind} of pipeline "
                      f"{safe(repr(later.job.get('pipeline')))} in "
                      f"{safe(later.job['environment'])}/{safe(later.job['namespace'])} "
                      f"before {safe(repr(args.first))}: name both runs", file=sys.stderr)
                return 2
            earlier = queries.run_facts(conn, before["job_id"])
        else:
            earlier = queries.run_facts(conn, args.first)
        if earlier is None:
            print(f"no job {safe(repr(args.first))}", file=sys.stderr)
            return 2
        found = diff.compare(earlier, later,
                             baselines=queries.step_baselines(conn, dict(later.job),
                                                              args.baseline),
                             threshold=args.threshold / 100, literals=args.normalize_literals,
                             words=keys)
    print(as_json(diff.diff_as_dict(found)) if args.json else diff_text(found, sql=args.sql))
    return 1 if found.differs else 0


def _reproduce(args: argparse.Namespace, dsn: str, keys: tuple[str, ...]) -> int:
    from pudato_registry import diff, queries  # noqa: PLC0415
    from pudato_registry.present import as_json, card_text  # noqa: PLC0415

    with queries.reading(dsn) as conn:
        facts = queries.run_facts(conn, args.job_id)
        if facts is None:
            print(f"no job {safe(repr(args.job_id))}", file=sys.stderr)
            return 1
        found = diff.card(facts, queries.overwrites(conn, facts), keys)
    print(as_json(diff.card_as_dict(found)) if args.json else card_text(found))
    return 0


def _lineage_misuse(args: argparse.Namespace) -> str | None:
    """Why these lineage options do not go together, if they do not."""
    walk = args.upstream or args.downstream or args.both or args.depth is not None
    if args.search is not None:
        if args.location is not None or walk or args.runs:
            return "--search TEXT lists locations; give it alone (with --limit, --json)"
        return None
    if args.location is None:
        if args.namespace is not None and not (walk or args.runs):
            return None  # the namespace's whole graph
        return "give a LOCATION, --search TEXT to find one, or --namespace N for its graph"
    if args.runs and walk:
        return ("--runs lists the runs at LOCATION itself; drop --upstream/--downstream/"
                "--both/--depth, or drop --runs for the graph")
    if args.runs and args.format in ("dot", "mermaid"):
        return "--runs prints a table or JSON; --format dot and mermaid draw the graph"
    if not args.runs and (args.pipeline or args.step or args.offset):
        return "--pipeline, --step and --offset narrow --runs; add --runs"
    return None


def _lineage(args: argparse.Namespace, dsn: str) -> int:
    misuse = _lineage_misuse(args)
    if misuse is not None:
        print(f"pudato-registry lineage: {misuse}", file=sys.stderr)
        return 2
    as_data = args.json or args.format == "json"
    if args.search is not None:
        return _lineage_search(args, dsn, as_data=as_data)
    if args.runs:
        return _lineage_runs(args, dsn, as_data=as_data)
    return _lineage_graph(args, dsn, as_data=as_data)


def _lineage_search(args: argparse.Namespace, dsn: str, *, as_data: bool) -> int:
    from pudato_registry import queries  # noqa: PLC0415
    from pudato_registry.present import as_json, table  # noqa: PLC0415

    found = queries.search_locations(dsn, args.search, limit=args.limit or 20)
    if not found:
        print(f"no known location contains {_quoted(args.search)}", file=sys.stderr)
        return 1
    rows = [vars(f) for f in found]
    print(as_json(rows) if as_data else table(rows, ["location", "steps", "runs",
                                                     "last_seen"]))
    return 0


def _lineage_runs(args: argparse.Namespace, dsn: str, *, as_data: bool) -> int:
    from pudato_registry import queries  # noqa: PLC0415
    from pudato_registry.present import as_json, table  # noqa: PLC0415

    page = queries.lineage_runs(dsn, args.location, pipeline=args.pipeline,
                                step_name=args.step, limit=args.limit or 50,
                                offset=args.offset)
    rows = page.rows()
    if not rows and not queries.known_location(dsn, args.location):
        return _no_lineage(args.location, dsn)
    print(as_json(rows) if as_data else table(
        rows, ["relation", "pipeline", "step_name", "status", "started_at", "completed_at",
               "job_id", "step_id"]))
    if page.more:
        print(f"... more runs: add --offset {args.offset + len(rows)} for the next page",
              file=sys.stderr if as_data else sys.stdout)
    return 0


def _lineage_graph(args: argparse.Namespace, dsn: str, *, as_data: bool) -> int:
    from pudato_registry import queries  # noqa: PLC0415
    from pudato_registry.present import (  # noqa: PLC0415
        as_json,
        graph_dot,
        graph_mermaid,
        graph_table,
    )

    most = args.limit or queries.MAX_GRAPH_EDGES
    if args.location is None:
        graph = queries.namespace_graph(dsn, args.namespace, environment=args.environment,
                                        max_edges=most)
        if not graph.found:
            print(f"no step of namespace {safe(repr(args.namespace))} reads or writes anything"
                  + ("" if args.environment is None else
                     f" in environment {safe(repr(args.environment))}"), file=sys.stderr)
            return 1
    else:
        one_way = args.upstream or args.downstream
        graph = queries.lineage_graph(
            dsn, args.location, upstream=not args.downstream, downstream=not args.upstream,
            depth=args.depth or (3 if one_way else 1), namespace=args.namespace,
            environment=args.environment, max_edges=most)
        if not graph.found:
            return _no_lineage(args.location, dsn)
    render = {"dot": graph_dot, "mermaid": graph_mermaid}.get(args.format, graph_table)
    print(as_json(graph.as_dict()) if as_data else render(graph))
    if graph.truncated:
        print(f"... the graph was cut at {len(graph.edges)} edges: lower --depth, narrow "
              "with --namespace/--environment, or raise --limit", file=sys.stderr)
    return 0


def _quoted(text: str) -> str:
    """A user's text echoed in one line: quoted, controls escaped, a long one cut in the middle."""
    from pudato_registry.present import cell  # noqa: PLC0415

    return cell(repr(text), 120)


def _no_lineage(location: str, dsn: str) -> int:
    """Say that nothing reads or writes ``location``, and what it may have meant."""
    from pudato_registry import queries  # noqa: PLC0415

    near = queries.nearest_locations(dsn, location)
    hint = ("; did you mean " + ", ".join(safe(repr(n.location)) for n in near) + "?"
            if near else "; lineage --search TEXT lists the known locations containing TEXT")
    print(f"no step reads or writes {_quoted(location)}{hint}", file=sys.stderr)
    return 1


def _publish(source: str, wait: float, settings: Settings, *, dry_run: bool = False,
             fail_on_spooled: bool = False) -> int:
    from pudato_registry import kafka  # noqa: PLC0415
    from pudato_registry.events import EVENT_ADAPTER  # noqa: PLC0415
    from pudato_registry.publisher import Registry  # noqa: PLC0415
    from pudato_registry.validate import Rejection, validate  # noqa: PLC0415

    stop = _stop_on_signals()
    registry: Registry | None = None  # a dry run touches no broker
    if not dry_run:
        # A topic that does not exist is a mistake to fix, not an outage to spool through.
        if kafka.topic_missing(settings, settings.topic):
            kafka.require_topic(settings)
        registry = Registry(settings.replace(close_timeout_s=wait))
    sent = invalid = 0
    with contextlib.ExitStack() as exits:
        fd = sys.stdin.fileno() if source == "-" else os.open(source, os.O_RDONLY)
        if source != "-":
            exits.callback(os.close, fd)
        for number, line in enumerate(_lines_until(fd, stop), start=1):
            if line is None:
                print(f"{source}:{number}: stopped as asked; this line and the rest were not "
                      "read", file=sys.stderr)
                break
            if not line.strip():
                continue
            value = line.rstrip(b"\r\n")
            event = validate(value, settings.max_message_bytes)
            if isinstance(event, Rejection):
                invalid += 1
                print(f"{source}:{number}: {event.kind.value}: {safe(event.message)}",
                      file=sys.stderr)
                continue
            if registry is not None:
                registry.emit(EVENT_ADAPTER.validate_json(value))  # valid: the models agree
            sent += 1
    skipped = f"; {invalid} invalid lines skipped" if invalid else ""
    if registry is None:
        print(f"dry run: {sent} valid events would be sent to topic {settings.topic}{skipped}",
              file=sys.stderr)
        return 1 if invalid or stop.is_set() else 0
    # A stop cuts the wait short: what is not delivered within a second is spooled.
    registry.close(timeout=1.0 if stop.is_set() else wait)
    waiting = registry.pending()  # this run's, and any an earlier run left
    stats = registry.stats
    print(f"published {stats.delivered} of {sent} events"
          + (f", and re-sent {stats.resent} from the spool (this run's or earlier ones)"
             if stats.resent else "")
          + (f"; {waiting} wait in {registry.spool.path} for later" if waiting else "")
          + skipped, file=sys.stderr)
    if invalid or stop.is_set():
        return 1
    return 3 if fail_on_spooled and waiting else 0


def _spool(args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry.publisher import Registry  # noqa: PLC0415
    from pudato_registry.spool import Spool  # noqa: PLC0415

    spool = Spool(settings.spool_dir, settings.spool_max_bytes)
    if args.spool_command == "list":
        waiting, aside = spool.count(), spool.set_aside_count()
        spool.close()
        print(f"{spool.path}: {waiting} events wait to be sent; {aside} set aside (the broker "
              "refused them for good; table set_aside)")
        return 0
    if spool.count() == 0:
        print(f"{spool.path}: nothing waits")
        return 0
    spool.close()
    # SIGTERM may end it any time: a row leaves the spool only once the broker has it.
    registry = Registry(settings)
    left = registry.drain_spool(args.wait)
    registry.close(timeout=1.0)
    print(f"re-sent {registry.stats.resent} events from {registry.spool.path}"
          + (f"; {left} still wait (is the broker reachable?)" if left else ""))
    return 3 if left else 0


def _lines_until(fd: int, stop: threading.Event) -> Iterator[bytes | None]:
    """The lines of file descriptor ``fd``, read in a thread of their own; None once
    ``stop`` is set.

    A read of a pipe that stays silent blocks, and Python resumes it after a
    signal: read here, it would keep a stop waiting for the next line. The
    thread reads the descriptor itself, not ``sys.stdin``, whose lock it would
    hold while the interpreter exits (a fatal error).
    """
    lines: queue.Queue[bytes | OSError | None] = queue.Queue(maxsize=1024)

    def read() -> None:
        pieces: list[bytes] = []  # of the line being read (a line may span many chunks)
        try:
            while chunk := os.read(fd, 1 << 16):
                start = 0
                while (end := chunk.find(b"\n", start)) != -1:
                    pieces.append(chunk[start:end + 1])
                    lines.put(b"".join(pieces))
                    pieces, start = [], end + 1
                if start < len(chunk):
                    pieces.append(chunk[start:])
            if pieces:
                lines.put(b"".join(pieces))
        except OSError as exc:  # raised where it can be told to a person
            lines.put(exc)
        lines.put(None)

    threading.Thread(target=read, name="publish-reader", daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            line = b""
        if stop.is_set():
            yield None
            return
        if isinstance(line, OSError):
            raise line
        if line is None:
            return
        if line:
            yield line


def _dev_up(root: Path, settings: Settings, *, keep: bool) -> int:
    from pudato_registry import devstack, kafka, store  # noqa: PLC0415

    stack = devstack.DevStack(root.resolve(), keep=keep)
    try:
        stack.start()
        local = settings.replace(bootstrap_servers=stack.bootstrap_servers)
        store.migrate(stack.database_url)
        kafka.create_topics(local)
        print(stack.describe())
        print("local stack up; in another shell:")
        print(f"  source {root / 'env'}")
        for key, value in stack.env().items():
            print(f"  {key}={value}")
        print("Ctrl-C stops it.", flush=True)
        # Signals only wake this thread; the stop itself happens in `finally`.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        with contextlib.suppress(Exception):
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
