"""The lifecycle tracker on real processes: netlink sequences (fork, exec, exit, id
changes), rescans, PID reuse, and no duplicate starts when both views see a process."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from daemoneye import procfs
from daemoneye.services.collector.netlink import COMM, EXEC, EXIT, FORK, UID, ProcEvent
from daemoneye.services.collector.tracker import RecentExits, Tracker, decode_exit, wall_ns

pytestmark = pytest.mark.skipif(not procfs.IS_LINUX, reason="reads Linux /proc")
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")


def kinds(outs: list) -> list[str]:
    return [o.kind for o in outs]


def for_pid(outs: list, pid: int) -> list:
    return [o for o in outs if o.record["pid"] == pid]


def wait_exe(pid: int, exe: str, argv: list[str] | None = None) -> dict:
    """Until `pid` runs `exe` (and shows `argv`: the kernel switches the exe link at
    exec a moment before the new argv is in place)."""
    deadline = time.monotonic() + 10
    while True:
        rec = procfs.read_process(pid)
        if rec and rec["exePath"] == exe and (argv is None or rec["cmdline"] == argv):
            return rec
        assert time.monotonic() < deadline, f"{pid} never ran {exe}"
        time.sleep(0.005)


@pytest.fixture
def sleeper():
    child = subprocess.Popen([SLEEP, "30"])
    wait_exe(child.pid, SLEEP, [SLEEP, "30"])
    yield child
    child.kill()
    child.wait()


def test_rescan_starts_and_stops(sleeper: subprocess.Popen) -> None:
    t = Tracker()
    first = t.rescan(publish_new=True)
    mine = for_pid(first, sleeper.pid)
    assert kinds(mine) == ["start"] and mine[0].source == "snapshot"
    assert mine[0].record["cmdline"] == [SLEEP, "30"]
    assert for_pid(t.rescan(), sleeper.pid) == [], "a known process is not started twice"
    sleeper.kill()
    sleeper.wait()
    stops = for_pid(t.rescan(), sleeper.pid)
    assert kinds(stops) == ["stop"] and stops[0].runtime_ns > 0


def test_fork_exec_exit_sequence(sleeper: subprocess.Popen) -> None:
    t = Tracker()
    t.rescan(publish_new=False)
    pid, ticks = sleeper.pid, procfs.read_stat(sleeper.pid).start_ticks
    del t.procs[pid]  # as if it had not started yet
    assert t.on_event(ProcEvent(FORK, 1, pid, pid, ppid=os.getpid()), None) == []
    outs = t.on_event(ProcEvent(EXEC, 2, pid, pid), procfs.read_process(pid))
    assert kinds(outs) == ["start"] and outs[0].source == "netlink"
    assert outs[0].record["startTicks"] == ticks
    # the snapshot view then sees the same (pid, ticks): no second start
    assert for_pid(t.rescan(), pid) == []
    # an exec in place: same identity, new program
    new = dict(procfs.read_process(pid), exePath="/usr/bin/other", name="other", cmdline=["o"])
    outs = t.on_event(ProcEvent(EXEC, 3, pid, pid), new)
    assert kinds(outs) == ["modify"]
    assert {"exePath", "cmdline", "name"} <= set(outs[0].changed)
    assert outs[0].previous["exePath"] == SLEEP
    outs = t.on_event(ProcEvent(EXIT, 4, pid, pid, exit_code=9), None)  # killed by SIGKILL
    assert kinds(outs) == ["stop"] and outs[0].exit_code == -9
    assert t.on_event(ProcEvent(EXIT, 5, pid, pid + 1), None) == []  # a thread's exit


def test_a_fork_coming_after_its_exec_is_ignored(sleeper: subprocess.Popen) -> None:
    """The reader reads exec and fork from two sockets: a fork may come a frame after
    its exec. It is not a new child: no pending fork, no second start, one stop."""
    t = Tracker()
    t.rescan(publish_new=False)
    pid, ticks = sleeper.pid, procfs.read_stat(sleeper.pid).start_ticks
    del t.procs[pid]
    assert kinds(t.on_event(ProcEvent(EXEC, 2, pid, pid), procfs.read_process(pid))) == ["start"]
    fork_ns = ticks * 10**9 // procfs.CLK_TCK + 10**9 // procfs.CLK_TCK - 1  # same tick
    assert t.on_event(ProcEvent(FORK, fork_ns, pid, pid, ppid=os.getpid()), None) == []
    assert pid not in t.pending
    assert t.flush_pending(0) == []
    assert kinds(t.on_event(ProcEvent(EXIT, fork_ns + 5, pid, pid), None)) == ["stop"]


def test_a_fork_after_the_tracked_process_started_is_a_new_child(
    sleeper: subprocess.Popen,
) -> None:
    """A fork of the pid later than the tracked process started: the pid was reused
    (its exit lost): held pending as any fork."""
    t = Tracker()
    t.rescan(publish_new=False)
    pid, ticks = sleeper.pid, procfs.read_stat(sleeper.pid).start_ticks
    later_ns = (ticks + 5) * 10**9 // procfs.CLK_TCK
    assert t.on_event(ProcEvent(FORK, later_ns, pid, pid, ppid=os.getpid()), None) == []
    assert pid in t.pending


def test_exec_of_a_process_already_gone_keeps_what_the_kernel_gave() -> None:
    t = Tracker()
    t.rescan(publish_new=False)
    child = subprocess.Popen(["true"])
    child.wait()
    t.on_event(ProcEvent(FORK, 10**9, child.pid, child.pid, ppid=os.getpid()), None)
    outs = t.on_event(ProcEvent(EXEC, 10**9 + 1, child.pid, child.pid), None)
    assert kinds(outs) == ["start"]
    rec = outs[0].record
    assert rec["pid"] == child.pid and rec["ppid"] == os.getpid()
    assert rec["accessible"] is False and rec["startTicks"] > 0
    assert rec["uid"] == os.getuid()  # from the parent
    # not the parent's argv and environment: the exec replaced them (unknown now)
    assert rec["cmdline"] == [] and rec["env"] == [] and rec["name"] == ""
    assert kinds(t.on_event(ProcEvent(EXIT, 2 * 10**9, child.pid, child.pid), None)) == ["stop"]


def test_an_exec_whose_argv_was_lost_says_so_and_is_not_accessible() -> None:
    """A zombie's record (its stat alone) read for an exec: with the reader's why, its
    start says the argv was lost and is not accessible; the tracked record is the same."""
    t = Tracker()
    t.rescan(publish_new=False)
    child = subprocess.Popen(["true"])
    wait_zombie(child.pid)
    try:
        zombie = procfs.read_process(child.pid)
        assert zombie is not None and zombie["accessible"] and zombie["cmdline"] == []
        outs = t.on_event(ProcEvent(EXEC, 10**9, child.pid, child.pid), zombie, "late_wake")
        assert [(o.kind, o.reason) for o in outs] == [("start", "argv_lost: late_wake")]
        assert outs[0].record["accessible"] is False
        assert t.procs[child.pid].record is outs[0].record
        # without it, the record stays as read
        again = procfs.read_process(child.pid)
        assert again is not None
        outs = Tracker().on_event(ProcEvent(EXEC, 10**9, child.pid, child.pid), again)
        assert [(o.kind, o.reason) for o in outs] == [("start", "")]
        assert outs[0].record["accessible"] is True
    finally:
        child.wait()


def test_fork_without_exec_is_published_at_exit_or_after_the_delay() -> None:
    t = Tracker()
    t.rescan(publish_new=False)
    outs = t.on_event(ProcEvent(FORK, 10**9, 4_000_000, 4_000_000, ppid=os.getpid()), None)
    assert outs == []
    outs = t.on_event(ProcEvent(EXIT, 10**9, 4_000_000, 4_000_000), None)
    assert kinds(outs) == ["start", "stop"]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked child that never execs
        os.read(r, 1)
        os._exit(0)
    try:
        t.on_event(ProcEvent(FORK, 10**9, pid, pid, ppid=os.getpid()), None)
        assert t.flush_pending(60) == []
        outs = t.flush_pending(0)
        assert kinds(outs) == ["start"] and outs[0].record["pid"] == pid
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)


def test_pid_reuse_is_a_stop_and_a_start(sleeper: subprocess.Popen) -> None:
    t = Tracker()
    t.rescan(publish_new=False)
    older = t.procs[sleeper.pid].record
    older["startTicks"] -= 100  # the table holds an older process under this pid
    t.procs[sleeper.pid].stat_raw = b"older stat"
    outs = for_pid(t.rescan(), sleeper.pid)
    assert kinds(outs) == ["stop", "start"]
    assert outs[0].record["startTicks"] == older["startTicks"]
    assert outs[1].record["startTicks"] == procfs.read_stat(sleeper.pid).start_ticks


def test_zombie_after_exit_is_not_a_new_start() -> None:
    t = Tracker()
    child = subprocess.Popen([SLEEP, "0"])
    t.rescan(publish_new=False)
    deadline = time.monotonic() + 10
    while (st := procfs.read_stat(child.pid)) is not None and st.state != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    if child.pid in t.procs:
        t.on_event(ProcEvent(EXIT, 1, child.pid, child.pid), None)
    assert for_pid(t.rescan(), child.pid) == []
    child.wait()


def wait_zombie(pid: int) -> procfs.Stat:
    deadline = time.monotonic() + 10
    while (st := procfs.read_stat(pid)) is None or st.state != "Z":
        assert st is not None, f"{pid} was reaped"
        assert time.monotonic() < deadline, f"{pid} never exited"
        time.sleep(0.005)
    return st


def test_a_zombie_a_scan_finds_is_a_start_and_its_stop() -> None:
    """A process that exited unseen (a new main's first scan, netlink losses) and that
    its parent has not reaped: reported with what /proc still gives, and stopped,
    never a live process with an empty record that stops whenever it is reaped."""
    child = subprocess.Popen(["sh", "-c", "exit 3"])
    st = wait_zombie(child.pid)
    t = Tracker()
    mine = for_pid(t.rescan(publish_new=True), child.pid)
    assert kinds(mine) == ["start", "stop"]
    for out in mine:
        rec = out.record
        assert (rec["name"], rec["ppid"], rec["startTicks"]) == ("sh", os.getpid(), st.start_ticks)
        assert rec["state"] == "Z" and rec["exePath"] == "" and rec["cmdline"] == []
    assert mine[1].exit_code == (3 if os.geteuid() == 0 else 0)  # root reads field 52
    assert child.pid not in t.procs
    assert for_pid(t.rescan(), child.pid) == []
    child.wait()
    assert for_pid(t.rescan(), child.pid) == []


def test_a_zombie_at_an_unpublished_first_scan_is_not_tracked() -> None:
    child = subprocess.Popen([SLEEP, "0"])
    wait_zombie(child.pid)
    t = Tracker()
    assert for_pid(t.rescan(publish_new=False), child.pid) == []
    assert child.pid not in t.procs
    child.wait()
    assert for_pid(t.rescan(), child.pid) == [], "no stop of a process never started"


def test_without_netlink_a_tracked_process_that_became_a_zombie_stops(
    sleeper: subprocess.Popen,
) -> None:
    t = Tracker()
    t.full_rescan_reads = True  # degraded: the rescans are all there is
    assert kinds(for_pid(t.rescan(publish_new=True), sleeper.pid)) == ["start"]
    sleeper.kill()
    wait_zombie(sleeper.pid)
    stops = for_pid(t.rescan(), sleeper.pid)
    assert kinds(stops) == ["stop"] and stops[0].record["state"] == "Z"
    assert stops[0].exit_code == (-9 if os.geteuid() == 0 else 0)
    assert sleeper.pid not in t.procs
    sleeper.wait()
    assert for_pid(t.rescan(), sleeper.pid) == []


def test_with_netlink_a_tracked_zombie_waits_for_its_exit_event(
    sleeper: subprocess.Popen,
) -> None:
    """Its exit event is on its way (the reader holds exits a moment) with the time the
    kernel stamped: a rescan does not stop it first."""
    t = Tracker()
    assert kinds(for_pid(t.rescan(publish_new=True), sleeper.pid)) == ["start"]
    sleeper.kill()
    wait_zombie(sleeper.pid)
    assert for_pid(t.rescan(), sleeper.pid) == []
    assert kinds(t.on_event(ProcEvent(EXIT, 1, sleeper.pid, sleeper.pid), None)) == ["stop"]


def test_uid_and_comm_changes_are_modifies(sleeper: subprocess.Popen) -> None:
    t = Tracker()
    t.rescan(publish_new=False)
    pid = sleeper.pid
    raised = dict(procfs.read_process(pid), euid=0)
    t.procs[pid].record["euid"] = 1000
    outs = t.on_event(ProcEvent(UID, 1, pid, pid, ruid=0, euid=0), raised)
    assert kinds(outs) == ["modify", "suspicious"]
    assert outs[0].changed == ["euid"] and outs[1].reason.startswith("uid_raised_to_root")
    outs = t.on_event(ProcEvent(COMM, 2, pid, pid, comm="renamed"), None)
    assert kinds(outs)[0] == "modify" and outs[0].changed == ["name"]


def test_decode_exit() -> None:
    assert decode_exit(0) == 0
    assert decode_exit(3 << 8) == 3
    assert decode_exit(9) == -9


def test_fork_seen_by_a_snapshot_first_is_not_started_twice() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # forked, never execs
        os.read(r, 1)
        os._exit(0)
    try:
        t = Tracker()
        first = for_pid(t.rescan(publish_new=True), pid)
        assert kinds(first) == ["start"]
        t.on_event(ProcEvent(FORK, 1, pid, pid, ppid=os.getpid()), None)  # queued meanwhile
        assert t.flush_pending(0) == []
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)


def test_cold_scan_with_forked_readers_matches_one_reader(
    sleeper: subprocess.Popen, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procfs, "PARALLEL_MIN", 1)
    wait_exe(sleeper.pid, SLEEP)
    one, two = Tracker(), Tracker()
    two.read_workers = 2
    one.rescan(publish_new=False)
    outs = two.rescan()
    mine = [o for o in outs if o.kind == "start" and o.record["pid"] == sleeper.pid]
    assert len(mine) == 1 and mine[0].record["exePath"] == SLEEP
    assert mine[0].record["cmdline"] == one.procs[sleeper.pid].record["cmdline"]
    assert two.procs[sleeper.pid].stat_raw  # kept: the next rescan compares bytes
    again = two.rescan()  # known now: no second start (other host processes may come and go)
    assert not [o for o in again if o.kind == "start" and o.record["pid"] == sleeper.pid]


def test_recent_exits_are_bounded() -> None:
    exits = RecentExits(generation=100)
    for pid in range(1000, 1350):
        exits.add(pid, pid * 7)
    assert len(exits) <= 200
    assert (1349, 1349 * 7) in exits and (1300, 1300 * 7) in exits
    assert (1000, 7000) not in exits and (1349, 1) not in exits


def test_a_stop_is_stamped_when_the_kernel_saw_the_exit(sleeper: subprocess.Popen) -> None:
    """The reader holds exits for a while: the stop's time and runtime are the exit's."""
    t = Tracker()
    t.rescan(publish_new=False)
    pid = sleeper.pid
    exited_ns = time.monotonic_ns() - 2_000_000_000  # the kernel saw it exit 2 s ago
    [stop] = t.on_event(ProcEvent(EXIT, exited_ns, pid, pid), None)
    assert stop.kind == "stop"
    assert abs(time.time_ns() - 2_000_000_000 - stop.time_ns) < 500_000_000
    started_ns = int(stop.record["startTime"] * 1e9)
    assert stop.runtime_ns == max(0, stop.time_ns - started_ns)  # to the exit, not to now
    # a stamp that cannot be recent (a test's, another clock's): published as now
    assert wall_ns(5) == 0 and wall_ns(time.monotonic_ns() + 10**12) == 0
