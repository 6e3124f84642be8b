"""The process-connector parser on datagrams laid out as the kernel sends them, and
the real connector where this machine allows it."""

from __future__ import annotations

import contextlib
import os
import select
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from daemoneye.services.collector import netlink, tailprobe
from daemoneye.services.collector.netlink import (
    COMM,
    EXEC,
    EXIT,
    FORK,
    UID,
    NetlinkUnavailable,
    ProcConnector,
    parse,
)


def datagram(what: int, body: bytes, ts: int = 123) -> bytes:
    event = struct.pack("=IIQ", what, 0, ts) + body
    cn = struct.pack("=IIIIHH", netlink.CN_IDX_PROC, netlink.CN_VAL_PROC, 0, 0, len(event), 0)
    total = 16 + len(cn) + len(event)
    return struct.pack("=IHHII", total, netlink.NLMSG_DONE, 0, 0, 0) + cn + event


def test_parse_each_kind() -> None:
    (fork,) = parse(datagram(FORK, struct.pack("=4I", 10, 10, 11, 11)))
    assert (fork.what, fork.pid, fork.tid, fork.ppid, fork.is_thread) == (FORK, 11, 11, 10, False)
    (thread,) = parse(datagram(FORK, struct.pack("=4I", 10, 10, 12, 10)))
    assert thread.is_thread and thread.pid == 10
    (ex,) = parse(datagram(EXEC, struct.pack("=2I", 11, 11), ts=999))
    assert (ex.what, ex.pid, ex.timestamp_ns) == (EXEC, 11, 999)
    (uid,) = parse(datagram(UID, struct.pack("=4I", 11, 11, 1000, 0)))
    assert (uid.ruid, uid.euid) == (1000, 0)
    (comm,) = parse(datagram(COMM, struct.pack("=2I", 11, 11) + b"kworker\0".ljust(16, b"\0")))
    assert comm.comm == "kworker"
    (exit_,) = parse(datagram(EXIT, struct.pack("=6I", 11, 11, 256, 17, 10, 10)))
    assert (exit_.exit_code, exit_.exit_signal, exit_.ppid) == (256, 17, 10)
    (old_exit,) = parse(datagram(EXIT, struct.pack("=4I", 11, 11, 0, 17)))  # older kernels
    assert old_exit.ppid == 0


def test_parse_survives_garbage() -> None:
    assert parse(b"") == []
    assert parse(b"\xff" * 7) == []
    # a body too short, a kind we do not use: numbered events all the same (their seq
    # counts), of kinds the tracker ignores
    (short,) = parse(datagram(EXEC, b"\x01"))
    assert (short.what, short.pid) == (netlink.MALFORMED, 0)
    (unknown,) = parse(datagram(0x1234, b"\0" * 40))
    assert (unknown.what, unknown.pid) == (0x1234, 0)
    bad_len = bytearray(datagram(EXEC, struct.pack("=2I", 1, 1)))
    bad_len[0:4] = struct.pack("=I", 5000)
    assert parse(bytes(bad_len)) == []
    two = datagram(EXEC, struct.pack("=2I", 1, 1)) + datagram(EXEC, struct.pack("=2I", 2, 2))
    assert [e.pid for e in parse(two)] == [1, 2]


def test_parse_reads_cpu_and_sequence_number() -> None:
    data = bytearray(datagram(EXEC, struct.pack("=2I", 11, 11)))
    struct.pack_into("=I", data, 16 + 8, 4242)  # cn_msg.seq
    struct.pack_into("=I", data, 36 + 4, 3)  # proc_event.cpu
    (ev,) = parse(bytes(data))
    assert (ev.cpu, ev.seq, ev.pid) == (3, 4242, 11)


def test_real_connector_sees_fork_exec_exit() -> None:
    try:
        conn = ProcConnector()
    except NetlinkUnavailable as exc:
        pytest.skip(f"netlink process connector unavailable: {exc}")
    try:
        child = subprocess.Popen(["true"])
        child.wait()
        seen: set[int] = set()
        deadline = time.monotonic() + 10
        while seen != {FORK, EXEC, EXIT} and time.monotonic() < deadline:
            select.select([conn.fileno()], [], [], 0.2)
            events, _ = conn.read()
            seen |= {e.what for e in events if e.pid == child.pid and not e.is_thread}
        assert seen == {FORK, EXEC, EXIT}
    finally:
        conn.close()


@contextlib.contextmanager
def overrun_connector() -> Iterator[ProcConnector]:
    """A connector the kernel has overrun: ENOBUFS waits on its socket."""
    try:
        conn = ProcConnector(rcvbuf=4096)  # room for a handful of events
    except NetlinkUnavailable as exc:
        pytest.skip(f"netlink process connector unavailable: {exc}")
    try:
        for _ in range(200):  # ~600 events while nobody reads
            subprocess.run(["true"], check=False)
        yield conn
    finally:
        conn.close()


def test_overrun_is_reported_as_lost() -> None:
    with overrun_connector() as conn:
        _, overruns = conn.read()
        assert overruns >= 1 and conn.lost >= 1


def test_each_cpu_numbers_an_event_when_asked() -> None:
    """A tail loss shows only with a later number on its CPU: asked, every CPU we may
    run on numbers a COMM event of a thread of ours (which the tracker ignores)."""
    try:
        conn = ProcConnector()
    except NetlinkUnavailable as exc:
        pytest.skip(f"netlink process connector unavailable: {exc}")
    try:
        done = tailprobe.number_an_event_on_each_cpu()
        assert done == sorted(os.sched_getaffinity(0))
        ours: dict[int, int] = {}
        deadline = time.monotonic() + 10
        while set(ours) != set(done) and time.monotonic() < deadline:
            select.select([conn.fileno()], [], [], 0.2)
            for ev in conn.read()[0]:
                if ev.what == COMM and ev.pid == os.getpid():
                    assert ev.is_thread  # never a change of the process's own name
                    ours[ev.cpu] = ev.seq
        assert set(ours) == set(done)
    finally:
        conn.close()


def _read_until(conns: list[ProcConnector], done, timeout: float = 10) -> list[list]:
    got: list[list] = [[] for _ in conns]
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        select.select([c.fileno() for c in conns], [], [], 0.1)
        for out, conn in zip(got, conns, strict=True):
            out.extend(conn.read()[0])
    return got


def test_the_sockets_split_by_kind_and_together_see_every_number() -> None:
    """URGENT gets exec (uid, gid) only, EXITS exits, OTHER the rest, the answers to
    subscriptions included; every number a socket of every kind sees, one of the three
    sees."""
    try:
        urgent, other, exits = netlink.open_sockets()
    except NetlinkUnavailable as exc:
        pytest.skip(f"netlink process connector unavailable: {exc}")
    assert other is not None and exits is not None, "this kernel took no socket filter"
    every = ProcConnector()
    answer = ProcConnector()  # its subscription's answer is numbered on some CPU
    try:
        answer.close()
        pids = []
        for _ in range(40):  # some tens of ms of events
            child = subprocess.Popen(["true"])
            child.wait()
            pids.append(child.pid)
        last = pids[-1]

        def done(got: list[list]) -> bool:
            return all(any(e.pid == last and e.what == EXIT for e in g) for g in got[2:])

        u, o, x, a = _read_until([urgent, other, exits, every], done)
        u += urgent.read()[0]  # read after the others: every exec queued before theirs
        o += other.read()[0]
        assert {e.what for e in u} <= set(netlink.URGENT_KINDS) and EXEC in {e.what for e in u}
        assert {e.what for e in x} == {EXIT}
        assert not {e.what for e in o} & {*netlink.URGENT_KINDS, EXIT}
        assert {FORK, 0} <= {e.what for e in o}  # 0: an answer to a subscription
        all3 = {(e.cpu, e.seq) for e in u + o + x}
        # what `every` got well before EXITS' newest, the three got (the kernel stamps the
        # time before it queues: two CPUs' events may be queued a little out of time order)
        until = max(e.timestamp_ns for e in x) - 10_000_000
        upto = {(e.cpu, e.seq) for e in a if e.timestamp_ns <= until}
        assert len(upto) >= 20 and upto <= all3
    finally:
        for conn in (urgent, other, exits, every):
            conn.close()


def test_the_filters_read_what_where_the_kernel_puts_it() -> None:
    """A BPF absolute load reads network order: the program compares `what` as laid
    out in a datagram of this host."""
    prog = netlink.bpf_program(netlink.URGENT)
    code, _jt, _jf, k = netlink.SOCK_FILTER.unpack_from(prog, 0)
    assert (code, k) == (netlink.BPF_LD_W_ABS, netlink.HEADER_LEN)
    raw = datagram(EXEC, struct.pack("=2I", 5, 5))
    what_be = int.from_bytes(raw[netlink.HEADER_LEN : netlink.HEADER_LEN + 4], "big")
    _, jt, _, k = netlink.SOCK_FILTER.unpack_from(prog, netlink.SOCK_FILTER.size)
    assert k == what_be and jt == len(netlink.URGENT_KINDS)
