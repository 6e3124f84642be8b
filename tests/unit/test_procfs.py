"""The /proc reader on real processes: fields, vanished and zombie processes,
deleted executables, denied access, and the parsing corner cases."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from daemoneye import procfs
from tests.conftest import wait_for

pytestmark = pytest.mark.skipif(not procfs.IS_LINUX, reason="reads Linux /proc")
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")


def test_own_record_matches_psutil() -> None:
    rec = procfs.read_process(os.getpid())
    assert rec is not None
    me = psutil.Process()
    assert rec["pid"] == os.getpid() and rec["ppid"] == os.getppid()
    assert rec["exePath"] == me.exe()
    assert rec["cmdline"] == me.cmdline()
    assert rec["cwd"] == os.getcwd()
    assert rec["uid"] == os.getuid() and rec["euid"] == os.geteuid()
    assert rec["gid"] == os.getgid() and rec["egid"] == os.getegid()
    assert rec["username"] == me.username()
    assert abs(rec["startTime"] - me.create_time()) < 0.05
    assert rec["threads"] == me.num_threads()
    assert rec["residentBytes"] > 1 << 20 and rec["virtualBytes"] >= rec["residentBytes"]
    assert rec["state"] in {"R", "S"} and rec["accessible"]
    assert rec["onDisk"] == 1 and not rec["exeDeleted"]
    assert rec["exeInode"] == os.stat(me.exe()).st_ino
    assert rec["pidNamespace"] > 0 and rec["root"] == "/"


def test_a_reaped_process_is_none() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert procfs.read_process(child.pid) is None
    assert procfs.read_stat(child.pid) is None


def test_reads_go_to_the_process_the_directory_was_opened_for() -> None:
    """Every read goes through /proc/<pid> opened once: once that process is reaped
    (its pid free for another), nothing more is read through it, not a newcomer's."""
    child = subprocess.Popen([SLEEP, "30"])
    wait_for(lambda: procfs.read_cmdline(child.pid) == [SLEEP, "30"], what="the exec")
    dfd = procfs.open_dir(child.pid)
    assert dfd is not None
    raw = procfs.read_stat_raw(child.pid)
    assert raw
    child.kill()
    child.wait()
    try:
        assert procfs._read_record(child.pid, dfd, None, None) is None
        # its stat read before: a record of that alone, every later read refused
        rec = procfs._read_record(child.pid, dfd, None, raw)
    finally:
        os.close(dfd)
    assert rec is not None and rec["name"] == "sleep" and not rec["accessible"]
    assert rec["cmdline"] == [] and rec["exePath"] == "" and rec["cwd"] == ""
    assert rec["cgroupPath"] == "" and rec["pidNamespace"] == 0


def _settled(pid: int) -> bool:
    """Asleep, its libraries mapped: two reads of it alike."""
    st = procfs.read_stat(pid)
    if st is None or st.state != "S":
        return False
    return procfs.read_process(pid) == procfs.read_process(pid)


def test_argv_first_then_the_rest_is_the_record_read_process_makes() -> None:
    """open_argv then read_opened (the reader's two passes over queued execs) give
    read_process's record; the argv read in the first pass is what the record keeps,
    even when the process is gone by the second (its exit took the rest)."""
    child = subprocess.Popen([SLEEP, "30"])
    try:
        wait_for(lambda: procfs.read_cmdline(child.pid) == [SLEEP, "30"], what="the exec")
        wait_for(lambda: _settled(child.pid), what="the child asleep")
        dfd, argv = procfs.open_argv(child.pid)
        assert dfd is not None and argv == [SLEEP, "30"]
        assert procfs.read_opened(child.pid, dfd, argv) == procfs.read_process(child.pid)
        dfd, argv = procfs.open_argv(child.pid)
        child.kill()
        wait_for(lambda: procfs.read_stat(child.pid).state == "Z", what="the exit")
        rec = procfs.read_opened(child.pid, dfd, argv)
    finally:
        child.kill()
        child.wait()
    assert rec is not None and rec["cmdline"] == [SLEEP, "30"] and rec["state"] == "Z"
    assert procfs.open_argv(child.pid) == (None, None)  # reaped
    assert procfs.read_opened(child.pid, None, None) is None


def test_zombie_is_read_without_argv() -> None:
    child = subprocess.Popen([SLEEP, "0"])
    deadline = time.monotonic() + 10
    while (st := procfs.read_stat(child.pid)) is not None and st.state != "Z":
        assert time.monotonic() < deadline, "child never became a zombie"
        time.sleep(0.005)
    rec = procfs.read_process(child.pid)
    child.wait()
    assert rec is not None and rec["state"] == "Z"
    assert rec["cmdline"] == [] and rec["accessible"]


def test_deleted_executable(tmp_path: Path) -> None:
    copy = tmp_path / "sleeper"
    shutil.copy(SLEEP, copy)
    child = subprocess.Popen([str(copy), "30"])
    try:
        deadline = time.monotonic() + 10
        while (procfs.read_process(child.pid) or {}).get("exePath") != str(copy):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        copy.unlink()
        rec = procfs.read_process(child.pid)
        assert rec is not None
        assert rec["exeDeleted"] and rec["onDisk"] == 0 and rec["exePath"] == str(copy)
        assert rec["exeInode"] > 0  # the running inode is still statable
    finally:
        child.kill()
        child.wait()


def test_replaced_executable_is_flagged(tmp_path: Path) -> None:
    copy = tmp_path / "sleeper"
    shutil.copy(SLEEP, copy)
    child = subprocess.Popen([str(copy), "30"])
    try:
        deadline = time.monotonic() + 10
        while (procfs.read_process(child.pid) or {}).get("exePath") != str(copy):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        tmp = tmp_path / "new"
        shutil.copy(SLEEP, tmp)
        os.replace(tmp, copy)  # another file now has the path
        rec = procfs.read_process(child.pid)
        assert rec is not None and rec["onDisk"] == 0 and rec["exeChangedAfterExec"]
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_denied_access_gives_a_partial_record() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child that is nobody reads root's init
        os.close(r)
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        rec = procfs.read_process(1)
        os.write(w, pickle.dumps(rec))
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    rec = pickle.loads(data)
    assert rec is not None and rec["pid"] == 1
    assert rec["accessible"] is False
    assert rec["startTicks"] > 0 and rec["name"]  # what could be read is there


def test_parse_stat_with_hostile_comm() -> None:
    line = b"42 (a) b (c) d) S 1 42 42 0 -1 4194560 1 0 0 0 7 3 0 0 20 0 2 0 1234 9999 12 x x"
    st = procfs.parse_stat(42, line)
    assert st is not None
    assert st.name == "a) b (c) d" and st.state == "S" and st.ppid == 1
    assert st.user_ticks == 7 and st.system_ticks == 3 and st.threads == 2
    assert st.start_ticks == 1234 and st.virtual_bytes == 9999
    assert st.resident_bytes == 12 * procfs.PAGE_SIZE
    assert procfs.parse_stat(1, b"garbage") is None
    assert procfs.parse_stat(1, b"1 (x) S 1 2") is None


def test_helpers() -> None:
    assert procfs.tty_name(0) == ""
    assert procfs.tty_name((136 << 8) | 3) == "pts/3"
    assert procfs.tty_name((4 << 8) | 1) == "tty1"
    cid = "a" * 64
    assert procfs.container_id(f"0::/system.slice/docker-{cid}.scope") == cid[:12]
    assert procfs.container_id("0::/user.slice") == ""
    assert procfs._unified_cgroup(b"0::/user.slice/x\n") == "/user.slice/x"
    assert procfs._unified_cgroup(b"4:memory:/a/b\n0::/\n") == "/a/b"
    assert procfs.username(0) == "root"
    assert procfs.username(4_000_000) == "4000000"


def test_kernel_thread_is_accessible_without_exe() -> None:
    stats = (procfs.read_stat(p) for p in procfs.list_pids())
    kthreads = [st.pid for st in stats if st is not None and st.ppid == 2]
    if not kthreads or os.geteuid() != 0:
        pytest.skip("no kernel threads visible (container) or not root")
    rec = procfs.read_process(kthreads[0])
    assert rec is not None and rec["exePath"] == "" and rec["accessible"]


def test_psutil_fallback_reads_the_same_process() -> None:
    rec = procfs.read_process_psutil(os.getpid())
    assert rec is not None
    assert rec["pid"] == os.getpid() and rec["exePath"] == psutil.Process().exe()
    assert rec["cmdline"] == psutil.Process().cmdline()
    child = subprocess.Popen(["true"])
    child.wait()
    assert procfs.read_process_psutil(child.pid) is None


def test_env_holds_only_the_variables_that_matter() -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LD_LIBRARY_PATH": "/tmp/.lib",
        "HISTFILE": "/dev/null",
        "HISTSIZE": "0",
        "SECRET_TOKEN": "not-collected",
        "LD_PRELOADX": "not-this-one",
    }
    child = subprocess.Popen([SLEEP, "30"], env=env)
    try:
        # until the exec, /proc/<pid>/environ is still the forking parent's
        wait_for(lambda: procfs.read_cmdline(child.pid) == [SLEEP, "30"], what="the exec")
        rec = procfs.read_process(child.pid)
    finally:
        child.kill()
        child.wait()
    assert rec is not None
    assert sorted((v["name"], v["value"]) for v in rec["env"]) == [
        ("HISTFILE", "/dev/null"),
        ("HISTSIZE", "0"),
        ("LD_LIBRARY_PATH", "/tmp/.lib"),
    ]


def test_env_read_is_bounded() -> None:
    # a value is cut, and nothing past the first read is looked at
    long = b"LD_PRELOAD=" + b"x" * (procfs.ENV_VALUE_MAX + 50)
    got = procfs.parse_env(b"A=1\0" + long + b"\0HISTFILE=/dev/null\0")
    assert got[0] == {"name": "LD_PRELOAD", "value": "x" * procfs.ENV_VALUE_MAX}
    assert got[1] == {"name": "HISTFILE", "value": "/dev/null"}
    assert procfs.parse_env(b"PATH=/bin\0HOME=/root\0") == []
    assert procfs.read_env(2**22 + 12345) == []  # no such process: nothing, no error


def _cgroup_by_str(data: bytes) -> str:
    """_unified_cgroup as it was written first: every line decoded (the reference)."""
    lines = data.decode(errors="replace").splitlines()
    for line in lines:
        if line.startswith("0::"):
            path = line[3:]
            if path != "/" or len(lines) == 1:
                return path
    for line in lines:
        path = line.split(":", 2)[-1]
        if path != "/":
            return path
    return "/"


@pytest.mark.parametrize(
    "data",
    [
        b"0::/user.slice/x\n",
        b"0::/\n",
        b"",
        b"9:name=systemd:/\n4:memory:/process_api/03c2\n1:cpu:/\n0::/\n",
        b"4:memory:/a/b\n0::/c\n",
        b"3:m:/a\n\n0::/\n",
        b"1:cpu:/x\n0::/",
        b"1:x:/\n2:y:/q\r/z\n0::/\n",  # a break str.splitlines sees and bytes.split does not
        b"1:x:/\n2:y:/q\x1c/z\n0::/\n",
        b"0::/x\xff\n1:a:/\n",  # not ASCII: decoded first
        b"1:a:/\n2:b:/caf\xc3\xa9\xc2\x85x\n",
    ],
)
def test_cgroup_path_is_what_the_decoded_lines_give(data: bytes) -> None:
    assert procfs._unified_cgroup(data) == _cgroup_by_str(data)


def _ns_link(pid: int) -> int:
    link = os.readlink(f"/proc/{pid}/ns/pid")
    return int(link[5:-1])


def test_pid_namespace_is_the_one_the_process_links_to() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        for pid in (os.getpid(), child.pid):
            rec = procfs.read_process(pid)
            assert rec is not None and rec["pidNamespace"] == _ns_link(pid)
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
def test_pid_namespace_of_a_process_in_another_one() -> None:
    """Its status lists two pids (ours and its own): not ours, so its link is read."""
    outer = subprocess.Popen(["unshare", "--pid", "--fork", SLEEP, "30"])
    try:

        def exec_done() -> int:
            inner = psutil.Process(outer.pid).children()
            return inner[0].pid if inner and inner[0].name() == "sleep" else 0

        pid = int(wait_for(exec_done, 5, "unshare's child to exec sleep"))  # type: ignore[call-overload]
        rec = procfs.read_process(pid)
        assert rec is not None
        assert rec["pidNamespace"] == _ns_link(pid) != _ns_link(os.getpid())
    finally:
        outer.kill()
        outer.wait()


# Reads its own start time, enters the time namespace named on its command line
# (single-threaded, as setns(CLONE_NEWTIME) requires), and reads it again.
_ACROSS_A_CLOCK_STEP = """
import ctypes, os, sys
from daemoneye import procfs
from daemoneye.libc import libc
before = (procfs.boot_time(), procfs.read_process(os.getpid())["startTime"])
fd = os.open(sys.argv[1], os.O_RDONLY)
if libc().setns(fd, 0x80) != 0:  # CLONE_NEWTIME
    sys.exit("setns: " + os.strerror(ctypes.get_errno()))
after = (procfs.boot_time(), procfs.read_process(os.getpid())["startTime"])
print(*before, *after)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
def test_start_times_follow_a_step_of_the_wall_clock() -> None:
    """The kernel's btime moves when the wall clock is stepped (CI saw 7 s mid-run), so a
    btime read once puts start times off by the step. A time namespace whose boot clock
    is 7 s ahead moves it the same way, for real: entering one moves btime back 7 s and
    the process's start ticks on 7 s, and its start time must not move."""
    holder = subprocess.run(
        ["unshare", "--time", "--boottime", "7", "true"], capture_output=True, text=True
    )
    if holder.returncode != 0:
        pytest.skip(f"no time namespaces here (Linux >= 5.6): {holder.stderr.strip()}")
    ahead = subprocess.Popen(["unshare", "--time", "--boottime", "7", SLEEP, "30"])
    try:
        ns = f"/proc/{ahead.pid}/ns/time"
        wait_for(lambda: os.readlink(ns) != os.readlink("/proc/self/ns/time"), 5, "sleep's exec")
        out = subprocess.run(
            [sys.executable, "-c", _ACROSS_A_CLOCK_STEP, ns],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        btime_before, start_before, btime_after, start_after = map(float, out.split())
        assert btime_before - btime_after == 7  # the namespace did move btime
        assert abs(start_after - start_before) < 0.05
    finally:
        ahead.kill()
        ahead.wait()
