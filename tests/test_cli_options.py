"""Each command takes and shows only the options it uses.

Every command runs here for real (services up) with a settings class that
records which settings it reads; each flag its help lists must name one of
them. A flag it does not take is refused in one line, before or after it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pudato_registry import cli
from pudato_registry.settings import Settings
from tests.helpers import answers, wait_for

pytestmark = pytest.mark.services

ROOT = Path(__file__).parents[1]


class Recording(Settings):
    """Settings that note each field read."""

    read: ClassVar[set[str]] = set()

    def __getattribute__(self, name: str) -> Any:
        if name in Settings.model_fields:
            Recording.read.add(name)
        return super().__getattribute__(name)


def _field(flag: str) -> str:
    return {"--kafka-config": "kafka", "--log-json": "log_json"}.get(
        flag, cli._FLAGS[flag][0] if flag in cli._FLAGS else flag)


def _commands() -> dict[str, argparse.ArgumentParser]:
    return dict(cli._leaves(cli._parser()))


def _listed(command: argparse.ArgumentParser) -> set[str]:
    """The long options the command's help shows."""
    return {s for a in command._actions if a.help != argparse.SUPPRESS
            for s in a.option_strings if s.startswith("--") and s != "--help"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, ol_settings: Settings,
             tmp_path: Path) -> Callable[..., set[str]]:
    """Run a command in this process; the settings fields it read."""
    for key in [k for k in os.environ if k.startswith("PUDATO_")]:
        monkeypatch.delenv(key)
    for field in ("bootstrap_servers", "topic", "dlq_topic", "group_id", "ol_topic",
                  "ol_dlq_topic", "ol_group_id"):
        monkeypatch.setenv(f"PUDATO_{field.upper()}", str(getattr(ol_settings, field)))
    monkeypatch.setenv("PUDATO_DATABASE_URL", ol_settings.database_dsn)
    monkeypatch.setenv("PUDATO_METRICS_PORT", "0")
    monkeypatch.setenv("PUDATO_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setattr(cli, "Settings", Recording)

    def run(*argv: str, until: Callable[[], bool] | None = None, setup: bool = False) -> set[
            str]:
        Recording.read.clear()
        if until is not None:  # a service: stop it once it has answered, as Ctrl-C would
            def stop() -> None:
                wait_for(until, 60, what=f"{argv[0]} answering")
                os.kill(os.getpid(), signal.SIGTERM)
            threading.Thread(target=stop, daemon=True).start()
        saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = cli.main(list(argv))
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)
        assert setup or code in (0, 1, 2), argv
        return set(Recording.read)

    return run


def _get(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback
            return bool(answer.status == 200)
    except OSError:
        return False


def test_no_help_lists_an_option_the_command_does_not_read(
        recorded: Callable[..., set[str]]) -> None:
    backfill = str(ROOT / "docs" / "examples" / "backfill.jsonl")
    port = _free_port()
    runs: dict[str, list[tuple[str, ...]]] = {
        "migrate": [("migrate",)],
        "worker": [("worker", "--drain", "--migrate", "--create-topics")],
        "topics create": [("topics", "create")],
        "schema": [("schema",)],
        "publish": [("publish", backfill)],
        "spool list": [("spool", "list")],
        "replay": [("replay", "--verify")],
        "dlq list": [("dlq", "list")],
        "dlq redrive": [("dlq", "redrive", "--dry-run")],
        "jobs list": [("jobs", "list")],
        "jobs show": [("jobs", "show", "x")],
        "jobs diff": [("jobs", "diff", "x")],
        "jobs reproduce": [("jobs", "reproduce", "x")],
        "lineage": [("lineage", "x")],
        "openlineage bridge": [("openlineage", "bridge", "--drain", "--create-topics")],
    }
    services: dict[str, tuple[tuple[str, ...], Callable[[], bool]]] = {
        "ui": (("ui", "--port", str(port)),
               lambda: _get(f"http://127.0.0.1:{port}/dead-letters")),
        "exporter": (("exporter", "--port", str(port)),
                     lambda: answers(f"http://127.0.0.1:{port}/metrics")),
        "openlineage serve": (("openlineage", "serve", "--port", str(port)),
                              lambda: answers(f"http://127.0.0.1:{port}/healthz")),
    }
    # Not run here: `dev up` and `demo` start stacks of their own (test_demo runs the
    # demo); they take no connection flags but dev up's topics, checked below.
    not_run = {"dev up": {"topic", "dlq_topic", "partitions", "log_level", "log_json"},
               "demo": {"log_level", "log_json"}}
    ignored: dict[str, list[str]] = {}
    for path, command in _commands().items():
        if path in services:
            argv, until = services[path]
            read = recorded(*argv, until=until)
        elif path == "spool flush":  # something to flush first: published with no broker
            recorded("publish", backfill, "--bootstrap-servers", "127.0.0.1:1", "--wait", "1",
                     setup=True)
            read = recorded("spool", "flush", "--wait", "30")
        elif path in runs:
            read = set().union(*(recorded(*argv) for argv in runs[path]))
        else:
            read = not_run[path]
        missing = sorted(f for f in _listed(command) if f in command.get_default(
            "command_flags") and _field(f) not in read)
        if missing:
            ignored[path] = missing
    assert ignored == {}


def test_every_option_has_help_and_every_command_an_example() -> None:
    for path, command in _commands().items():
        assert command.epilog, path
        assert command.epilog.startswith("example:\n  "), path
        assert f"pudato-registry {path}" in command.epilog, path
        bare = [a.option_strings or [a.dest] for a in command._actions
                if not a.help and a.dest != "help"]
        assert (path, bare) == (path, [])


@pytest.mark.parametrize(("argv", "said"), [
    (["jobs", "list", "--topic", "x"], "--topic does nothing for `jobs list`: it takes "
                                       "--database-url"),
    (["--topic", "x", "jobs", "list"], "--topic does nothing for `jobs list`"),
    (["schema", "--database-url", "x"], "--database-url does nothing for `schema`: it "
                                        "takes no connection flags"),
    (["openlineage", "serve", "--metrics-port", "1"], "--metrics-port does nothing for "
                                                     "`openlineage serve`"),
    (["openlineage", "bridge", "--group-id", "g"], "--group-id does nothing for "
                                                   "`openlineage bridge`"),
])
def test_a_flag_the_command_does_not_use_is_refused_in_one_line(
        argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert said in err
    assert err.count("\n") == 1


def test_a_flag_before_the_command_still_counts() -> None:
    args = cli._parser().parse_args(["--database-url", "postgresql://a@b/c", "jobs", "list"])
    assert cli._settings(args).database_dsn == "postgresql://a@b/c"


def test_dead_letter_kinds_are_the_validators() -> None:
    from pudato_registry.validate import RejectionKind  # noqa: PLC0415

    assert tuple(k.value for k in RejectionKind) == cli.DEAD_LETTER_KINDS


def test_an_unknown_kind_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["dlq", "list", "--kind", "nonsense"])
    assert exited.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
