"""Short-lived processes: of 1,000 that each live a few milliseconds, started while the
collector runs, at least 99.5 % appear on events.process.start with their argv."""

from __future__ import annotations

import os
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from daemoneye.bus import Subscriber
from daemoneye.rpc import RpcClient
from daemoneye.services.collector.netlink import NetlinkUnavailable, ProcConnector

from .test_collector_live import process_events, start_collector

TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
REQUIRED = 0.995


def _netlink_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("short-lived capture needs root (netlink process connector)")
    try:
        ProcConnector().close()
    except NetlinkUnavailable as exc:
        pytest.skip(f"collector would run degraded (snapshots only): {exc}")


def spawn_short_lived(count: int, marker: str) -> list[float]:
    """Run `true <marker>-<i>` one after another; each one's lifetime in seconds."""
    lifetimes = []
    for i in range(count):
        t = time.perf_counter()
        pid = os.posix_spawn(TRUE, ["true", f"{marker}-{i}"], os.environ)
        os.waitpid(pid, 0)
        lifetimes.append(time.perf_counter() - t)
    return lifetimes


def captured(sub: Subscriber, marker: str, count: int, timeout: float) -> tuple[set[str], int]:
    """Markers seen in the argv of start events, until all came or the deadline; and how
    many starts of `true` came without their argv (gone before /proc could be read)."""
    seen: set[str] = set()
    bare = 0
    deadline = time.monotonic() + timeout
    quiet_until = time.monotonic() + 5  # all were spawned already: 5 s of silence ends it
    while len(seen) < count and time.monotonic() < min(deadline, quiet_until):
        msg = sub.recv(200)
        if msg is None or msg.topic != "events.process.start":
            continue
        for event in process_events(msg):
            argv = list(event.record.cmdline)
            if len(argv) == 2 and argv[1].startswith(marker):
                seen.add(argv[1])
                quiet_until = time.monotonic() + 5
            elif not argv and event.record.ppid == os.getpid():
                bare += 1
    return seen, bare


def run_capture(
    count: int,
    broker: Any,
    subscribe: Callable[..., Subscriber],
    start_service: Callable[..., Any],
    rpc_client: RpcClient,
    run_env: dict[str, str],
) -> None:
    _netlink_or_skip()
    sub = subscribe("events.process.start")
    start_collector(start_service, rpc_client, run_env)
    marker = f"de-{uuid.uuid4().hex[:8]}"
    lifetimes = spawn_short_lived(count, marker)
    seen, bare = captured(sub, marker, count, timeout=30 + count / 100)
    median_ms = statistics.median(lifetimes) * 1000
    # spawn -> reaped bounds each lifetime from above: these surely lived under 5 ms
    short = {f"{marker}-{i}" for i, life in enumerate(lifetimes) if life < 0.005}
    print(
        f"captured {len(seen)}/{count} ({bare} without argv), {len(short)} lived < 5 ms, "
        f"median lifetime {median_ms:.2f} ms"
    )
    if len(short) < count // 2:
        pytest.skip(f"machine too loaded: only {len(short)} of {count} processes lived < 5 ms")
    assert len(seen & short) >= REQUIRED * len(short), (
        f"only {len(seen & short)} of {len(short)} processes that lived < 5 ms were seen "
        f"with their argv ({bare} seen without it)"
    )
    assert len(seen) >= REQUIRED * count, (
        f"only {len(seen)} of {count} short-lived processes seen with their argv"
    )
    health = rpc_client.call("control.collector", "health").value
    assert health["state"] == "running", health["notes"]


def test_short_lived_processes_are_captured_with_argv(
    broker: Any, subscribe: Any, start_service: Any, rpc_client: RpcClient, run_env: dict
) -> None:
    run_capture(1000, broker, subscribe, start_service, rpc_client, run_env)


@pytest.mark.slow
def test_ten_thousand_short_lived_processes(
    broker: Any, subscribe: Any, start_service: Any, rpc_client: RpcClient, run_env: dict
) -> None:
    run_capture(10_000, broker, subscribe, start_service, rpc_client, run_env)
