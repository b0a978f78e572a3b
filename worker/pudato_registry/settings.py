"""Configuration: built once at the edge (the CLI) from flags and ``PUDATO_*`` variables.

Nothing below the CLI reads the environment. Flags win over the environment,
the environment over the defaults. Secrets (the database URL's password in
any of its forms, every librdkafka value) are ``SecretStr``: no ``repr``
shows them. :func:`redact_dsn` is the one way a database URL is printed,
and :meth:`Settings.secrets` lists what the logs scrub wherever it appears
(a connection error quoting the URL, say).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pudato_registry.masking import DEFAULT_KEYS

DEFAULT_TOPIC = "pudato.registry.events"
DEFAULT_DLQ_TOPIC = "pudato.registry.events.dlq"
MIB = 1024 * 1024
GIB = 1024 * MIB
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_SECRET_KAFKA_KEYS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem")


def fallback_spool_dir() -> Path:
    """The spool directory of last resort: the user's own one in the system's temporary one."""
    return Path(tempfile.gettempdir()) / f"pudato-registry-spool-{os.getuid()}"


def default_spool_dir() -> Path:
    """``~/.local/state/pudato-registry``; a container without a home gets the fallback."""
    try:
        return Path.home() / ".local" / "state" / "pudato-registry"
    except RuntimeError:  # no HOME and no password entry
        return fallback_spool_dir()


class Settings(BaseSettings):
    """Everything the worker, the publisher and the commands are configured with."""

    model_config = SettingsConfigDict(env_prefix="PUDATO_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    database_url: SecretStr = Field(
        SecretStr("postgresql://pudato@127.0.0.1:5432/pudato"),
        description="PostgreSQL URL; TLS via sslmode=... in the URL",
    )
    topic: str = Field(DEFAULT_TOPIC, description="the event topic")
    dlq_topic: str = Field(DEFAULT_DLQ_TOPIC, description="the dead-letter topic")
    group_id: str = Field("pudato-registry", description="the worker's consumer group")
    group_instance_id: str | None = Field(
        None, description="static group membership: this process's member name (default: "
        "the role, the host and the lowest slot free on it, stable across restarts; \"off\": "
        "dynamic membership)")
    # Large: when many runs overlap, the more of an entity's events one batch
    # holds, the fewer times its row and state are rewritten (a replay or a
    # catch-up drains 15 % faster than with 5,000). Under light load a batch
    # holds what arrived within batch_timeout_s; batch_max_bytes bounds memory.
    batch_size: int = Field(20_000, ge=1,
                            description="most messages applied in one transaction")
    lineage_edges: bool = Field(
        True, description="keep pudato_lineage_edges (the logical lineage graph) in every "
        "batch; false only to measure what that costs: the graph then goes stale until a "
        "replay rebuilds it")
    batch_max_bytes: int = Field(
        16 * MIB, ge=1, description="most bytes of message values in one batch (a larger "
        "message makes a batch of its own): bounds the worker's memory")
    # Short: under light load a batch should not wait to fill (latency); under
    # heavy load batches fill long before it runs out (throughput).
    batch_timeout_s: float = Field(0.01, gt=0, description="longest wait to fill a batch")
    max_message_bytes: int = Field(MIB, ge=1, description="larger values are dead-lettered")
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus/health port; 0: off")
    metrics_host: str = Field("127.0.0.1", description="address the metrics server binds")
    retry_timeout_s: float = Field(
        240.0, gt=0, description="how long a transient failure is retried before the worker exits"
    )
    retry_max_backoff_s: float = Field(10.0, gt=0, description="cap of one retry's backoff")
    latency_window_s: float = Field(
        3600.0, gt=0, description="pudato_event_to_row_seconds counts events committed at most "
        "this long after their occurred_at (and at most a minute before it); the others, a "
        "backfill or a wrong clock, are counted apart")
    stall_timeout_s: float = Field(
        300.0, gt=0, description="/healthz fails after this long without progress while the "
        "worker has work; keep it above retry_timeout_s")
    exporter_port: int = Field(9110, ge=0, le=65535,
                               description="`exporter`'s /metrics port (0: any free one)")
    exporter_host: str = Field("127.0.0.1", description="address `exporter` binds")
    exporter_interval_s: float = Field(
        30.0, ge=1, description="how often `exporter` reads the tables (never per scrape)")
    exporter_failed_window_s: float = Field(
        3600.0, gt=0, description="pudato_pipeline_runs_failed counts the runs created this "
        "long ago or later")
    exporter_stuck_after_s: float = Field(
        21600.0, gt=0, description="pudato_jobs_stuck counts jobs running longer than this")
    exporter_max_pipelines: int = Field(
        1000, ge=1, description="most pipeline scopes (namespace, environment, pipeline) "
        "`exporter` reports; the rest are counted in pudato_exporter_scopes_left_out")
    exporter_max_steps: int = Field(
        50, ge=1, description="most step names per pipeline scope in "
        "pudato_step_duration_seconds")
    exporter_baseline_runs: int = Field(
        20, ge=1, description="successful runs behind a step's recent p95")
    exporter_datasets: list[str] = Field(
        default_factory=list, description="locations whose last write `exporter` reports "
        "(JSON list); empty: the PUDATO_EXPORTER_TOP_DATASETS most written")
    exporter_top_datasets: int = Field(
        20, ge=0, description="how many of the most written locations `exporter` reports "
        "when PUDATO_EXPORTER_DATASETS is empty")
    freshness_sla_s: float = Field(
        93600.0, gt=0, description="how long after its last success a pipeline is stale "
        "(26 h: a daily pipeline with 2 h of slack)")
    freshness_slas: dict[str, float] = Field(
        default_factory=dict, description="per pipeline name, its own freshness SLA in "
        'seconds (JSON object, e.g. {"payroll": 3600})')
    partitions: int = Field(12, ge=1, description="partitions of topics `topics create` makes")
    replication_factor: int = Field(1, ge=1, description="replication of created topics")
    kafka: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="extra librdkafka settings (JSON object), e.g. SASL/SSL",
    )
    spool_dir: Path = Field(
        default_factory=default_spool_dir,
        description="where the publisher keeps events it could not deliver yet (if it "
        "cannot be made, a directory of the system's temporary one is used instead)",
    )
    spool_max_bytes: int = Field(
        GIB, ge=MIB, description="publisher: the spool file grows no larger; events past it "
        "are dropped, counted (stats.dropped) and logged")
    delivery_timeout_ms: int = Field(
        30_000, ge=1000, description="publisher: after this an undelivered event is spooled"
    )
    close_timeout_s: float = Field(
        5.0, ge=0, description="publisher: longest wait at exit before spooling the rest"
    )
    input_format: str = Field(
        "openlineage", description="openlineage bridge and serve: the decoder of their input "
        "(inputs.FORMATS: openlineage, events-v1)")
    ol_location_by_name: bool = Field(
        False, description="openlineage: a reference's location is the dataset name alone, "
        "not namespace/name (to join with native events naming tables schema.table)")
    ol_environments: dict[str, str] = Field(
        default_factory=dict, description="openlineage: job namespace -> environment, for "
        "runs without an environment tag (JSON object)")
    ol_skip_subruns: list[str] = Field(
        ["DBT:SQL", "AIRFLOW:QUERY", "SPARK:RDD_JOB:no-datasets"],
        description="openlineage: sub-runs ignored, as INTEGRATION:JOBTYPE, or "
        "INTEGRATION:JOBTYPE:no-datasets for those that name no input or output dataset")
    ol_child_fails_root: list[str] = Field(
        ["SPARK"], description="openlineage: integrations whose failed child run also fails "
        "its root job (Spark's listener ends every application COMPLETE)")
    ol_namespaces: list[str] | None = Field(
        None, description="openlineage: only these job namespaces (none: all)")
    ol_topic: str = Field("openlineage.events",
                          description="openlineage bridge: the topic OpenLineage clients write")
    ol_dlq_topic: str = Field("openlineage.events.dlq",
                              description="openlineage bridge: where invalid input goes")
    ol_group_id: str = Field("pudato-openlineage-bridge",
                             description="openlineage bridge: its consumer group")
    ol_http_host: str = Field("127.0.0.1", description="openlineage serve: address to bind")
    ol_http_port: int = Field(5000, ge=0, le=65535,
                              description="openlineage serve: port (5000, as Marquez)")
    ol_api_key: SecretStr | None = Field(
        None, description="openlineage serve: the Bearer key clients must send (none: open)")
    ol_http_publish_timeout_s: float = Field(
        1.5, gt=0, le=60, description="openlineage serve: how long a request waits for the "
        "broker before its 503 (below HttpTransport's 5 s timeout)")
    ol_http_request_timeout_s: float = Field(
        10.0, gt=0, description="openlineage serve: a request's headers and body must be in "
        "by then, however slowly they trickle")
    ol_http_idle_timeout_s: int = Field(
        30, ge=1, description="openlineage serve: an idle connection is closed after this")
    ol_http_connection_limit: int = Field(
        4000, ge=1, description="openlineage serve: open connections at most")
    ol_http_probe_interval_s: float = Field(
        2.0, gt=0, description="openlineage serve: how often it asks the broker how it is "
        "(/readyz, and 503 at once while it does not answer)")
    ol_http_decode_budget_bytes: int = Field(
        24 * MIB, ge=1, description="openlineage serve: bytes of request bodies decoded at "
        "once (memory is about ten times this)")
    ui_host: str = Field("127.0.0.1", description="`ui`: address to bind (elsewhere than "
                         "loopback needs PUDATO_UI_TOKEN, or --no-auth)")
    ui_port: int = Field(8088, ge=0, le=65535, description="`ui`: port (0: any free one)")
    ui_token: SecretStr | None = Field(
        None, description="`ui`: the token pages (a login form) and the API (Bearer) ask for")
    ui_database_url: SecretStr | None = Field(
        None, description="`ui`: the URL of a role that may only SELECT (docs/ui-role.sql); "
        "none: PUDATO_DATABASE_URL")
    ui_statement_timeout_ms: int = Field(
        2000, ge=10, le=600_000, description="`ui`: a request's queries end after this")
    mask_keys: list[str] = Field(
        default_factory=lambda: list(DEFAULT_KEYS),
        description="the values of parameter and request keys with one of these words are "
        "masked wherever a job is shown: `ui`, its API, `jobs show`, `diff`, `reproduce` "
        "(JSON list)")
    ui_refresh_s: float = Field(2.0, ge=0.5, description="`ui`: how often a running job's "
                                "page reloads its steps")
    log_json: bool = Field(False, description="log one JSON object per line")
    log_level: str = Field("INFO", description="logging level")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, level: str) -> str:
        if level.upper() not in LOG_LEVELS:
            raise ValueError(f"{level!r} is not a log level: one of {', '.join(LOG_LEVELS)}")
        return level.upper()

    @field_validator("ol_api_key")
    @classmethod
    def _api_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("the API key is empty: set one, or unset PUDATO_OL_API_KEY to "
                             "accept requests without a key")
        return key

    @field_validator("ui_token")
    @classmethod
    def _ui_token(cls, token: SecretStr | None) -> SecretStr | None:
        weak = None if token is None else weak_ui_token(token.get_secret_value())
        if weak:
            raise ValueError(f"the UI token is {weak}")
        return token

    @field_validator("ol_skip_subruns")
    @classmethod
    def _subruns(cls, items: list[str]) -> list[str]:
        for item in items:
            parts = item.split(":")
            if not (len(parts) in (2, 3) and all(parts[:2])
                    and (len(parts) == 2 or parts[2].lower() == "no-datasets")):
                raise ValueError(f"{item!r} is neither INTEGRATION:JOBTYPE nor "
                                 "INTEGRATION:JOBTYPE:no-datasets")
        return items

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` applied (settings stay frozen)."""
        return type(self)(**{**self.model_dump(), **changes})

    @property
    def database_dsn(self) -> str:
        """The database URL with its secret, for the connection only."""
        return self.database_url.get_secret_value()

    @property
    def ui_database_dsn(self) -> str:
        """The URL `ui` reads with: its own read-only role's, else the database URL."""
        url = self.ui_database_url or self.database_url
        return url.get_secret_value()

    def kafka_config(self) -> dict[str, str]:
        """The librdkafka pass-through settings, secrets included, for the clients only."""
        return {key: value.get_secret_value() for key, value in self.kafka.items()}

    def kafka_config_redacted(self) -> dict[str, str]:
        """The librdkafka pass-through settings with secret values masked, for logs."""
        return {
            key: "***" if any(part in key for part in _SECRET_KAFKA_KEYS)
            else value.get_secret_value()
            for key, value in self.kafka.items()
        }

    def secrets(self) -> list[str]:
        """Every secret value these settings hold, for logs and messages to scrub."""
        found = [value.get_secret_value() for key, value in self.kafka.items()
                 if any(part in key for part in _SECRET_KAFKA_KEYS)]
        found += dsn_secrets(self.database_dsn)
        for key in (self.ol_api_key, self.ui_token):
            if key is not None:
                found.append(key.get_secret_value())
        if self.ui_database_url is not None:
            found += dsn_secrets(self.ui_database_url.get_secret_value())
        return [secret for secret in found if len(secret) >= 3]  # "a" is in every line


_DSN_SECRET_KEYS = ("password", "sslpassword")
_KEY_VALUE_SECRET = re.compile(
    r"(?i)\b(password|sslpassword)(\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)")


# PUDATO_* variables that are not settings: the tests' and the benches' services.
_NOT_SETTINGS = ("PUDATO_TEST_", "PUDATO_BENCH_")


UI_TOKEN_MIN_CHARS = 16


def weak_ui_token(token: str) -> str | None:
    """Why ``token`` is too weak to guard the UI (PUDATO_UI_TOKEN, --token-file), or None."""
    if len(token.strip()) >= UI_TOKEN_MIN_CHARS:
        return None
    return (f"shorter than {UI_TOKEN_MIN_CHARS} characters: make a long one "
            "(python -c 'import secrets; print(secrets.token_urlsafe())')")


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The PUDATO_* variables no setting reads (a misspelling is silently ignored
    otherwise), each with the setting's variable it is nearest to, if one is near."""
    known = [f"PUDATO_{name.upper()}" for name in Settings.model_fields]
    found = []
    for variable in sorted(environ):
        upper = variable.upper()
        if upper.startswith("PUDATO_") and upper not in known \
                and not upper.startswith(_NOT_SETTINGS):
            near = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
            found.append((variable, near[0] if near else None))
    return found


def dsn_secrets(dsn: str) -> list[str]:
    """The passwords a database URL or ``key=value`` string holds, as libpq reads them."""
    found = [m.group(3).strip("'") for m in _KEY_VALUE_SECRET.finditer(dsn)]
    if "://" in dsn:
        with contextlib.suppress(ValueError):
            password = urlsplit(dsn).password
            found += [password, unquote(password)] if password else []
    # Not parseable, or a client install without psycopg: what was found is all we know.
    with contextlib.suppress(Exception):
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 - not in [client]

        params = conninfo_to_dict(dsn)
        found += [str(params[key]) for key in _DSN_SECRET_KEYS if params.get(key)]
    return list(dict.fromkeys(found))


def redact_dsn(dsn: str) -> str:
    """``dsn`` with every password shown as ``***``: URL (user info or query) or ``key=value``."""
    if "://" not in dsn:
        return _KEY_VALUE_SECRET.sub(r"\1\2***", dsn)
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[-1]}"
    query = urlencode([(k, "***" if k.lower() in _DSN_SECRET_KEYS else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))

