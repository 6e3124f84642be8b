"""The real-time source: a small forked reader process that reads the process
connector and, on exec, reads `/proc/<pid>` at once, before a short-lived
process can exit.

Why a process and not a thread: a `true` lives ~0.6 ms after exec. A thread must
win the GIL from the service loop first; a separate process never waits for it,
and runs at real-time priority (as auditd's `priority_boost`) so a busy CPU does
not delay it either. It does only the racing part; items come back over a pipe
as length-prefixed `marshal` frames and the service loop does the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import gc
import marshal
import os
import select
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemoneye import procfs

from .netlink import EXEC, GID, UID, ProcConnector, ProcEvent

FRAME = struct.Struct("<I")
READ_BYTES = 1 << 20
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031
PR_SET_PDEATHSIG = 1


@dataclass(slots=True)
class Item:
    event: ProcEvent | None  # None: a batch of lost events (ENOBUFS)
    record: dict[str, Any] | None = None  # read at once for exec / uid / gid
    lost: int = 0


def capture(ev: ProcEvent) -> dict[str, Any] | None:
    """The /proc read that races the process's exit (argv first)."""
    if ev.what == EXEC:
        cmd = procfs.read_cmdline(ev.pid)
        return procfs.read_process(ev.pid, cmdline_first=cmd)
    if ev.what in (UID, GID) and not ev.is_thread:
        return procfs.read_process(ev.pid)
    return None


def _pack(items: list[tuple[Any, ...]]) -> bytes:
    data = marshal.dumps(items)
    return FRAME.pack(len(data)) + data


def _event_tuple(ev: ProcEvent) -> tuple[Any, ...]:
    return (
        ev.what,
        ev.timestamp_ns,
        ev.pid,
        ev.tid,
        ev.ppid,
        ev.ruid,
        ev.euid,
        ev.exit_code,
        ev.exit_signal,
        ev.comm,
    )


class RealtimeSource:
    def __init__(
        self,
        connector: ProcConnector,
        priority: int = 0,
        child_init: Callable[[], None] | None = None,
    ) -> None:
        self.connector = connector
        self.priority = priority
        self.child_init = child_init
        self.pid = 0
        self.received = 0
        self._rfd = -1
        self._buf = bytearray()
        # read into one reused buffer: os.read(fd, 1 MB) allocates (mmaps) 1 MB a call,
        # twice per wake-up, which cost ~45 % of the service loop in a storm
        self._chunk = bytearray(READ_BYTES)
        self._chunk_view = memoryview(self._chunk)
        self.dead = False  # the reader exited: the service falls back to snapshots

    @property
    def wake_fd(self) -> int:
        return self._rfd

    def start(self) -> None:
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(wfd, F_SETPIPE_SZ, PIPE_BYTES)  # room for bursts while the loop is busy
        gc.freeze()  # the child's collector then never touches (and copies) inherited objects
        pid = os.fork()
        if pid == 0:  # the reader: never returns
            code = 0
            try:
                os.close(rfd)
                self._child(wfd)
            except BaseException:
                code = 1
            os._exit(code)
        gc.unfreeze()
        os.close(wfd)
        self.connector.sock.close()  # the child owns it now
        os.set_blocking(rfd, False)
        self._rfd = rfd
        self.pid = pid

    # --- the reader process ---------------------------------------------------

    def _child(self, wfd: int) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # never outlive the collector
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.priority > 0:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.priority))
        if self.child_init is not None:
            self.child_init()
        fd = self.connector.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if os.getppid() == 1:
                return
            if not ready:
                continue
            events, overruns = self.connector.read()
            items: list[tuple[Any, ...]] = []
            if overruns:
                items.append((None, None, overruns))
            for ev in events:
                items.append((_event_tuple(ev), capture(ev), 0))
            if items:
                os.write(wfd, _pack(items))  # blocks when the pipe is full: the kernel then
                # counts what it must drop as ENOBUFS, which we report

    # --- the service side -----------------------------------------------------

    def take(self) -> list[Item]:
        """Every item the reader has sent so far (without blocking)."""
        while True:
            try:
                n = os.readv(self._rfd, [self._chunk])
            except BlockingIOError:
                break
            if not n:
                self.dead = True
                break
            self._buf += self._chunk_view[:n]
            if n < READ_BYTES:
                break  # drained: asking again would only raise EAGAIN
        out: list[Item] = []
        buf = self._buf
        at = 0
        while len(buf) - at >= FRAME.size:
            (length,) = FRAME.unpack_from(buf, at)
            if len(buf) - at - FRAME.size < length:
                break
            start = at + FRAME.size
            for ev, record, lost in marshal.loads(bytes(buf[start : start + length])):
                out.append(Item(ProcEvent(*ev) if ev else None, record, lost))
            at = start + length
        del buf[:at]
        self.received += sum(1 for i in out if i.event is not None)
        return out

    def stop(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0
        if self._rfd >= 0:
            os.close(self._rfd)
            self._rfd = -1
