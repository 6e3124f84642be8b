"""The netlink reader's frames from its three sockets: one frame a wake-up, in kernel
time order, an exit never ahead of its exec, exits held for the hold's end; and the
journal a spare sends again."""

from __future__ import annotations

import marshal
import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from daemoneye import procfs
from daemoneye.services.collector import netlink, reader
from daemoneye.services.collector.netlink import EXEC, EXIT, FORK, NetlinkUnavailable

pytestmark = pytest.mark.skipif(not procfs.IS_LINUX, reason="reads Linux /proc")


@pytest.fixture
def made() -> Iterator[reader.Reader]:
    try:
        urgent, other, exits = netlink.open_sockets()
    except NetlinkUnavailable as exc:
        pytest.skip(f"netlink process connector unavailable: {exc}")
    listener, peer = socket.socketpair()  # never accepted on here: it only has to be one
    made = reader.Reader(urgent, listener, 60, 1 << 20, "", {}, other, exits)
    yield made
    for conn in (urgent, other, exits):
        if conn is not None:
            conn.close()
    listener.close()
    peer.close()


def frames(r: reader.Reader) -> list[list[Any]]:
    """The items of each frame spooled (no main connected)."""
    return [marshal.loads(frame[reader.FRAME.size :])[3] for _, frame in r.spool]


def datagram(what: int, pid: int, seq: int, ts: int) -> bytes:
    body = struct.pack("=4I", pid, pid, pid, pid)  # fork: the child is the last two
    event = struct.pack("=IIQ", what, 0, ts) + body
    cn = struct.pack("=IIIIHH", netlink.CN_IDX_PROC, netlink.CN_VAL_PROC, seq, 0, len(event), 0)
    return struct.pack("=IHHII", 16 + len(cn) + len(event), netlink.NLMSG_DONE, 0, 0, 0) + (
        cn + event
    )


def child_events(r: reader.Reader, pid: int) -> list[tuple[int, int]]:
    """(frame, kind) of the process `pid`'s events spooled."""
    return [
        (i, ev[0])
        for i, items in enumerate(frames(r))
        for ev, _rec, _lost in items
        if ev is not None and ev[2] == pid and ev[2] == ev[3]
    ]


def test_a_wake_up_sends_its_sockets_in_one_frame_in_time_order(made: reader.Reader) -> None:
    if made.other is None:
        pytest.skip("this kernel took no socket filter: one socket")
    child = subprocess.Popen(["true"])
    child.wait()
    deadline = time.monotonic() + 10
    mine: list[tuple[int, int]] = []
    while len(mine) < 2 and time.monotonic() < deadline:
        made._read_netlink()  # an exec's wake-up: URGENT and OTHER, EXITS held
        mine = child_events(made, child.pid)
    assert [kind for _, kind in mine] == [FORK, EXEC]
    assert mine[0][0] == mine[1][0], "the fork and its exec went in two frames"
    assert made.exits is not None
    while len(mine) < 3 and time.monotonic() < deadline:
        made._read_netlink(exits=True)  # the hold's end
        mine = child_events(made, child.pid)
    assert [kind for _, kind in mine] == [FORK, EXEC, EXIT]
    for items in frames(made):
        times = [ev[1] for ev, _, _ in items if ev is not None]
        assert times == sorted(times)
    assert made.journal_used == 0 and struct.unpack_from("<I", made.journal)[0] == 0


def test_the_spare_sends_the_journal_of_a_reader_killed_before_it_sent(
    made: reader.Reader,
) -> None:
    """Taken off the sockets and journaled, not yet sent, then SIGKILL: the spare (a
    fork, sharing the journal) sends those datagrams again before anything newer."""
    pid = os.fork()
    if pid == 0:  # the reader: journals two datagrams, dies before its frame is sent
        made._journal_add(datagram(EXIT, 7, 2, 200))
        made._journal_add(datagram(FORK, 8, 1, 100))
        os.kill(os.getpid(), 9)
    os.waitpid(pid, 0)
    made._replay_journal()
    (items,) = frames(made)
    assert [(ev[0], ev[2], ev[11]) for ev, _, _ in items] == [(FORK, 8, 1), (EXIT, 7, 2)]
    assert struct.unpack_from("<I", made.journal)[0] == 0  # sent: not again
    made._replay_journal()
    assert len(frames(made)) == 1


def test_a_full_journal_leaves_the_rest_for_the_next_frame(made: reader.Reader) -> None:
    big = datagram(EXIT, 7, 2, 200)
    while made._journal_add(big):
        pass
    assert made.journal_used + reader.FRAME.size + len(big) > reader.JOURNAL_BYTES - 4
    made._journal_clear()
    assert made._journal_add(big)


def _exec_and_wait(argv: list[str]) -> subprocess.Popen[bytes]:
    """A child that has exec'd `argv` and waits on its stdin until killed: asleep there,
    its exec has returned, so its datagram is queued on URGENT (its new argv shows a
    moment before the kernel sends it)."""
    child = subprocess.Popen(argv, stdin=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = procfs.read_stat(child.pid)
        if procfs.read_cmdline(child.pid) == argv and st is not None and st.state == "S":
            return child
        select.select([], [], [], 0.001)
    raise AssertionError(f"{argv} did not exec")


def _argv_of(items: list[Any], pid: int) -> list[str] | None:
    at = procfs.FIELDS.index("cmdline")
    for ev, rec, _lost in items:
        if ev is not None and ev[0] == EXEC and ev[2] == pid and rec is not None:
            return list(rec[at])
    return None


@pytest.fixture(params=["compiled", "python"])
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Reader._take's loop: compiled (where built), then its Python."""
    if request.param == "python":
        monkeypatch.setattr(reader, "_COMPILED_TAKE", None)
    elif reader._COMPILED_TAKE is None:
        pytest.skip("daemoneye._procread not built: the Python loop runs")
    return request.param


def dirs_open(pids: set[int]) -> set[int]:
    """Which of `pids` have their /proc directory open here (open_argv opened it; the
    record read closes it)."""
    held = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}").split()  # " (deleted)" once gone
        except OSError:
            continue
        tail = target[0].removeprefix("/proc/") if target else ""
        if tail.isdigit() and int(tail) in pids:
            held.add(int(tail))
    return held


def test_queued_execs_have_their_argv_read_before_the_rest_of_any_record(
    made: reader.Reader, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several execs waiting on URGENT: the argv of each is read before the rest of any
    of their records (the last one's argv does not wait for the others' whole records:
    a short-lived process would be gone)."""
    made._read_netlink(exits=True)  # what was queued before
    children = [_exec_and_wait(["sh", "-c", "read x", f"queued-{i}"]) for i in range(4)]
    mine = {c.pid for c in children}
    opened_at_record: list[set[int]] = []  # whose argv were read, at each record read
    real_record = procfs._read_record

    def record(pid: int, dfd: int, argv: list[str] | None, raw: bytes | None) -> object:
        # the rest of the record (compiled or not): the stat first
        if pid in mine:
            opened_at_record.append(dirs_open(mine))
        return real_record(pid, dfd, argv, raw)

    monkeypatch.setattr(procfs, "_read_record", record)
    try:
        made._read_netlink()
    finally:
        for c in children:
            c.kill()
            c.wait()
    (items,) = frames(made)[-1:]
    for i, c in enumerate(children):
        assert _argv_of(items, c.pid) == ["sh", "-c", "read x", f"queued-{i}"]
    assert len(opened_at_record) == 4
    assert opened_at_record[0] == mine, f"a record read before every argv: {opened_at_record}"


def test_an_exec_during_a_holds_exits_is_read_before_the_rest_of_them(
    made: reader.Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold's end reads up to BATCH exits; an exec that comes meanwhile is taken, with
    its argv, after the chunk being read, not after all of them (nor in the next frame)."""
    if made.exits is None:
        pytest.skip("this kernel took no socket filter: one socket")
    made._read_netlink(exits=True)  # what was queued before
    for _ in range(3 * reader.HELD_CHUNK):  # exits enough for several chunks
        subprocess.run(["true"], check=True)
    made._read_netlink()  # their execs and forks: only the exits are left, held
    late: list[subprocess.Popen[bytes]] = []
    calls: list[str] = []
    real = made._take

    def take(conn: netlink.ProcConnector, *args: Any) -> tuple[int, int]:
        got = real(conn, *args)
        calls.append("exits" if conn is made.exits else "urgent" if conn is made.nl else "other")
        if conn is made.exits and not late:  # an exec comes while the exits are read
            late.append(_exec_and_wait(["sh", "-c", "read x", "during-the-exits"]))
        return got

    monkeypatch.setattr(made, "_take", take)
    try:
        made._read_netlink(exits=True)
    finally:
        for c in late:
            c.kill()
            c.wait()
    (items,) = frames(made)[-1:]
    assert _argv_of(items, late[0].pid) == ["sh", "-c", "read x", "during-the-exits"]
    first_exits = calls.index("exits")
    assert "urgent" in calls[first_exits:], calls
    assert calls[first_exits:].index("urgent") < len(calls) - first_exits - 1, calls
    times = [ev[1] for ev, _, _ in items if ev is not None]
    assert times == sorted(times)


# --- the main never holds the reader (issue 16) ---------------------------------------


def _pad_frame(made: reader.Reader, size: int) -> None:
    """A frame of about `size` bytes into the spool (and out, as the socket takes it)."""
    made._emit([((EXEC, made.n, 1, 1, "p" * size), None, 0)])


class _Main:
    """The main's end of the socket: reads when told to, splits the frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.msgs: list[tuple[Any, ...]] = []

    def read_all(self, made: reader.Reader, until: Any, timeout_s: float = 10) -> None:
        """Read (the reader sending on as its socket has room, as its poll loop does)
        until `until(self.msgs)`."""
        deadline = time.monotonic() + timeout_s
        while not until(self.msgs):
            assert time.monotonic() < deadline, f"{len(self.msgs)} frames came"
            if made.blocked:
                assert made.client is not None
                _, writable, _ = select.select([], [made.client], [], 0)
                if writable:
                    made._flush()
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            if readable:
                self.buf += self.sock.recv(1 << 20)
                self._split()

    def _split(self) -> None:
        at = 0
        while len(self.buf) - at >= reader.FRAME.size:
            (size,) = reader.FRAME.unpack_from(self.buf, at)
            if len(self.buf) - at - reader.FRAME.size < size:
                break
            start = at + reader.FRAME.size
            self.msgs.append(marshal.loads(bytes(self.buf[start : start + size])))
            at = start + size
        del self.buf[:at]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def _frames_of(msgs: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [m for m in msgs if m[0] == "F"]


def test_a_main_that_does_not_read_never_blocks_the_reader(
    made: reader.Reader, pair: tuple[socket.socket, socket.socket]
) -> None:
    """Frames past what the socket takes stay in the spool, not sent yet; once the main
    reads, they go on from where sending stopped, a frame cut short finished first."""
    ours, theirs = pair
    made.client = ours
    made.spool_max = 64 << 20
    for _ in range(100):  # ~2 MB: more than a socketpair holds
        _pad_frame(made, 20_000)
    assert made.client is ours, "the reader gave up on a main that was only slow"
    assert made.blocked and made.unsent > 0
    main = _Main(theirs)
    main.read_all(made, lambda msgs: len(msgs) == 100)
    assert [m[1] for m in _frames_of(main.msgs)] == list(range(1, 101))
    assert not made.blocked and made.unsent == 0 and not made.out
    made._acked(100)
    assert not made.spool and made.spool_size == 0


def test_a_full_spool_drops_what_was_not_sent_as_one_loss_marker(
    made: reader.Reader, pair: tuple[socket.socket, socket.socket]
) -> None:
    """Frames not sent yet dropped from a full spool: one loss marker in their place,
    numbered as the last of them, which the main takes as lost (then rescans)."""
    ours, theirs = pair
    made.client = ours
    made.spool_max = 200_000
    for _ in range(300):  # ~6 MB: the socket takes some, the spool 200 KB, the rest go
        _pad_frame(made, 20_000)
    main = _Main(theirs)
    main.read_all(made, lambda msgs: msgs and msgs[-1][1] == 300)
    frames = _frames_of(main.msgs)
    numbers = [m[1] for m in frames]
    assert numbers == sorted(set(numbers)), "frame numbers out of order or twice"
    markers = [m for m in frames if m[3][0][0] is None]
    assert len(markers) == 1, "consecutive drops are one marker"
    (_, whose, lost) = markers[0][3][0]
    assert whose == reader.SPOOL_LOSS, "told apart from the kernel's overrun (None)"
    assert lost == made.spool_dropped > 0
    assert len(frames) - 1 + lost == 300, "a frame neither received nor counted lost"
    before = numbers.index(markers[0][1])
    assert numbers[before + 1] == markers[0][1] + 1, "the marker is where the lost ones were"


def test_the_journal_keeps_a_frame_until_the_main_has_it(
    made: reader.Reader, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A frame the socket did not take is not in the reader's hands alone: its
    datagrams stay in the journal (a spare taking over sends them again) until it is
    sent; half full, the journal lets the oldest go (the next frame needs room)."""
    ours, theirs = pair
    made.client = ours
    made.spool_max = 64 << 20
    while not made.blocked:
        _pad_frame(made, 20_000)
    made._journal_add(datagram(FORK, 8, 1, 100))
    _pad_frame(made, 10)
    made._journal_done()
    assert struct.unpack_from("<I", made.journal)[0] > 0, "an unsent frame's datagrams gone"
    main = _Main(theirs)
    main.read_all(made, lambda msgs: msgs and msgs[-1][1] == made.n)
    assert struct.unpack_from("<I", made.journal)[0] == 0, "sent, and still in the journal"
    while not made.blocked:
        _pad_frame(made, 20_000)
    big = datagram(EXIT, 7, 2, 200)
    while made.journal_used <= reader.JOURNAL_BYTES // 2:
        made._journal_add(big)
    made._journal_done()
    assert made.journal_used == 0


def test_frames_close_together_wait_for_one_send_and_one_after_quiet_goes_at_once(
    made: reader.Reader, pair: tuple[socket.socket, socket.socket]
) -> None:
    """With a send wait: a frame after a quiet spell is sent at once (a lone exec
    waits for nothing); frames coming closer together than the wait stay unsent, their
    datagrams in the journal (a spare sends them again), until the wait ends (the poll
    loop's timer, or the frame after which none is expected in time): then all go in
    one send, in order."""
    ours, theirs = pair
    made.client = ours
    made.send_s = 10.0  # long: the frames below come far closer together than that
    made.gap_s = reader.QUIET * made.send_s
    main = _Main(theirs)
    _pad_frame(made, 10)
    assert made.unsent == 0 and not made.send_due, "a frame after a quiet spell waited"
    main.read_all(made, lambda msgs: len(_frames_of(msgs)) == 1)
    while not made.send_due:  # the expected gap shrinks as frames come close together
        _pad_frame(made, 10)
    first_held = made.n
    made._journal_add(datagram(FORK, 8, 1, 100))
    for _ in range(5):
        _pad_frame(made, 10)
        made._journal_done()
    assert made.unsent == 6 and made.send_due, "frames close together went one by one"
    assert struct.unpack_from("<I", made.journal)[0] > 0, "a waiting frame's datagrams gone"
    main.read_all(made, lambda msgs: len(_frames_of(msgs)) == first_held - 1)
    readable, _, _ = select.select([theirs], [], [], 0)
    assert not readable, "a waiting frame was sent"
    made._flush()  # what the poll loop does when send_due has come
    main.read_all(made, lambda msgs: _frames_of(msgs)[-1][1] == made.n)
    numbers = [m[1] for m in _frames_of(main.msgs)]
    assert numbers == list(range(1, made.n + 1))
    assert numbers[-6:] == list(range(first_held, first_held + 6))
    assert made.unsent == 0 and not made.send_due
    assert struct.unpack_from("<I", made.journal)[0] == 0, "sent, and still in the journal"
    made.last_emit -= 2 * reader.QUIET * made.send_s  # a quiet spell since the last
    _pad_frame(made, 10)
    assert made.unsent == 0 and not made.send_due, "a frame after a quiet spell waited"


def test_a_main_leaving_is_sent_what_waits_then_an_empty_frame(
    made: reader.Reader, pair: tuple[socket.socket, socket.socket]
) -> None:
    """b"S" (a main's teardown): the frames the send wait holds go at once, then a frame
    with no items, so the main knows it has taken everything before it leaves."""
    ours, theirs = pair
    made.client = ours
    made.send_s = 10.0
    made.gap_s, made.last_emit = 0.0, time.monotonic()  # frames coming close together
    for _ in range(3):
        _pad_frame(made, 10)
    assert made.unsent == 3 and made.send_due
    theirs.send(reader.CMD.pack(b"S", 0))
    made._read_commands()
    main = _Main(theirs)
    main.read_all(made, lambda msgs: len(_frames_of(msgs)) == 4)
    frames = _frames_of(main.msgs)
    assert [m[1] for m in frames] == [1, 2, 3, 4]
    assert [len(m[3]) for m in frames] == [1, 1, 1, 0], "the empty frame is not last"
    assert made.unsent == 0 and not made.send_due


def test_an_exec_near_the_end_of_a_hold_takes_its_exits_along(made: reader.Reader) -> None:
    """In the hold's last third an exec's wake-up ends it (no wake-up of its own for the
    exits); earlier, or with frames waiting to be sent, the hold runs its course."""
    now = time.monotonic()
    made.hold_until = now + made.hold_s  # just started
    assert not made._hold_ends(now, urgent=True)
    assert not made._hold_ends(now, urgent=False)
    made.hold_until = now + made.join_s / 2  # in its last third
    assert made._hold_ends(now, urgent=True)
    assert not made._hold_ends(now, urgent=False)  # the timer's own wake-up: not yet
    assert made._hold_ends(made.hold_until, urgent=False)  # its end: over in any case
    made.send_due = now + 1.0  # frames wait to be sent: the exits go after them
    assert not made._hold_ends(now, urgent=True)
    assert not made._hold_ends(made.hold_until, urgent=False)
    assert made.hold_until == made.send_due  # stretched to their send


def _exec_items(r: reader.Reader, pids: set[int]) -> dict[int, tuple[Any, ...]]:
    """The exec items of `pids` spooled, by pid."""
    return {
        ev[2]: (ev, rec, flag)
        for items in frames(r)
        for ev, rec, flag in items
        if ev is not None and ev[0] == EXEC and ev[2] in pids
    }


@pytest.mark.parametrize(
    ("asleep", "why"), [(True, reader.ARGV_LOST_ASLEEP), (False, reader.ARGV_LOST_BUSY)]
)
def test_an_exec_gone_before_its_argv_read_says_whether_we_slept(
    made: reader.Reader, asleep: bool, why: int
) -> None:
    """An exec whose process exited before its /proc read is flagged: stamped while the
    reader waited in poll (the kernel woke it too late), or while it was busy; a process
    still there is not."""
    made._read_netlink(exits=True)  # what was queued before
    before = time.monotonic_ns()
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its argv is gone before the read below
    alive = subprocess.Popen(["sleep", "30"])
    try:
        # as if the last poll ran from before both execs to now, or ended before them
        made.polled_ns, made.woke_ns = (before, time.monotonic_ns()) if asleep else (0, before)
        deadline = time.monotonic() + 10
        found: dict[int, tuple[Any, ...]] = {}
        while len(found) < 2 and time.monotonic() < deadline:
            made._read_netlink()
            found = _exec_items(made, {gone.pid, alive.pid})
    finally:
        alive.kill()
        alive.wait()
    assert found[gone.pid][2] == why
    assert found[alive.pid][2] == 0 and found[alive.pid][1] is not None


def test_an_exec_during_a_record_read_has_its_argv_read_before_the_next_record(
    made: reader.Reader, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Execs queued together: while the first one's record is read, another exec comes;
    its argv is read before the second one's record (under a storm, a record takes as
    long as a short-lived process lives), and it goes in the same frame."""
    made._read_netlink(exits=True)  # what was queued before
    queued = [_exec_and_wait(["sh", "-c", "read x", f"queued-{i}"]) for i in range(2)]
    late: list[subprocess.Popen[bytes]] = []
    late_opened: list[bool] = []  # at the second record's read: the late one's argv read?
    real_read = procfs.read_opened

    def read_opened(pid: int, *args: Any) -> dict[str, Any] | None:
        if not late and pid == queued[0].pid:  # an exec comes while this record is read
            late.append(_exec_and_wait(["sh", "-c", "read x", "during-a-record"]))
        elif late and pid == queued[1].pid:
            late_opened.append(late[0].pid in dirs_open({late[0].pid}))
        return real_read(pid, *args)

    monkeypatch.setattr(procfs, "read_opened", read_opened)
    try:
        made._read_netlink()
    finally:
        for c in queued + late:
            c.kill()
            c.wait()
    (items,) = frames(made)[-1:]
    assert _argv_of(items, late[0].pid) == ["sh", "-c", "read x", "during-a-record"]
    assert late_opened == [True], "the second record was read before the late exec's argv"
