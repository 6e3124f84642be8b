"""The netlink reader: a small process that outlives the collector's main process.

The kernel's process connector keeps nothing for a listener that is not there, so
whoever holds the subscribed socket must never be away. Two processes hold it:

- the *reader* reads it at real-time priority and, on exec, reads `/proc/<pid>` at
  once (argv first), before a short-lived process can exit. The events come on three
  sockets (netlink.open_sockets): URGENT (exec, uid, gid) is watched always; OTHER
  (fork, comm...) and EXITS are left to wait in the kernel. OTHER is read when the
  reader wakes for an urgent one; both when a hold (`hold_ms`, started by the first
  datagram either gets) ends, and before it retires or quits. An urgent wake-up in the
  hold's last third ends it (its exits go in that frame): under a steady load the
  hold's end never costs a wake-up of its own. So an exec costs one wake-up and one
  frame, not three, and the exits of a hold go in one frame (one stop envelope
  downstream). A wake-up reads URGENT first (the /proc reads race: the argv
  of every exec queued there before the rest of any record, and of one that comes while
  a record is read before the next record), then the others up to the
  kernel time where URGENT stopped (the next datagram left there, or the clock when it
  was found empty), looking at URGENT again every HELD_CHUNK datagrams of theirs (an
  exec that comes while a hold's exits are read waits for a chunk, not for all of
  them: where URGENT stops then is the new bound), and sends them in one frame in the
  kernel's time order. An exit sent is then never ahead of its exec (the exec is
  older), and a fork never behind it; only events stamped but not queued yet when read
  (nanoseconds) can come a frame late: the tracker ignores a fork after its exec
  (tracker._late_fork).
  One CPU's numbers do come out of order (exits held while execs pass): the per-CPU
  check allows it (kseq.py). Nothing
  leaves a socket before it is sent or spooled, or else copied to the *journal*
  (shared memory the spare sees): it peeks, copies, consumes, and after the frame is
  sent clears the journal (_journal_done); a spare taking over sends the journal's datagrams again
  first (the main drops what it had by its kernel sequence number). What it sends
  goes to the main process over a unix socket, as length-prefixed `marshal` frames,
  and stays in its spool until the main acks it (in the WAL), so a main process that
  dies loses nothing: the next one connects and gets every frame not acked yet. With
  no main connected it spools (bounded by bytes) and waits `linger_s` for one before
  it exits. It never waits for the main: the socket is non-blocking, what it cannot
  take now stays in the spool, not sent yet, and goes when the socket has room again
  (a starved main once held the reader in a send for 1.7 s, and the execs of that
  time lost their argv: issue 16). Frames wait to be sent `send_ms` at most, so that
  the execs close together go to the main in one send (one wake-up of the main, one
  envelope of starts on the bus for each subscriber) while each exec's /proc is still
  read as it comes: a frame goes at once when the next is not expected before its
  time is up (a lone exec waits for nothing), else with the next frames, at a wake-up
  for an exec or when its time is up; a hold ending while frames wait is stretched to
  their send, so its exits go after them (not between two execs' frames, which would
  cut their envelope of starts in two). Until sent, a frame's datagrams are in the
  journal.
  A full spool drops its oldest frames; those never sent become a loss marker in their
  place (the main counts it and rescans).
- the *spare* is a fork of the reader: it holds the same sockets (the same kernel
  objects: a datagram the reader never consumed is still there), the journal and the
  same listening socket, and does nothing but wait on a channel to the reader. When the
  reader dies, the channel ends and the spare becomes the reader where it stopped
  (a datagram sent but not consumed comes again; the main drops it by its kernel
  sequence number), then forks a new spare. A dead spare is replaced by the reader.

Both processes killed at once close the socket: that is the one window left (see
docs/RELIABILITY.md). Commands from the main: ack n, retire (drain, say bye and
exit: the old half of a make-before-break hand-over), quit, send (what the send wait
holds, then an empty frame: a main leaving has them all).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import marshal
import math
import mmap
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
from .netlink import (
    EVENT_HDR,
    EXEC,
    GID,
    HEADER_LEN,
    UID,
    EventTuple,
    ProcConnector,
    parse_tuples,
)

# the frames and commands below; a main speaking another one replaces us. 2: a record is
# the tuple of its values, in the order of the hello's "fields" (1: a dict). 3: a frame
# holds the events of every datagram read in one wake-up, of three sockets, in kernel
# time order: one CPU's numbers come out of order between frames (a main reads 2 as 3)
PROTOCOL = 3
FRAME = struct.Struct("<I")
# main -> reader: b"A" ack n, b"R" retire, b"Q" quit, b"S" send what waits now, then a
# frame with no items (a main leaving takes what the send wait held, and knows it has)
CMD = struct.Struct("<cQ")
SEND_BUF = 4 << 20  # room for bursts while the main is busy
SEND_CHUNK = 256 << 10  # frames not sent yet go in one send up to this many bytes
FINISH_TIMEOUT_S = 10.0  # a retire or quit waits this long at most for the main to read
IDLE_WAKE_MS = 1000
HOLD_MS = 30  # collector.reader_hold_ms: how long OTHER and EXITS may wait
JOIN_SHARE = 1 / 3  # the last part of a hold in which an exec's wake-up ends it
SEND_MS = 0  # collector.reader_send_ms: how long a frame may wait to share a send
SEND_FRAMES = 64  # frames waiting to be sent: past this they go at once
GAP_WEIGHT = 0.25  # the weight of the last gap between two frames in the expected one
QUIET = 2  # a gap of this many send waits or more is a quiet spell (its frame goes at once)
BATCH = 512  # datagrams a frame takes at most from each socket
HELD_CHUNK = 32  # datagrams of OTHER or EXITS between two looks at URGENT (~5 us each)
JOURNAL_BYTES = 1 << 20  # the datagrams of one frame, until it is sent
JOURNAL_HEAD = struct.Struct("<I")  # bytes used after the head
DATAGRAM_MAX = 65536  # a netlink datagram is never longer (the kernel's are ~100 bytes)


# In a loss marker's record place: frames dropped from a full spool (a main too slow or
# stopped), not the kernel's overrun (ENOBUFS: the reader too slow), whose is None.
SPOOL_LOSS = {"spool": True}
# In an exec item's third place (0 otherwise): its process had exited before its argv
# was read; stamped while the reader slept (the kernel woke it too late), or while it
# was busy. A main of before these reads the third place of loss markers only.
ARGV_LOST_ASLEEP = -1
ARGV_LOST_BUSY = -2
ARGV_LOST_WHY = {ARGV_LOST_ASLEEP: "late_wake", ARGV_LOST_BUSY: "busy"}  # the metric's label


def _count_overrun(conn: ProcConnector, items: list[tuple[Any, ...]], exc: OSError) -> None:
    """ENOBUFS on a read: the kernel dropped datagrams. Counted, and a loss marker goes in
    the frame (the main repairs with a rescan); any other error is raised."""
    if exc.errno != errno.ENOBUFS:
        raise exc
    conn.lost += 1
    items.append((None, None, 1))


def socket_path(run_dir: str | Path, service_id: str) -> Path:
    """Where a collector's reader listens (short: a unix socket path has 108 bytes)."""
    digest = hashlib.sha1(service_id.encode()).hexdigest()[:12]
    return Path(run_dir) / f"collector-{digest}.reader"


def _hash_of_code() -> str:
    h = hashlib.sha1()
    # the compiled /proc read (procfs.IMPLEMENTATION "c") is the reader's code too: the
    # built module's bytes, so a rebuilt or a removed one is another reader
    native = procfs._native.__file__ if procfs._native is not None else None
    for path in filter(None, (__file__, netlink.__file__, procfs.__file__, native)):
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


# Reader._take's loop, compiled where daemoneye._procread is built (its Python below is
# the reference tests/unit/test_reader_take.py compares it with); None: the Python runs.
_COMPILED_TAKE: Callable[..., tuple[int, int]] | None = (
    procfs._native.take if procfs.IMPLEMENTATION == "c" else None
)


def wanted(what: int, pid: int, tid: int) -> bool:
    """An event whose process's /proc is read at once: an exec, a process's new ids."""
    return what == EXEC or (what in (UID, GID) and pid == tid)


def capture(what: int, pid: int, tid: int) -> dict[str, Any] | None:
    """The /proc read that races the process's exit (read_process: argv first)."""
    return procfs.read_process(pid) if wanted(what, pid, tid) else None


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
    other: ProcConnector | None = None,
    exits: ProcConnector | None = None,
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
                reader = Reader(
                    connector, listener, linger_s, spool_bytes, path, config, other, exits
                )
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
        other: ProcConnector | None = None,
        exits: ProcConnector | None = None,
    ) -> None:
        self.config = config or {}  # what it was started with: a main wanting other replaces it
        self.nl = connector  # URGENT (or every kind, with no OTHER)
        self.other = other  # OTHER: read with URGENT, or when the hold ends
        self.exits = exits  # EXITS: read when the hold ends
        self.held = [c for c in (other, exits) if c is not None]
        self.hold_s = float(self.config.get("hold_ms", HOLD_MS)) / 1000
        self.hold_until = 0.0  # OTHER and EXITS are not watched until then: the timer
        self.join_s = JOIN_SHARE * self.hold_s  # an exec's wake-up this near its end ends it
        self.send_s = float(self.config.get("send_ms", SEND_MS)) / 1000
        self.send_due = 0.0  # frames not sent yet wait until then (0: none waits)
        self.gap_s = QUIET * self.send_s  # the expected time between two frames (averaged)
        self.last_emit = 0.0
        # MAP_SHARED and anonymous: this reader's spares see what it writes
        self.journal = mmap.mmap(-1, JOURNAL_BYTES)
        self.journal_used = 0
        self._scratch = bytearray(DATAGRAM_MAX)  # where a datagram is peeked at
        self._scratch_view = memoryview(self._scratch)
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
        self.spool_dropped = 0  # frames dropped from a full spool (never delivered)
        # what goes to the client: `out` is being written (a frame cut by a full socket
        # is finished before the next one), then the spool's last `unsent` frames
        self.out = memoryview(b"")
        self.unsent = 0
        self.blocked = False  # the socket took not all: wait for POLLOUT
        self.marker_n = 0  # the loss marker heading what is not sent yet (0: none)
        self.marker_lost = 0  # the frames it stands for
        self.n = 0
        self.takeovers = 0
        self.polled_ns = self.woke_ns = 0  # the last wait in poll: from, to (_argv_lost)
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
        keep.update(conn.fileno() for conn in self.held)
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
            self.marker_n = self.marker_lost = 0
            self._reset_out()
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
        self._replay_journal()
        self._fork_spare()

    def _replay_journal(self) -> None:
        """What the reader took off its sockets and may not have sent: sent again (into
        our spool: the main connects to us next), before anything newer."""
        (used,) = JOURNAL_HEAD.unpack_from(self.journal, 0)
        at, end = JOURNAL_HEAD.size, JOURNAL_HEAD.size + min(used, JOURNAL_BYTES)
        items: list[tuple[Any, ...]] = []
        while at + FRAME.size <= end:
            (size,) = FRAME.unpack_from(self.journal, at)
            at += FRAME.size
            if at + size > end:
                break
            data = self.journal[at : at + size]
            at += size
            items.extend((ev, captured(ev), 0) for ev in parse_tuples(data))
        if items:
            items.sort(key=_when)
            self._emit(items)
        self._journal_clear()

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
        held_fds = tuple(conn.fileno() for conn in self.held)
        poller = select.poll()
        watched: tuple[int, ...] = ()
        while True:
            # what we wait on changes rarely (a main comes or goes, a spare is forked, a
            # hold starts or ends): the poll set is rebuilt only then. OTHER and EXITS
            # are watched only when nothing is held: a first datagram starts the hold
            held = self.hold_until > 0
            client = _fd(self.client)
            want = (self.blocked, nl_fd, self.listener.fileno(), _fd(self.peer), client)
            if not held:
                want += held_fds
            if want != watched:
                poller = select.poll()
                for fd in want[1:]:
                    if fd >= 0:
                        poller.register(fd, select.POLLIN)
                if self.blocked:  # the client's socket is full: watched for room too
                    poller.modify(client, select.POLLIN | select.POLLOUT)
                watched = want
            timeout = IDLE_WAKE_MS
            if held:
                timeout = max(0, math.ceil((self.hold_until - time.monotonic()) * 1000))
            if self.send_due:
                due_ms = max(0, math.ceil((self.send_due - time.monotonic()) * 1000))
                timeout = min(timeout, due_ms)
            self.polled_ns = time.monotonic_ns()  # asleep from here (_argv_lost)
            try:
                events = poller.poll(timeout)
            except InterruptedError:
                continue
            self.woke_ns = time.monotonic_ns()
            ready = {fd for fd, mask in events if mask & ~select.POLLOUT}
            if self.blocked and any(fd == client and m & select.POLLOUT for fd, m in events):
                self._flush()  # room again: on from where sending stopped
            hold_over = held and self._hold_ends(time.monotonic(), nl_fd in ready)
            if hold_over:
                # a busy host: the next hold starts now (watching for its first datagram
                # would cost a wake-up a hold); a quiet one: back to watching them
                took = self._read_netlink(exits=True)
                self.hold_until = time.monotonic() + self.hold_s if took else 0.0
            elif nl_fd in ready:
                self._read_netlink()
            if not held and not ready.isdisjoint(held_fds):
                self.hold_until = time.monotonic() + self.hold_s  # read when it ends
            if self.send_due and time.monotonic() >= self.send_due:
                self._flush()  # the frames that waited for company: their time is up
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

    def _hold_ends(self, now: float, urgent: bool) -> bool:
        """This wake-up reads what is held: the hold is over, or an exec woke us in its
        last JOIN_SHARE. Its exits then go in the exec's frame, and the wake-up of the
        hold's end is spared (under a steady load it never comes); a stop still waits
        hold_ms at most."""
        if now >= self.hold_until:
            if self.send_due > self.hold_until:
                # frames wait to be sent: the exits join their send, after them (in the
                # middle, they would cut one envelope of starts in two downstream)
                self.hold_until = self.send_due
                return False
            return True
        # frames waiting: the hold's end waits for their send (above)
        return urgent and not self.send_due and now >= self.hold_until - self.join_s

    def _findable(self) -> bool:
        """Our path still leads here (its directory removed, or another reader bound
        there: no main will find us again, so waiting is pointless). After the drop we
        may not see into the run dir: what we cannot look at, we assume is still ours."""
        if not self.path or not self.ino:
            return True
        now = _ino(self.path)
        return now in (self.ino, UNKNOWN)

    def _read_netlink(self, limit: int = BATCH, exits: bool = False) -> int:
        """One frame: URGENT, then OTHER (and EXITS) up to where URGENT stopped in kernel
        time (see the module's docstring), in kernel time order. Peek, copy to the
        journal, consume: a datagram leaves its socket only once a spare taking over
        would find it in the journal, and the journal is cleared once the frame is sent
        or spooled. Returns how many datagrams it read (the limit or a full journal
        leave the rest queued)."""
        items: list[tuple[Any, ...]] = []
        n, until = self._take_urgent(items, limit)
        urgent = n
        held = {conn: 0 for conn in (self.other, self.exits if exits else None) if conn}
        while held:
            more = False
            for conn, done in held.items():
                room = min(HELD_CHUNK, limit - done)
                took = self._take(conn, items, room, until)[0]
                held[conn] = done + took
                more |= took == room > 0  # a chunk full: maybe more before `until`
            if not more:
                break
            # execs that came meanwhile, with their /proc reads, before the next chunk
            took, until = self._take_urgent(items, limit - urgent)
            urgent += took
        n += sum(held.values())
        if items:
            items.sort(key=_when)
            self._emit(items)
        self._journal_done()
        return n

    def _take_urgent(self, items: list[tuple[Any, ...]], limit: int) -> tuple[int, int]:
        """URGENT's datagrams into `items` with their /proc reads: the argv of each exec
        as its datagram is taken (those that came meanwhile too: the socket is read to
        its end), the rest of each record after the last; and before each next record,
        the argv of execs that came while the last one was read (under a storm most
        argv.lost{why=busy} were stamped during the record reads). Returns what _take
        does, `until` where the last look stopped."""
        opened: list[tuple[int, int | None, list[str] | None]] = []  # (item, dir, argv)
        n, until = self._take(self.nl, items, limit, 0, opened)
        k = 0
        while k < len(opened):
            if k and n < limit:  # execs that came while the last record was read
                took, until = self._take(self.nl, items, limit - n, 0, opened)
                n += took
            i, dfd, argv = opened[k]
            k += 1
            ev = items[i][0]
            rec = procfs.read_opened(ev[2], dfd, argv)
            gone = rec is None or not (rec["cmdline"] or rec["exePath"])  # its mm released
            late = self._argv_lost(ev) if gone and ev[0] == EXEC else 0
            items[i] = (ev, None if rec is None else tuple(rec.values()), late)
        return n, until

    def _argv_lost(self, ev: EventTuple) -> int:
        """An exec's process had exited before its argv was read: why, in the item's
        third value (ARGV_LOST_*): stamped while we slept, the kernel woke us too late
        (on a VM, a halted or preempted vCPU: the host's); else we were busy."""
        if self.polled_ns <= ev[1] <= self.woke_ns:
            return ARGV_LOST_ASLEEP
        return ARGV_LOST_BUSY

    def _take(
        self,
        conn: ProcConnector,
        items: list[tuple[Any, ...]],
        limit: int,
        until: int,
        opened: list[tuple[int, int | None, list[str] | None]] | None = None,
    ) -> tuple[int, int]:
        """Datagrams of `conn` into `items`, their records still to read: with `opened`
        (URGENT) all of them, the directory and argv of each process to read going there
        (procfs.open_argv) before the next datagram; without (OTHER, EXITS) those stamped
        before `until`.
        Returns how many, and the kernel time the socket was read to: of the first
        datagram left, or of the clock when it was found empty."""
        if _COMPILED_TAKE is not None:  # the same loop, compiled (procfs's module)
            try:
                return _COMPILED_TAKE(
                    conn.sock.fileno(),
                    conn,
                    self._scratch,
                    self.journal,
                    limit,
                    until,
                    items,
                    opened,
                )
            finally:  # what it added to the journal, an error midway included
                (self.journal_used,) = JOURNAL_HEAD.unpack_from(self.journal, 0)
        sock = conn.sock
        scratch, view = self._scratch, self._scratch_view
        urgent = opened is not None
        n = 0
        while True:
            now = time.monotonic_ns()  # the kernel's clock: ktime_get_ns
            try:
                # into a buffer kept for it: recv(65536) allocates 64 KB a call, empty too
                size = sock.recv_into(scratch, DATAGRAM_MAX, socket.MSG_PEEK)
            except BlockingIOError:
                return n, now
            except OSError as exc:
                _count_overrun(conn, items, exc)
                continue
            data = bytes(view[:size])
            stamp = _stamp(data)
            if (not urgent and stamp >= until) or n >= limit or not self._journal_add(data):
                return n, stamp  # the rest goes in the next frame
            for ev in parse_tuples(data):
                if opened is not None and wanted(ev[0], ev[2], ev[3]):
                    opened.append((len(items), *procfs.open_argv(ev[2])))
                items.append((ev, None, 0))
            n += 1
            while True:  # consumed: it is in the journal now
                try:
                    sock.recv(16, socket.MSG_TRUNC)
                    break
                except BlockingIOError:
                    break
                except OSError as exc:  # an overrun since the peek: said first, then it
                    _count_overrun(conn, items, exc)

    def _journal_add(self, data: bytes) -> bool:
        at = JOURNAL_HEAD.size + self.journal_used
        end = at + FRAME.size + len(data)
        if end > JOURNAL_BYTES:
            return False
        FRAME.pack_into(self.journal, at, len(data))
        self.journal[at + FRAME.size : end] = data
        self.journal_used = end - JOURNAL_HEAD.size
        JOURNAL_HEAD.pack_into(self.journal, 0, self.journal_used)  # then it counts
        return True

    def _journal_done(self) -> None:
        """After a frame: the journal is cleared once its datagrams are the main's (sent)
        or, with no main connected, the spool's (lost with us, see docs/RELIABILITY.md).
        While a connected main has not taken them all they stay, for a spare taking over
        to send again, until the journal is half full: past that the oldest frames not
        sent are in our hands alone (a spare then sends on from the next frame's; the
        main counts the hole by kernel number), so the next frame always has room."""
        if (
            self.client is None
            or not (self.out or self.unsent)
            or self.journal_used > JOURNAL_BYTES // 2
        ):
            self._journal_clear()

    def _journal_clear(self) -> None:
        if self.journal_used:
            JOURNAL_HEAD.pack_into(self.journal, 0, 0)
            self.journal_used = 0
        elif JOURNAL_HEAD.unpack_from(self.journal, 0)[0]:  # a replayed one
            JOURNAL_HEAD.pack_into(self.journal, 0, 0)

    def _emit(self, items: list[tuple[Any, ...]]) -> None:
        self.n += 1
        frame = pack(("F", self.n, time.time_ns(), items))
        self.spool.append((self.n, frame))
        self.spool_size += len(frame)
        self.unsent += 1
        if self.spool_size > self.spool_max:
            self._trim()
        if self.client is not None and not self.blocked:
            self._send_soon()

    def _send_soon(self) -> None:
        """Send the frames not sent yet now, or let them wait for the next ones: a frame
        waits `send_s` at most, and only while the next is expected before then (the
        gaps between frames, averaged). The main then wakes once for the execs of a
        few ms instead of once each, and so does every subscriber of their envelope."""
        if self.send_s <= 0:
            self._flush()
            return
        now = time.monotonic()
        gap, quiet = now - self.last_emit, QUIET * self.send_s
        self.last_emit = now
        if gap >= quiet:  # a quiet spell: this frame goes at once, the average starts over
            self.gap_s = quiet
        else:
            self.gap_s += GAP_WEIGHT * (gap - self.gap_s)
        if not self.send_due:
            self.send_due = now + self.send_s  # the first frame waiting
        if now + self.gap_s >= self.send_due or self.unsent >= SEND_FRAMES:
            self._flush()

    def _trim(self) -> None:
        """The oldest frames out until the spool fits (the newest stays). One sent
        already is the main's (only a main dying before its ack loses it: the next one's
        kernel numbers show the hole); those not sent yet become one loss marker in their
        place, with the number of the last: the main counts it and rescans, when it
        comes to it, as for a kernel overrun. Markers in a row become one."""
        spool = self.spool
        lost, last = 0, 0
        while self.spool_size > self.spool_max and len(spool) > 1:
            unsent = self.unsent == len(spool)
            n, old = spool.popleft()
            self.spool_size -= len(old)
            if not unsent:
                continue
            self.unsent -= 1
            last = n
            if n == self.marker_n:
                lost += self.marker_lost
            else:
                lost += 1
                self.spool_dropped += 1
        if lost:
            marker = pack(("F", last, time.time_ns(), [(None, SPOOL_LOSS, lost)]))
            spool.appendleft((last, marker))
            self.spool_size += len(marker)
            self.unsent += 1
            self.marker_n, self.marker_lost = last, lost

    def _flush(self) -> None:
        """Send on from where sending stopped, as much as the socket takes now: never
        waits (a frame cut short is finished first, then the next ones not sent yet)."""
        client = self.client
        self.send_due = 0.0  # all goes now (or when the socket has room)
        if client is None:
            return
        try:
            while True:
                if not self.out:
                    if not self.unsent:
                        self.blocked = False
                        self._journal_clear()  # every frame is the main's now
                        return
                    self.out = self._next_out()
                sent = client.send(self.out)
                self.out = self.out[sent:]
        except BlockingIOError:
            self.blocked = True
        except OSError:
            self._drop_client()

    def _next_out(self) -> memoryview:
        """The next frames not sent yet, up to SEND_CHUNK bytes, in one buffer."""
        spool = self.spool
        first = spool[-self.unsent][1]
        self.unsent -= 1
        if not self.unsent or len(first) >= SEND_CHUNK:
            return memoryview(first)
        parts, size = [first], len(first)
        while self.unsent and size < SEND_CHUNK:
            frame = spool[-self.unsent][1]
            parts.append(frame)
            size += len(frame)
            self.unsent -= 1
        return memoryview(b"".join(parts))

    def _finish(self, last: bytes = b"") -> None:
        """Everything not sent yet, then `last`, before a retire or quit ends us: here
        we wait for the main (it asked for this end and reads on), FINISH_TIMEOUT_S at
        most: the new reader of a hand-over is reading already, and one quitting has
        nothing else to do."""
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        self._flush_until(deadline)
        if last and self.client is not None and not self.blocked:
            self.out = memoryview(last)
            self._flush_until(deadline)

    def _flush_until(self, deadline: float) -> None:
        while self.client is not None:
            self._flush()
            if not self.blocked or self.client is None:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(InterruptedError):
                select.select([], [self.client], [], left)

    def _reset_out(self) -> None:
        """No client: the whole spool is not sent yet, to the next one."""
        self.out = memoryview(b"")
        self.unsent = len(self.spool)
        self.blocked = False
        self.send_due = 0.0

    def _drop_client(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        self._reset_out()
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
        conn.setblocking(False)  # we never wait for it (see the module's docstring)
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
            "overruns": self.nl.lost + sum(conn.lost for conn in self.held),
            "started_ns": self.started_ns,
            "fields": procfs.FIELDS,
            "sockets": 1 + len(self.held),
        }
        self.out = memoryview(pack(("H", hello)))  # then the whole spool, not acked yet
        self.unsent = len(self.spool)
        self._flush()

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
            elif cmd == b"S":
                self._emit([])  # after every frame waiting: the main knows it has them
                self._flush()
            elif cmd == b"Q":
                self._drain()  # what the sockets hold goes to the main first
                self._finish()
                self._exit()

    def _acked(self, n: int) -> None:
        spool = self.spool
        while spool and spool[0][0] <= n:
            _, frame = spool.popleft()
            self.spool_size -= len(frame)
        self.unsent = min(self.unsent, len(spool))  # only what it took is acked: never so

    def _retire(self) -> None:
        """The old half of a make-before-break hand-over: the new reader is subscribed,
        so what our socket holds now is all we owe; send it, say bye, exit."""
        self.listener.close()
        self._drain()
        self._finish(pack(("B",)))
        self._exit()

    def _drain(self) -> None:
        """Both sockets to their end (to the main connected, if any)."""
        while self.client is not None and self._read_netlink(exits=True):
            pass

    def _exit(self) -> None:
        if self.peer is not None:  # tell the spare it is on purpose
            with contextlib.suppress(OSError):
                self.peer.send(b"bye")
        for conn in (self.nl, *self.held):
            with contextlib.suppress(OSError):
                conn.close()
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


def _stamp(data: bytes) -> int:
    """The kernel time of a datagram's (first) event; 0 when it has none."""
    if len(data) < HEADER_LEN + EVENT_HDR.size:
        return 0
    return int(EVENT_HDR.unpack_from(data, HEADER_LEN)[2])


def _when(item: tuple[Any, ...]) -> int:
    """An item's kernel time (a loss marker first)."""
    return item[0][1] if item[0] is not None else 0


def _frame_time(frame: bytes) -> int:
    msg = marshal.loads(frame[FRAME.size :])
    return int(msg[2])
