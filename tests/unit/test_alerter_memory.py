"""The alerter's memory stays bounded: its block cache does not keep the blocks of SST
files that compaction deleted, and its dedup state empties once the windows end.

bench/alerter_memory.py measures the RSS figure; these catch the causes cheaply.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemoneye import store as store_module
from daemoneye import wire
from daemoneye.bus import Message
from daemoneye.services.alerter.dedup import Deduper
from daemoneye.services.alerter.delivery_db import DEDUP, DeliveryStore
from daemoneye.services.alerter.service import Alerter
from tests.conftest import close_in_process
from tests.unit.test_alerter_service import make_alerter

RECORD = b'{"ruleId":"r","process":{"exePath":"/usr/bin/true","cmdline":["%d"]}}' + b" " * 900


def cache_after_compactions(data_dir: Path, rounds: int) -> tuple[int, int]:
    """(block-cache bytes, live SST bytes) after `rounds` of what the alerter does over
    minutes: records stored pending with their dedup windows, delivered, flushed, and
    compacted (each compaction rewrites the whole file, leaving the old one obsolete)."""
    store = DeliveryStore(data_dir)
    try:
        db = store.store.db
        for _ in range(rounds):
            keys = [store.next_key() for _ in range(2000)]
            store.add(
                [(k, RECORD % k, ["file"]) for k in keys], None, {k >> 8: (k, k) for k in keys}
            )
            store.delivered("file", keys)
            store.store.flush()
            db.compact_range(None, None)
        usage = db.property_int_value("rocksdb.block-cache-usage") or 0
        return usage, db.property_int_value("rocksdb.live-sst-files-size") or 0
    finally:
        store.close()


def test_the_block_cache_is_small(tmp_path: Path) -> None:
    """Index partitions of every SST file written fill the cache up to its capacity
    (records are read back rarely): that capacity is the alerter's ceiling."""
    store = DeliveryStore(tmp_path)
    try:
        capacity = store.store.db.property_int_value("rocksdb.block-cache-capacity")
        assert capacity == store_module.SMALL_BLOCK_CACHE_BYTES
    finally:
        store.close()


def test_blocks_of_deleted_sst_files_leave_the_block_cache(tmp_path: Path) -> None:
    usage, live = cache_after_compactions(tmp_path / "on", 8)
    assert live > 0
    # What stays cached is the live file's index (a few % of its size); every dead
    # file's index kept (LRU alone) was ~40 % of it after 8 rounds, and growing.
    assert usage < 0.15 * live, f"block cache {usage} bytes for {live} bytes of live SST"


def test_without_uncaching_the_dead_blocks_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the same work with the option off keeps the dead blocks, so the test
    above measures the option and not something else."""
    monkeypatch.setattr(store_module, "UNCACHE_AGGRESSIVENESS", 0)
    usage, live = cache_after_compactions(tmp_path / "off", 8)
    assert usage > 0.15 * live


# --- dedup state after its windows ---------------------------------------------------


@pytest.fixture
def alerter(tmp_path: Path, no_host_config: None) -> Iterator[Alerter]:
    svc = make_alerter(tmp_path, "[alerter]\ndedup_window_s = 60\n")
    try:
        yield svc
    finally:
        close_in_process(svc)


def alert(n: int, seq: int) -> Message:
    exe = "/usr/bin/true"
    body = {"ruleId": "storm", "severity": "high", "title": "storm", "timeNs": time.time_ns(),
            "process": {"pid": n, "exePath": exe, "cmdline": [exe, str(n)]}}  # fmt: skip
    data = wire.encode_envelope(wire.Header("detector@h", "b", seq, time.time_ns()), "alert", body)
    return Message("alerts.high", wire.decode_envelope(data), len(data), data)


def test_dedup_state_is_empty_once_every_window_has_ended(alerter: Alerter) -> None:
    """A storm of distinct alerts (each its own window), some repeated: after the window
    nothing of them is left in memory or in the store's window table."""
    now = [1000.0]
    alerter.clock = lambda: now[0]
    seq = 0
    for round_ in range(3):
        for n in range(500):
            seq += 1
            alerter.on_message(alert(round_ * 1000 + n, seq))
            if n % 10 == 0:  # a repeat: its window gets a summary when it ends
                seq += 1
                alerter.on_message(alert(round_ * 1000 + n, seq))
        alerter.on_drained()
        now[0] += 20
        alerter._expire_dedup()
    assert len(alerter.dedup.windows) == 1000  # two rounds still open
    now[0] += 61
    alerter._expire_dedup()
    dedup = alerter.dedup
    assert (len(dedup.windows), len(dedup.repeats), len(dedup._keys), len(dedup._ends)) == (
        0, 0, 0, 0,
    )  # fmt: skip
    assert not alerter._windows_opened and not alerter._windows_closed and not alerter._staged
    assert alerter.store is not None
    assert list(alerter.store.store.scan(DEDUP)) == []
    assert alerter.summaries == 150  # one per window that had a repeat


def test_the_dedup_table_does_not_keep_room_for_three_times_its_windows() -> None:
    """Keys going in and out (a storm of distinct alerts) make CPython resize the dict for
    three times its live keys; the sweep swaps in a copy sized for the live ones."""
    d = Deduper(window_s=100.0, max_keys=1_000_000)
    rng = random.Random(8)
    now = 0.0
    for i in range(60_000):  # 100 opens a second: 10,000 open at a time, 6 windows' worth
        now += 0.01
        d.check(rng.getrandbits(64), now, 0)
        if i % 100 == 0:
            d.expire(now)
    d.expire(now)
    assert 9_900 <= len(d.windows) <= 10_100
    fresh = sys.getsizeof(dict(d.windows))
    assert sys.getsizeof(d.windows) <= fresh  # 295 KB, where CPython alone kept 590 KB
    d.expire(now + 100)  # and every window still ends on time
    assert not d.windows and not d._keys and not d._ends
