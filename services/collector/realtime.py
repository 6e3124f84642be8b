"""The real-time source, the main process's side: the netlink reader (reader.py) runs
apart and outlives us; here we connect to it, take its frames, ack what we logged,
and follow its hand-overs.

Why a separate process: a `true` lives ~0.6 ms after exec. A thread must win the GIL
from the service loop first; a separate process never waits for it and runs at
real-time priority (as auditd's `priority_boost`). Why one that outlives us: the
kernel keeps nothing for a listener that is not there, so a collector restarting
(crash, upgrade, `systemctl restart`) would be blind until its new reader listened.

Hand-overs, in the order frames are taken (a reader's frames are all taken before
the next reader's, so the kernel's per-CPU sequence numbers, checked by the service
(kseq.py), tell a duplicate from a loss exactly):
- the reader dies: its spare takes over; the connection ends, we connect again to
  the same path and read on;
- a main with other reader code (an upgrade): a new reader is started first (it is
  subscribed), then the old one is told to retire (it sends what its socket holds,
  then bye): make before break.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import reader
from .netlink import ProcConnector, ProcEvent
from .reader import CMD, FRAME

READ_BYTES = 1 << 20
RECV_BUF = 4 << 20
HELLO_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Item:
    event: ProcEvent | None  # None: a batch of lost events (ENOBUFS)
    record: dict[str, Any] | None = None  # read at once for exec / uid / gid
    # a loss marker: the events (or frames) it stands for; an exec: 0, or why its argv
    # was gone before the read (reader.ARGV_LOST_*, negative)
    lost: int = 0


class Link:
    """One connection to one reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.hello: dict[str, Any] = {}
        self.fields: tuple[str, ...] = ()  # a record's keys, when it comes as its values
        self.bye = False
        self.ended = False
        self.synced = False  # the empty frame answering b"S" came: all sent before is here
        self.taken_n = 0  # the last frame number taken
        self.acked_n = 0  # the last frame number acked
        self.frames = 0  # frames taken
        self.pending: list[Item] = []  # taken while waiting for the hello
        self._buf = bytearray()
        # read into one reused buffer: os.read(fd, 1 MB) allocates (mmaps) 1 MB a call,
        # twice per wake-up, which cost ~45 % of the service loop in a storm
        self._chunk = bytearray(READ_BYTES)
        self._view = memoryview(self._chunk)

    def fileno(self) -> int:
        return self.sock.fileno()

    def take(self, out: list[Item]) -> int:
        """Append the items of every whole frame received so far; how many are events."""
        fd = self.sock.fileno()
        chunks = [self._chunk]
        while not self.ended:
            try:
                n = os.readv(fd, chunks)
            except BlockingIOError:
                break
            except OSError:
                n = 0
            if not n:
                self.ended = True
                break
            self._buf += self._view[:n]
            if n < READ_BYTES:
                break  # drained: asking again would only raise EAGAIN
        buf = self._buf
        end = len(buf)
        if end < FRAME.size:
            return 0
        at = events = 0
        append, loads, unpack = out.append, marshal.loads, FRAME.unpack_from
        fields = self.fields
        with memoryview(buf) as view:  # frames decoded in place: no copy of each
            while end - at >= FRAME.size:
                (length,) = unpack(buf, at)
                start = at + FRAME.size
                if end - start < length:
                    break
                msg = loads(view[start : start + length])
                at = start + length
                if msg[0] == "F":
                    self.taken_n = msg[1]
                    self.frames += 1
                    if not msg[3]:
                        self.synced = True
                    for ev, record, lost in msg[3]:
                        if record is not None and type(record) is not dict:  # protocol 2
                            record = dict(zip(fields, record, strict=False))
                        if ev:
                            append(Item(ProcEvent(*ev), record, lost))
                            events += 1
                        else:
                            append(Item(None, record, lost))
                elif msg[0] == "H":
                    self.hello = msg[1]
                    self.fields = fields = tuple(self.hello.get("fields", ()))
                elif msg[0] == "B":
                    self.bye = True
        del buf[:at]
        return events

    def wait_hello(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self.hello and not self.ended and time.monotonic() < deadline:
            select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            self.take(self.pending)
        return self.hello

    def send(self, cmd: bytes, arg: int = 0) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(CMD.pack(cmd, arg), socket.MSG_DONTWAIT)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUF)
    sock.setblocking(False)
    return sock


class RealtimeSource:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.links: list[Link] = []  # the first is read to its end, then the next
        self.received = 0
        self.takeovers = 0  # a spare took over from a dead reader
        self.dead = False  # no reader any more: the service falls back to snapshots
        self._marks: deque[tuple[float, int, Any]] = deque()  # (when, frame, state): acks

    @property
    def wake_fd(self) -> int:
        return self.links[0].fileno() if self.links else -1

    @property
    def hello(self) -> dict[str, Any]:
        """The newest reader's (the one before it, if any, is retiring)."""
        return self.links[-1].hello if self.links else {}

    def attach(self) -> dict[str, Any] | None:
        """Connect to the reader already running at our path: its hello, or None."""
        sock = _connect(self.path)
        if sock is None:
            return None
        link = Link(sock)
        hello = link.wait_hello(HELLO_TIMEOUT_S)
        if not hello:
            link.close()
            return None
        self.links.append(link)
        return hello

    def spawn(
        self,
        connector: ProcConnector,
        priority: int,
        linger_s: float,
        spool_bytes: int,
        child_init: Callable[[], None] | None = None,
        config: dict[str, Any] | None = None,
        other: ProcConnector | None = None,
        exits: ProcConnector | None = None,
    ) -> dict[str, Any]:
        """Start a reader on `connector` (URGENT; `other` and `exits`: see
        netlink.open_sockets) at our path (replacing the path of one we are attached
        to, which is then told to retire: it is subscribed no more than the new one is)
        and connect to it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        listener.listen(8)
        try:
            code = reader.spawn(
                connector,
                listener,
                priority,
                linger_s,
                spool_bytes,
                child_init,
                config,
                other,
                exits,
            )
        finally:
            listener.close()
            for conn in (connector, other, exits):  # the reader owns them now
                if conn is not None:
                    conn.sock.close()
        if code != 0:
            raise RuntimeError(f"the netlink reader did not start (code {code})")
        sock = _connect(self.path)
        if sock is None:
            raise RuntimeError(f"the netlink reader does not answer at {self.path}")
        link = Link(sock)
        hello = link.wait_hello(HELLO_TIMEOUT_S)
        if not hello:
            raise RuntimeError("the netlink reader sent no hello")
        if self.links:  # make, then break: the old one sends what it holds and exits
            self.links[0].send(b"R")
        self.links.append(link)
        return hello

    # --- taking ---------------------------------------------------------------

    def take(self) -> list[Item]:
        """Every item the readers have sent so far (without blocking), in hand-over
        order: the current reader's to its end, then the next one's."""
        out: list[Item] = []
        while self.links:
            link = self.links[0]
            if link.pending:
                out.extend(link.pending)
                self.received += sum(1 for i in link.pending if i.event is not None)
                link.pending = []
            self.received += link.take(out)
            if not link.ended:
                break
            link.close()
            self.links.pop(0)
            self._marks.clear()  # frame numbers are per reader
            if self.links:
                continue  # a retired reader's end: the new one is already there
            if link.bye:
                self.dead = True  # told to leave and nobody after it
                break
            sock = _connect(self.path)  # the spare takes over at the same path
            if sock is None:
                self.dead = True
                break
            self.takeovers += 1
            self.links.append(Link(sock))
        return out

    def due_ack(self, now: float, delay_s: float, state: Callable[[], Any]) -> tuple[int, Any]:
        """The last frame we took `delay_s` ago or longer, to ack now (0: none), and the
        `state()` noted when it was taken. Late, because the WAL has it by then, and a
        fork still waiting for its exec is not acked, so a new main sees it again."""
        if not self.links:
            return 0, None
        link = self.links[0]
        marks = self._marks
        # nothing new since the last ack: nothing to mark (nor to write down again)
        if link.taken_n != link.acked_n and (not marks or marks[-1][1] != link.taken_n):
            marks.append((now, link.taken_n, state()))
        n, noted = 0, None
        while marks and marks[0][0] <= now - delay_s:
            _, n, noted = marks.popleft()
        return n, noted

    def ack(self, n: int) -> None:
        if self.links:
            self.links[0].acked_n = n
            self.links[0].send(b"A", n)

    def all_acked(self) -> bool:
        """Every frame taken is acked: nothing for the tick to do until more come."""
        return len(self.links) == 1 and self.links[0].taken_n == self.links[0].acked_n

    def send_held(self) -> None:
        """Ask the reader for what its send wait holds now (`synced` tells it came)."""
        if self.links:
            self.links[0].synced = False
            self.links[0].send(b"S")

    @property
    def synced(self) -> bool:
        return not self.links or self.links[0].synced or self.links[0].ended

    def quit(self) -> None:
        for link in self.links:
            link.send(b"Q")

    def close(self) -> None:
        """Disconnect; the reader keeps reading and spools for the next main."""
        for link in self.links:
            link.close()
        self.links = []
