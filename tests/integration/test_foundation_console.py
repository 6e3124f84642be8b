"""`daemoneye up`, `status` and `tap` as a user runs them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import psutil

from daemoneye import memory, zygote
from daemoneye.bus import endpoint_in_use
from daemoneye.config import Settings
from tests.conftest import DAEMONEYE, daemoneye, wait_for


def start_up(run_env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "up.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*DAEMONEYE, "up", "--only", "broker"],
            env=run_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def test_up_status_tap_and_clean_stop(run_env, settings: Settings, tmp_path: Path) -> None:
    up, log = start_up(run_env, tmp_path)
    try:
        wait_for(lambda: endpoint_in_use(settings.endpoint("control")), 20, "the broker")
        status = daemoneye("status", "--json", env=run_env)
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)
        assert rows[0]["service"] == "broker"

        table = daemoneye("status", env=dict(run_env, COLUMNS="80"))
        assert "broker" in table.stdout and "healthy" in table.stdout
        assert settings.hostname in table.stdout  # the host column, the name whole

        tap = daemoneye("tap", "control.health.", "--json", "--count", "2", env=run_env)
        assert tap.returncode == 0, tap.stderr
        lines = [json.loads(line) for line in tap.stdout.splitlines()]
        assert len(lines) == 2
        assert all(m["envelope"]["body"]["heartbeat"]["service"] == "broker" for m in lines)

        human = daemoneye("tap", "control.health.", "--count", "1", env=run_env)
        assert "heartbeat" in human.stdout and "broker@" in human.stdout

        children = psutil.Process(up.pid).children(recursive=True)
        assert children, "up started no child"
        # forked from `up` (daemoneye.zygote), it reads as the command that runs it alone
        assert "daemoneye run broker" in " ".join(children[0].cmdline())
        if zygote.supported():  # and shares the modules `up` imported: no copy of its own
            shared = memory.rss_breakdown(children[0].pid).get("Shared_Dirty", 0)
            assert shared > 8 << 20, f"the broker shares {shared} bytes with `up`"
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(30)
    assert code == 0, log.read_text()
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert list(settings.run_dir.glob("*")) == [], "socket files left behind"


def test_up_restarts_a_crashed_child(run_env, settings: Settings, tmp_path: Path) -> None:
    up, log = start_up(run_env, tmp_path)
    try:
        wait_for(lambda: "broker ready" in log.read_text(), 20, "the broker")
        [first] = psutil.Process(up.pid).children()
        first.kill()

        def restarted():
            kids = psutil.Process(up.pid).children()
            return any(k.pid != first.pid for k in kids) and endpoint_in_use(
                settings.endpoint("control")
            )

        wait_for(restarted, 20, "the broker to be restarted")
        assert "broker exited with code -9; restarting" in log.read_text()
        [second] = psutil.Process(up.pid).children()
        assert "daemoneye run broker" in " ".join(second.cmdline())
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0


def test_status_without_a_broker_is_one_clear_line(run_env) -> None:
    out = daemoneye("status", env=dict(run_env, DAEMONEYE_RPC_TIMEOUT_S="60"))
    assert out.returncode == 1  # at once: the RPC timeout is longer than the 30 s run limit
    assert "no broker socket at" in out.stderr and "daemoneye up" in out.stderr
    assert "Traceback" not in out.stderr


def test_status_with_a_stale_socket_file_times_out_clearly(run_env, settings) -> None:
    """A broker killed -9 leaves its socket file: the RPC deadline says it is dead."""
    path = settings.run_dir / "control"
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays; nothing listens
    out = daemoneye("status", env=dict(run_env, DAEMONEYE_RPC_TIMEOUT_S="0.3"))
    assert out.returncode == 1
    assert "did not answer" in out.stderr and "daemoneye up" in out.stderr
    assert "Traceback" not in out.stderr


def test_up_refuses_a_second_instance(run_env, settings: Settings, tmp_path: Path) -> None:
    up, _ = start_up(run_env, tmp_path)
    try:
        wait_for(lambda: endpoint_in_use(settings.endpoint("control")), 20, "the broker")
        second = daemoneye("up", "--only", "broker", env=run_env)
        assert second.returncode == 1
        assert "already" in second.stderr
        assert endpoint_in_use(settings.endpoint("control"))  # the first still serves
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
