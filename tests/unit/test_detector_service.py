"""Detector pieces without sockets: reading wire events, building alerts that encode,
and the RocksDB process history (scans by time and pid, retention)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemoneye import wire
from daemoneye.rules.engine import Firing
from daemoneye.rules.live import EventIn, normalise
from daemoneye.rules.model import Rule
from daemoneye.rules.tables import PROCESS_EVENTS
from daemoneye.services.detector.history import History
from daemoneye.services.detector.service import alert_body, event_in
from daemoneye.store import Store

HEADER = wire.Header("collector@t", "boot", 1, time.time_ns())


def test_event_in_reads_every_field_of_a_wire_event() -> None:
    record = {
        "pid": 42,
        "ppid": 1,
        "startTicks": 99,
        "exePath": "/bin/sh",
        "cmdline": ["sh", "-c", "x"],
    }
    data = wire.encode_envelope(
        HEADER,
        "processEvent",
        {"kind": "suspicious", "source": "netlink", "timeNs": 5, "record": record,
         "changedFields": ["exePath"], "reason": "masquerade", "severity": "high"},
    )  # fmt: skip
    ev = event_in(wire.body_of(wire.decode_envelope(data)), "collector@t")
    assert (ev.kind, ev.source, ev.time_ns, ev.reason, ev.severity) == (
        "suspicious", "netlink", 5, "masquerade", "high"
    )  # fmt: skip
    assert ev.changed_fields == ["exePath"] and ev.collector == "collector@t"
    assert ev.record["cmdline"] == ["sh", "-c", "x"] and ev.record["startTicks"] == 99
    assert set(ev.record) == set(normalise({}))


def test_a_malformed_event_is_a_decode_error() -> None:
    """What the service base counts as a malformed body, not a handler failure."""
    record = {"pid": 42, "exePath": "/bin/EXE"}
    data = bytearray(
        wire.encode_envelope(HEADER, "processEvent", {"kind": "start", "record": record})
    )
    at = data.index(b"/bin/EXE")
    data[at : at + 8] = b"\xff" * 8
    with pytest.raises(wire.DecodeError, match="malformed field"):
        event_in(wire.body_of(wire.decode_envelope(bytes(data))), "collector@t")


def test_alert_body_encodes_as_an_alert() -> None:
    rule = Rule(id="r1", name="Rule one", sql="SELECT 1", severity="critical", tags=["t"])
    record = normalise({"pid": 7, "exePath": "/tmp/x", "cmdline": ["/tmp/x"]})
    body = alert_body(Firing(rule, {"pid": 7, "n": None}, record, "7:1"), "detector@h", "h")
    data = wire.encode_envelope(HEADER, "alert", body)
    alert = wire.body_of(wire.decode_envelope(data))
    assert alert.ruleId == "r1" and str(alert.severity) == "critical"
    assert alert.process.pid == 7 and alert.process.exePath == "/tmp/x"
    assert alert.rowJson == '{"pid": 7, "n": null}'
    # the dedup key is the rule, the executable and argv's hash: never the pid
    assert alert.dedupKey.startswith("r1|/tmp/x|") and "7:1" not in alert.dedupKey
    other = alert_body(Firing(rule, {"pid": 8}, {**record, "pid": 8}, "8:2"), "detector@h", "h")
    assert other["dedupKey"] == alert.dedupKey
    assert "/tmp/x" in alert.title and list(alert.tags) == ["t"]
    # an aggregate row with no process still encodes
    bare = alert_body(Firing(rule, {"count": 60}, None, "abc"), "detector@h", "h")
    assert wire.body_of(wire.decode_envelope(wire.encode_envelope(HEADER, "alert", bare))).ruleId


def test_history_scans_by_time_and_pid_and_expires(tmp_path: Path) -> None:
    history = History(Store(tmp_path / "db"))
    cols = PROCESS_EVENTS.column_names
    now = time.time_ns()

    def row(eid: int, pid: int, t_ns: int) -> tuple:
        values = [None] * len(cols)
        values[cols.index("pid")] = pid
        values[cols.index("time_ns")] = t_ns
        values[cols.index("event")] = "start"
        return (eid, *values)

    old = now - 10 * 86400 * 10**9
    history.add([row(1, 10, old), row(2, 20, now - 1000), row(3, 10, now)])
    assert [r["pid"] for r in history.by_time()] == [10, 20, 10]
    assert [r["time_ns"] for r in history.by_pid(10)] == [old, now]
    assert [r["pid"] for r in history.by_time(since_ns=now - 5000)] == [20, 10]
    assert history.expire(retention_days=7, now_ns=now) == 1
    assert [r["time_ns"] for r in history.by_pid(10)] == [now]
    assert len(history.by_time()) == 2
    history.store.close()


def test_history_keeps_an_event_timed_before_the_epoch(tmp_path: Path) -> None:
    """timeNs is an Int64: a collector (or a hostile frame) may send a negative one. Its
    row is written under time 0, and the write does not fail: it would fail again with
    every later batch staged after it, and no history or cursor would be written again."""
    history = History(Store(tmp_path / "db"))
    cols = PROCESS_EVENTS.column_names
    rows = []
    for eid, t_ns in ((1, -5), (2, 7)):
        values = [None] * len(cols)
        values[cols.index("pid")] = 10
        values[cols.index("time_ns")] = t_ns
        rows.append((eid, *values))
    assert history.add(rows)
    assert [r["time_ns"] for r in history.by_time()] == [-5, 7]
    assert [r["time_ns"] for r in history.by_pid(10)] == [-5, 7]
    assert history.expire(retention_days=1, now_ns=86400 * 10**9 + 6) == 1  # time 0 is old
    assert [r["time_ns"] for r in history.by_time()] == [7]
    history.store.close()


def test_event_in_defaults_are_engine_ready() -> None:
    ev = EventIn("start", {"pid": 1})
    assert ev.changed_fields == [] and ev.kind == "start"


def test_a_body_pointer_of_the_wrong_type_is_a_decode_error() -> None:
    """A processEvent body that is a byte list, not a struct: structurally sound (it
    passes wirecheck), refused as malformed when the detector reads it."""
    data = bytearray(
        wire.encode_envelope(HEADER, "processEvent", {"kind": "start", "record": {"pid": 1}})
    )
    words = memoryview(data)[8:].cast("Q")
    root = words[0]
    at = 1 + ((root & 0xFFFFFFFF) >> 2) + ((root >> 32) & 0xFFFF)
    slot = at + wire.Envelope.schema.fields["body"].schema.fields["processEvent"].proto.slot.offset
    pointer = words[slot]
    size = ((pointer >> 32) & 0xFFFF) + (pointer >> 48)  # the struct's words, as bytes
    words[slot] = (pointer & 0xFFFFFFFC) | 1 | (2 << 32) | (size * 8 << 35)
    envelope, kind, *_ = wire.decode_parts(bytes(data))
    with pytest.raises(wire.DecodeError, match="malformed field"):
        event_in(wire.body_as(envelope, kind), "collector@t")
