"""The lean start: `daemoneye run collector` executes itself again as
`python -m daemoneye.services.collector` (same pid) without the console's imports, with
the same id and settings; a clean stop still exits 0."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemoneye.rpc import RpcClient

from .test_collector_live import start_collector


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def test_run_collector_reexecutes_lean_with_its_id_and_settings(
    broker: Any, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    proc = start_collector(
        start_service, rpc_client, run_env, "--id", "lean-1", netlink="false", scan_interval_s="7"
    )
    argv = cmdline(proc.pid)
    assert argv[1:3] == ["-m", "daemoneye.services.collector"], argv
    assert argv[argv.index("--id") + 1] == "lean-1"
    health = rpc_client.call("control.collector.lean-1", "health").value
    assert health["monitoring"] and health["service_id"] == "lean-1"
    cfg = rpc_client.call("control.collector.lean-1", "update_config", {}).value
    assert cfg["scan_interval_s"] == 7.0 and cfg["netlink"] is False  # handed over whole
    assert proc.stop() == 0, proc.log()


def test_no_second_reexec_when_asked_not_to(
    broker: Any, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    env = dict(run_env, DAEMONEYE_COLLECTOR_LEAN="1")  # as the re-executed one has it
    proc = start_collector(start_service, rpc_client, env, netlink="false")
    assert cmdline(proc.pid)[1:5] == ["-m", "daemoneye", "run", "collector"]
    assert proc.stop() == 0, proc.log()
