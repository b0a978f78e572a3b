"""Configuration: built once at the edge (the CLI) from flags and ``PUDATO_*`` variables.

Nothing below the CLI reads the environment. Flags win over the environment,
the environment over the defaults. Secrets (the database URL's password, SASL
settings) are kept out of ``repr`` and logs: see :func:`redact_url` and
:meth:`Settings.kafka_config_redacted`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TOPIC = "pudato.registry.events"
DEFAULT_DLQ_TOPIC = "pudato.registry.events.dlq"
MIB = 1024 * 1024

_SECRET_KAFKA_KEYS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem")


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
    batch_size: int = Field(5000, ge=1, description="most messages applied in one transaction")
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
    partitions: int = Field(12, ge=1, description="partitions of topics `topics create` makes")
    replication_factor: int = Field(1, ge=1, description="replication of created topics")
    kafka: dict[str, str] = Field(
        default_factory=dict,
        description="extra librdkafka settings (JSON object), e.g. SASL/SSL",
    )
    spool_dir: Path = Field(
        Path.home() / ".local" / "state" / "pudato-registry",
        description="where the publisher keeps events it could not deliver yet",
    )
    delivery_timeout_ms: int = Field(
        30_000, ge=1000, description="publisher: after this an undelivered event is spooled"
    )
    close_timeout_s: float = Field(
        5.0, ge=0, description="publisher: longest wait at exit before spooling the rest"
    )
    log_json: bool = Field(False, description="log one JSON object per line")
    log_level: str = Field("INFO", description="logging level")

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` applied (settings stay frozen)."""
        return type(self)(**{**self.model_dump(), **changes})

    @property
    def database_dsn(self) -> str:
        """The database URL with its secret, for the connection only."""
        return self.database_url.get_secret_value()

    def kafka_config_redacted(self) -> dict[str, str]:
        """The librdkafka pass-through settings with secret values masked, for logs."""
        return {
            key: "***" if any(part in key for part in _SECRET_KAFKA_KEYS) else value
            for key, value in self.kafka.items()
        }


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))
