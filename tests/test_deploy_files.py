"""What can be checked of the deployment files here: compose speaks the code's settings, the
alert rules and the dashboard pass promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from pudato_registry.settings import Settings

ROOT = Path(__file__).parents[1]


def test_compose_wires_the_worker_with_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "postgres", "setup", "worker"}
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    env = services["worker"]["environment"]
    fields = {f"PUDATO_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields
    assert env["PUDATO_BOOTSTRAP_SERVERS"].split(":")[0] == "kafka"
    assert "@postgres:" in env["PUDATO_DATABASE_URL"]
    assert services["worker"]["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["pudato-registry"]' in dockerfile


def test_compose_publishes_on_loopback_and_migrates_once_before_the_worker() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    worker, setup = services["worker"], services["setup"]
    assert worker["command"] == ["worker"]  # no --migrate, no --create-topics
    assert worker["depends_on"] == {"setup": {"condition": "service_completed_successfully"}}
    assert "pudato-registry migrate" in " ".join(setup["entrypoint"])
    assert "topics create" in " ".join(setup["entrypoint"])
    assert setup["restart"] == "no"
    assert 'CMD ["worker"]' in (ROOT / "Dockerfile").read_text()


def test_the_wheel_carries_migrations_and_the_dev_stack(tmp_path: Path) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for sql in (ROOT / "schema").glob("*.sql"):
        assert f"pudato_registry/schema/{sql.name}" in names
    assert {"pudato_registry/py.typed", "pudato_registry/devstack/pom.xml",
            "pudato_registry/schema/events-v1.schema.json"} <= names


# --- the alert rules and the dashboard, checked by Prometheus's own promtool ------------

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "pudato-registry.json"


def _promtool(*args: str, cwd: Path = ROOT) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: apt-get install prometheus (./dev setup does as root)"
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alert_rules_are_valid_and_each_alert_is_unit_tested() -> None:
    assert "SUCCESS: 9 rules found" in _promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = (PROMETHEUS / "alerts_test.yml").read_text()
    assert {a for a in alerts if f"alertname: {a}" not in tests} == set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"summary", "description", "link"} <= set(rule["annotations"]), rule["alert"]


def _dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def test_every_query_of_the_dashboard_is_valid_promql(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"pudato:dashboard_panel_{n}", "expr": e} for n, e in enumerate(exprs)]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(exprs)} rules found" in _promtool("check", "rules",
                                                             str(tmp_path / "panels.yml"))


def test_the_alerts_and_the_dashboard_name_only_metrics_the_code_exports() -> None:
    source = "".join((ROOT / "worker" / "pudato_registry" / f).read_text()
                     for f in ("metrics.py", "exporter.py", "bridge.py", "receiver.py"))
    defined = set(re.findall(r'"(pudato_[a-z0-9_]+)"', source))
    used = set(re.findall(r"\b(pudato_[a-z0-9_]+)", " ".join(_dashboard_exprs())
                          + (PROMETHEUS / "alerts.yml").read_text()))
    used -= {"pudato_ui_url"}  # an external label
    unknown = {name for name in used
               if re.sub(r"_(total|bucket|sum|count)$", "", name) not in defined}
    assert unknown == set()
