"""A real dbt-ol run of the captured dbt project, through Kafka, the bridge and the worker.

dbt-core, dbt-duckdb and openlineage-dbt live in a virtualenv of their own
(their pins are not the registry's), made once and cached in
``~/.cache/pudato-registry/dbt-ol``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pudato_registry import bridge, queries
from pudato_registry.settings import Settings
from tests.helpers import drain, table_rows

PROJECT = Path(__file__).parent / "data" / "dbt-project"
TOOLS = Path.home() / ".cache" / "pudato-registry" / "dbt-ol"
PACKAGES = ["dbt-core>=1.11,<1.12", "dbt-duckdb>=1.11,<1.12", "openlineage-dbt==1.54.0",
            "openlineage-python[kafka]==1.54.0"]


@pytest.fixture(scope="session")
def dbt_ol() -> Path:
    """The dbt-ol executable, installed once into a virtualenv of its own."""
    executable = TOOLS / "bin" / "dbt-ol"
    stamp = TOOLS / ".installed"
    if not executable.exists() or stamp.read_text() != repr(PACKAGES):
        shutil.rmtree(TOOLS, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
        subprocess.run([str(TOOLS / "bin" / "python"), "-m", "pip", "install", "-q",
                        *PACKAGES], check=True, timeout=900)
        stamp.write_text(repr(PACKAGES))
    return executable



def _dbt_ol(dbt_ol: Path, settings: Settings, work: Path, *args: str) -> tuple[int, str]:
    project = work / "project"
    if not project.exists():
        shutil.copytree(PROJECT, project)
    (project / "openlineage.yml").write_text(
        "transport:\n  type: kafka\n"
        f"  topic: {settings.ol_topic}\n"
        f"  config:\n    bootstrap.servers: \"{settings.bootstrap_servers}\"\n")
    env = {**os.environ, "OL_DEMO_DUCKDB": str(work / "warehouse.duckdb"),
           # dbt-ol runs `dbt` from the PATH: the one beside it.
           "PATH": f"{dbt_ol.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DBT_PROFILES_DIR": str(project), "OPENLINEAGE_CONFIG": str(project / "openlineage.yml"),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    done = subprocess.run([str(dbt_ol), *args, "--project-dir", str(project)], env=env,
                          cwd=project, capture_output=True, text=True, timeout=600, check=False)
    return done.returncode, done.stdout[-3000:] + done.stderr[-3000:]


def test_a_dbt_ol_build_lands_as_a_job_with_its_steps_and_lineage(
        dbt_ol: Path, ol_settings: Settings, tmp_path: Path) -> None:
    code, output = _dbt_ol(dbt_ol, ol_settings, tmp_path, "build")
    assert code == 0, output
    bridge.Bridge(ol_settings).run(drain=True)
    drain(ol_settings)
    jobs, steps, _edges = table_rows(ol_settings.database_dsn)
    assert [(j["pipeline"], j["status"], j["logic_version"]) for j in jobs] == [
        ("dbt-run-ol_demo", "success", "1.2.0")]
    names = {s["step_name"] for s in steps}
    assert {"model.ol_demo.fct_dept_budget", "model.ol_demo.stg_departments"} <= names
    assert all(s["status"] == "success" for s in steps)
    fct = next(s for s in steps if s["step_name"] == "model.ol_demo.fct_dept_budget")
    written = fct["outputs"][0]["location"]
    assert written.endswith("fct_dept_budget")
    hops = queries.lineage(ol_settings.database_dsn, written).hops
    assert {(h.relation, h.step["step_name"]) for h in hops} >= {
        ("produced", "model.ol_demo.fct_dept_budget")}
    assert any(h.relation == "consumed" for h in hops)


def test_a_failing_model_in_structured_logs_mode_carries_its_error(
        dbt_ol: Path, ol_settings: Settings, tmp_path: Path) -> None:
    code, output = _dbt_ol(dbt_ol, ol_settings, tmp_path, "build", "--consume-structured-logs",
                           "--vars", "{break_model: true}")
    assert code != 0, output  # dbt failed, as asked
    bridge.Bridge(ol_settings).run(drain=True)
    drain(ol_settings)
    jobs, steps, _edges = table_rows(ol_settings.database_dsn)
    assert [(j["pipeline"], j["status"]) for j in jobs] == [("dbt-run-ol_demo", "failed")]
    report = next(s for s in steps if s["step_name"] == "model.ol_demo.dept_report")
    assert report["status"] == "failed"
    assert "dept_report" in report["error"]
