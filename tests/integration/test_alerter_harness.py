"""Shared pieces of the alerter's integration tests: a real alerter with a config
file, a feed publishing alerts through the real broker, and waits on its figures.
(No tests here; the module name keeps it in the alerter's test namespace.)"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import zmq

from daemoneye.bus import Publisher
from daemoneye.rpc import RpcError, RpcTimeout
from tests.conftest import wait_for
from tests.sink_lines import written_records


def alert_body(
    rule: str = "r.test", n: int = 0, severity: str = "high", exe: str = "/usr/bin/curl"
) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "alertId": f"{rule}-{n}-{now}",
        "ruleId": rule,
        "ruleName": f"rule {rule}",
        "severity": severity,
        "title": f"{rule} fired",
        "description": "a test alert",
        "process": {
            "pid": 1000 + n,
            "ppid": 1,
            "name": Path(exe).name,
            "exePath": exe,
            "cmdline": [exe, f"--n={n}"],
            "username": "tester",
        },
        "rowJson": json.dumps({"pid": 1000 + n}),
        "firstSeenNs": now,
        "lastSeenNs": now,
        "count": 1,
        "tags": ["test"],
        "timeNs": now,
        "hostname": "testhost",
    }


class Feed:
    """Publishes alerts into the broker's events-in, like the detector does."""

    def __init__(self, factory, settings) -> None:
        sock = factory.connect(zmq.PUB, settings.endpoint("events-in"))
        self.publisher = Publisher(sock, "detector-test@host")
        self.sock = sock

    def alert(self, body: dict[str, Any]) -> None:
        self.publisher.publish(f"alerts.{body['severity']}", "alert", body)

    def probe(self) -> None:
        """A frame the alerter receives and rejects (wrong body): proves the subscription."""
        self.publisher.publish("alerts.probe", "empty")


def start_alerter(start_service, run_env, tmp_path: Path, toml: str, name: str = "alerter.toml"):
    path = tmp_path / name
    path.write_text(toml)
    env = dict(run_env, DAEMONEYE_CONFIG=str(path))
    return start_service("alerter", env=env)


def health(rpc_client) -> dict[str, Any] | None:
    try:
        return rpc_client.call("control.alerter", "health", timeout_s=2).value
    except RpcError:
        return None


def metric(rpc_client, name: str) -> float:
    h = health(rpc_client)
    return (h or {}).get("metrics", {}).get(name, -1.0)


def wait_live(feed: Feed, rpc_client, proc=None, timeout: float = 20) -> None:
    """Until the alerter answers RPC and its subscription delivers (slow joiner)."""

    def live() -> bool:
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"alerter exited:\n{proc.log()}")
        feed.probe()
        return metric(rpc_client, "alerts.received") >= 1

    wait_for(live, timeout, "the alerter to subscribe")


def file_lines(path: Path) -> list[dict[str, Any]]:
    return written_records(path)


def call(rpc_client, verb: str, params: dict | None = None) -> Any:
    """One RPC to the alerter; a read that times out on a loaded machine is retried."""
    tries = 3 if verb in ("health", "alerts.list", "alerts.failed") else 1
    for attempt in range(tries):
        try:
            return rpc_client.call("control.alerter", verb, params or {}, timeout_s=5).value
        except RpcTimeout:
            if attempt == tries - 1:
                raise
    return None
