"""Make the kernel number one process event on each CPU we may run on.

A loss is a number skipped in a CPU's sequence (kseq.py), and a skipped number shows
only when that CPU numbers a later event. Events the kernel dropped at the end of a
burst (an overrun, a full spool) stay invisible until the host next runs something on
that CPU: seconds on a busy host, minutes on a quiet one. After a loss we ask each CPU
for one more number: a thread of ours sets its name to the name it has, which the
kernel reports as a COMM event numbered on the CPU it runs on. The tracker drops it (a
thread's name), so no record comes of it; the sequence check sees the jump.

CPUs outside our affinity (a container's cpuset) cannot be asked: their tail shows
with their next event, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

from daemoneye.libc import libc as c_library

PR_SET_NAME = 15
PR_GET_NAME = 16
NAME_BYTES = 16  # TASK_COMM_LEN


def _rename_on_each_cpu(cpus: list[int], done: list[int]) -> None:
    """In a thread of its own (its affinity and name are its own): on each CPU, set the
    thread's name again."""
    libc = c_library()
    if libc is None:
        return
    name = ctypes.create_string_buffer(NAME_BYTES)
    if libc.prctl(PR_GET_NAME, name, 0, 0, 0) != 0:
        return
    for cpu in cpus:
        try:
            os.sched_setaffinity(0, {cpu})  # returns once we run there
        except OSError:
            continue  # gone offline since, or not ours to use
        if libc.prctl(PR_SET_NAME, name, 0, 0, 0) == 0:
            done.append(cpu)


def number_an_event_on_each_cpu() -> list[int]:
    """The CPUs that numbered an event for us (empty where it cannot be done)."""
    with contextlib.suppress(AttributeError, OSError):
        cpus = sorted(os.sched_getaffinity(0))
        done: list[int] = []
        thread = threading.Thread(
            target=_rename_on_each_cpu, args=(cpus, done), name="kseq-probe", daemon=True
        )
        thread.start()
        thread.join()
        return done
    return []
