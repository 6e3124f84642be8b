"""Reading many processes at once (`procfs.read_many`): the forked readers give the same
records as one reader, in the order asked, and a reader that fails costs only time."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from daemoneye import procfs

pytestmark = pytest.mark.skipif(not procfs.IS_LINUX, reason="reads Linux /proc")
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
# what does not move while a process sleeps (cpu times, memory and io may)
STABLE = ("pid", "ppid", "startTicks", "name", "exePath", "cmdline", "cwd", "root", "uid",
          "euid", "gid", "egid", "username", "exeInode", "cgroupPath", "pidNamespace",
          "loginUid", "accessible")  # fmt: skip


@pytest.fixture
def sleepers() -> Iterator[list[int]]:
    procs = [subprocess.Popen([f"many-{i}", "60"], executable=SLEEP) for i in range(12)]
    for p in procs:  # exec'd: argv is there to read
        while (procfs.read_cmdline(p.pid) or [""])[0] != p.args[0]:
            assert p.poll() is None, "sleeper died"
    yield [p.pid for p in procs]
    for p in procs:
        p.kill()
        p.wait()


def stable(rec: dict | None) -> dict | None:
    return None if rec is None else {k: rec[k] for k in STABLE}


def test_forked_readers_match_one_reader(
    sleepers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procfs, "PARALLEL_MIN", 1)  # fork readers even for a few
    gone = subprocess.Popen(["true"])
    gone.wait()
    wanted: list[tuple[int, bytes | None]] = [(pid, None) for pid in sleepers]
    wanted.insert(5, (gone.pid, None))  # reaped: (None, None) in its place
    wanted.append((os.getpid(), procfs.read_stat_raw(os.getpid())))  # stat bytes given
    serial = procfs.read_many(wanted, workers=1)
    forked = procfs.read_many(wanted, workers=3)
    assert len(forked) == len(wanted)
    assert forked[5] == (None, None)
    for (pid, _), (raw, rec), (_, one) in zip(wanted, forked, serial, strict=True):
        assert stable(rec) == stable(one), f"pid {pid}"
        if rec is not None:
            assert rec["pid"] == pid and raw and raw.startswith(f"{pid} (".encode())
    argvs = [rec["cmdline"] for _, rec in forked[:5]]
    assert argvs == [[f"many-{i}", "60"] for i in range(5)]  # order as asked
    assert not any(rec["cmdline"] == [] for _, rec in serial if rec and rec["pid"] in sleepers)


def test_a_failing_reader_has_its_share_read_here(
    sleepers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procfs, "PARALLEL_MIN", 1)
    me = os.getpid()
    real = procfs.read_full

    def only_here(pid: int, stat_raw: bytes | None = None) -> procfs.Read:
        if os.getpid() != me:  # in a forked reader: die mid-share
            raise RuntimeError("reader broke")
        return real(pid, stat_raw)

    monkeypatch.setattr(procfs, "read_full", only_here)
    reads = procfs.read_many([(pid, None) for pid in sleepers], workers=2)
    assert [rec["pid"] for _, rec in reads if rec] == sleepers
    assert [rec["cmdline"][0] for _, rec in reads if rec] == [f"many-{i}" for i in range(12)]


def test_read_full_of_a_gone_process() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert procfs.read_full(gone.pid) == (None, None)
    raw, rec = procfs.read_full(os.getpid())
    assert rec is not None and raw is not None and rec["state"]
    assert procfs.parse_stat(os.getpid(), raw).start_ticks == rec["startTicks"]  # type: ignore[union-attr]
