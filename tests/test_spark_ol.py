"""A real Spark run with the openlineage-spark listener, through ``serve`` with gzip on.

pyspark and pyarrow live in a virtualenv of their own, made once and cached in
``~/.cache/pudato-registry/spark-ol``; the listener's jar comes from Maven
Central into ``~/.m2``. Spark 4 needs the JDK 17 the dev stack already uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pudato_registry import queries, receiver
from pudato_registry.settings import Settings
from tests.helpers import drain, table_rows

JOB = Path(__file__).parent / "data" / "spark" / "ol_job.py"
TOOLS = Path.home() / ".cache" / "pudato-registry" / "spark-ol"
PACKAGES = ["pyspark==4.3.0", "pyarrow>=18"]
LISTENER = ("io.openlineage", "openlineage-spark_2.13", "1.53.0")


@pytest.fixture(scope="session")
def spark_python() -> Path:
    """A Python with pyspark, installed once into a virtualenv of its own."""
    python = TOOLS / "bin" / "python"
    stamp = TOOLS / ".installed"
    if not python.exists() or not stamp.exists() or stamp.read_text() != repr(PACKAGES):
        shutil.rmtree(TOOLS, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True,
                       timeout=900)
        stamp.write_text(repr(PACKAGES))
    return python


@pytest.fixture(scope="session")
def listener_jar() -> Path:
    """The openlineage-spark jar, from Maven Central (cached in ~/.m2)."""
    group, artifact, version = LISTENER
    jar = (Path.home() / ".m2" / "repository" / group.replace(".", "/") / artifact / version /
           f"{artifact}-{version}.jar")
    if not jar.exists():
        subprocess.run(["mvn", "-q", "dependency:get", f"-Dartifact={group}:{artifact}:{version}",
                        "-Dtransitive=false"], check=True, timeout=600)
    return jar


@pytest.fixture
def receiving(settings: Settings) -> Iterator[tuple[receiver.Receiver, str]]:
    app = receiver.Receiver(settings)
    server = receiver.make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.run, daemon=True).start()
    yield app, f"http://127.0.0.1:{server.effective_port}"
    server.close()
    app.close()


def _spark(python: Path, jar: Path, url: str, what: str,
           base: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OL_JAR": str(jar), "OL_URL": url, "OL_COMPRESSION": "gzip",
           "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": str(python)}
    return subprocess.run([str(python), str(JOB), what, str(base)], env=env, cwd=base.parent,
                          capture_output=True, text=True, timeout=600, check=False)


def test_a_real_spark_run_and_a_failing_one_land_as_they_happened(
        spark_python: Path, listener_jar: Path, settings: Settings,
        receiving: tuple[receiver.Receiver, str], tmp_path: Path) -> None:
    app, url = receiving
    good, bad = tmp_path / "good", tmp_path / "bad"
    ran = _spark(spark_python, listener_jar, url, "succeed", good)
    assert ran.returncode == 0, ran.stderr[-3000:]
    ran = _spark(spark_python, listener_jar, url, "fail", bad)
    assert ran.returncode == 1, ran.stderr[-3000:]
    assert "no FX rate for currency 'XXX'" in ran.stderr
    assert app.counts["published"] > 0
    assert app.counts["rejected"] == app.counts["unavailable"] == 0
    drain(settings)

    jobs, steps, _edges = table_rows(settings.database_dsn)
    by_pipeline = {j["pipeline"]: j for j in jobs}
    assert set(by_pipeline) == {"pudato_test_succeed", "pudato_test_fail"}
    assert (by_pipeline["pudato_test_succeed"]["status"],
            by_pipeline["pudato_test_succeed"]["error"]) == ("success", None)
    failed = by_pipeline["pudato_test_fail"]
    assert failed["status"] == "failed"  # though the listener ended the application COMPLETE
    assert "no FX rate for currency 'XXX'" in failed["error"]
    assert not [s for s in steps if s["status"] == "pending"]
    assert all(s["metadata"]["ol_job_type"]["jobType"] == "RDD_JOB" and (
        s["inputs"] or s["outputs"]) for s in steps if s["status"] == "running")

    mine = [s for s in steps if s["job_id"] == failed["job_id"]]
    [write] = [s for s in mine if s["step_name"].endswith("mart_payments_usd")]
    assert write["status"] == "failed"  # FAIL, then COMPLETE: the FAIL stands
    assert "no FX rate for currency 'XXX'" in write["error"]
    assert "ol_error_stack_trace" in write["metadata"]
    [first] = [s for s in mine if s["step_name"].endswith("raw_payments")]
    assert first["status"] == "success"

    # A file is found however it is spelt: /p, file:/p, file:///p.
    mart = f"{good}/mart/dept_budget"
    for spelling in (mart, f"file:{mart}", f"file://{mart}"):
        found = queries.lineage(settings.database_dsn, spelling).hops
        assert {(h.relation, h.step["status"]) for h in found} >= {("produced", "success")}, (
            spelling)
    upstream = queries.lineage(settings.database_dsn, mart, upstream=True, depth=2).hops
    assert any(h.location == f"file://{good}/raw/employees" for h in upstream)
