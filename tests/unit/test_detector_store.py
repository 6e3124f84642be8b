"""The detector's RocksDB without sockets: history rows written with their cursors,
kept pending while writes fail and written once the store is reopened (a real full
disk on a tmpfs where root can mount one), and the alert log it replays from."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemoneye import wire
from daemoneye.rules.tables import PROCESS_EVENTS
from daemoneye.services.detector.alertlog import AlertLog
from daemoneye.services.detector.history import History
from daemoneye.services.detector.history_db import DetectorStore, open_store
from tests.tmpfs import fill

COLS = PROCESS_EVENTS.column_names
CURSOR = {("collector@h", "events.process"): ("boot", 7)}


def row(eid: int, pid: int, t_ns: int, padding: str = "") -> tuple:
    values: list = [None] * len(COLS)
    values[COLS.index("pid")] = pid
    values[COLS.index("time_ns")] = t_ns
    values[COLS.index("event")] = "start"
    values[COLS.index("cmdline")] = padding
    return (eid, *values)


def test_rows_and_cursors_go_in_one_write(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    history = History(store)
    assert history.add([row(1, 10, 100), row(2, 11, 200)], CURSOR) is True
    assert history.cursors() == [("collector@h", "events.process", "boot", 7)]
    assert [r["pid"] for r in history.by_time()] == [10, 11]
    assert (history.written, history.pending, history.error) == (2, 0, "")
    store.close()


def test_failed_writes_keep_rows_pending_until_the_store_is_reopened(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    history = History(store, max_pending=3)
    store.close()  # every write now fails, as after an I/O error
    assert history.add([row(1, 10, 100), row(2, 11, 200)], CURSOR) is False
    assert "write to" in history.error and history.write_errors == 1
    assert history.add([row(3, 12, 300), row(4, 13, 400)], {}) is False
    assert history.pending == 3 and history.dropped == 1  # the oldest went, counted
    store.reopen_in_place()
    assert store.reopens == 1
    assert history.commit() is True and history.error == ""
    assert [r["pid"] for r in history.by_time()] == [11, 12, 13]
    assert history.cursors() == [("collector@h", "events.process", "boot", 7)]
    assert history.commit() is True  # nothing pending: nothing to do
    store.close()


def alert(seq: int, severity: str = "low") -> tuple[str, int, bytes]:
    header = wire.Header("detector@h", "boot", seq, time.time_ns())
    body = {"alertId": f"a{seq}", "ruleId": "r", "severity": severity, "title": "t"}
    return f"alerts.{severity}", seq, wire.encode_envelope(header, "alert", body)


def test_alert_log_reads_ranges_per_stream_and_trims(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    log = AlertLog(store, max_entries=5, max_age_s=3600)
    log.append([alert(s) for s in range(1, 11)] + [alert(1, "high"), alert(2, "high")])
    assert log.streams() == {"alerts.low": (1, 10), "alerts.high": (1, 2)}
    got = log.read("alerts.low", 3, 6, 100)
    assert [s for s, _, _ in got] == [3, 4, 5, 6] and {t for _, t, _ in got} == {"alerts.low"}
    assert wire.decode_envelope(got[0][2]).body.alert.alertId == "a3"
    assert [s for s, _, _ in log.read("alerts.low", 8, None, 2)] == [8, 9]
    assert log.read("alerts.medium", 1, None, 10) == []
    assert log.trim() == 5  # the newest 5 per stream stay
    assert log.streams() == {"alerts.low": (6, 10), "alerts.high": (1, 2)}
    future = time.time_ns() + 7200 * 10**9  # everything is past its age then
    log.trim(now_ns=future)
    assert log.streams() == {"alerts.low": (10, 10), "alerts.high": (2, 2)}  # seqs carry on
    store.close()


# --- a real full disk ------------------------------------------------------------------


@pytest.mark.root
def test_history_survives_a_full_disk(small_fs: Path) -> None:
    store = open_store(small_fs)
    history = History(store)
    assert history.add([row(1, 1, 1)], CURSOR)
    filler = fill(small_fs)
    eid, failed = 2, False
    for _ in range(200):  # until RocksDB runs out of room (its WAL is buffered)
        failed = not history.add([row(eid, eid, eid, "x" * 2000)], {})
        eid += 1
        if failed:
            break
    assert failed and "No space left" in history.error
    assert not history.commit()  # RocksDB keeps refusing, even with room...
    filler.unlink()
    assert not history.commit()  # ...until it is reopened
    store.reopen_in_place()
    assert history.commit() and history.pending == 0
    pids = [r["pid"] for r in history.by_time()]
    assert pids == list(range(1, eid)), "every row once, in order"
    store.close()
    reopened = DetectorStore(small_fs / "detector", read_only=True)
    assert len(History(reopened).by_time(0, 10**6)) == eid - 1
    reopened.close()


def test_retention_goes_through_the_pid_index_in_steps(tmp_path: Path) -> None:
    """The hourly pass reads every pid-index key: in steps of a bounded number of keys
    (one pass over a bench's history held the detector's loop 130 ms), resumed where the
    last stopped, until every expired key is gone and none still kept."""
    store = open_store(tmp_path)
    history = History(store)
    now = 10**18
    old, new = now - 8 * 86400 * 10**9, now - 1000
    history.add([row(eid, 100 + eid % 7, old if eid % 3 else new) for eid in range(1, 101)])
    sweep = history.sweep(7, now_ns=now)
    steps = 1
    while not sweep.step(10):
        steps += 1
    assert steps == 10  # 100 keys, 10 a step (the last step finds the end)
    assert sweep.dropped == sum(1 for eid in range(1, 101) if eid % 3)
    kept = [r for pid in range(100, 107) for r in history.by_pid(pid)]
    assert sorted(r["time_ns"] for r in kept) == [new] * (100 - sweep.dropped)
    assert all(r["time_ns"] == new for r in history.by_time())
    store.close()
