"""The collector's WAL: append before publish, recovery of a torn or corrupt tail,
segments, retention and replay reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemoneye.services.collector.wal import Wal


def fill(wal: Wal, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        wal.append(seq, "events.process.start", f"envelope-{seq}".encode() * 3)


def test_append_read_and_reopen_continues(tmp_path: Path) -> None:
    wal = Wal(tmp_path, segment_bytes=4096)
    fill(wal, 1, 300)
    assert len(wal.segments()) > 1, "a small segment size must rotate"
    wal.close()
    again = Wal(tmp_path, segment_bytes=4096)
    assert again.last_seq == 300 and not again.cuts
    entries = again.read(1)
    assert [e.seq for e in entries] == list(range(1, 301))
    assert entries[41].data == b"envelope-42" * 3
    assert entries[41].topic == "events.process.start"
    assert [e.seq for e in again.read(100, 110)] == list(range(100, 111))
    assert [e.seq for e in again.read(250, limit=5)] == [250, 251, 252, 253, 254]
    assert again.read(301) == []
    fill(again, 301, 305)
    assert again.read(300)[-1].seq == 305


def test_read_by_bytes_stops_one_entry_past_the_budget(tmp_path: Path) -> None:
    """A replay answer is cut by bytes; reading stops just after, so a huge WAL is not
    read and copied whole for an answer of a few entries, and the cut still shows."""
    from daemoneye.replay import answer

    wal = Wal(tmp_path, segment_bytes=1 << 20)
    for seq in range(1, 201):
        wal.append(seq, "events.process.start", bytes([seq % 251]) * 10_000)
    size = 10_000 + len("events.process.start") + 16
    entries = wal.read(1, limit=1000, max_bytes=5 * size)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6, 7]  # the 6th passes it, then one
    result = answer([(e.seq, e.topic, e.data) for e in entries], 1000, 5 * size, 1, 200)
    assert result.value["truncated"] is True and result.value["last_seq"] == 5
    # one entry larger than the budget alone: served, and the answer says more follow
    big = wal.read(7, limit=1000, max_bytes=100)
    result = answer([(e.seq, e.topic, e.data) for e in big], 1000, 100, 1, 200)
    assert len(big) == 2 and result.value["truncated"] is True and result.value["last_seq"] == 7
    # paging by the answers' own bounds gets every entry once
    seqs, from_seq = [], 1
    while True:
        page = wal.read(from_seq, limit=1000, max_bytes=7 * size)
        result = answer([(e.seq, e.topic, e.data) for e in page], 1000, 7 * size, 1, 200)
        seqs += range(result.value["first_seq"], result.value["last_seq"] + 1)
        if not result.value["truncated"]:
            break
        from_seq = result.value["last_seq"] + 1
    assert seqs == list(range(1, 201))


def test_seq_must_grow(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    fill(wal, 1, 3)
    with pytest.raises(ValueError, match="seq must grow: 3 after 3"):
        wal.append(3, "events.process.stop", b"x")


def batch(first: int, last: int) -> list[tuple[int, str, bytes]]:
    return [
        (seq, "events.process.stop", f"envelope-{seq}".encode() * 3)
        for seq in range(first, last + 1)
    ]


def test_append_many_writes_the_records_append_writes(tmp_path: Path) -> None:
    one, many = Wal(tmp_path / "one"), Wal(tmp_path / "many")
    for seq, topic, data in batch(1, 20):
        one.append(seq, topic, data)
    many.append_many(batch(1, 5))
    many.append_many(batch(6, 6))
    many.append_many(batch(7, 20))
    one.close()
    many.close()
    assert newest(tmp_path / "many").read_bytes() == newest(tmp_path / "one").read_bytes()
    again = Wal(tmp_path / "many")
    assert again.last_seq == 20 and again.appended == 0 and not again.cuts
    with pytest.raises(ValueError, match="seq must grow: 20 after 20"):
        again.append_many(batch(20, 21))


def test_append_many_across_a_segment_limit_rotates(tmp_path: Path) -> None:
    wal = Wal(tmp_path, segment_bytes=4096)
    for first in range(1, 300, 50):
        wal.append_many(batch(first, first + 49))
    assert len(wal.segments()) > 1 and wal.appended == 300
    assert all(p.stat().st_size <= 4096 for _, p in wal.segments())
    assert [e.seq for e in wal.read(1)] == list(range(1, 301))


def test_a_torn_batch_is_cut_to_its_whole_records(tmp_path: Path) -> None:
    """A crash in the middle of one batch's write: the records before the tear stay."""
    wal = Wal(tmp_path)
    wal.append_many(batch(1, 10))
    wal.close()
    seg = newest(tmp_path)
    os.truncate(seg, seg.stat().st_size - 40)  # the last record loses its end
    again = Wal(tmp_path)
    assert again.last_seq == 9 and len(again.cuts) == 1 and "torn" in again.cuts[0].reason
    again.append_many(batch(10, 12))
    assert [e.seq for e in again.read(1)] == list(range(1, 13))


def newest(path: Path) -> Path:
    return sorted(path.glob("*.wal"))[-1]


def test_torn_tail_is_cut_and_reported(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    fill(wal, 1, 10)
    wal.close()
    seg = newest(tmp_path)
    size = seg.stat().st_size
    os.truncate(seg, size - 5)  # the last record loses its end, as in a crash mid-write
    again = Wal(tmp_path)
    assert again.last_seq == 9
    assert len(again.cuts) == 1 and "torn" in again.cuts[0].reason
    assert again.cuts[0].bytes_cut > 0
    fill(again, 10, 12)  # seq 10 was never durable, so it may be written anew
    assert [e.seq for e in again.read(1)] == list(range(1, 13))


def test_corrupt_record_cuts_from_there(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    fill(wal, 1, 10)
    wal.close()
    seg = newest(tmp_path)
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    again = Wal(tmp_path)
    assert 0 < again.last_seq < 10
    assert again.cuts, "the corruption must be reported"
    assert [e.seq for e in again.read(1)] == list(range(1, again.last_seq + 1))


def test_garbage_tail(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    fill(wal, 1, 4)
    wal.close()
    with open(newest(tmp_path), "ab") as f:
        f.write(b"\xde\xad\xbe\xef" * 50)
    again = Wal(tmp_path)
    assert again.last_seq == 4
    assert again.cuts[0].bytes_cut == 200


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=300))
def test_any_garbage_tail_never_fails_open(
    tmp_path_factory: pytest.TempPathFactory, garbage: bytes
) -> None:
    path = tmp_path_factory.mktemp("wal")
    wal = Wal(path)
    fill(wal, 1, 3)
    wal.close()
    with open(newest(path), "ab") as f:
        f.write(garbage)
    again = Wal(path)
    assert again.last_seq >= 3
    assert [e.seq for e in again.read(1)][:3] == [1, 2, 3]


def test_empty_leftover_segment_is_ignored(tmp_path: Path) -> None:
    wal = Wal(tmp_path)
    fill(wal, 1, 5)
    wal.close()
    (tmp_path / f"{6:020d}.wal").write_bytes(b"")
    again = Wal(tmp_path)
    assert again.last_seq == 5


def test_retention_by_size_and_age(tmp_path: Path) -> None:
    wal = Wal(tmp_path, segment_bytes=4096, max_bytes=1 << 30, max_age_s=3600)
    fill(wal, 1, 500)
    count = len(wal.segments())
    assert count > 3
    assert wal.enforce_limits() == 0
    wal.max_bytes = 3 * 4096
    removed = wal.enforce_limits()
    assert removed > 0 and len(wal.segments()) == count - removed
    assert wal.first_seq > 1
    assert wal.read(1)[0].seq == wal.first_seq  # the oldest kept is served
    wal.max_bytes = 1 << 30
    import time

    before = len(wal.segments())
    assert wal.enforce_limits(now=time.time() + 7200) == before - 1
    assert len(wal.segments()) == 1  # never the segment being written
    fill(wal, 501, 502)
    assert wal.read(500)[-1].seq == 502


def test_fsync_always(tmp_path: Path) -> None:
    wal = Wal(tmp_path, fsync="always")
    fill(wal, 1, 3)
    assert Wal(tmp_path).last_seq == 3
