"""What can be checked of docker-compose.yml here: it parses and speaks the code's settings."""

from __future__ import annotations

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
