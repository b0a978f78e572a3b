"""`pudato-registry ui`: it binds loopback unless a token guards it, and stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pudato_registry.cli import main
from pudato_registry.settings import Settings

pytestmark = pytest.mark.services


def test_another_address_needs_a_token(registry: Settings,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    anywhere = "0.0.0.0"  # noqa: S104 - refused: the point of the test
    assert main(["ui", "--host", anywhere, "--database-url", registry.database_dsn]) == 1
    line = capsys.readouterr().err
    assert "serving on 0.0.0.0 needs a token: set PUDATO_UI_TOKEN" in line
    assert line.count("\n") == 1


def test_a_short_or_missing_token_file_is_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "token"
    short.write_text("abc\n")
    assert main(["ui", "--token-file", str(short)]) == 1
    assert "shorter than 16 characters" in capsys.readouterr().err
    assert main(["ui", "--token-file", str(tmp_path / "none")]) == 1
    assert "cannot read --token-file" in capsys.readouterr().err


def test_ui_serves_and_stops_on_sigterm(registry: Settings) -> None:
    env = {**os.environ, "PUDATO_DATABASE_URL": registry.database_dsn,
           "PUDATO_BOOTSTRAP_SERVERS": registry.bootstrap_servers,
           "PUDATO_DLQ_TOPIC": registry.dlq_topic, "PUDATO_UI_TOKEN": "s" * 24}
    child = subprocess.Popen([sys.executable, "-m", "pudato_registry.cli", "ui", "--port", "0"],
                             env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stderr is not None
        line = child.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line
        base = found.group(0)
        request = urllib.request.Request(  # noqa: S310 - loopback
            base + "api/v1/jobs?limit=1",
                                         headers={"Authorization": "Bearer " + "s" * 24})
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            assert answer.status == 200
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == 0
        assert "ui: stopped" in child.stderr.read()
    finally:
        child.kill()
        child.wait()


def test_a_database_that_is_not_there_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from pudato_registry.devstack import free_port  # noqa: PLC0415

    url = f"postgresql://x@127.0.0.1:{free_port()}/x"
    assert main(["ui", "--port", "0", "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pudato-registry ui: cannot use PostgreSQL at ")
    assert err.count("\n") == 1
