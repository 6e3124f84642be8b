"""The netlink reader's datagram loop compiled (daemoneye._procread `take`) against its
Python (reader.Reader._take, the reference): the same datagrams peeked, journaled, parsed
and consumed, the same items, the same exec directories opened with the same argv, the
same stop. Datagrams of any bytes come through a unix datagram socket (the kernel's
netlink sends only well-formed ones); the overrun through a real, starved connector."""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemoneye import procfs
from daemoneye.services.collector import netlink, reader
from daemoneye.services.collector.netlink import (
    COMM,
    EXEC,
    EXIT,
    FORK,
    GID,
    UID,
)
from tests.compiled import assert_built, heap_kept
from tests.unit.test_collector_netlink import overrun_connector

compiled = pytest.mark.skipif(
    reader._COMPILED_TAKE is None, reason="daemoneye._procread not built: the Python loop runs"
)
KINDS = [FORK, EXEC, EXIT, UID, GID, COMM, 0x8, 0x0, netlink.MALFORMED]
LIVE = os.getpid()


class Conn:
    """What _take uses of a ProcConnector: its socket and its overrun count."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lost = 0


class Bare(reader.Reader):
    """A Reader with only what _take touches: its scratch buffer and journal."""

    def __init__(self) -> None:  # no sockets, no spare: _take alone
        self.journal = mmap.mmap(-1, reader.JOURNAL_BYTES)
        self.journal_used = 0
        self._scratch = bytearray(reader.DATAGRAM_MAX)
        self._scratch_view = memoryview(self._scratch)


def message(what: int, body: bytes, seq: int, ts: int, cpu: int = 0, kind: int = 3) -> bytes:
    event = struct.pack("=IIQ", what, cpu, ts) + body
    cn = struct.pack("=IIIIHH", netlink.CN_IDX_PROC, netlink.CN_VAL_PROC, seq, 0, len(event), 0)
    return struct.pack("=IHHII", 16 + len(cn) + len(event), kind, 0, 0, 0) + cn + event


pids = st.sampled_from([LIVE, 1, 0, 2**31 - 1, 4_000_000]) | st.integers(0, 2**32 - 1)
u32 = st.integers(0, 2**32 - 1)


@st.composite
def messages(draw: Any) -> bytes:
    what = draw(st.sampled_from(KINDS) | u32)
    pid, tgid = draw(pids), draw(st.sampled_from([None]) | pids)
    tgid = pid if tgid is None else tgid
    if what == COMM:
        name = draw(st.binary(max_size=16) | st.sampled_from([b"sh", b"a\0b", b"\xff\xfe"]))
        body = struct.pack("=2I", pid, tgid) + name.ljust(16, b"\0")
    else:  # an exit's 8 bytes more: the parent (kernels since 2019)
        more = draw(st.sampled_from([b"", b"\1\0\0\0\2\0\0\0"]) | st.binary(max_size=8))
        body = struct.pack("=4I", pid, tgid, draw(u32), draw(u32)) + more
    if draw(st.integers(0, 3)) == 0:
        body = body[: draw(st.integers(0, len(body)))]  # a body cut short
    kind = draw(st.sampled_from([3, 3, 3, netlink.NLMSG_ERROR]))
    return message(what, body, draw(u32), draw(st.integers(0, 2**64 - 1)), draw(u32), kind)


@st.composite
def datagrams(draw: Any) -> bytes:
    data = b"".join(draw(st.lists(messages(), min_size=1, max_size=3)))
    if draw(st.integers(0, 9)) == 0:  # damaged: any bytes changed, or cut anywhere
        raw = bytearray(data)
        for at in draw(st.lists(st.integers(0, len(raw) - 1), max_size=4)):
            raw[at] = draw(st.integers(0, 255))
        data = bytes(raw[: draw(st.integers(0, len(raw)))])
    return data


# every kind, whole and cut short, in a datagram each and two in one
KNOWN = [
    message(FORK, struct.pack("=4I", 1, 1, LIVE + 1, LIVE + 1), 1, 1),
    message(EXEC, struct.pack("=2I", LIVE, LIVE), 2, 2),
    message(EXEC, struct.pack("=2I", LIVE, LIVE)[:6], 3, 3),
    message(EXEC, struct.pack("=2I", LIVE + 1, LIVE), 3, 3),  # a thread's: the process read
    message(UID, struct.pack("=4I", LIVE, LIVE, 0, 1000), 4, 4),
    message(GID, struct.pack("=4I", LIVE + 1, LIVE, 0, 1000), 5, 5),  # a thread's
    message(COMM, struct.pack("=2I", LIVE, LIVE) + b"a\0b".ljust(16, b"\0"), 6, 6),
    message(COMM, struct.pack("=2I", LIVE, LIVE) + b"\xffsixteen-bytes!", 7, 7),
    message(EXIT, struct.pack("=6I", LIVE, LIVE, 256, 17, 1, 77), 8, 8)
    + message(EXIT, struct.pack("=4I", LIVE, LIVE, 9, 0), 9, 10),
    message(0x8, b"", 10, 11) + message(EXIT, b"", 11, 12, kind=netlink.NLMSG_ERROR),
]


@contextlib.contextmanager
def datagram_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, theirs): what is sent on ours waits on theirs (non-blocking, as a connector's)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.setblocking(False)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def run_take(
    compiled_loop: bool,
    sent: list[bytes],
    urgent: bool,
    limit: int,
    until: int,
    journal_room: int,
) -> dict[str, Any]:
    """One _take over the datagrams `sent`; what it returned, gathered and left."""
    saved = reader._COMPILED_TAKE
    r = Bare()
    with datagram_pair() as (ours, theirs):
        for data in sent:
            ours.send(data)
        filler = b"x" * max(0, reader.JOURNAL_BYTES - 4 - 4 - journal_room)
        if filler:
            assert r._journal_add(filler)
        items: list[Any] = []
        opened: list[Any] | None = [] if urgent else None
        conn = Conn(theirs)
        try:
            if not compiled_loop:
                reader._COMPILED_TAKE = None
            n, stamp = r._take(conn, items, limit, until, opened)  # type: ignore[arg-type]
        finally:
            reader._COMPILED_TAKE = saved
        left = []
        while True:
            try:
                left.append(theirs.recv(reader.DATAGRAM_MAX))
            except BlockingIOError:
                break
        argv = []
        for at, dfd, args in opened or []:
            argv.append((at, dfd is None, args))
            if dfd is not None:
                os.close(dfd)
        return {
            "n": n,
            "stamp": stamp if left else "empty",  # else the clock's time, which differs
            "items": items,
            "opened": argv,
            "journal": bytes(r.journal[: 4 + r.journal_used]),
            "used": r.journal_used,
            "lost": conn.lost,
            "left": left,
        }


def test_the_compiled_loop_is_built_where_a_compiler_is() -> None:
    assert_built(procfs.IMPLEMENTATION, "daemoneye._procread", "the Python loop")


@compiled
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sent=st.lists(datagrams(), min_size=0, max_size=6),
    urgent=st.booleans(),
    limit=st.sampled_from([8]) | st.integers(0, 8),  # mostly: all of them taken
    until=st.sampled_from([2**64 - 1]) | st.integers(0, 2**64 - 1),
    journal_room=st.sampled_from([reader.JOURNAL_BYTES, 600, 200, 0]),
)
@example(sent=KNOWN, urgent=True, limit=8, until=0, journal_room=reader.JOURNAL_BYTES)
@example(sent=KNOWN, urgent=False, limit=8, until=9, journal_room=reader.JOURNAL_BYTES)
@example(sent=KNOWN, urgent=True, limit=2, until=0, journal_room=200)
def test_any_datagrams_are_taken_the_same(
    sent: list[bytes], urgent: bool, limit: int, until: int, journal_room: int
) -> None:
    python = run_take(False, sent, urgent, limit, until, journal_room)
    native = run_take(True, sent, urgent, limit, until, journal_room)
    assert native == python


@compiled
def test_an_exec_of_a_live_process_has_its_directory_and_argv() -> None:
    """The directory opened is the process's own (a read through it gives its record)."""
    child = subprocess.Popen(["sleep", "30.5"])
    try:
        exec_of = message(EXEC, struct.pack("=2I", child.pid, child.pid), 1, 5)
        gone = message(EXEC, struct.pack("=2I", 2**31 - 2, 2**31 - 2), 2, 6)
        ids = message(UID, struct.pack("=4I", child.pid + 1, child.pid, 0, 0), 3, 7)  # a thread
        for compiled_loop in (True, False):
            result = run_take(compiled_loop, [exec_of, gone, ids], True, 8, 0, 1 << 20)
            assert result["opened"] == [(0, False, ["sleep", "30.5"]), (1, True, None)]
            assert [item[0][0] for item in result["items"]] == [EXEC, EXEC, UID]
        with datagram_pair() as (ours, theirs):
            ours.send(exec_of)
            r, items, opened = Bare(), [], []
            r._take(Conn(theirs), items, 8, 0, opened)  # type: ignore[arg-type]
            ((_, dfd, argv),) = opened
            record = procfs.read_opened(child.pid, dfd, argv)
            assert record is not None and record["pid"] == child.pid
            assert record["cmdline"] == ["sleep", "30.5"]
    finally:
        child.kill()
        child.wait()


@compiled
def test_a_starved_connector_s_overrun_is_counted_and_marked() -> None:
    """ENOBUFS: the kernel dropped datagrams. A loss marker in the frame, the connector's
    count up, and the loop goes on with what is queued."""
    with overrun_connector() as conn:
        r, items = Bare(), []
        n, _ = r._take(conn, items, 10_000, 2**64 - 1, None)
        assert conn.lost >= 1
        assert (None, None, 1) in items
        assert n >= 1 and any(item[0] is not None for item in items)


@compiled
def test_the_loop_keeps_no_memory() -> None:
    data = message(EXEC, struct.pack("=2I", LIVE, LIVE), 1, 5) + message(
        COMM, struct.pack("=2I", LIVE, LIVE) + b"name\0".ljust(16, b"\0"), 2, 6
    )
    with datagram_pair() as (ours, theirs):
        r, conn = Bare(), Conn(theirs)

        def step() -> None:
            ours.send(data)
            items: list[Any] = []
            opened: list[Any] = []
            r._take(conn, items, 8, 0, opened)  # type: ignore[arg-type]
            for _, dfd, _argv in opened:
                os.close(dfd)
            r._journal_clear()

        assert heap_kept(step, 3000) < 16 << 10


@compiled
def test_bad_arguments_are_refused() -> None:
    take = reader._COMPILED_TAKE
    assert take is not None
    with pytest.raises(TypeError):
        take(0, None, bytearray(reader.DATAGRAM_MAX), bytearray(8), 1, 0, [])
    with pytest.raises(TypeError):
        take(0, None, bytearray(reader.DATAGRAM_MAX), bytearray(8), 1, 0, (), None)
    with pytest.raises(ValueError):
        take(0, None, bytearray(16), bytearray(8), 1, 0, [], None)
    with pytest.raises(BufferError):
        take(0, None, b"immutable" * 10_000, bytearray(8), 1, 0, [], None)
