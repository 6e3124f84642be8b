"""Execs made by a generator this team did not write, counted from outside DaemonEye.

The count is the kernel's: the `sched:sched_process_exec` tracepoint on every CPU,
through `perf stat` (every exec on the host in the window, as the services' CPU is).
Where perf is missing, /proc/stat's `processes` (forks since boot) stands in: a
fork-exec loop makes one fork per exec, so the figure is close but says which it is.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TRACEPOINT = "sched:sched_process_exec"


def shell_loop(exe: str, workers: int) -> str:
    """The default outside generator: `workers` POSIX shell loops exec'ing `exe`, the
    way a build script or a cron job's loop does (sh's own fork and exec, no C of ours)."""
    loop = f"while :; do {shlex.quote(exe)}; done"
    return " & ".join([f"sh -c {shlex.quote(loop)}"] * workers) + " & wait"


@dataclass
class Counted:
    execs: int
    seconds: float
    how: str  # what counted them

    @property
    def rate(self) -> float:
        return self.execs / self.seconds if self.seconds else 0.0


def _forks_since_boot() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("processes "):
                return int(line.split()[1])
    raise RuntimeError("/proc/stat has no `processes` line")


class _Counter:
    """Kernel count of execs on the host between start() and stop()."""

    def __init__(self, work: Path) -> None:
        self.perf = shutil.which("perf")
        self.out = work / "perf-stat.csv"
        self.proc: subprocess.Popen | None = None
        self.forks = 0

    def start(self) -> None:
        if self.perf:
            self._start_perf()
        self.forks = _forks_since_boot()

    def _start_perf(self) -> None:
        # Started with its counters off, then enabled over its control pipe and waited
        # for: the count covers the window exactly, not perf's start-up.
        ctl_r, self.ctl = os.pipe()
        self.ack, ack_w = os.pipe()
        argv = [self.perf or "perf", "stat", "-a", "-x,", "-e", TRACEPOINT, "-D", "-1"]
        argv += ["--control", f"fd:{ctl_r},{ack_w}", "-o", str(self.out)]
        self.proc = subprocess.Popen(argv, pass_fds=(ctl_r, ack_w), stderr=subprocess.DEVNULL)
        os.close(ctl_r)
        os.close(ack_w)
        if not self._command(b"enable"):  # no tracepoints here (not root, no tracefs)
            self.proc.kill()
            self.proc.wait()
            self._close_control()
            self.perf, self.proc = None, None

    def _close_control(self) -> None:
        os.close(self.ctl)
        os.close(self.ack)

    def _command(self, cmd: bytes, timeout_s: float = 10.0) -> bool:
        """Send perf a control command; whether it acknowledged it in time."""
        try:
            os.write(self.ctl, cmd + b"\n")
        except BrokenPipeError:
            return False
        ready, _, _ = select.select([self.ack], [], [], timeout_s)
        return bool(ready) and os.read(self.ack, 64).startswith(b"ack")

    def stop(self) -> tuple[int, str]:
        forks = _forks_since_boot() - self.forks
        if self.proc is None:
            return forks, "forks (/proc/stat; perf or its tracepoint missing)"
        self._command(b"disable")
        self.proc.send_signal(signal.SIGINT)  # perf writes its counts on SIGINT
        self.proc.wait(10)
        self._close_control()
        for line in self.out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] == TRACEPOINT and fields[0].isdigit():
                return int(fields[0]), f"the kernel ({TRACEPOINT}, perf stat -a)"
        return forks, "forks (/proc/stat; perf printed no count)"


def run(command: str, seconds: float) -> Counted:
    """Run `command` (a shell command line) for `seconds`, then stop its whole process
    group; the host's execs meanwhile, by the kernel's count."""
    with tempfile.TemporaryDirectory(prefix="de-outside-") as tmp:
        counter = _Counter(Path(tmp))
        counter.start()
        t0 = time.monotonic()
        gen = subprocess.Popen(
            ["sh", "-c", command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            gen.wait(seconds)  # the window; a generator that ends early ends it
        except subprocess.TimeoutExpired:
            os.killpg(gen.pid, signal.SIGKILL)
            gen.wait()
        elapsed = time.monotonic() - t0
        execs, how = counter.stop()
    return Counted(execs, elapsed, how)
