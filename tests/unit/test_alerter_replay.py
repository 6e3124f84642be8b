"""The alerter's restart state without a broker: cursors per detector stream written
with the records, sequence checking resumed from them (what was published while it
was down is a gap), dedup windows that outlive the process, and a file sink that
confirms what it wrote before a crash instead of writing it twice."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from pathlib import Path

from daemoneye import wire
from daemoneye.bus import Gap, Message
from daemoneye.services.alerter.delivery_db import DeliveryStore
from daemoneye.services.alerter.model import key_digest
from daemoneye.services.alerter.sinks.file import FileSink
from daemoneye.services.alerter.worker import SinkWorker
from daemoneye.settings.alerter import FileSink as FileCfg
from tests.conftest import wait_for
from tests.unit.test_alerter_service import close, feed, lines, make_alerter

BOOT = "detector-boot"


def alert(seq: int, exe: str, severity: str = "high", source: str = "detector@h") -> Message:
    process = {"pid": 1, "exePath": exe, "cmdline": [exe]}
    fields = {"ruleId": "r", "severity": severity, "title": "r fired", "timeNs": 5,
              "alertId": f"{exe}-{seq}", "process": process}  # fmt: skip
    data = wire.encode_envelope(wire.Header(source, BOOT, seq, time.time_ns()), "alert", fields)
    return Message(f"alerts.{severity}", wire.decode_envelope(data), len(data), data)


def test_cursor_is_written_with_the_records_and_resumes_checking(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        feed(svc, alert(1, "/bin/a"), alert(2, "/bin/b"), alert(7, "/bin/c", "low"))
        feed(svc, alert(3, "/bin/a"))  # a repeat: no record, but its cursor counts
        assert svc.store is not None
        assert sorted(svc.store.cursors()) == [
            ("detector@h", "alerts.high", BOOT, 3),
            ("detector@h", "alerts.low", BOOT, 7),
        ]
    finally:
        close(svc)
    again = make_alerter(tmp_path, "[alerter]\n")
    try:
        assert again.subscriber is not None
        tracker = again.subscriber.tracker
        assert tracker.last_seq("detector@h", "alerts.high") == 3
        gaps: list[Gap] = []
        tracker.on_gap = gaps.append
        # what the bus brings next: the alerts sent while it was down show up as a gap
        assert again.subscriber.accept([b"alerts.high", alert(6, "/bin/d").raw]) is not None
        assert gaps == [Gap("detector@h", "alerts.high", 4, 5)]
        # and one taken in before the restart is a duplicate, never taken in again
        assert again.subscriber.accept([b"alerts.high", alert(2, "/bin/b").raw]) is None
    finally:
        close(again)


def test_dedup_windows_survive_a_restart(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\ndedup_window_s = 300\n")
    try:
        feed(svc, alert(1, "/bin/a"), alert(2, "/bin/b"))
        wait_for(lambda: len(lines(svc)) == 2, 5, "two deliveries")
    finally:
        close(svc)
    again = make_alerter(tmp_path, "[alerter]\ndedup_window_s = 300\n")
    try:
        assert len(again.dedup.windows) == 2
        feed(again, alert(3, "/bin/a"), alert(4, "/bin/new"))  # a repeat and a new one
        assert again.dedup.suppressed == 1 and again.accepted == 1
        wait_for(lambda: len(lines(again)) == 3, 5, "the new alert delivered")
        assert [x["alertId"] for x in lines(again)] == ["/bin/a-1", "/bin/b-2", "/bin/new-4"]
    finally:
        close(again)


def test_ended_windows_are_dropped_from_the_store(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\ndedup_window_s = 60\n")
    now = [1000.0]
    svc.clock = lambda: now[0]
    try:
        feed(svc, alert(1, "/bin/a"), alert(2, "/bin/b"))
        assert svc.store is not None and len(svc.store.windows()) == 2
        now[0] += 61
        svc._expire_dedup()
        assert svc.store.windows() == [] and svc.dedup.windows == {}
    finally:
        close(svc)


def test_windows_that_ended_while_down_are_not_restored(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "data")
    past, future = time.time_ns() - 10**9, time.time_ns() + 60 * 10**9
    old, new = key_digest(("r", "/bin/old", "x")), key_digest(("r", "/bin/new", "y"))
    store.add([], windows={old: (past, 1), new: (future, 2)})
    store.close()
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        assert list(svc.dedup.windows) == [new]
        svc.flush()  # the ended one goes from the store with the next write
        assert svc.store is not None
        assert [w[0] for w in svc.store.windows()] == [new]
    finally:
        close(svc)


def test_windows_in_the_older_store_layout_are_read_and_rewritten(tmp_path: Path) -> None:
    """Windows stored by an alerter before keys were 64-bit digests (d/<16-byte digest>,
    the key's parts in the value) still hold back repeats after an upgrade."""
    store = DeliveryStore(tmp_path / "data")
    parts = ("r", "/bin/a", hashlib.blake2b(b"/bin/a", digest_size=8).hexdigest())
    joined = "\0".join(parts).encode()
    old_key = b"d/" + hashlib.blake2b(joined, digest_size=16).digest()
    ends = time.time_ns() + 60 * 10**9
    store.store.put(old_key, struct.pack(">QQ", ends, 7) + joined)
    store.close()
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        assert svc.store is not None
        assert svc.store.windows() == [(key_digest(parts), ends, 7)]
        assert svc.store.store.get(old_key) is None  # rewritten in the new layout
        feed(svc, alert(1, "/bin/a"))  # the same key as the stored window: a repeat
        assert svc.dedup.suppressed == 1 and svc.accepted == 0
    finally:
        close(svc)


# --- a crash between a sink's write and its confirmation ------------------------------


def test_file_sink_confirms_what_it_wrote_before_a_crash_instead_of_writing_it_again(
    tmp_path: Path,
) -> None:
    store = DeliveryStore(tmp_path / "data")
    records = []
    for i in range(3):
        key = store.next_key()
        records.append((key, json.dumps({"key": key, "alertId": f"a{i}"}).encode(), ["file"]))
    store.add(records)
    path = tmp_path / "alerts.jsonl"
    # the earlier run wrote the first two, then died before confirming them; a torn
    # line from a write cut short sits in the file too
    path.write_bytes(records[0][1] + b"\n" + records[1][1] + b"\n" + b'{"key": 12')
    path.write_bytes(path.read_bytes() + b"\n")
    halt = threading.Event()
    sink = FileSink(FileCfg(name="file", path=path), halt, tmp_path, "h")
    worker = SinkWorker(sink, store, lambda *a: None, halt)
    worker.start()
    try:
        wait_for(lambda: store.count(b"p/", "file") == 0, 5, "every delivery confirmed")
        wait_for(lambda: worker.delivered == 1, 5, "the third alert delivered")
    finally:
        halt.set()
        worker.wake()
        worker.join(5)
        store.close()
    ids = [json.loads(x)["alertId"] for x in path.read_text().splitlines() if x.endswith("}")]
    assert ids == ["a0", "a1", "a2"], "each alert once in the file"


def test_dead_letters_list_keys_whose_bytes_hold_a_zero(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "data")
    try:
        key = 0x17A0_0000_0000_0100  # zero bytes inside the be64 key
        store.add([(key, b"{}", ["s.1"])])
        store.dead("s.1", key, 3, "gone")
        assert [(name, k) for name, k, _ in store.failed()] == [("s.1", key)]
        assert [k for _, k, _ in store.failed("s.1")] == [key]
    finally:
        store.close()
