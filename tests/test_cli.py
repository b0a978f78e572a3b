"""The command line: settings from flags and PUDATO_*, secrets kept out of the logs."""

from __future__ import annotations

import json
import logging

import pytest

from pudato_registry import logs
from pudato_registry.cli import main
from pudato_registry.settings import Settings, redact_url
from tests.services import Services


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pudato_registry.cli import _parser, _settings  # noqa: PLC0415

    monkeypatch.setenv("PUDATO_TOPIC", "from.env")
    monkeypatch.setenv("PUDATO_GROUP_ID", "env-group")
    monkeypatch.setenv("PUDATO_KAFKA", '{"security.protocol": "SSL"}')
    args = _parser().parse_args(["worker", "--topic", "from.flag",
                                 "--kafka-config", "sasl.password=s3cret"])
    settings = _settings(args)
    assert (settings.topic, settings.group_id) == ("from.flag", "env-group")
    assert settings.kafka == {"security.protocol": "SSL", "sasl.password": "s3cret"}
    assert settings.kafka_config_redacted()["sasl.password"] == "***"


def test_secrets_never_reach_the_logs(services: Services, caplog: pytest.LogCaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url = services.database_url.replace("pudato@", "pudato:hunter2@")
    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)  # keep pytest's capture
    with caplog.at_level(logging.INFO):
        code = main(["worker", "--drain", "--bootstrap-servers", services.bootstrap_servers,
                     "--database-url", url, "--topic", "no.such.topic", "--metrics-port", "0",
                     "--kafka-config", "sasl.password=s3cret"])
    assert code == 1
    text = caplog.text
    assert "no.such.topic" in text
    assert "topics create" in text
    assert "hunter2" not in text
    assert "s3cret" not in text
    assert redact_url(url) in text
    assert "hunter2" not in repr(Settings(database_url=url))


def test_json_log_lines() -> None:
    record = logging.LogRecord("pudato_registry.loop", logging.WARNING, __file__, 1,
                               "dead-lettered %s", ("x",), None)
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["level"] == "warning"
    assert line["message"] == "dead-lettered x"
    assert line["logger"] == "pudato_registry.loop"
