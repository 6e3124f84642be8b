"""The two writers that must survive a full disk, each on a tiny tmpfs the test fills:
the collector's WAL (a failed append leaves no partial record and the log accepts
appends again once there is room) and the ledger's writer (a failed commit keeps
every pending entry and writes them all, chain intact, once there is room)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemoneye.ledger.store import LedgerStore, LedgerWriter, open_store
from daemoneye.ledger.verify import verify_ledger
from daemoneye.services.collector.wal import Wal
from daemoneye.store import StoreError
from tests.tmpfs import fill

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs"),
]


def test_wal_append_on_a_full_disk_leaves_no_partial_record(small_fs: Path) -> None:
    wal = Wal(small_fs / "wal", segment_bytes=1 << 20)
    for seq in range(1, 4):
        wal.append(seq, "events.process.start", b"x" * 100)
    segment = wal.segments()[-1][1]
    before = segment.read_bytes()
    filler = fill(small_fs)
    with pytest.raises(OSError):
        for seq in range(4, 10_000):  # the page cache may hold a few more first
            wal.append(seq, "events.process.start", b"y" * 3000)
    failed_at = wal.last_seq + 1
    assert wal.write_errors == 1
    filler.unlink()
    wal.append(failed_at + 1, "events.process.start", b"after")  # the failed seq is skipped
    wal.close()
    again = Wal(small_fs / "wal")
    try:
        assert not again.cuts, again.cuts
        got = again.read(0, None, 1 << 20)
        assert segment.read_bytes().startswith(before)
        assert [e.seq for e in got] == [*range(1, failed_at), failed_at + 1]
        assert got[-1].data == b"after"
    finally:
        again.close()


def test_ledger_commit_on_a_full_disk_keeps_everything_pending(small_fs: Path) -> None:
    ledger = LedgerStore(open_store(small_fs / "db"))
    writer = LedgerWriter(ledger, sync=True)
    for i in range(10):
        writer.append("tester", "before", f"entry {i}".encode())
    assert writer.commit() == 10
    filler = fill(small_fs)
    for i in range(10):
        writer.append("tester", "during", b"z" * 20_000 + bytes([i]))
    with pytest.raises(StoreError):
        for _ in range(50):  # RocksDB's log may take a batch or two into its buffer
            writer.append("tester", "during", b"z" * 50_000)
            writer.commit()
    size = writer.size
    assert writer.pending > 0 and writer.durable_size < size
    with pytest.raises(StoreError, match="still no space"):
        writer.commit()  # no reopen attempt while the disk is still full
    filler.unlink()
    assert writer.commit() == size  # reopened, and everything pending written
    root = writer.root()
    ledger.close()
    reread = LedgerStore(open_store(small_fs / "db", read_only=True))
    try:
        assert reread.size() == size
        assert reread.root(size) == root
        assert verify_ledger(reread, None).ok
    finally:
        reread.close()
