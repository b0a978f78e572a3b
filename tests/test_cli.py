"""The command line: settings from flags and PUDATO_*, secrets kept out of the logs."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pudato_registry import factory, logs
from pudato_registry.cli import main
from pudato_registry.devstack import free_port
from pudato_registry.settings import Settings, dsn_secrets, redact_dsn, unknown_variables
from tests.helpers import drain, messages_of
from tests.services import Services, fresh_database, produce


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pudato_registry.cli import _parser, _settings  # noqa: PLC0415

    monkeypatch.setenv("PUDATO_TOPIC", "from.env")
    monkeypatch.setenv("PUDATO_GROUP_ID", "env-group")
    monkeypatch.setenv("PUDATO_KAFKA", '{"security.protocol": "SSL"}')
    args = _parser().parse_args(["worker", "--topic", "from.flag",
                                 "--kafka-config", "sasl.password=s3cret"])
    settings = _settings(args)
    assert (settings.topic, settings.group_id) == ("from.flag", "env-group")
    assert settings.kafka_config() == {"security.protocol": "SSL", "sasl.password": "s3cret"}
    assert settings.kafka_config_redacted()["sasl.password"] == "***"


def test_settings_flags_work_before_the_command_and_after_it_wins() -> None:
    from pudato_registry.cli import _parser, _settings  # noqa: PLC0415

    before = _settings(_parser().parse_args(["--topic", "t.before", "--log-json", "worker",
                                             "--batch-size", "7"]))
    assert (before.topic, before.log_json, before.batch_size) == ("t.before", True, 7)
    both = _settings(_parser().parse_args(["--topic", "t.before", "worker", "--topic",
                                           "t.after"]))
    assert both.topic == "t.after"
    assert _settings(_parser().parse_args(["worker"])).topic == Settings().topic


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
    assert redact_dsn(url) in text
    assert "hunter2" not in repr(Settings(database_url=url))


def test_json_log_lines() -> None:
    record = logging.LogRecord("pudato_registry.loop", logging.WARNING, __file__, 1,
                               "dead-lettered %s", ("x",), None)
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["level"] == "warning"
    assert line["message"] == "dead-lettered x"
    assert line["logger"] == "pudato_registry.loop"
    assert set(line) == {"time", "level", "logger", "message"}
    # What a call gives with extra= is a field of its own, for a collector to filter on.
    record.__dict__.update(topic="t", partition=3, offset=41, kind="not_json")
    line = json.loads(logs.JsonFormatter().format(record))
    assert (line["topic"], line["partition"], line["offset"], line["kind"]) == (
        "t", 3, 41, "not_json")
    record.__dict__["dsn"] = "postgresql://u:hunter2@h/db"  # secrets masked in fields too
    logs.Scrub(["hunter2"]).filter(record)
    assert json.loads(logs.JsonFormatter().format(record))["dsn"] == "postgresql://u:***@h/db"


# --- secrets: never shown, in any form --------------------------------------------------------

@pytest.mark.parametrize(("dsn", "shown"), [
    ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u@h/db?sslmode=verify-full&password=hunter2",
     "postgresql://u@h/db?sslmode=verify-full&password=***"),
    ("host=h user=u password=hunter2 dbname=db", "host=h user=u password=*** dbname=db"),
    ("host=h password = 'hun ter2' dbname=db", "host=h password = *** dbname=db"),
    ("postgresql://u:hunter%402@h/db", "postgresql://u:***@h/db"),
])
def test_every_form_of_database_url_is_redacted(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown
    found = set(dsn_secrets(dsn))
    assert found & {"hunter2", "hun ter2", "hunter@2"}  # what the logs then scrub
    assert found <= set(Settings(database_url=dsn).secrets())


def test_kafka_settings_are_secret_in_every_repr() -> None:
    settings = Settings(kafka={"sasl.password": "s3cret", "security.protocol": "SASL_SSL"})
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())
    assert settings.kafka_config()["sasl.password"] == "s3cret"
    assert "s3cret" in settings.secrets()


def test_migrate_never_prints_a_key_value_password(services: Services, database_url: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    parts = urlsplit(database_url)
    dsn = (f"host={parts.hostname} port={parts.port} user={parts.username} "
           f"dbname={parts.path.lstrip('/')} password=hunter2")
    assert main(["migrate", "--database-url", dsn]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "password=***" in out


# --- errors a person can read ------------------------------------------------------------------

def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_an_unreachable_database_is_one_line_without_the_password(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)
    url = f"postgresql://pudato:hunter2@127.0.0.1:{free_port()}/pudato?connect_timeout=2"
    assert main(["jobs", "list", "--database-url", url]) == 1
    err = _one_line(capsys)
    assert err.startswith("pudato-registry jobs: cannot use PostgreSQL at postgresql://pudato:***@")
    assert "dev up" in err
    assert "hunter2" not in err


def test_missing_tables_say_to_migrate(services: Services, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)
    with fresh_database(services.admin_url(), services.database_url, migrated=False) as url:
        assert main(["jobs", "show", "j", "--database-url", url]) == 1
    assert "run `pudato-registry migrate`" in _one_line(capsys)


@pytest.mark.parametrize("argv", [
    ["topics", "create", "--kafka-config", "socket.timeout.ms=2000"],
    ["worker", "--drain", "--metrics-port", "0"],
])
def test_an_unreachable_broker_is_one_line(argv: list[str], database_url: str,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "configure", lambda *_a, **_k: None)
    database = ["--database-url", database_url] if argv[0] == "worker" else []
    code = main([*argv, "--bootstrap-servers", f"127.0.0.1:{free_port()}", *database])
    assert code == 1
    err = _one_line(capsys)
    assert err.startswith(f"pudato-registry {argv[0]}: cannot use Kafka at 127.0.0.1:")
    assert ": ;" not in err  # a reason, not an empty exception's text
    assert "dev up" in err


@pytest.mark.parametrize("argv", [
    ["jobs", "list", "--stuck", "99999999999d"], ["jobs", "list", "--limit", "-1"],
    ["jobs", "list", "--since", "99999999999d"], ["jobs", "list", "--stuck", "soon"],
    ["jobs", "list", "--status", "succeeded"],
])
def test_bad_arguments_are_one_line_and_exit_2(argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: argument" in err.splitlines()[-1]
    if "--status" in argv:  # the choices are named
        assert "(choose from 'pending', 'running', 'success', 'failed', 'cancelled')" in err


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("PUDATO_BATCH_SIZE", "lots", "PUDATO_BATCH_SIZE (--batch-size): Input should be a valid"),
    ("PUDATO_KAFKA", "not json", "PUDATO_KAFKA (--kafka-config): not valid JSON"),
    ("PUDATO_LOG_LEVEL", "verbose", "PUDATO_LOG_LEVEL (--log-level): Value error, 'verbose' is "
     "not a log level: one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
])
def test_a_bad_setting_is_one_line_naming_the_variable_and_the_flag(
        variable: str, value: str, said: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["jobs", "list"]) == 2
    assert f"pudato-registry: bad setting {said}" in _one_line(capsys)


def test_control_characters_from_event_data_are_escaped(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    hostile = "\x1b]0;pwned\x07\x1b[2J\x9b31m"
    produce(settings, messages_of([factory.job_submitted("j", pipeline=hostile, logic_version="v"),
                                   factory.job_failed("j", error=hostile)]))
    drain(settings)
    args = ["--database-url", settings.database_dsn]
    for argv in (["jobs", "list", *args], ["jobs", "list", "--json", *args],
                 ["jobs", "show", "j", *args], ["jobs", "show", "j", "--json", *args]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert not any(0x80 <= ord(c) < 0xA0 or (ord(c) < 0x20 and c != "\n") or c == "\x7f"
                       for c in out), argv
        assert "]0;pwned" in out


def test_a_misspelt_variable_is_refused_with_the_setting_it_is_nearest(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUDATO_DATABSE_URL", "postgresql://elsewhere/db")
    assert main(["jobs", "list"]) == 2
    assert _one_line(capsys) == (
        "pudato-registry: PUDATO_DATABSE_URL is not a setting: did you mean "
        "PUDATO_DATABASE_URL? (unset or rename it; the README lists every PUDATO_* variable)")
    monkeypatch.delenv("PUDATO_DATABSE_URL")
    monkeypatch.setenv("PUDATO_TEST_ANYTHING", "the tests' own")  # not a setting, and known
    assert unknown_variables(os.environ) == []


def test_every_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    missing = [f"PUDATO_{f.upper()}" for f in Settings.model_fields
               if f"`PUDATO_{f.upper()}`" not in readme]
    assert missing == []


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix}{name} ")
                found += nested or [f"{prefix}{name}"]
    return found


def test_every_command_is_in_the_readme() -> None:
    from pudato_registry.cli import _parser  # noqa: PLC0415

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    commands = _commands(_parser())
    assert len(commands) > 15
    assert [c for c in commands if f"pudato-registry {c}" not in readme] == []
