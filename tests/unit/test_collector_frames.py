"""The reader's frames as the main takes them: a record sent as its values (protocol 2)
comes out as the dict a protocol-1 reader sends, keys named by the hello."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from daemoneye import procfs
from daemoneye.services.collector import netlink, reader
from daemoneye.services.collector.netlink import EXEC, FORK, parse, parse_tuples
from daemoneye.services.collector.realtime import Item, Link

pytestmark = pytest.mark.skipif(not procfs.IS_LINUX, reason="reads Linux /proc")


def test_a_record_has_its_keys_in_fields_order() -> None:
    rec = procfs.read_process(os.getpid())
    assert rec is not None
    assert tuple(rec) == procfs.FIELDS  # so its values alone say which is which


def test_values_and_dict_records_come_out_the_same() -> None:
    rec = procfs.read_process(os.getpid())
    assert rec is not None
    ev = (EXEC, 5, os.getpid(), os.getpid(), 0, -1, -1, 0, 0, "", 1, 7)
    mine, theirs = socket.socketpair()
    theirs.setblocking(False)
    try:
        link = Link(theirs)
        mine.sendall(reader.pack(("H", {"protocol": 2, "fields": procfs.FIELDS})))
        mine.sendall(reader.pack(("F", 1, 0, [(ev, tuple(rec.values()), 0)])))
        mine.sendall(reader.pack(("F", 2, 0, [(ev, rec, 0)])))  # protocol 1: a dict
        out: list[Item] = []
        link.take(out)
    finally:
        mine.close()
        theirs.close()
    assert [item.record for item in out] == [rec, rec]
    assert out[0].event is not None and out[0].event.pid == os.getpid()
    assert link.taken_n == 2


def test_tuples_are_the_events_fields_in_order() -> None:
    def datagram(what: int, body: bytes) -> bytes:
        event = struct.pack("=IIQ", what, 3, 99) + body
        cn = struct.pack("=IIIIHH", netlink.CN_IDX_PROC, netlink.CN_VAL_PROC, 41, 0, len(event), 0)
        return struct.pack("=IHHII", 16 + len(cn) + len(event), netlink.NLMSG_DONE, 0, 0, 0) + (
            cn + event
        )

    data = datagram(FORK, struct.pack("=4I", 10, 10, 11, 11)) + datagram(
        EXEC, struct.pack("=2I", 11, 11)
    )
    fields = ("what", "timestamp_ns", "pid", "tid", "ppid", "ruid", "euid")
    fields += ("exit_code", "exit_signal", "comm", "cpu", "seq")
    as_events = [tuple(getattr(ev, f) for f in fields) for ev in parse(data)]
    assert parse_tuples(data) == as_events
    assert [t[0] for t in as_events] == [FORK, EXEC] and as_events[0][10:] == (3, 41)
