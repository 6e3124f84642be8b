"""Several collectors on one bus (issue 7, item 4): three collectors started with
`daemoneye run collector --id ...` against one broker all appear in `daemoneye status`,
each with its own seq space; their events reach the detector; a process that all three
see on this host is one row of the live table, not three. (Namespace separation, which
needs containers to show end to end, is proven on the live table itself in
tests/unit/test_rules_namespaces.py.)

As root the collectors read the kernel's process connector; without root they run
degraded on /proc snapshots, which still publish every process they see, so the test
holds either way (a 1 s rescan catches the test's own process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import daemoneye, wait_for

IDS = ("collector-a", "collector-b", "collector-c")
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")


def json_of(env: dict[str, str], *args: str) -> Any:
    """The --json output of `daemoneye ARGS`, which must succeed."""
    done = daemoneye(*args, "--json", env=env)
    assert done.returncode == 0, f"daemoneye {' '.join(args)} failed: {done.stderr}"
    return json.loads(done.stdout)


def query(rpc: RpcClient, sql: str) -> list[list[Any]]:
    return rpc.call("control.detector", "query", {"sql": sql}, timeout_s=5).value["rows"]


def healthy(rpc: RpcClient, target: str, key: str | None = None) -> bool:
    try:
        health = rpc.call(target, "health", timeout_s=1).value
    except RpcError:
        return False
    return bool(health.get(key) if key else health)


@pytest.fixture
def sleeper() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_three_collectors_in_status_and_their_events_reach_the_detector(
    broker: Any,
    start_service: Callable[..., Any],
    run_env: dict[str, str],
    rpc_client: RpcClient,
    sleeper: list[subprocess.Popen],
) -> None:
    env = {
        **run_env,
        "DAEMONEYE_COLLECTOR__SCAN_INTERVAL_S": "1",
        "DAEMONEYE_COLLECTOR__HASH_EXECUTABLES": "false",  # three hashers on 2 cores: noise
        "DAEMONEYE_LOG_LEVEL": "info",
    }
    # the third batches its events (processEventBatch envelopes): both forms side by side
    batched = {**env, "DAEMONEYE_COLLECTOR__PUBLISH_BATCH_MAX": "64"}
    collectors = [
        start_service("collector", "--id", cid, env=batched if cid == IDS[2] else env)
        for cid in IDS
    ]
    for cid, proc in zip(IDS, collectors, strict=True):
        wait_for(
            lambda cid=cid: healthy(rpc_client, f"control.collector.{cid}", "monitoring"),
            40,
            f"{cid} to monitor (log: {proc.log_path})",
        )
    start_service("detector", env=env)
    wait_for(lambda: healthy(rpc_client, "control.detector"), 30, "the detector")

    # all three in `daemoneye status`, each registered under its own id and healthy (on
    # a loaded machine a heartbeat can be late for a moment: wait for all three at once)
    def collectors_in_status() -> dict[str, str]:
        rows = json_of(run_env, "status")
        return {r["service_id"]: r["state"] for r in rows if r["service"] == "collector"}

    def all_healthy() -> bool:
        states = collectors_in_status()
        return all(states.get(c) == "healthy" for c in IDS)

    wait_for(all_healthy, 30, "all three collectors healthy in `daemoneye status`")
    assert set(IDS) <= set(collectors_in_status())

    # each one's events reach the detector (each publishes every process it sees at start)
    per_collector = "SELECT collector, count(*) FROM process_events GROUP BY collector"
    wait_for(
        lambda: {r[0] for r in query(rpc_client, per_collector)} >= set(IDS),
        40,
        "process events of all three collectors in the detector",
    )
    counted = {
        row["collector"]: row["count(*)"] for row in json_of(run_env, "query", per_collector)
    }
    assert all(counted[c] > 0 for c in IDS), counted

    # a new process: all three report it, the live table holds it once
    proc = subprocess.Popen([SLEEP, "60"])
    sleeper.append(proc)
    reporters = f"SELECT DISTINCT collector FROM process_events WHERE pid = {proc.pid}"
    wait_for(
        lambda: {r[0] for r in query(rpc_client, reporters)} == set(IDS),
        40,
        f"all three collectors to report pid {proc.pid}",
    )
    live = query(rpc_client, f"SELECT collector, path FROM processes WHERE pid = {proc.pid}")
    assert len(live) == 1 and live[0][0] in IDS and live[0][1] == SLEEP, live
    # each collector's seq space is its own: three interleaved streams, no gap seen
    metrics = rpc_client.call("control.detector", "health", timeout_s=5).value["metrics"]
    assert metrics["bus.gaps"] == 0 and metrics["bus.missing"] == 0, metrics
