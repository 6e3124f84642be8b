"""Subscriber.accept on real encoded frames (an unconnected SUB socket: no traffic needed):
what it hands on, what it drops and counts, and its sequence checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from daemoneye import bus, wire
from daemoneye.bus import Gap, Message, Subscriber

RECORD = {"pid": 7, "name": "sh", "cmdline": ["sh", "-c", "true"]}


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def make_subscriber(context: zmq.Context) -> Iterator:
    sockets: list[zmq.Socket] = []

    def make(prefixes: list[str], gaps: list[Gap] | None = None, limit: int = 1 << 20):
        sock = context.socket(zmq.SUB)
        sockets.append(sock)
        return Subscriber(sock, prefixes, limit, gaps.append if gaps is not None else None)

    yield make
    for sock in sockets:
        sock.close(0)


def frame(seq: int, source: str = "c@h", boot: str = "b1", kind: str = "processEvent") -> bytes:
    body = {"kind": "start", "record": dict(RECORD, pid=seq)} if kind == "processEvent" else None
    return wire.encode_envelope(wire.Header(source, boot, seq, 1), kind, body)


def test_an_accepted_message_carries_topic_kind_body_and_bytes(make_subscriber) -> None:
    sub = make_subscriber(["events."])
    data = frame(1)
    msg = sub.accept([b"events.process.start", data])
    assert msg is not None
    assert (msg.topic, msg.kind, msg.size, msg.raw) == (
        "events.process.start",
        "processEvent",
        len(data),
        data,
    )
    assert msg.body.record.pid == 1
    assert (msg.envelope.sourceId, msg.envelope.bootId, msg.envelope.seq) == ("c@h", "b1", 1)
    assert (msg.source_id, msg.boot_id, msg.seq) == ("c@h", "b1", 1)
    assert sub.stats.received == 1


def test_a_message_built_by_hand_still_knows_its_kind() -> None:
    data = frame(3)
    msg = Message("events.process.start", wire.decode_envelope(data), len(data), data)
    assert msg.kind == "processEvent" and msg.body.record.pid == 3
    assert (msg.source_id, msg.boot_id, msg.seq) == ("c@h", "b1", 3)


def test_drops_are_counted_with_their_reason(make_subscriber) -> None:
    sub = make_subscriber([""], limit=4096)
    good = frame(1)
    assert sub.accept([b"events.process.start"]) is None
    assert "expected 2 frames" in sub.stats.last_drop_reason
    assert sub.accept([b"events.process.start", b"\x00" * 8000]) is None
    assert sub.stats.dropped_oversize == 1 and "exceeds 4096" in sub.stats.last_drop_reason
    assert sub.accept([b"\xff\xfe", good]) is None
    assert sub.stats.last_drop_reason == "topic is not UTF-8"
    assert sub.accept([b"events.process.start", good[:-8]]) is None
    assert "segment table" in sub.stats.last_drop_reason
    wrong = wire.Envelope.new_message(schemaVersion=99, sourceId="x", body={"empty": None})
    assert sub.accept([b"events.x", wrong.to_bytes()]) is None
    assert "schema version 99" in sub.stats.last_drop_reason
    assert sub.stats.dropped_malformed == 5 and sub.stats.received == 0
    assert sub.accept([b"events.process.start", good]) is not None  # it keeps going


def test_gaps_restarts_and_duplicates_through_accept(make_subscriber) -> None:
    gaps: list[Gap] = []
    sub = make_subscriber(["events."], gaps)
    topic = b"events.process.start"
    for seq in (1, 2, 3):
        assert sub.accept([topic, frame(seq)]) is not None
    assert sub.accept([topic, frame(3)]) is None  # a duplicate
    assert sub.accept([topic, frame(7)]) is not None
    assert gaps == [Gap("c@h", "events.process", 4, 6)]
    assert sub.accept([b"events.process.stop", frame(8)]) is not None  # same stream
    assert sub.accept([topic, frame(1, boot="b2")]) is not None  # restarted from 1
    assert sub.accept([topic, frame(1, source="other@h")]) is not None
    stats = sub.stats
    assert (stats.gaps, stats.missing, stats.duplicates, stats.restarts) == (1, 3, 1, 1)
    assert stats.received == 7


def test_streams_seen_only_in_part_are_not_gap_checked(make_subscriber) -> None:
    sub = make_subscriber(["events.process.start", "alerts."])
    for seq in (1, 5, 9):
        assert sub.accept([b"events.process.start", frame(seq)]) is not None
    assert sub.accept([b"alerts.high", frame(1, kind="empty")]) is not None
    assert sub.accept([b"alerts.high", frame(3, kind="empty")]) is not None
    assert sub.stats.gaps == 1 and sub.stats.missing == 1  # alerts.high only


def test_the_topic_memory_is_bounded(make_subscriber, monkeypatch) -> None:
    monkeypatch.setattr(bus, "MAX_KNOWN_TOPICS", 3)
    sub = make_subscriber(["events."])
    for n in range(10):  # a new topic each time, each its own source so no seq clashes
        msg = sub.accept([f"events.t{n}.x".encode(), frame(1, source=f"s{n}")])
        assert msg is not None and msg.topic == f"events.t{n}.x"
    assert len(sub._topics) == 3
    assert sub.accept([b"events.t9.x", frame(2, source="s9")]) is not None  # still checked
    assert sub.accept([b"events.t9.x", frame(2, source="s9")]) is None  # duplicate


def heartbeat(seq: int, positions: dict[str, int], source: str = "c@h", boot: str = "b1"):
    body = {"service": "collector", "serviceId": source}
    body["streams"] = [{"stream": s, "lastSeq": n} for s, n in positions.items()]
    return [
        f"control.health.heartbeat.{source}".encode(),
        wire.encode_envelope(wire.Header(source, boot, seq, 1), "heartbeat", body),
    ]


def test_a_heartbeat_reveals_a_lost_tail(context: zmq.Context) -> None:
    gaps: list[Gap] = []
    sock = context.socket(zmq.SUB)
    try:
        sub = Subscriber(sock, ["events."], 1 << 20, gaps.append, watch_tails=True)
        for seq in (1, 2):
            assert sub.accept([b"events.process.start", frame(seq)]) is not None
        # the heartbeat is read for its positions, not handed on (events. only)
        assert sub.accept(heartbeat(1, {"events.process": 2, "control.rpc": 4})) is None
        assert gaps == []
        assert sub.accept(heartbeat(2, {"events.process": 5})) is None
        assert gaps == [Gap("c@h", "events.process", 3, 5)]
        assert sub.stats.tail_gaps == 1 and sub.stats.received == 2
    finally:
        sock.close(0)


def test_heartbeats_the_prefixes_want_are_still_handed_on(context: zmq.Context) -> None:
    gaps: list[Gap] = []
    sock = context.socket(zmq.SUB)
    try:
        sub = Subscriber(sock, ["events.", "control."], 1 << 20, gaps.append, watch_tails=True)
        assert sub.accept([b"events.process.start", frame(1)]) is not None
        msg = sub.accept(heartbeat(1, {"events.process": 3}))
        assert msg is not None and msg.kind == "heartbeat"
        assert gaps == [Gap("c@h", "events.process", 2, 3)]
    finally:
        sock.close(0)


def test_without_watch_tails_heartbeats_are_plain_messages(make_subscriber) -> None:
    gaps: list[Gap] = []
    sub = make_subscriber([""], gaps)
    assert sub.accept([b"events.process.start", frame(1)]) is not None
    assert sub.accept(heartbeat(1, {"events.process": 3})) is not None
    assert gaps == []
