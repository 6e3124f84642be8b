"""Shared by the benchmarks: a temporary run dir, real services as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daemoneye.bus import SocketFactory, wait_for_endpoint
from daemoneye.config import Settings, load_settings
from daemoneye.rpc import RpcError, call_once


@contextmanager
def bench_env(**extra: str) -> Iterator[tuple[Settings, dict[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="de-bench-") as tmp:
        env = dict(os.environ)
        env.update(
            DAEMONEYE_RUN_DIR=str(Path(tmp) / "run"),
            DAEMONEYE_DATA_DIR=str(Path(tmp) / "data"),
            DAEMONEYE_LOG_LEVEL="warning",
            **extra,
        )
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            yield load_settings(), env
        finally:
            os.environ.clear()
            os.environ.update(saved)


def config_env(root: Path, run_dir: Path) -> tuple[dict[str, str], Settings]:
    """The environment (and its settings) of services run from `root`: data under
    root/data, settings from root/alerter.toml, a short run dir, heartbeats each second;
    set in this process too, so its clients see what the services see."""
    env = dict(
        os.environ,
        DAEMONEYE_RUN_DIR=str(run_dir),
        DAEMONEYE_DATA_DIR=str(root / "data"),
        DAEMONEYE_CONFIG=str(root / "alerter.toml"),
        DAEMONEYE_HEARTBEAT_INTERVAL_S="1",
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAEMONEYE_")})
    return env, load_settings()


@contextmanager
def service(
    name: str, settings: Settings, env: dict[str, str], *args: str
) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "daemoneye", "run", name, *args], env=env)
    try:
        if name == "broker" and not wait_for_endpoint(settings.endpoint("control"), 15):
            raise RuntimeError("the broker did not start")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def verdict(value: float, budget: float, higher_is_better: bool = True) -> str:
    ok = value >= budget if higher_is_better else value <= budget
    return "OK" if ok else "OVER BUDGET"


def alerts_received(factory: SocketFactory, settings: Settings) -> float:
    """The alerter's `alerts.received`, or -1 while it does not answer."""
    try:
        value = call_once(
            factory, settings.endpoint("control"), "control.alerter", "health", timeout_s=1
        ).value
    except RpcError:
        return -1
    return value["metrics"].get("alerts.received", -1)
