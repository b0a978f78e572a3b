"""The ``pudato-registry`` command: parse flags, build settings once, call the right module."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from pudato_registry import logs
from pudato_registry.settings import Settings, redact_url

log = logging.getLogger("pudato_registry")

# flag -> Settings field; a flag given on the command line wins over PUDATO_*.
_FLAGS: dict[str, tuple[str, type, str]] = {
    "--bootstrap-servers": ("bootstrap_servers", str, "Kafka bootstrap servers"),
    "--database-url": ("database_url", str, "PostgreSQL URL (sslmode=... for TLS)"),
    "--topic": ("topic", str, "event topic"),
    "--dlq-topic": ("dlq_topic", str, "dead-letter topic"),
    "--group-id": ("group_id", str, "consumer group"),
    "--batch-size": ("batch_size", int, "most messages per transaction"),
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
    if args.log_json:
        overrides["log_json"] = True
    base = Settings(**overrides)
    if args.kafka_config:
        extra = dict(base.kafka)
        for item in args.kafka_config:
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"--kafka-config takes KEY=VALUE, not {item!r}")
            extra[key] = value
        base = base.replace(kafka=extra)
    return base


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    for flag, (field, kind, text) in _FLAGS.items():
        common.add_argument(flag, dest=field, type=kind, help=text)
    common.add_argument("--kafka-config", action="append", metavar="KEY=VALUE",
                        help="any librdkafka setting, e.g. security.protocol=SASL_SSL (repeat)")
    common.add_argument("--log-json", action="store_true", help="log JSON lines")

    parser = argparse.ArgumentParser(
        prog="pudato-registry",
        description="The pudato job registry: lifecycle events from Kafka into PostgreSQL.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", parents=[common], help="apply pending schema migrations")
    worker = sub.add_parser("worker", parents=[common], help="run the ingestion worker")
    worker.add_argument("--drain", action="store_true",
                        help="exit 0 once every assigned partition is caught up and committed")
    worker.add_argument("--create-topics", action="store_true",
                        help="create the event and dead-letter topics if missing")
    worker.add_argument("--migrate", action="store_true", help="apply migrations first")
    topics = sub.add_parser("topics", help="manage the topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    topics_sub.add_parser("create", parents=[common],
                          help="create the event topic (infinite retention) and the DLQ")
    sub.add_parser("schema", parents=[common], help="print the v1 event JSON Schema")
    publish = sub.add_parser("publish", parents=[common],
                             help="publish JSON lines of events (backfills, scripts)")
    publish.add_argument("file", nargs="?", default="-",
                         help="a file of one event per line; - (default) reads stdin")
    publish.add_argument("--wait", type=float, default=60.0,
                         help="seconds to wait for delivery before leaving the rest spooled")
    dev = sub.add_parser("dev", help="the local Kafka + PostgreSQL stack (no Docker needed)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", parents=[common],
                            help="start the stack, migrate, create topics; Ctrl-C stops it")
    up.add_argument("--dir", type=Path, default=Path(".stack"),
                    help="where the stack keeps its files and writes `env`")
    sub.add_parser("demo", parents=[common],
                   help="the main job on local defaults: stack, worker, a sample pipeline")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_json)
    try:
        return _dispatch(args, settings)
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "schema":
        from pudato_registry.events import json_schema  # noqa: PLC0415 - fast start-up

        sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "topics":
        from pudato_registry import kafka  # noqa: PLC0415

        created = kafka.create_topics(settings)
        print(f"created: {', '.join(created) or 'nothing (both exist)'}")
        return 0
    if args.command == "worker":
        return _worker(args, settings)
    if args.command == "publish":
        return _publish(args.file, args.wait, settings)
    if args.command == "dev":
        return _dev_up(args.dir, settings)
    if args.command == "demo":
        from pudato_registry.demo import run_demo  # noqa: PLC0415

        return run_demo(settings)
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _migrate(settings: Settings) -> int:
    from pudato_registry import store  # noqa: PLC0415

    applied = store.migrate(settings.database_dsn)
    names = ", ".join(f"{m.version:03d}_{m.name}" for m in applied)
    print(f"{redact_url(settings.database_dsn)}: applied {names or 'nothing (up to date)'}")
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from pudato_registry import kafka, store  # noqa: PLC0415
    from pudato_registry.loop import FatalError, Worker  # noqa: PLC0415

    log.info("worker starting: kafka %s (%s), database %s", settings.bootstrap_servers,
             settings.kafka_config_redacted(), redact_url(settings.database_dsn))
    if args.migrate:
        store.migrate(settings.database_dsn)
    if args.create_topics:
        kafka.create_topics(settings)
    worker = Worker(settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _n, _f: worker.request_stop())
    if settings.metrics_port:
        port = worker.metrics.serve(settings.metrics_host, settings.metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    try:
        worker.run(drain=args.drain)
    except (FatalError, kafka.TopicMissingError) as exc:
        log.error("worker stopped: %s", exc)
        return 1
    finally:
        worker.metrics.close()
    s = worker.stats
    log.info("worker stopped: consumed %d, applied %d, duplicates %d, dead-lettered %d, "
             "batches %d, busy %.2f s", s.consumed, s.applied, s.duplicates, s.dead_lettered,
             s.batches, s.busy_seconds)
    return 0


def _publish(source: str, wait: float, settings: Settings) -> int:
    from pudato_registry.publisher import Registry  # noqa: PLC0415
    from pudato_registry.validate import Rejection, validate  # noqa: PLC0415

    registry = Registry(settings.replace(close_timeout_s=wait))
    sent = invalid = 0
    with contextlib.ExitStack() as exits:
        lines = sys.stdin.buffer if source == "-" else exits.enter_context(
            Path(source).open("rb"))
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            event = validate(line.rstrip(b"\r\n"), settings.max_message_bytes)
            if isinstance(event, Rejection):
                invalid += 1
                print(f"{source}:{number}: {event.kind.value}: {event.message}", file=sys.stderr)
                continue
            registry.emit(event)
            sent += 1
    registry.flush(wait)
    registry.close()
    spooled = registry.pending()
    print(f"published {sent - spooled} events"
          + (f", {spooled} spooled in {registry.spool.path} for later" if spooled else "")
          + (f"; {invalid} invalid lines skipped" if invalid else ""), file=sys.stderr)
    return 1 if invalid else 0


def _dev_up(root: Path, settings: Settings) -> int:
    from pudato_registry import devstack, kafka, store  # noqa: PLC0415

    stack = devstack.DevStack(root.resolve())
    try:
        stack.start()
        local = settings.replace(bootstrap_servers=stack.bootstrap_servers)
        store.migrate(stack.database_url)
        kafka.create_topics(local)
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
