"""Scheduling priority of the detection path: a monitor that falls behind a fork storm
reports late (or, when a storm saturates the CPU, minutes late), so the collector's
and the detector's loops run at a raised priority (as auditd's `priority_boost`), the
collector's netlink reader at real-time priority, background work at normal."""

from __future__ import annotations

import contextlib
import os


def boost(nice: int) -> str:
    """Give every thread of this process niceness `nice` (Linux applies it per thread:
    the bus's I/O threads, which do the sends, too). Threads started later inherit it.
    '' when done or nothing to do, else why not (raising needs root or CAP_SYS_NICE)."""
    if nice >= os.getpriority(os.PRIO_PROCESS, 0):
        return ""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    try:
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.setpriority(os.PRIO_PROCESS, tid, nice)
    except PermissionError:
        return f"cannot raise the scheduling priority to nice {nice} (needs CAP_SYS_NICE)"
    return ""


def background() -> None:
    """The calling thread back to normal niceness (a worker born of a boosted thread)."""
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) < 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)  # on Linux: this thread alone
