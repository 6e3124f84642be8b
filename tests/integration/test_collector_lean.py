"""The lean start: `daemoneye run collector` loads no console weight (Rich, the rules
engine with sqlglot, the ledger, cryptography, RocksDB), so it runs as started: no
second exec, its id and settings as given; a clean stop exits 0."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemoneye.rpc import RpcClient

from .test_collector_live import start_collector

# What the console's other verbs load and a service never uses.
HEAVY = ("rich", "sqlglot", "daemoneye.rules", "daemoneye.ledger", "cryptography", "rocksdict")


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def test_run_collector_runs_as_started_with_its_id_and_settings(
    broker: Any, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    proc = start_collector(
        start_service, rpc_client, run_env, "--id", "lean-1", netlink="false", scan_interval_s="7"
    )
    assert cmdline(proc.pid)[1:7] == ["-m", "daemoneye", "run", "collector", "--id", "lean-1"]
    health = rpc_client.call("control.collector.lean-1", "health").value
    assert health["monitoring"] and health["service_id"] == "lean-1"
    cfg = rpc_client.call("control.collector.lean-1", "update_config", {}).value
    assert cfg["scan_interval_s"] == 7.0 and cfg["netlink"] is False
    assert proc.stop() == 0, proc.log()


def test_the_run_path_of_a_service_loads_no_console_weight() -> None:
    """What `daemoneye run collector` imports before the service runs: the parser of the
    one verb, the settings and the service's class."""
    script = (
        "import sys\n"
        "from daemoneye.console import cli\n"
        "cli.build_parser(['run', 'collector']).parse_args(['run', 'collector'])\n"
        "from daemoneye.services import service_class\n"
        "service_class('collector')\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the collector's start loads {out.stdout.strip()}"


@pytest.mark.parametrize("service", ["broker", "collector"])
def test_run_help_imports_no_rich(service: str) -> None:
    """issue 17: `python -X importtime -m daemoneye run broker --help` loads no rich."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "daemoneye", "run", service, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "usage: daemoneye run" in out.stdout, out.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()]
    assert "daemoneye.console.cli" in imported  # the report is real: it lists our modules
    assert not [m for m in imported if m == "rich" or m.startswith("rich.")]
