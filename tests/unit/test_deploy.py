"""deploy/: the systemd units verify, the compose file validates, the image installs
the way the README does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daemoneye.services import available

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "deploy" / "systemd").glob("daemoneye*"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    # ExecStart points at the installed venv; verify against this checkout's instead.
    daemoneye = Path(sys.executable).with_name("daemoneye")
    for unit in UNITS:
        text = unit.read_text().replace("/opt/daemoneye/.venv/bin/daemoneye", str(daemoneye))
        (tmp_path / unit.name).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", *[str(tmp_path / u.name) for u in UNITS]],
        capture_output=True,
        text=True,
    )
    # systemd-analyze exits 0 even for unknown keys; any output is a finding.
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stderr


def test_every_service_has_a_hardened_unit() -> None:
    names = {u.name for u in UNITS}
    for service in available():
        unit = REPO / "deploy" / "systemd" / f"daemoneye-{service}.service"
        assert unit.name in names, f"no systemd unit for {service}"
        text = unit.read_text()
        assert f"daemoneye run {service}" in text
        assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text
        assert "Restart=on-failure" in text and "RuntimeDirectory=daemoneye" in text
        if service != "broker":
            assert "Requires=daemoneye-broker.service" in text
    collector = (REPO / "deploy/systemd/daemoneye-collector.service").read_text()
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH" in collector


def compose_tool() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(compose_tool() is None, reason="neither `docker compose` nor docker-compose")
def test_compose_file_validates() -> None:
    out = subprocess.run(
        [*compose_tool(), "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr


def test_compose_runs_every_service_on_one_run_volume() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(available()) <= set(services)
    for name in available():
        spec = services[name]
        assert spec["command"] == ["run", name]
        assert "run:/run/daemoneye" in spec["volumes"]
        if name != "collector":
            assert spec.get("user") != "root"
    collector = services["collector"]
    assert collector["pid"] == "host" and "NET_ADMIN" in collector["cap_add"]
    assert "container_name" not in collector  # --scale needs generated names


def test_image_installs_exactly_like_the_readme() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^RUN make install$", dockerfile, re.M)
    assert re.search(r"^up: \$\(STAMP\)$", makefile, re.M)  # `make up` = install, then run
    assert re.search(r"^install: \$\(STAMP\)$", makefile, re.M)
    assert "make up" in readme and "make test" in readme
    assert "USER daemoneye" in dockerfile and "HEALTHCHECK" in dockerfile
