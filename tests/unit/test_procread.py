"""The compiled record read (daemoneye._procread) against procfs.py's Python read: the
same record, or the same error, from the same process directory.

Real processes of every kind this host has (live, zombie, kernel thread, reaped,
deleted or replaced executable, odd names and argv), and directories laid out like
/proc/<pid> with hostile contents (hypothesis): a directory fd is all either read
is given, so a fake one exercises every parsing branch the kernel never takes."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemoneye import procfs
from tests.compiled import assert_built
from tests.conftest import wait_for

pytestmark = pytest.mark.skipif(not procfs.IS_LINUX, reason="reads Linux /proc")
compiled = pytest.mark.skipif(
    procfs.IMPLEMENTATION != "c", reason="daemoneye._procread not built: the Python read runs"
)
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
SH = os.path.realpath(shutil.which("sh") or "/bin/sh")
# what a running process changes between two reads of it
MOVING = {"userTimeMs", "systemTimeMs", "residentBytes", "virtualBytes", "state", "threads",
          "diskReadBytes", "diskWriteBytes"}  # fmt: skip


def read_with(read: Callable[..., Any], pid: int, dfd: int, *args: Any) -> Any:
    """What `read` gives (the record or None) or raises (its type and message)."""
    try:
        return read(pid, dfd, *args)
    except Exception as exc:  # the error is the result compared
        return (type(exc), str(exc))


def both(pid: int, directory: str, argv: list[str] | None = None, raw: bytes | None = None):
    """The Python and the compiled read of `directory`, each through its own fd."""
    out = []
    for read in (procfs.python_read_record, procfs._compiled_read_record):
        dfd = os.open(directory, procfs._DIR_FLAGS)
        try:
            out.append(read_with(read, pid, dfd, argv, raw))
        finally:
            os.close(dfd)
    return out


def test_the_compiled_read_is_built_where_a_compiler_is() -> None:
    assert_built(procfs.IMPLEMENTATION, "daemoneye._procread", "the Python read")


@compiled
def test_every_process_of_this_host_reads_the_same() -> None:
    """Kernel threads, services, shells: each field but those a running process moves."""
    compared = 0
    for pid in procfs.list_pids():
        for _ in range(3):  # a process that exec'd or chdir'd between the two reads: again
            python, native = both(pid, f"/proc/{pid}")
            if python is None or native is None:
                break  # gone between the two reads
            assert list(native) == list(python), "the record's keys, in procfs.FIELDS order"
            differ = {k: (python[k], native[k]) for k in python if python[k] != native[k]}
            if set(differ) <= MOVING:
                compared += 1
                break
        else:
            pytest.fail(f"pid {pid} read differently three times: {differ}")
    assert compared >= 10


@pytest.fixture
def settled() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a process and wait until it sleeps with its image mapped (two reads alike)."""
    started: list[subprocess.Popen] = []

    def start(argv: list[Any], **kw: Any) -> subprocess.Popen:
        child = subprocess.Popen(argv, **kw)
        started.append(child)

        def asleep() -> bool:
            s = procfs.read_stat(child.pid)
            return s is not None and s.state == "S" and procfs.read_cmdline(child.pid) != []

        wait_for(asleep, what="the child asleep")
        return child

    yield start
    for child in started:
        child.kill()
        child.wait()


def exactly_alike(pid: int) -> dict[str, Any]:
    python, native = both(pid, f"/proc/{pid}")
    assert native == python
    assert isinstance(native, dict)
    return native


@compiled
def test_a_sleeping_process_reads_exactly_the_same(settled) -> None:
    child = settled([SLEEP, "30"], env={"LD_PRELOAD": "", "HISTFILE": "/dev/null", "A": "b"})
    rec = exactly_alike(child.pid)
    assert rec["cmdline"] == [SLEEP, "30"] and rec["accessible"] and rec["onDisk"] == 1
    assert {"name": "HISTFILE", "value": "/dev/null"} in rec["env"]  # parse_env's path


@compiled
def test_odd_names_argv_and_long_arguments_read_the_same(settled, tmp_path: Path) -> None:
    odd = tmp_path / "a) (b ) c"  # comm ends at the LAST ')'
    shutil.copy(SH, odd)
    big = "x" * (4096 + 65536 + 17)  # past the first read and one more chunk
    argv = [str(odd).encode(), b"-c", b"read x", b"\xff\xfe-not-utf8", b"", big.encode()]
    child = settled(argv, stdin=subprocess.PIPE, env={})  # waits on its stdin
    rec = exactly_alike(child.pid)
    assert rec["name"] == "a) (b ) c"
    assert rec["cmdline"][3:] == ["\ufffd\ufffd-not-utf8", "", big]


@compiled
def test_a_deleted_and_a_replaced_executable_read_the_same(settled, tmp_path: Path) -> None:
    gone, swapped = tmp_path / "gone", tmp_path / "swapped"
    shutil.copy(SLEEP, gone)
    shutil.copy(SLEEP, swapped)
    a, b = settled([str(gone), "30"]), settled([str(swapped), "30"])
    gone.unlink()
    swapped.unlink()
    shutil.copy(SLEEP, swapped)  # the path now names another file
    rec = exactly_alike(a.pid)
    assert rec["exeDeleted"] and rec["onDisk"] == 0 and rec["exePath"] == str(gone)
    rec = exactly_alike(b.pid)
    assert rec["exeDeleted"] and rec["exeChangedAfterExec"]


def state_of(pid: int) -> str:
    stat = procfs.read_stat(pid)
    return stat.state if stat is not None else ""


@compiled
def test_a_zombie_and_a_reaped_process_read_the_same() -> None:
    child = subprocess.Popen([SLEEP, "30"])
    wait_for(lambda: procfs.read_cmdline(child.pid) == [SLEEP, "30"], what="the exec")
    raw = procfs.read_stat_raw(child.pid)
    dirs = [os.open(f"/proc/{child.pid}", procfs._DIR_FLAGS) for _ in range(4)]
    try:
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: state_of(child.pid) == "Z", what="the child a zombie")
        zombie = exactly_alike(child.pid)
        assert zombie["state"] == "Z" and zombie["accessible"] and zombie["exePath"] == ""
        child.wait()
        reads = [
            read_with(read, child.pid, dfd, None, stat)
            for read, dfd, stat in zip(
                (procfs.python_read_record, procfs._compiled_read_record) * 2,
                dirs,
                (None, None, raw, raw),
                strict=True,
            )
        ]
    finally:
        for dfd in dirs:
            os.close(dfd)
    assert reads[0] is None and reads[1] is None
    assert reads[2] == reads[3] and not reads[3]["accessible"] and reads[3]["name"] == "sleep"


# --- a directory laid out like /proc/<pid>, with what the kernel never writes --------

GOOD = st.integers(0, 1 << 20).map(lambda n: str(n).encode())
ODD = st.one_of(
    st.integers(-(1 << 70), 1 << 70).map(lambda n: str(n).encode()),
    st.sampled_from(
        [
            b"-1",
            b"0",
            b"+5",
            b"1_000",
            b"007",
            b"abc",
            b"12x",
            b"\xff",
            b"1e3",
            b"99999999999999999999999",
            b"-0",
            b"",
            b" ",
            b"-",
        ]
    ),
)
NUMBERS = GOOD | ODD
TEXT = st.binary(max_size=40) | st.text(max_size=20).map(str.encode)


@st.composite
def numbers(draw: st.DrawFn, min_size: int, max_size: int) -> list[bytes]:
    """Plain numbers, and half of the time one that is not (so most records parse)."""
    out = draw(st.lists(GOOD, min_size=min_size, max_size=max_size))
    if out and draw(st.booleans()):
        out[draw(st.integers(0, len(out) - 1))] = draw(ODD)
    return out


@st.composite
def stat_bytes(draw: st.DrawFn) -> bytes:
    comm = draw(st.sampled_from([b"sleep", b"a) (b", b"x)", b"", b"\xff\xfe", b"(("]))
    state = draw(st.sampled_from([b"S", b"S", b"Z", b"Z", b"R", b"\xff", b"ZZ"]))
    fields = draw(numbers(18, 50))
    sep = draw(st.sampled_from([b" ", b" ", b"  ", b"\t", b" \x0b", b"\x0b", b"\x0c", b"\r"]))
    flags = draw(st.sampled_from([b"0", str(procfs.PF_KTHREAD).encode(), b"4194368"]))
    fields[4:5] = [flags] if len(fields) > 4 else []
    line = b"4242 (" + comm + b") " + sep.join([state, *fields]) + b"\n"
    cut = line[: draw(st.integers(0, len(line)))]
    return draw(st.sampled_from([line, line, line, line, cut, b"no parens"]))


@st.composite
def status_bytes(draw: st.DrawFn) -> bytes:
    lines = [b"Name:\tx"]
    for tag in (b"Uid:", b"Gid:"):
        ids = draw(st.one_of(numbers(3, 4), numbers(3, 3), numbers(0, 2)))
        lines.append(tag + b"\t" + b"\t".join(ids))
    nspid = draw(st.sampled_from([[b"4242"], [b"4242", b"1"], []]))
    if nspid:
        lines.append(b"NSpid:\t" + b"\t".join(nspid))
    body = b"\n".join(lines)
    return draw(st.sampled_from([body + b"\n", body + b"\n", body, body, b"", draw(TEXT)]))


CGROUPS = st.one_of(
    st.sampled_from([
        b"0::/user.slice/session-1.scope\n", b"0::/\n", b"0::/a\n\n", b"0::/x",
        b"12:memory:/docker/" + b"ab" * 32 + b"\n0::/\n", b"0::/x/" + b"0" * 63 + b"-1\n",
        b"5:cpu:/x/" + b"f" * 63 + b"\n0::/\n", b"0::/" + b"e" * 70 + b"\n",
    ]),
    st.sampled_from([
        b"0::/user.slice/session-1.scope\n", b"0::/\n", b"0::/a\n\n", b"0::/x",
        b"12:memory:/docker/" + b"ab" * 32 + b"\n0::/\n", b"1:name=systemd:/x\r\n0::/y\n",
        b"0::/kubepods/pod1/" + b"0123456789abcdef" * 4 + b"0\n", b"0::/\xff\xfe\n", b"\n",
        b"0::\n", b"0::", b"5:cpu:/x/" + b"f" * 63 + b"\n0::/\n",
    ]),
    TEXT,
    st.lists(  # v1 and hybrid files of plain lines (a v1 host's are read compiled)
        st.sampled_from([
            b"9:name=systemd:/", b"8:pids:/", b"4:memory:/process_api/4ca7", b"0::/",
            b"0::/user.slice", b"3:cpu,cpuacct:/a:b", b"1:/odd", b"no colon", b"", b"0::",
            b"2:x:", b"7:blkio:/docker/" + b"ab" * 32,
        ]),
        max_size=6,
    ).map(lambda lines: b"\n".join(lines))
    | st.lists(st.sampled_from([b"5:cpu:/", b"0::/", b"6:x:/y"]), max_size=3).map(
        lambda lines: b"".join(line + b"\n" for line in lines)
    ),
)  # fmt: skip
ENVIRON = st.one_of(
    st.just(b"A=1\0B=2\0"),
    st.lists(
        st.sampled_from(
            [
                b"LD_PRELOAD=/x.so",
                b"HISTFILE=/dev/null",
                b"HISTSIZE=0",
                b"LD_LIBRARY_PATH=" + b"p" * 2000,
                b"X=\xff",
                b"HIST",
                b"LD_",
            ]
        ),
        max_size=5,
    ).map(b"\0".join),
    st.binary(max_size=64),
)
LINKS = st.sampled_from(["/usr/bin/sleep", "/usr/bin/sleep (deleted)", " (deleted)", "relative",
                         "/nonexistent/x", "/tmp/\udcff-surrogate", "/"])  # fmt: skip
NS_LINKS = st.sampled_from(["pid:[4026531836]", "pid:[", "pid:[x]", "net:[1]", "pid:[]"])


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """The file there most of the time (a missing one ends most reads early)."""
    return st.one_of(strategy, strategy, strategy, st.none())


@st.composite
def proc_dirs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "cmdline": draw(
            maybe(
                st.one_of(
                    st.binary(max_size=64),
                    st.just(b"a\0b\0\0"),
                    st.just(b"\0"),
                    st.just(b"y" * 4096),
                    st.just(b"z" * (4096 + 65536)),
                )
            )
        ),
        "stat": draw(maybe(stat_bytes())),
        "status": draw(maybe(status_bytes())),
        "environ": draw(maybe(ENVIRON)),
        "cgroup": draw(maybe(CGROUPS)),
        "loginuid": draw(maybe(NUMBERS | TEXT | st.just(b" \n"))),
        "io": draw(
            maybe(
                st.sampled_from(
                    [
                        b"rchar: 1\nread_bytes: 4096\nwrite_bytes: 0\n",
                        b"rchar: 1\nread_bytes: x\n",
                        b"rchar: 1\nwrite_bytes: 12",
                        b"",
                        b"rchar: 1\nread_bytes:\nwrite_bytes: \n",
                    ]
                )
            )
        ),
        "exe": draw(maybe(LINKS)),
        "cwd": draw(maybe(LINKS)),
        "root": draw(maybe(LINKS)),
        "ns/pid": draw(maybe(NS_LINKS)),
        "argv": draw(maybe(st.lists(st.text(max_size=5), max_size=3))),
        "stat_raw": draw(st.one_of(st.none(), st.none(), st.just(b""), stat_bytes())),
    }


# a status whose last line has no newline: Python's slice to find("\n") = -1 loses its
# last character (so "Gid: 4 5 6" has two ids: IndexError); the compiled read must too
LAST_LINE_CUT = {
    **dict.fromkeys(("environ", "cgroup", "loginuid", "io", "exe", "cwd", "root", "ns/pid")),
    "cmdline": b"a\0",
    "stat": b"1 (x) S " + b" ".join([b"1"] * 25) + b"\n",
    "status": b"Name:\tx\nUid:\t1\t2\t3\nGid:\t4\t5\t6",
    "argv": None,
    "stat_raw": None,
}


# what a record reads of a process directory: files, and links
FILE_NAMES = ("cmdline", "stat", "status", "environ", "cgroup", "loginuid", "io")
LINK_NAMES = ("exe", "cwd", "root", "ns/pid")


def lay_out(root: Path, spec: dict[str, Any]) -> None:
    (root / "ns").mkdir(parents=True)
    for name in FILE_NAMES:
        if spec[name] is not None:
            (root / name).write_bytes(spec[name])
    for name in LINK_NAMES:
        if spec[name] is not None:
            os.symlink(os.fsencode(spec[name]), os.fsencode(root / name))


@compiled
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(spec=proc_dirs())
@example(spec=LAST_LINE_CUT)
def test_hostile_proc_directories_read_the_same(tmp_path_factory, spec: dict[str, Any]) -> None:
    root = tmp_path_factory.mktemp("proc") / "4242"
    lay_out(root, spec)
    python, native = both(4242, str(root), spec["argv"], spec["stat_raw"])
    assert native == python
    if isinstance(native, dict):
        assert list(native) == list(procfs.FIELDS)


@compiled
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(cgroup=CGROUPS)
@example(cgroup=b"9:name=systemd:/\n4:memory:/process_api/4ca7\n0::/\n")
@example(cgroup=b"4:memory:/\n3:cpu:/a:b\n0::/\n")
@example(cgroup=b"0::/\n")
@example(cgroup=b"0::/\n\n")
@example(cgroup=b"1:x:/\n\r\n")
@example(cgroup=b"5:cpu:/\n0::/\n")
@example(cgroup=b"0::/\n0::/\n")
def test_any_cgroup_file_gives_the_same_path(tmp_path_factory, cgroup: bytes) -> None:
    """The cgroup alone varies (v2, v1 and hybrid files are read compiled, the rest
    through procfs._unified_cgroup): the same path and container."""
    root = tmp_path_factory.mktemp("proc") / "4242"
    lay_out(root, {**own_files(), "cgroup": cgroup})
    python, native = both(4242, str(root))
    assert isinstance(python, dict), python
    assert native == python


@functools.cache
def own_files() -> dict[str, Any]:
    """This process's /proc files and links, as a proc_dirs spec (a whole record)."""
    spec: dict[str, Any] = {"argv": None, "stat_raw": None}
    for name in FILE_NAMES:
        spec[name] = Path(f"/proc/self/{name}").read_bytes()
    for name in LINK_NAMES:
        spec[name] = os.readlink(f"/proc/self/{name}")
    return spec


@compiled
def test_the_reads_go_in_the_same_order() -> None:
    """What a process's exit takes first is read first: the same syscalls in the same
    order (strace), so neither read loses more of a short-lived process than the other."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed: the order of the reads is not observable here")
    script = (
        "import os, sys\n"
        "from daemoneye import procfs\n"
        "read = getattr(procfs, sys.argv[1])\n"
        "dfd = procfs.open_dir(os.getppid())\n"
        "os.write(2, b'--start--')\n"
        "read(os.getppid(), dfd, None, None)\n"
        "os.write(2, b'--end--')\n"
    )

    def calls(read: str) -> list[str]:
        out = subprocess.run(
            [strace, "-f", "-e", "trace=openat,readlinkat,newfstatat,stat,read",
             sys.executable, "-c", script, read],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
        body = out.split("--start--", 1)[1].split("--end--", 1)[0]
        return [syscall(line) for line in body.splitlines() if relative(line)]

    def relative(line: str) -> bool:  # a call on the process directory's fd
        return '"' in line and "(" in line and "AT_FDCWD" not in line

    def syscall(line: str) -> str:  # 'openat(5, "stat", ...) = 6' -> 'openat:stat'
        return line.split("(", 1)[0].split()[-1] + ":" + line.split('"')[1]

    python, native = calls("python_read_record"), calls("_compiled_read_record")
    assert [c.split(":")[1] for c in native if not c.startswith("read:")] == [
        c.split(":")[1] for c in python if not c.startswith("read:")
    ]
    assert len(native) >= 8
