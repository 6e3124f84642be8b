"""The main takes the reader's frames at once after a quiet spell; when they come
faster than one per gather_ms, it takes them every gather_ms (one wake-up for several
execs) and watches the reader's socket again once a look finds nothing. Its tick sleeps
while nothing waits for it (no fork pending, every frame acked) and a frame wakes it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from daemoneye import procfs
from daemoneye.bus import Publisher
from daemoneye.config import Settings
from daemoneye.services.collector import reader
from daemoneye.services.collector.netlink import EXEC
from daemoneye.services.collector.realtime import Link, RealtimeSource
from daemoneye.services.collector.service import IDLE_TICK_S, TICK_S, Collector
from daemoneye.services.collector.tracker import Tracker
from daemoneye.services.collector.wal import Wal
from tests.conftest import work_for

pytestmark = pytest.mark.skipif(not procfs.IS_LINUX, reason="reads Linux /proc")


@pytest.fixture
def wired(settings: Settings, tmp_path: Path) -> Iterator[tuple[Collector, socket.socket]]:
    """A collector whose reader is the other end of a socket pair (the test sends frames)."""
    c = Collector(settings)
    c.cfg = c.cfg.model_copy(update={"gather_ms": 10.0})
    pub = c.factory.bind(zmq.PUB, f"inproc://gather-{id(c)}")  # nobody listens: the WAL tells
    c.publisher = Publisher(pub, c.service_id, c.boot_id)
    c.wal = Wal(tmp_path / "wal")
    c.tracker = Tracker()
    mine, theirs = socket.socketpair()
    theirs.setblocking(False)
    c.realtime = RealtimeSource(tmp_path / "reader.sock")
    c.realtime.links.append(Link(theirs))
    mine.sendall(reader.pack(("H", {"protocol": 2, "fields": procfs.FIELDS})))
    c._reader_fd = c.realtime.wake_fd
    c._watch_reader()
    c.monitoring = True
    yield c, mine
    mine.close()
    c.realtime.close()
    c.wal.close()
    c.factory.close_all(linger_ms=0)


def send_exec(sock: socket.socket, n: int) -> None:
    rec = procfs.read_process(os.getpid())
    assert rec is not None
    rec["pid"] = rec["startTicks"] = 50_000 + n  # a process of its own each time
    ev = (EXEC, n, rec["pid"], rec["pid"], 0, -1, -1, 0, 0, "", 0, n)
    sock.sendall(reader.pack(("F", n, 0, [(ev, tuple(rec.values()), 0)])))


def logged(c: Collector) -> int:
    """Starts published (each after its WAL entry)."""
    return c.published["start"]


def gather_timers(c: Collector) -> int:
    return sum(1 for t in c._timers if t.fn == c._on_gathered)


def test_a_frame_after_quiet_is_taken_at_once_then_frames_are_gathered(
    wired: tuple[Collector, socket.socket],
) -> None:
    c, sock = wired
    fd = c._reader_fd
    assert c._watched.get(fd) == c._on_reader_ready
    send_exec(sock, 1)
    c._on_reader_ready()
    assert logged(c) == 1, "a lone exec waits for nothing"
    assert c._watched.get(fd) == c._on_reader_ready and gather_timers(c) == 0
    send_exec(sock, 2)
    c._last_ready = time.monotonic() + 3600  # as if the last frame came just now
    c._on_reader_ready()
    assert logged(c) == 2, "nor does one that comes soon after"
    assert fd not in c._watched and gather_timers(c) == 1, "but the next are gathered"
    send_exec(sock, 3)
    send_exec(sock, 4)
    assert logged(c) == 2  # nothing wakes the loop for these
    c._timers.clear()
    c._on_gathered()
    assert logged(c) == 4
    assert fd not in c._watched and gather_timers(c) == 1, "more came: gather again"
    c._timers.clear()
    c._on_gathered()  # nothing came since
    assert logged(c) == 4
    assert c._watched.get(fd) == c._on_reader_ready and gather_timers(c) == 0


def test_the_next_take_is_due_gather_ms_after_the_last_take_not_after_its_work(
    wired: tuple[Collector, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work that outlasts gather_ms (a storm's frames): the frames that came meanwhile
    have waited that long already, so the next take is due at once, not a gather_ms
    after the work ended."""
    c, sock = wired
    take = c._on_realtime

    def take_then_work() -> int:
        taken = take()
        work_for(2 * c.cfg.gather_ms / 1000)  # a long take's work
        return taken

    monkeypatch.setattr(c, "_on_realtime", take_then_work)

    def due() -> float:
        (timer,) = [t for t in c._timers if t.fn == c._on_gathered]
        return timer.due

    send_exec(sock, 1)
    c._last_ready = time.monotonic() + 3600  # as if the last frame came just now
    c._on_reader_ready()
    assert due() <= time.monotonic(), "the take after a woken one"
    send_exec(sock, 2)
    c._timers.clear()
    c._on_gathered()
    assert logged(c) == 2
    assert due() <= time.monotonic(), "the take after a gathered one"


def test_gather_ms_0_takes_every_frame_at_once(wired: tuple[Collector, socket.socket]) -> None:
    c, sock = wired
    c.cfg = c.cfg.model_copy(update={"gather_ms": 0.0})
    send_exec(sock, 1)
    c._last_ready = time.monotonic() + 3600
    c._on_reader_ready()
    assert logged(c) == 1
    assert c._watched.get(c._reader_fd) == c._on_reader_ready and gather_timers(c) == 0


def test_the_tick_sleeps_while_nothing_waits_and_a_frame_wakes_it(
    wired: tuple[Collector, socket.socket],
) -> None:
    c, sock = wired
    timer = c._tick_timer = c.every(TICK_S, c._tick)
    c._next_scan = c._next_retention = time.monotonic() + 3600

    def tick() -> float:
        """One tick as the loop runs it; how long until the next."""
        timer.due = time.monotonic() + TICK_S
        c._tick()
        return timer.due - time.monotonic()

    send_exec(sock, 1)
    c._on_realtime()
    assert logged(c) == 1
    assert tick() <= TICK_S, "a frame not acked yet: the tick stays"
    t = time.monotonic()
    c._ack(t + 1)  # the frame is marked, then acked once the WAL surely has it
    c._ack(t + 2)
    assert c.realtime is not None and c.realtime.all_acked()
    assert c.realtime.due_ack(t + 3, 0.0, c.kseq.state) == (0, None), "nothing new: no ack"
    assert tick() <= TICK_S, "a CPU first seen: the next settles still decide"
    c.kseq.settle(t + 1)
    c.kseq.settle(t + 2)
    assert tick() > TICK_S * 5, "nothing waits: the tick sleeps"
    assert tick() <= IDLE_TICK_S
    send_exec(sock, 2)
    c._on_realtime()
    assert timer.due - time.monotonic() <= TICK_S, "a frame wakes it"
