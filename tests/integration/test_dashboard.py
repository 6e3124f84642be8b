"""`daemoneye dashboard` in a real terminal (tmux): what an operator sees."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import zmq

from daemoneye.bus import Publisher
from tests.conftest import wait_for

ECHO = Path(__file__).with_name("echo_service.py")
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, command: str, env: dict[str, str], width: int = 80, height: int = 24):
        self.name = f"de-{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in env.items() if k.startswith("DAEMONEYE_")}
        exports = " ".join(f"{k}={v}" for k, v in self.env.items())
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                self.name,
                "-x",
                str(width),
                "-y",
                str(height),
                f"env {exports} {command}",
            ],
            check=True,
        )

    def screen(self) -> str:
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        )
        return out.stdout

    def alive(self) -> bool:
        return (
            subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode
            == 0
        )

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def row_of(screen: str, needle: str) -> str:
    return next((line for line in screen.splitlines() if needle in line), "")


def test_dashboard_shows_services_alerts_and_a_dead_service(
    broker, run_env, factory, settings, tmp_path
) -> None:
    echo_log = open(tmp_path / "echo.log", "wb")  # noqa: SIM115
    echo = subprocess.Popen(
        [sys.executable, str(ECHO), "--id", "echo-dash"],
        env=run_env,
        stdout=echo_log,
        stderr=subprocess.STDOUT,
    )
    term = Tmux(f"{sys.executable} -m daemoneye dashboard --refresh 4", run_env)
    try:
        wait_for(
            lambda: "healthy" in row_of(term.screen(), "echo-dash"),
            20,
            "the echo service on the dashboard",
        )
        assert "broker@" in term.screen()

        pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "detector@t")

        def alert_shown() -> bool:
            pub.publish(
                "alerts.critical",
                "alert",
                {
                    "ruleId": "rev_shell",
                    "severity": "critical",
                    "title": "reverse shell",
                    "process": {"pid": 4321, "name": "bash"},
                    "timeNs": time.time_ns(),
                },
            )
            return "rev_shell" in term.screen()

        wait_for(alert_shown, 20, "the alert on the dashboard")
        assert "critical" in row_of(term.screen(), "rev_shell")
        assert "bash[4321]" in row_of(term.screen(), "rev_shell")

        def chain_shown() -> bool:  # an alert with ancestors shows the chain
            pub.publish(
                "alerts.high",
                "alert",
                {
                    "ruleId": "web_shell",
                    "severity": "high",
                    "title": "shell",
                    "process": {"pid": 77, "name": "sh"},
                    "ancestry": [
                        {"pid": 70, "name": "php-fpm", "exited": True},
                        {"pid": 60, "name": "nginx"},
                    ],
                    "timeNs": time.time_ns(),
                },
            )
            return "php-fpm(70)" in row_of(term.screen(), "web_shell")

        wait_for(chain_shown, 20, "the ancestry on the dashboard")
        assert "php-fpm(70)†" in row_of(term.screen(), "web_shell")  # † exited

        echo.kill()
        wait_for(
            lambda: "unhealthy" in row_of(term.screen(), "echo-dash"),
            20,
            "the dead service's row to turn unhealthy",
        )
        assert "healthy" in row_of(term.screen(), "broker@")

        term.keys("q")
        wait_for(lambda: not term.alive(), 10, "q to quit the dashboard")
    finally:
        term.kill()
        if echo.poll() is None:
            echo.kill()
        echo.wait(10)
        echo_log.close()


def test_dashboard_keeps_running_without_a_broker(run_env) -> None:
    term = Tmux(f"{sys.executable} -m daemoneye dashboard", run_env)
    try:
        wait_for(lambda: "broker unreachable" in term.screen(), 20, "the unreachable banner")
        assert term.alive()
        term.keys("C-c")
        wait_for(lambda: not term.alive(), 10, "Ctrl-C to quit")
    finally:
        term.kill()
