"""Private data: with every service run as root on a temporary data and run dir, an
unprivileged local user (`nobody`) reads nothing under either: no alert, no WAL
segment, no history, no ledger entry, no socket."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import wait_for

MARKER = "daemoneye-private-probe"
RULE = f"""\
id: private-probe
name: The private-data probe ran
severity: high
description: A process whose command line carries the probe's marker.
sql: SELECT pid, name, path, cmdline FROM processes WHERE cmdline LIKE '%{MARKER}%'
enabled: true
"""
SERVICES = ("collector", "detector", "alerter", "ledger")

# Run as `nobody`: try to list, read or connect to every path given; print what worked.
PROBE = r"""
import json, os, socket, stat, sys
got = []
for path in json.load(sys.stdin):
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = 0  # not even its inode: the parent is closed
    try:
        if stat.S_ISDIR(mode):
            os.listdir(path)
        elif stat.S_ISSOCK(mode):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
        else:
            with open(path, "rb") as f:
                f.read(1)
        got.append(path)
    except OSError:
        pass
print(json.dumps(got))
"""


def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no `nobody` user on this host to read as")


def read_as_nobody(paths: list[str]) -> list[str]:
    user = nobody()
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    out = subprocess.run(
        [python, "-c", PROBE],
        input=json.dumps(paths),
        capture_output=True,
        text=True,
        timeout=60,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def tree(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may enter (as /var/lib is), so only DaemonEye's own modes
    stand between `nobody` and the data."""
    path = Path(f"/tmp/de-priv-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def healthy(rpc_client: RpcClient, service: str) -> dict[str, Any] | None:
    try:
        return rpc_client.call(f"control.{service}", "health", timeout_s=1).value
    except RpcError:
        return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs the services as root and "
                    "then reads as the unprivileged user `nobody`")  # fmt: skip
def test_nobody_reads_nothing_under_data_or_run_dir(
    start_service: Callable[..., Any],
    run_env: dict[str, str],
    rpc_client: RpcClient,
    open_dir: Path,
    tmp_path: Path,
) -> None:
    nobody()
    data_dir = open_dir / "data"
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "probe.yaml").write_text(RULE)
    env = {
        **run_env,
        "DAEMONEYE_DATA_DIR": str(data_dir),
        "DAEMONEYE_DETECTOR__RULES_DIR": str(rules),
        "DAEMONEYE_COLLECTOR__SCAN_INTERVAL_S": "1",
        "DAEMONEYE_LEDGER__CHECKPOINT_EVERY_S": "1",
    }
    run_dir = Path(env["DAEMONEYE_RUN_DIR"])
    start_service("broker", env=env)
    for service in SERVICES:
        start_service(service, env=env)
        wait_for(lambda s=service: healthy(rpc_client, s), 30, f"the {service} to answer")

    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", MARKER])
    try:
        alerts = data_dir / "alerts.jsonl"
        wait_for(lambda: alerts.exists() and MARKER in alerts.read_text(), 40, "the alert")
    finally:
        probe.kill()
        probe.wait()
    ledger = data_dir / "ledger"
    wait_for(lambda: (ledger / "ed25519.key").exists(), 10, "the ledger's key")

    # everything DaemonEye made: directories 0750 at most, files 0640 at most, keys 0600
    made = tree(data_dir) + tree(run_dir)
    kinds = {"wal": "collector", "history": "detector", "delivery store": "alerter"}
    for what, under in kinds.items():
        assert any(p.is_file() for p in (data_dir / under).rglob("*")), f"no {what} written"
    loose = []
    for path in made:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            limit = 0o750
        elif path.is_socket():
            limit = 0o660
        else:
            limit = 0o600 if path.name.endswith(".key") else 0o640
        if mode & ~limit:
            loose.append(f"{path} {oct(mode)} (at most {oct(limit)})")
    assert not loose, "\n".join(loose)

    # the probe works: a world-readable file beside the data dir is read as nobody
    control = open_dir / "control.txt"
    control.write_text("readable\n")
    control.chmod(0o644)
    paths = [str(p) for p in made]
    assert read_as_nobody([str(control), str(open_dir)]) == [str(control), str(open_dir)]
    got = read_as_nobody(paths)
    assert got == [], f"nobody read {len(got)} of {len(paths)} paths: {got[:20]}"


def test_an_open_data_dir_is_tightened_only_when_it_holds_our_data(tmp_path: Path) -> None:
    from daemoneye import private

    old = os.umask(0o022)
    try:
        ours = tmp_path / "ours"
        (ours / "detector").mkdir(parents=True)
        ours.chmod(0o755)
        assert private.protect(ours) == ""
        assert stat.S_IMODE(ours.stat().st_mode) == 0o750
        shared = tmp_path / "shared"  # e.g. data_dir = /var/lib by mistake
        (shared / "postgresql").mkdir(parents=True)
        shared.chmod(0o755)
        note = private.protect(shared)
        assert "left as it is" in note and "postgresql" in note
        assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    finally:
        os.umask(old)
