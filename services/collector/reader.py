"""The netlink reader: a small process that outlives the collector's main process.

The kernel's process connector keeps nothing for a listener that is not there, so
whoever holds the subscribed socket must never be away. Two processes hold it:

- the *reader* reads it at real-time priority and, on exec, reads `/proc/<pid>` at
  once (argv first), before a short-lived process can exit. It takes a datagram off
  the socket only after it has sent (or spooled) what it made of it: it peeks, works,
  sends, then consumes. What it sends goes to the main process over a unix socket,
  as length-prefixed `marshal` frames, and stays in its spool until the main acks it
  (in the WAL), so a main process that dies loses nothing: the next one connects and
  gets every frame not acked yet. With no main connected it spools (bounded by
  bytes) and waits `linger_s` for one before it exits.
- the *spare* is a fork of the reader: it holds the same socket (the same kernel
  object: a datagram the reader never consumed is still there) and the same
  listening socket, and does nothing but wait on a channel to the reader. When the
  reader dies, the channel ends and the spare becomes the reader where it stopped
  (a datagram sent but not consumed comes again; the main drops it by its kernel
  sequence number), then forks a new spare. A dead spare is replaced by the reader.

Both processes killed at once close the socket: that is the one window left (see
docs/RELIABILITY.md). Commands from the main: ack n, retire (drain, say bye and
exit: the old half of a make-before-break hand-over), quit.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import marshal
import os
import select
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemoneye import procfs

from . import netlink
from .netlink import EXEC, GID, UID, EventTuple, ProcConnector, parse_tuples

# the frames and commands below; a main speaking another one replaces us. 2: a record is
# the tuple of its values, in the order of the hello's "fields" (1: a dict)
PROTOCOL = 2
FRAME = struct.Struct("<I")
CMD = struct.Struct("<cQ")  # main -> reader: b"A" ack n, b"R" retire, b"Q" quit
SEND_BUF = 4 << 20  # room for bursts while the main is busy
IDLE_WAKE_MS = 1000


def socket_path(run_dir: str | Path, service_id: str) -> Path:
    """Where a collector's reader listens (short: a unix socket path has 108 bytes)."""
    digest = hashlib.sha1(service_id.encode()).hexdigest()[:12]
    return Path(run_dir) / f"collector-{digest}.reader"


def _hash_of_code() -> str:
    h = hashlib.sha1()
    for path in (__file__, netlink.__file__, procfs.__file__):
        with contextlib.suppress(OSError):
            h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


# Read when this module is imported: the code this process runs, even when the files
# changed since (an upgrade on disk while `daemoneye up` forks its collector from the
# modules it loaded at start: daemoneye.zygote).
_CODE_VERSION = _hash_of_code()


def code_version() -> str:
    """The reader's code: a main with other code replaces the reader (an upgrade)."""
    return _CODE_VERSION


def capture(what: int, pid: int, tid: int) -> dict[str, Any] | None:
    """The /proc read that races the process's exit (argv first)."""
    if what == EXEC:
        cmd = procfs.read_cmdline(pid)
        return procfs.read_process(pid, cmdline_first=cmd)
    if what in (UID, GID) and pid == tid:
        return procfs.read_process(pid)
    return None


def captured(ev: EventTuple) -> tuple[Any, ...] | None:
    """`capture` of an event as sent: the record's values in `procfs.FIELDS` order."""
    rec = capture(ev[0], ev[2], ev[3])
    return None if rec is None else tuple(rec.values())


def pack(message: tuple[Any, ...]) -> bytes:
    data = marshal.dumps(message)
    return FRAME.pack(len(data)) + data


def spawn(
    connector: ProcConnector,
    listener: socket.socket,
    priority: int,
    linger_s: float,
    spool_bytes: int,
    child_init: Callable[[], None] | None = None,
    config: dict[str, Any] | None = None,
) -> int:
    """Start a reader (and its spare) on `listener` (bound to its path) that belongs to
    no one: a double fork, so it outlives this process and init reaps it. Returns the
    intermediate's exit code."""
    # the children's collector then never touches (and copies) our objects; a process
    # forked frozen (daemoneye.zygote) stays so, or its own collections would copy the
    # pages it shares with the supervisor
    was_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if os.fork() == 0:
                path = listener.getsockname()
                reader = Reader(connector, listener, linger_s, spool_bytes, path, config)
                reader.main(priority, child_init)
        except BaseException:
            code = 1
        os._exit(code)
    if not was_frozen:
        gc.unfreeze()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class Reader:
    def __init__(
        self,
        connector: ProcConnector,
        listener: socket.socket,
        linger_s: float,
        spool_bytes: int,
        path: str = "",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.config = config or {}  # what it was started with: a main wanting other replaces it
        self.nl = connector
        self.listener = listener
        self.path = path  # where mains find us; gone or another's: no main will come
        self.ino = _ino(path)
        self.linger_s = linger_s
        self.spool_max = spool_bytes
        self.client: socket.socket | None = None
        self.peer: socket.socket | None = None  # the channel to the spare (or the reader)
        self.spare_pid = 0
        self.spool: deque[tuple[int, bytes]] = deque()  # (frame number, frame) not acked
        self.spool_size = 0
        self.spool_dropped = 0  # events dropped from a full spool (never delivered)
        self.n = 0
        self.takeovers = 0
        self.alone_since = time.monotonic()
        self.retiring = False
        self.code = code_version()
        self.started_ns = time.time_ns()

    # --- start ------------------------------------------------------------------

    def main(self, priority: int, child_init: Callable[[], None] | None) -> None:
        os.setsid()  # no terminal's Ctrl-C, and no process group of a main it outlives
        self._close_inherited()
        signal.signal(signal.SIGTERM, lambda *_: self._exit())  # on purpose: no takeover
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if priority > 0:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        if child_init is not None:
            child_init()
        self._fork_spare()
        self._serve()

    def _close_inherited(self) -> None:
        """The main's sockets (the bus, its WAL) are not ours: a peer must see the
        main's connections end when the main does, not when we do. Its standard streams
        neither: a pipe read to its end would wait for us (as a daemon: /dev/null)."""
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        keep = {0, 1, 2, self.nl.fileno(), self.listener.fileno()}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # --- the spare ----------------------------------------------------------------

    def _fork_spare(self) -> None:
        mine, theirs = socket.socketpair()
        gc.freeze()  # the spare then shares our pages instead of copying them as it runs
        pid = os.fork()
        if pid == 0:  # the spare: wait for the reader to end, then take over
            mine.close()
            if self.client is not None:
                self.client.close()
                self.client = None
            self.spool.clear()
            self.spool_size = 0
            self.peer = theirs
            self._wait_as_spare()
            return  # the reader now: back to _serve
        theirs.close()
        if self.peer is not None:
            self.peer.close()
        self.peer = mine
        self.spare_pid = pid

    def _wait_as_spare(self) -> None:
        assert self.peer is not None
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            try:
                data = self.peer.recv(64)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if data:  # the reader says bye: it exits on purpose, so do we
                os._exit(0)
            break
        # the reader is gone: become it, where it stopped, and fork the next spare
        signal.signal(signal.SIGTERM, lambda *_: self._exit())
        self.peer.close()
        self.peer = None
        self.takeovers += 1
        self.alone_since = time.monotonic()
        self.spare_pid = 0
        self._fork_spare()

    def _on_peer(self) -> None:
        """The spare's channel: it only ever ends (the spare died): fork another."""
        assert self.peer is not None
        with contextlib.suppress(OSError):
            if self.peer.recv(64):
                return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.spare_pid, 0)  # its channel ended: it is exiting, reap it
        self._fork_spare()

    # --- serving ----------------------------------------------------------------

    def _serve(self) -> None:
        nl_fd = self.nl.fileno()
        poller = select.poll()
        watched: tuple[int, ...] = ()
        while True:
            # what we wait on changes rarely (a main comes or goes, a spare is forked):
            # the poll set is rebuilt only then, not on each of ~3 wake-ups an exec
            want = (nl_fd, self.listener.fileno(), _fd(self.peer), _fd(self.client))
            if want != watched:
                poller = select.poll()
                for fd in want:
                    if fd >= 0:
                        poller.register(fd, select.POLLIN)
                watched = want
            try:
                events = poller.poll(IDLE_WAKE_MS)
            except InterruptedError:
                continue
            ready = {fd for fd, _ in events}
            if nl_fd in ready:
                self._read_netlink()
            if self.client is not None and self.client.fileno() in ready:
                self._read_commands()
            if self.listener.fileno() in ready:
                self._accept()
            if self.peer is not None and self.peer.fileno() in ready:
                self._on_peer()
            if self.retiring:
                self._retire()
            if self.client is None and (
                time.monotonic() - self.alone_since > self.linger_s or not self._findable()
            ):
                self._exit()

    def _findable(self) -> bool:
        """Our path still leads here (its directory removed, or another reader bound
        there: no main will find us again, so waiting is pointless). After the drop we
        may not see into the run dir: what we cannot look at, we assume is still ours."""
        if not self.path or not self.ino:
            return True
        now = _ino(self.path)
        return now in (self.ino, UNKNOWN)

    def _read_netlink(self, limit: int = 256) -> None:
        """Peek, work, send, consume: a datagram leaves the socket only when what we
        made of it is sent or spooled, so the spare that takes over misses nothing."""
        sock = self.nl.sock
        for _ in range(limit):
            try:
                data = sock.recv(65536, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.nl.lost += 1
                self._emit([(None, None, 1)])  # the kernel dropped some: the main repairs
                continue
            items = [(ev, captured(ev), 0) for ev in parse_tuples(data)]
            if items:
                self._emit(items)
            with contextlib.suppress(BlockingIOError):
                sock.recv(16, socket.MSG_TRUNC)

    def _emit(self, items: list[tuple[Any, ...]]) -> None:
        self.n += 1
        frame = pack(("F", self.n, time.time_ns(), items))
        self.spool.append((self.n, frame))
        self.spool_size += len(frame)
        while self.spool_size > self.spool_max and len(self.spool) > 1:
            _, old = self.spool.popleft()
            self.spool_size -= len(old)
            self.spool_dropped += 1
        if self.client is not None:
            self._send(frame)

    def _send(self, data: bytes) -> None:
        assert self.client is not None
        try:
            self.client.sendall(data)  # blocks when the main is behind: the kernel then
        except OSError:  # queues in the netlink socket, and drops with ENOBUFS at worst
            self._drop_client()

    def _drop_client(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        self.alone_since = time.monotonic()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (0, os.geteuid()):  # only root or our own user may take events
            conn.close()
            return
        self._drop_client()  # one main at a time: the newest one
        conn.setblocking(True)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUF)
        self.client = conn
        hello = {
            "protocol": PROTOCOL,
            "code": self.code,
            "config": self.config,
            "pid": os.getpid(),
            "spare": self.spare_pid,
            "backlog": len(self.spool),
            "oldest_ns": _frame_time(self.spool[0][1]) if self.spool else 0,
            "spool_dropped": self.spool_dropped,
            "takeovers": self.takeovers,
            "overruns": self.nl.lost,
            "started_ns": self.started_ns,
            "fields": procfs.FIELDS,
        }
        self._send(pack(("H", hello)))
        for _, frame in list(self.spool):
            if self.client is None:
                return
            self._send(frame)

    def _read_commands(self) -> None:
        assert self.client is not None
        try:
            data = self.client.recv(CMD.size * 512, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client()
            return
        usable = len(data) - len(data) % CMD.size  # commands are written whole
        for at in range(0, usable, CMD.size):
            cmd, arg = CMD.unpack_from(data, at)
            if cmd == b"A":
                self._acked(arg)
            elif cmd == b"R":
                self.retiring = True
            elif cmd == b"Q":
                self._exit()

    def _acked(self, n: int) -> None:
        spool = self.spool
        while spool and spool[0][0] <= n:
            _, frame = spool.popleft()
            self.spool_size -= len(frame)

    def _retire(self) -> None:
        """The old half of a make-before-break hand-over: the new reader is subscribed,
        so what our socket holds now is all we owe; send it, say bye, exit."""
        self.listener.close()
        self._read_netlink(limit=1 << 30)
        if self.client is not None:
            self._send(pack(("B",)))
        self._exit()

    def _exit(self) -> None:
        if self.peer is not None:  # tell the spare it is on purpose
            with contextlib.suppress(OSError):
                self.peer.send(b"bye")
        with contextlib.suppress(OSError):
            self.nl.close()
        os._exit(0)


def stop_reader(path: str | Path, timeout_s: float = 2.0) -> bool:
    """Tell the reader at `path` to exit for good (no spare takes over); False when
    none answers there."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            sock.sendall(CMD.pack(b"Q", 0))
            with contextlib.suppress(OSError):
                while sock.recv(65536):  # its hello and spool, until it closes
                    pass
        return True
    except OSError:
        return False


UNKNOWN = -1  # the path could not be looked at (permissions)


def _fd(sock: socket.socket | None) -> int:
    return -1 if sock is None else sock.fileno()


def _ino(path: str) -> int:
    """The inode at `path`: 0 when nothing is there, UNKNOWN when we may not look."""
    try:
        return os.stat(path).st_ino if path else 0
    except (PermissionError, OSError) as exc:
        return UNKNOWN if isinstance(exc, PermissionError) else 0


def _frame_time(frame: bytes) -> int:
    msg = marshal.loads(frame[FRAME.size :])
    return int(msg[2])
