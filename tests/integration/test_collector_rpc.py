"""The collector's control verbs on real sockets: snapshot, update_config,
adjust_interval, begin_monitoring; lost kernel events; hashes that follow a start."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemoneye import procfs
from daemoneye.bus import Subscriber, Topics
from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import wait_for

from .test_collector_live import Events, needs_netlink, of_pid, start_collector

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
TARGET = "control.collector"


@pytest.fixture
def events(broker: Any, subscribe: Callable[..., Subscriber]) -> Events:
    return Events(subscribe("events."))


def test_snapshot_update_config_and_adjust_interval(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    start_collector(start_service, rpc_client, run_env, netlink="false", scan_interval_s="60")
    child = subprocess.Popen([SLEEP, "30"])
    try:
        # Popen returns once exec began; argv is set a moment later (the kernel's
        # load_elf_binary): before it, /proc shows the pre-exec process
        wait_for(lambda: procfs.read_cmdline(child.pid) == [SLEEP, "30"], 10, "the exec")
        rows = rpc_client.call(TARGET, "snapshot", {"fresh": True}).value
        mine = [r for r in rows if r["pid"] == child.pid]
        assert len(mine) == 1
        assert mine[0]["cmdline"] == [SLEEP, "30"] and mine[0]["exePath"] == SLEEP
        assert {"startTicks", "startTime", "residentBytes", "sha256", "accessible"} <= set(mine[0])
        assert any(r["pid"] == os.getpid() for r in rows)
        assert [r["pid"] for r in rows] == sorted(r["pid"] for r in rows)
        only = rpc_client.call(TARGET, "snapshot", {"pids": [child.pid, 1]}).value
        assert {r["pid"] for r in only} <= {child.pid, 1} and child.pid in {r["pid"] for r in only}
        page = rpc_client.call(TARGET, "snapshot", {"offset": 1, "limit": 2}).value
        assert [r["pid"] for r in page] == [r["pid"] for r in rows[1:3]]
        with pytest.raises(RpcError, match="pids must be a list of integers"):
            rpc_client.call(TARGET, "snapshot", {"pids": "all"})

        with pytest.raises(RpcError, match=r"collector\.scan_interval_s"):
            rpc_client.call(TARGET, "update_config", {"scan_interval_s": -1})
        with pytest.raises(RpcError, match="no setting 'bogus'"):
            rpc_client.call(TARGET, "update_config", {"bogus": 1})
        with pytest.raises(RpcError, match="cannot change at run time"):
            rpc_client.call(TARGET, "update_config", {"netlink": True})
        cfg = rpc_client.call(TARGET, "update_config", {"hash_max_bytes": 1234}).value
        assert cfg["hash_max_bytes"] == 1234

        with pytest.raises(RpcError, match="positive number"):
            rpc_client.call(TARGET, "adjust_interval", {"scan_interval_s": "soon"})
        assert rpc_client.call(TARGET, "adjust_interval", {"scan_interval_s": 0.2}).value == {
            "scan_interval_s": 0.2
        }
        # the new interval is in force: a process started now is found by a rescan
        second = subprocess.Popen([SLEEP, "30"])
        try:
            hit = events.wait("events.process.start", of_pid(second.pid), what="by rescan")
            assert hit["source"] == "snapshot"
        finally:
            second.kill()
            second.wait()
        stop = events.wait("events.process.stop", of_pid(second.pid), what="by rescan")
        assert stop["source"] == "snapshot"
    finally:
        child.kill()
        child.wait()


def test_begin_monitoring_when_not_autostarted(
    broker: Any,
    subscribe: Callable[..., Subscriber],
    start_service: Callable[..., Any],
    rpc_client: RpcClient,
    run_env: dict,
) -> None:
    # the collector's heartbeats leave by the socket its events would: once two have
    # come, anything it published before them has come too
    events = Events(subscribe(Topics.PROCESS, Topics.HEARTBEAT))
    env = dict(
        run_env, DAEMONEYE_COLLECTOR__AUTOSTART="false", DAEMONEYE_COLLECTOR__NETLINK="false"
    )
    proc = start_service("collector", env=env)
    deadline = time.monotonic() + 20
    health = None
    while health is None:
        try:
            health = rpc_client.call(TARGET, "health", timeout_s=1).value
        except RpcError:
            assert time.monotonic() < deadline and proc.proc.poll() is None, proc.log()
    assert health["monitoring"] is False
    topic = Topics.heartbeat(health["service_id"])

    def beats() -> list[dict[str, Any]]:
        events.pump()
        return [b for t, b in events.seen if t == topic]

    wait_for(lambda: len(beats()) >= 2, 10, "two heartbeats of the idle collector")
    early = [t for t, _ in events.seen if t.startswith(Topics.PROCESS)]
    assert not early, f"{len(early)} process events before begin_monitoring: {early[:5]}"
    metrics = {m["name"]: m["value"] for m in beats()[-1]["metrics"]}
    assert metrics["scans"] == 0 and metrics["monitoring"] == 0, metrics
    res = rpc_client.call(TARGET, "begin_monitoring").value
    assert res["started_now"] is True
    events.wait("events.process.start", of_pid(os.getpid()), what="for the test runner")
    assert rpc_client.call(TARGET, "begin_monitoring").value["started_now"] is False


@needs_netlink
def test_lost_kernel_events_are_reported_and_repaired(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    proc = start_collector(start_service, rpc_client, run_env, netlink_rcvbuf_bytes="4096")
    reader = rpc_client.call(TARGET, "health").value["reader_pid"]
    assert reader > 0, proc.log()
    os.kill(reader, signal.SIGSTOP)  # the reader stalls: the kernel's buffer overflows
    try:
        for _ in range(200):
            subprocess.run([TRUE], check=False)
        survivor = subprocess.Popen([SLEEP, "30"])  # started while events were being lost
    finally:
        os.kill(reader, signal.SIGCONT)
    try:
        deadline = time.monotonic() + 10
        notice = None
        while notice is None and time.monotonic() < deadline:
            events.pump()
            found = [b for t, b in events.seen if t.startswith("events.collector.")]
            notice = next((b for b in found if b["kind"] == "lost_events"), None)
        assert notice is not None, "no lost_events notice"
        assert notice["count"] >= 1
        events.wait("events.process.start", of_pid(survivor.pid), what="for the survivor")
        health = rpc_client.call(TARGET, "health").value
        assert health["metrics"]["lost_events"] >= 1
    finally:
        survivor.kill()
        survivor.wait()


@needs_netlink
def test_hash_follows_as_a_modify(
    events: Events,
    start_service: Callable[..., Any],
    rpc_client: RpcClient,
    run_env: dict,
    tmp_path: Path,
) -> None:
    start_collector(start_service, rpc_client, run_env)
    exe = tmp_path / "sleep"
    shutil.copy(SLEEP, exe)  # a new inode: never hashed before
    digest = hashlib.sha256(exe.read_bytes()).hexdigest()
    child = subprocess.Popen([str(exe), "30"])
    try:
        start = events.wait("events.process.start", of_pid(child.pid), what="for the copy")
        if start["record"]["sha256"]:
            assert start["record"]["sha256"] == digest
        else:
            mod = events.wait(
                "events.process.modify",
                lambda b: of_pid(child.pid)(b) and b["changedFields"] == ["sha256"],
                what="with the hash",
            )
            assert mod["record"]["sha256"] == digest and mod["previous"]["sha256"] == ""
        second = subprocess.Popen([str(exe), "30"])  # the same binary: from the cache
        try:
            again = events.wait("events.process.start", of_pid(second.pid), what="cached")
            assert again["record"]["sha256"] == digest
        finally:
            second.kill()
            second.wait()
    finally:
        child.kill()
        child.wait()


def test_two_collectors_with_their_own_ids(
    broker: Any,
    subscribe: Callable[..., Subscriber],
    start_service: Callable[..., Any],
    rpc_client: RpcClient,
    run_env: dict,
) -> None:
    sub = subscribe("events.process.start")
    env = dict(run_env, DAEMONEYE_COLLECTOR__NETLINK="false")
    for cid in ("c-one", "c-two"):
        start_service("collector", "--id", cid, env=env)
    deadline = time.monotonic() + 20
    healths: dict[str, Any] = {}
    while len(healths) < 2:
        for cid in ("c-one", "c-two"):
            try:
                h = rpc_client.call(f"control.collector.{cid}", "health", timeout_s=1).value
                if h["monitoring"]:
                    healths[cid] = h
            except RpcError:
                assert time.monotonic() < deadline, "both collectors must answer"
    assert {h["service_id"] for h in healths.values()} == {"c-one", "c-two"}
    sources: set[str] = set()
    while sources != {"c-one", "c-two"}:  # both publish their initial snapshot
        msg = sub.recv(200)
        if msg is not None:
            sources.add(msg.envelope.sourceId)
        assert time.monotonic() < deadline, f"only {sources} published"
    rows = rpc_client.call("control.broker", "registry").value
    ids = {r["service_id"] for r in rows if r["service"] == "collector"}
    assert {"c-one", "c-two"} <= ids


def _health_when(rpc_client: RpcClient, ok: Callable[[dict], bool], what: str) -> dict:
    def health() -> dict | None:
        value = rpc_client.call(TARGET, "health").value
        return value if ok(value) else None

    return wait_for(health, 15, what)  # type: ignore[return-value]


@needs_netlink
def test_reader_death_the_spare_takes_over(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    start_collector(start_service, rpc_client, run_env)
    before = rpc_client.call(TARGET, "health").value
    os.kill(before["reader_pid"], signal.SIGKILL)
    health = _health_when(
        rpc_client,
        lambda h: h["reader_pid"] == before["spare_pid"] and h["spare_pid"] > 0,
        "the spare to take over and fork the next spare",
    )
    assert health["netlink"] and health["state"] != "degraded"
    assert health["metrics"]["netlink.takeovers"] == 1
    settles = health["metrics"]["netlink.settles"]  # two on, a gap open now is counted
    health = _health_when(
        rpc_client,
        lambda h: h["metrics"]["netlink.settles"] >= settles + 2,
        "two settles of the kernel numbers",
    )
    assert health["metrics"]["collector.lost"] == 0  # the same kernel sockets: nothing skipped
    # 50 ms: netlink sees it, not a scan (every 30 s); and its argv is surely read (a
    # 1 ms true can exit before the reader's /proc read on a slow machine: the argv race)
    child = subprocess.Popen([SLEEP, "0.05"])
    child.wait()
    hit = events.wait("events.process.start", of_pid(child.pid), what="after the takeover")
    assert hit["source"] == "netlink" and hit["record"]["cmdline"] == [SLEEP, "0.05"]


@needs_netlink
def test_reader_and_spare_killed_a_new_reader_as_root(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    start_collector(start_service, rpc_client, run_env)
    before = rpc_client.call(TARGET, "health").value
    os.killpg(before["reader_pid"], signal.SIGKILL)  # the reader's session: both at once
    health = _health_when(
        rpc_client,
        lambda h: h["reader_pid"] not in (0, before["reader_pid"], before["spare_pid"]),
        "a new reader",
    )
    assert health["netlink"]
    # the gap is repaired by a rescan when the new reader's first events arrive: a
    # process alive then may be started by it; of several, the later ones by netlink
    children = [subprocess.Popen([TRUE, "after-both", str(i)]) for i in range(5)]
    sources = []
    for child in children:
        child.wait()
        hit = events.wait("events.process.start", of_pid(child.pid), what="with the new reader")
        sources.append(hit["source"])
    assert "netlink" in sources, sources


@needs_netlink
def test_reader_and_spare_killed_after_the_drop_degrades_to_snapshots(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    if os.geteuid() != 0:
        pytest.skip("privilege drop needs the collector started as root")
    wal = tempfile.mkdtemp(prefix="de-wal-")  # a path nobody can reach (pytest's is 0700)
    os.chmod(wal, 0o755)
    try:
        start_collector(
            start_service, rpc_client, run_env, user="nobody", wal_dir=wal, scan_interval_s="0.3"
        )
        before = rpc_client.call(TARGET, "health").value
        os.killpg(before["reader_pid"], signal.SIGKILL)
        health = _health_when(
            rpc_client, lambda h: h["state"] == "degraded", "the collector to notice"
        )
        assert not health["netlink"]  # no CAP_NET_ADMIN after the drop: no new reader
        assert any("reader process exited" in n for n in health["notes"])
        child = subprocess.Popen([SLEEP, "30"])  # still seen, by rescans
        try:
            hit = events.wait("events.process.start", of_pid(child.pid), what="after degrading")
            assert hit["source"] == "snapshot"
        finally:
            child.kill()
            child.wait()
    finally:
        subprocess.run(["rm", "-rf", wal], check=False)
