"""Packaging and deployment: the distribution name, license metadata, what the wheel carries, deploy/ fixes."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from tests.test_daemon import ROOT, daemons, free_port  # noqa: F401 - daemons is a fixture

DIST = "fleet-orchestrator"


def test_wheel_has_its_own_name_license_page_templates_and_schema(tmp_path: Path) -> None:
    # what 'python -m pip install .' builds and installs
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("fleet_orchestrator-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(info))
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert metadata["Name"] == DIST and metadata["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in metadata.get_all("License-File")
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"orchestrator/templates/fleet.html", "orchestrator/templates/login.html", "orchestrator/py.typed",
            "orchestrator/config.schema.json"} <= names
    assert "orchestrator = orchestrator.cli:main" in entry_points  # the command keeps its name
    assert not any(n.startswith("tests/") for n in names)


def test_readme_and_deploy_files_install_the_free_name() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"pip install {DIST}" in readme
    unit = (ROOT / "deploy" / "orchestrator.service").read_text()
    assert f"pip install {DIST}" in unit and not re.search(r"pip install orchestrator\b", unit + readme)
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_systemd_unit_is_hardened() -> None:
    unit = ROOT / "deploy" / "orchestrator.service"
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required for this test (package systemd)"
    out = subprocess.run([analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60).stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert exposure < 3.0, out[-2000:]  # was 7.0 MEDIUM before the hardening (7.3 on older systemd)


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "tests", "*.db", "var"} <= set(ignored)
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY")]
    assert ["pyproject.toml", "README.md", "LICENSE"] in copied  # setuptools needs LICENSE for the license metadata


def test_docker_healthcheck_follows_the_configured_port(project: Any, sqlite_db: Any, daemons: Any) -> None:  # noqa: F811
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    check = re.search(r'HEALTHCHECK .*?CMD \["python", "-m", "orchestrator.healthcheck", "([^"]+)"\]', dockerfile, re.S)
    command = re.search(r'^CMD \["daemon", "([^"]+)"\]', dockerfile, re.M)
    assert check and command and check.group(1) == command.group(1), "the health check reads the config the daemon runs"
    project.add_target("sqlite", "a", sqlite_db)
    project.add_set("s1", ["sqlite.a"])
    project.write("s1", "001_a.sql", "CREATE TABLE a (id INTEGER);\n")
    port = free_port()
    project.extra["daemon"] = {"watch_interval": "200ms", "http": {"host": "0.0.0.0", "port": port, "token": "x" * 24}}
    config = project.config

    def healthcheck() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator.healthcheck", str(config)], capture_output=True, text=True, timeout=60)

    down = healthcheck()
    assert down.returncode == 1 and f"127.0.0.1:{port}/healthz" in down.stderr and "x" * 24 not in down.stderr
    daemon = daemons(config)
    daemon.wait_log("status on")
    assert healthcheck().returncode == 0
