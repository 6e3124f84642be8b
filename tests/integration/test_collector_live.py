"""The real collector on real sockets: starts, stops, exec in place, PID reuse and
each suspicious heuristic, on real processes built to trigger them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemoneye import procfs, wire
from daemoneye.bus import Message, Subscriber
from daemoneye.rpc import RpcClient
from daemoneye.services.collector.netlink import NetlinkUnavailable, ProcConnector
from tests.conftest import daemoneye

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")


def netlink_reason() -> str:
    """Why the process connector cannot be used here ('' when it can)."""
    try:
        ProcConnector().close()
    except NetlinkUnavailable as exc:
        return str(exc)
    return ""


needs_netlink = pytest.mark.skipif(
    bool(netlink_reason()), reason=f"netlink process connector unavailable: {netlink_reason()}"
)


def process_events(msg: Message) -> list[Any]:
    """The ProcessEvent readers of a message: one, or those of a processEventBatch."""
    if msg.kind == "processEventBatch":
        return list(msg.body.events)
    return [msg.body]


class Events:
    """Everything the subscriber has delivered so far, as dicts, searchable by pid.
    `seen` has one entry per event (a batch envelope's events one by one), `headers`
    and `envelopes` one per message."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[tuple[str, int, str]] = []  # (topic, seq, boot id) per message
        self.envelopes: list[tuple[str, int, str, dict[str, Any]]] = []  # ... and the body

    def pump(self, ms: int = 50) -> None:
        msg = self.sub.recv(ms)
        while msg is not None:
            body = wire.to_dict(msg.body)
            header = (msg.topic, msg.envelope.seq, msg.envelope.bootId)
            self.headers.append(header)
            self.envelopes.append((*header, body))
            if msg.kind == "processEventBatch":
                self.seen.extend((msg.topic, event) for event in body["events"])
            else:
                self.seen.append((msg.topic, body))
            msg = self.sub.recv(0)

    def find(self, topic: str, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [b for t, b in self.seen if t == topic and pred(b)]

    def wait(
        self,
        topic: str,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
        what: str = "",
    ) -> dict[str, Any]:
        import time

        deadline = time.monotonic() + timeout
        while True:
            found = self.find(topic, pred)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"no {topic} event {what} within {timeout} s")
            self.pump()


def of_pid(pid: int) -> Callable[[dict[str, Any]], bool]:
    return lambda b: b["record"]["pid"] == pid


def start_collector(
    start_service: Callable[..., Any],
    rpc_client: RpcClient,
    run_env: dict[str, str],
    *args: str,
    **settings: str,
) -> Any:
    env = dict(run_env)
    for key, value in settings.items():
        env[f"DAEMONEYE_COLLECTOR__{key.upper()}"] = value
    proc = start_service("collector", *args, env=env)
    target = "control.collector"
    import time

    deadline = time.monotonic() + 20
    while True:
        try:
            health = rpc_client.call(target, "health", timeout_s=1).value
            if health.get("monitoring"):
                return proc
        except Exception:
            pass
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            pytest.fail(f"collector did not start monitoring:\n{proc.log()}")


@pytest.fixture
def events(broker: Any, subscribe: Callable[..., Subscriber]) -> Events:
    return Events(subscribe("events."))


@pytest.fixture
def collector(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> Any:
    return start_collector(start_service, rpc_client, run_env)


@needs_netlink
def test_start_and_stop_of_a_real_process(collector: Any, events: Events) -> None:
    child = subprocess.Popen([SLEEP, "0.3"])
    start = events.wait("events.process.start", of_pid(child.pid), what="for sleep")
    rec = start["record"]
    assert start["source"] == "netlink"
    assert rec["ppid"] == os.getpid()
    assert rec["exePath"] == SLEEP
    assert rec["cmdline"] == [SLEEP, "0.3"]
    assert rec["uid"] == os.getuid() and rec["euid"] == os.geteuid()
    assert rec["name"] == "sleep"
    assert rec["startTicks"] > 0 and rec["accessible"]
    child.wait()
    stop = events.wait("events.process.stop", of_pid(child.pid), what="for sleep's exit")
    assert stop["record"]["startTicks"] == rec["startTicks"]
    assert stop["exitCode"] == 0
    assert stop["runtimeNs"] > 250_000_000


@needs_netlink
def test_exec_in_place_is_a_modify(collector: Any, events: Events) -> None:
    code = f"import os,sys; sys.stdin.readline(); os.execv({SLEEP!r}, ['sleep', '5'])"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        start = events.wait("events.process.start", of_pid(child.pid), what="for python")
        assert start["record"]["cmdline"][1:] == ["-c", code]
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        mod = events.wait(
            "events.process.modify",
            lambda b: of_pid(child.pid)(b) and "cmdline" in b["changedFields"],
            what="for the exec",
        )
        assert {"exePath", "cmdline", "name"} <= set(mod["changedFields"])
        assert mod["record"]["exePath"] == SLEEP
        assert mod["record"]["cmdline"] == ["sleep", "5"]
        assert mod["previous"]["cmdline"][1:] == ["-c", code]
        assert mod["record"]["startTicks"] == start["record"]["startTicks"]
        assert not events.find(
            "events.process.start",
            lambda b: of_pid(child.pid)(b) and b["record"]["exePath"] == SLEEP,
        ), "an exec in place must not be a second start"
    finally:
        child.kill()
        child.wait()


def _spawn_at(pid: int, argv: list[str]) -> subprocess.Popen | None:
    """Ask the kernel for a given next pid (root, ns_last_pid); None when it is not ours."""
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
    except OSError:
        return None
    child = subprocess.Popen(argv)
    if child.pid == pid:
        return child
    child.kill()
    child.wait()
    return None


def test_pid_reuse_is_a_stop_and_a_start_in_snapshot_mode(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("needs root to choose a pid through /proc/sys/kernel/ns_last_pid")
    start_collector(start_service, rpc_client, run_env, netlink="false", scan_interval_s="0.2")
    health = rpc_client.call("control.collector", "health").value
    assert health["state"] == "degraded" and not health["netlink"]
    assert any("netlink disabled" in n for n in health["notes"])
    first = subprocess.Popen([SLEEP, "30"])
    start1 = events.wait("events.process.start", of_pid(first.pid), what="for the first")
    assert start1["source"] == "snapshot"
    pid = first.pid
    first.kill()
    first.wait()
    second = None
    for _ in range(20):  # other processes on the host may take the pid first
        second = _spawn_at(pid, [SLEEP, "30"])
        if second:
            break
    if second is None:
        pytest.skip(f"could not get pid {pid} again (busy host)")
    try:
        start2 = events.wait(
            "events.process.start",
            lambda b: (
                of_pid(pid)(b) and b["record"]["startTicks"] != start1["record"]["startTicks"]
            ),
            what="for the reused pid",
        )
        stop1 = events.find(
            "events.process.stop",
            lambda b: (
                of_pid(pid)(b) and b["record"]["startTicks"] == start1["record"]["startTicks"]
            ),
        )
        assert stop1, "the first process's stop must be published"
        assert start2["record"]["cmdline"] == [SLEEP, "30"]
    finally:
        second.kill()
        second.wait()


def _zombie(argv: list[str]) -> subprocess.Popen:
    """A child that exited and that we do not reap yet (state Z)."""
    import time

    child = subprocess.Popen(argv)
    deadline = time.monotonic() + 10
    while (st := procfs.read_stat(child.pid)) is not None and st.state != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.005)
    return child


def _exited(events: Events, pid: int) -> tuple[dict[str, Any], dict[str, Any]]:
    start = events.wait("events.process.start", of_pid(pid), what=f"for {pid}")
    stop = events.wait("events.process.stop", of_pid(pid), what=f"for the stop of {pid}")
    assert start["source"] == stop["source"] == "snapshot"
    assert stop["record"]["startTicks"] == start["record"]["startTicks"]
    assert stop["record"]["state"] == "Z"
    return start, stop


def test_a_zombie_at_the_first_scan_is_reported_exited(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    """An exited process its parent has not reaped, found by a new main's first scan:
    a start and its stop with what /proc still gives, not a live process with an empty
    record until (if ever) it is reaped."""
    child = _zombie(["sh", "-c", "exit 3"])
    try:
        start_collector(start_service, rpc_client, run_env)
        start, _ = _exited(events, child.pid)
        rec = start["record"]
        assert (rec["name"], rec["ppid"], rec["state"]) == ("sh", os.getpid(), "Z")
        assert not rec.get("exePath") and not rec.get("cmdline")
    finally:
        child.wait()


def test_without_netlink_a_process_that_became_a_zombie_is_stopped(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    """Snapshots only: the scan that finds a known process exited (a zombie) stops it."""
    start_collector(start_service, rpc_client, run_env, netlink="false", scan_interval_s="0.2")
    child = subprocess.Popen([SLEEP, "30"])
    try:
        events.wait("events.process.start", of_pid(child.pid), what="for sleep")
        child.kill()
        stop = events.wait("events.process.stop", of_pid(child.pid), what="for its stop")
        assert stop["record"]["state"] == "Z"
        st = procfs.read_stat(child.pid)  # (not poll(): it would reap it)
        assert st is not None and st.state == "Z", "stopped before it was reaped"
    finally:
        child.kill()
        child.wait()


def test_degraded_mode_is_announced(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    start_collector(start_service, rpc_client, run_env, netlink="false")
    notice = None
    import time

    deadline = time.monotonic() + 10
    while notice is None and time.monotonic() < deadline:
        # the first notice may leave before our subscription reached the collector
        rpc_client.call("control.collector", "begin_monitoring")
        events.pump(100)
        found = [b for t, b in events.seen if t.startswith("events.collector.")]
        notice = found[0] if found else None
    health = rpc_client.call("control.collector", "health").value
    assert health["state"] == "degraded"
    status = daemoneye("status", "--json", env=run_env)
    assert "netlink disabled" in status.stdout
    assert notice is not None, "no degraded notice on events.collector.<id>"
    assert notice["kind"] == "degraded" and "netlink disabled" in notice["message"]


# --- suspicious heuristics, each on a real process ----------------------------


def _suspicious(events: Events, pid: int, heuristic: str, timeout: float = 10) -> dict:
    return events.wait(
        "events.process.suspicious",
        lambda b: of_pid(pid)(b) and b["reason"].startswith(heuristic + ":"),
        timeout,
        what=f"{heuristic} for pid {pid}",
    )


@needs_netlink
def test_binary_run_from_dev_shm_then_deleted(
    collector: Any, events: Events, rpc_client: RpcClient
) -> None:
    where = Path(f"/dev/shm/de-test-{uuid.uuid4().hex[:8]}")
    where.mkdir()
    copy = where / "worker"
    shutil.copy(SLEEP, copy)
    child = subprocess.Popen([str(copy), "30"])
    try:
        hit = _suspicious(events, child.pid, "exe_world_writable")
        assert hit["severity"] == "medium"
        assert hit["record"]["exePath"] == str(copy)
        copy.unlink()
        rpc_client.call("control.collector", "snapshot", {"fresh": True})
        hit = _suspicious(events, child.pid, "exe_deleted")
        assert hit["severity"] == "high"
        assert hit["record"]["exeDeleted"] and hit["record"]["onDisk"] == 0
    finally:
        child.kill()
        child.wait()
        shutil.rmtree(where, ignore_errors=True)


@needs_netlink
def test_masquerading_name(collector: Any, events: Events, tmp_path: Path) -> None:
    link = tmp_path / "kworker"
    link.symlink_to(SLEEP)  # comm becomes "kworker", the exe stays sleep
    child = subprocess.Popen([str(link), "30"])
    try:
        hit = _suspicious(events, child.pid, "masquerade")
        assert hit["record"]["name"] == "kworker"
        assert hit["record"]["exePath"] == SLEEP
    finally:
        child.kill()
        child.wait()
    plain = subprocess.Popen([SLEEP, "0.2"])
    plain.wait()
    events.wait("events.process.stop", of_pid(plain.pid), what="for plain sleep")
    assert not events.find(
        "events.process.suspicious",
        lambda b: of_pid(plain.pid)(b) and b["reason"].startswith("masquerade"),
    )


@needs_netlink
def test_euid_raised_to_root(collector: Any, events: Events) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to lower and raise an euid")
    code = (
        "import os,sys; os.seteuid(65534); print('low', flush=True); sys.stdin.readline();"
        " os.seteuid(0); print('high', flush=True); sys.stdin.readline()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == b"low\n"
        events.wait(
            "events.process.modify",
            lambda b: of_pid(child.pid)(b) and b["record"]["euid"] == 65534,
            what="for the lowered euid",
        )
        child.stdin.write(b"\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"high\n"
        hit = _suspicious(events, child.pid, "uid_raised_to_root")
        assert hit["severity"] == "critical"
        assert hit["previous"]["euid"] == 65534 and hit["record"]["euid"] == 0
    finally:
        child.kill()
        child.wait()


@needs_netlink
def test_shell_spawned_by_a_web_server(collector: Any, events: Events, tmp_path: Path) -> None:
    nginx = tmp_path / "nginx"
    shutil.copy(BASH, nginx)
    child = subprocess.Popen([str(nginx), "-c", "/bin/sh -c 'sleep 30'; true"])
    try:
        events.wait("events.process.start", of_pid(child.pid), what="for nginx")
        hit = events.wait(
            "events.process.suspicious",
            lambda b: (
                b["record"]["ppid"] == child.pid and b["reason"].startswith("shell_from_service:")
            ),
            what="for the shell under nginx",
        )
        assert hit["record"]["name"] == "sh"
        assert hit["severity"] == "high"
    finally:
        subprocess.run(["pkill", "-P", str(child.pid)], check=False)  # its own children only
        child.kill()
        child.wait()


@needs_netlink
def test_fileless_execution_from_memfd(collector: Any, events: Events) -> None:
    code = (
        "import os; fd = os.memfd_create('payload', 0);"
        f" os.write(fd, open({SLEEP!r}, 'rb').read());"
        " os.execv(f'/proc/self/fd/{fd}', ['payload', '30'])"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        hit = _suspicious(events, child.pid, "exe_memfd")
        assert hit["severity"] == "high"
        assert hit["record"]["exePath"].startswith("/memfd:payload")
        assert hit["record"]["cmdline"] == ["payload", "30"]
    finally:
        child.kill()
        child.wait()
