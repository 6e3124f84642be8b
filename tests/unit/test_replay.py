"""daemoneye.replay without sockets: request checking, answers cut by count and bytes,
stream cursors (first sight, commit and restore, resume into sequence checking) and
their round trip through a real RocksDB store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemoneye import wire
from daemoneye.bus import Gap, SequenceTracker
from daemoneye.replay import (
    Intake,
    ReplayRequestError,
    StreamCursors,
    answer,
    load_cursors,
    parse_request,
    put_cursors,
    service_target,
)
from daemoneye.store import Store


def envelope(source: str, seq: int, boot: str = "b1") -> object:
    header = wire.Header(source, boot, seq, time.time_ns())
    return wire.decode_envelope(wire.encode_envelope(header, "heartbeat", {"service": "x"}))


def test_service_target_names_the_source_service() -> None:
    assert service_target("collector@h") == "control.collector.collector@h"
    assert service_target("detector@h.example") == "control.detector.detector@h.example"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"from_seq": -1}, "from_seq must be a non-negative integer"),
        ({"from_seq": True}, "from_seq must be a non-negative integer"),
        ({"from_seq": "1"}, "from_seq must be a non-negative integer"),
        ({"from_seq": 1, "to_seq": 2.5}, "to_seq must be a non-negative integer"),
        ({"from_seq": 1, "limit": -5}, "limit must be a non-negative integer"),
        ({"from_seq": 1, "stream": 7}, "stream must be a string"),
        ({}, "from_seq must be a non-negative integer, not None"),
    ],
)
def test_bad_requests_name_the_param(params: dict, error: str) -> None:
    with pytest.raises(ReplayRequestError, match=error):
        parse_request(params, 100)


def test_request_limit_is_capped() -> None:
    req = parse_request({"from_seq": 3, "limit": 10**9, "stream": "alerts.high"}, 100)
    assert (req.stream, req.from_seq, req.to_seq, req.limit) == ("alerts.high", 3, None, 100)


def test_answer_cuts_by_limit_and_by_bytes() -> None:
    entries = [(s, "alerts.low", b"x" * 100) for s in range(5, 16)]  # 11 read for limit 10
    full = answer(entries, 10, 1 << 20, 1, 20)
    assert full.value["first_seq"] == 5 and full.value["last_seq"] == 14
    assert full.value["truncated"] is True and len(full.payloads) == 10
    assert (full.value["wal_first_seq"], full.value["wal_last_seq"]) == (1, 20)
    cut = answer(entries[:3], 10, 300, 1, 20)  # two fit in 300 bytes (126 each)
    assert cut.value["topics"] == ["alerts.low"] * 2 and cut.value["truncated"] is True
    one = answer(entries[:1], 10, 10, 1, 20)  # the first always goes, whatever its size
    assert len(one.payloads) == 1 and one.value["truncated"] is False
    empty = answer([], 10, 100, 0, 0)
    assert empty.value["first_seq"] == 0 and empty.payloads == []


def test_cursors_note_take_restore_and_first_gap() -> None:
    cursors = StreamCursors(lambda stream: stream == "alerts.low")
    cursors.note("alerts.low", envelope("d@h", 4))
    cursors.note("alerts.high", envelope("d@h", 9))  # not a tracked stream
    cursors.note("alerts.low", envelope("d@h", 5))
    taken = cursors.take()
    assert taken == {("d@h", "alerts.low"): ("b1", 5)} and cursors.pending == {}
    cursors.note("alerts.low", envelope("d@h", 6))
    cursors.restore(taken)  # a failed commit: the newer cursor wins
    assert cursors.pending == {("d@h", "alerts.low"): ("b1", 6)}
    assert cursors.first_gap("alerts.low", envelope("e@h", 7)) == Gap("e@h", "alerts.low", 1, 6)
    assert cursors.first_gap("alerts.low", envelope("e@h", 8)) is None  # seen now
    assert cursors.first_gap("alerts.low", envelope("f@h", 1)) is None  # from the start
    assert cursors.first_gap("alerts.high", envelope("g@h", 5)) is None  # not tracked


def test_cursors_round_trip_a_store_and_resume_sequence_checking(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    batch = store.batch()
    put_cursors(
        batch, {("collector@h", "events.process"): ("boot", 41), ("d@h", "alerts.x"): ("b", 2)}
    )
    store.write(batch)
    store.put(b"c/broken\0events.process", b"not json")
    loaded = sorted(load_cursors(store))
    assert loaded == [("collector@h", "events.process", "boot", 41), ("d@h", "alerts.x", "b", 2)]
    gaps: list[Gap] = []
    tracker = SequenceTracker(("events.process.",), gaps.append)
    cursors = StreamCursors(lambda stream: stream == "events.process")
    assert cursors.resume(tracker, loaded) == 2
    assert ("collector@h", "events.process") in cursors.known
    # what was sent while down shows as a gap on the first message after it
    tracker.check("events.process.start", "collector@h", "boot", 50)
    assert gaps == [Gap("collector@h", "events.process", 42, 49)]
    # a message already taken in before the restart is a duplicate
    assert tracker.check("events.process.start", "collector@h", "boot", 50) is False
    store.close()


def test_intake_without_a_replayer_reports_what_it_cannot_repair() -> None:
    """Before connect() (or in a unit test) a gap is missing, said once, not a crash."""
    delivered: list[int] = []
    missing: list[tuple[str, int, int]] = []
    intake = Intake(
        lambda stream: stream == "events.process",
        lambda _topic, env, _data: delivered.append(env.seq),
        lambda gap, first, last: missing.append((gap.source_id, first, last)),
    )
    assert intake.repair(Gap("c@h", "events.process", 3, 9)) is False
    intake.catch_up("events.process.start", envelope("c@h", 5))  # joined late: 1-4 missed
    intake.catch_up("events.process.start", envelope("c@h", 6))  # known now
    intake.catch_up("alerts.high", envelope("d@h", 5))  # not a tracked stream
    assert missing == [("c@h", 3, 9), ("c@h", 1, 4)] and delivered == []
    assert intake.metrics("x") == {"x.replays": 0, "x.replayed": 0, "x.replay_missing": 0}
    assert intake.resume(None, [("c@h", "events.process", "b1", 7)]) == 1
    assert intake.cursors.first_gap("events.process.start", envelope("c@h", 9)) is None
