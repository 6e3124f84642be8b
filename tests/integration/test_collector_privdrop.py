"""Privilege drop: started as root with `collector.user`, the collector runs as that
user with only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH and no-new-privs, and still
reads other users' processes and netlink events."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from daemoneye.bus import Subscriber
from daemoneye.rpc import RpcClient

from .test_collector_live import Events, needs_netlink, of_pid, start_collector

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
KEPT = (1 << 19) | (1 << 2)  # CAP_SYS_PTRACE | CAP_DAC_READ_SEARCH


def status_of(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


@pytest.fixture
def events(broker: Any, subscribe: Callable[..., Subscriber]) -> Events:
    return Events(subscribe("events."))


@needs_netlink
def test_drop_to_nobody_keeps_only_what_it_needs(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    if os.geteuid() != 0:
        pytest.skip("privilege drop needs the collector started as root")
    nobody = pwd.getpwnam("nobody")
    wal = tempfile.mkdtemp(prefix="de-wal-")  # a path nobody can reach (pytest's is 0700)
    os.chmod(wal, 0o755)
    try:
        proc = start_collector(start_service, rpc_client, run_env, user="nobody", wal_dir=wal)
        st = status_of(proc.pid)
        assert st["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert st["Gid"].split()[0] == str(nobody.pw_gid)
        assert int(st["CapEff"], 16) == KEPT and int(st["CapPrm"], 16) == KEPT
        assert int(st["CapBnd"], 16) == KEPT
        assert st["NoNewPrivs"] == "1"
        health = rpc_client.call("control.collector", "health").value
        # the netlink reader and its spare (they outlive the main process: not its children)
        for pid in (health["reader_pid"], health["spare_pid"]):
            assert pid > 0, "the netlink reader process is missing"
            assert status_of(pid)["Uid"].split()[0] == str(nobody.pw_uid)
            assert int(status_of(pid)["CapEff"], 16) == KEPT
        assert any("running as nobody" in n for n in health["notes"])
        # root's processes are still read whole (exe and cwd need CAP_SYS_PTRACE)
        child = subprocess.Popen([SLEEP, "0.5"])
        start = events.wait("events.process.start", of_pid(child.pid), what="for root's sleep")
        assert start["record"]["exePath"] == SLEEP and start["record"]["cwd"] == os.getcwd()
        assert start["record"]["accessible"]
        child.wait()
        assert os.stat(wal).st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(wal, ignore_errors=True)
