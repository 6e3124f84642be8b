"""The compiled event reader (daemoneye._wireread) against pycapnp's.

The detector reads each process event either way: by the compiled reader from the
checked bytes, or through pycapnp (wire.tuple_reader) when the compiled one returns
None. So the compiled reader must give exactly pycapnp's values wherever it gives any,
must give them for every message the collector writes, and must never give values
where pycapnp refuses the message (the detector counts that message malformed).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemoneye import wire, wireread
from daemoneye.services.alerter import model as alert_model
from daemoneye.services.detector.service import _EVENT, _EVENT_FIELDS, _EVENT_SHAPE, EVENT_KINDS
from tests.compiled import assert_built, heap_kept
from tests.wire_bodies import FULL_EVENT, WELL_FORMED, struct_bodies

HEADER = wire.Header("collector@test", "boot1", 42, 1_700_000_000_000_000_000)
compiled = pytest.mark.skipif(
    wireread.IMPLEMENTATION != "c",
    reason="daemoneye._wireread was not built here: pycapnp reads every event "
    "(test_the_compiled_reader_is_built_where_a_compiler_is says whether it should be)",
)
MALFORMED = "malformed"


def through_pycapnp(data: bytes) -> Any:
    """What the detector reads without the compiled reader: rows, or MALFORMED (None:
    not an event, which the detector does not read)."""
    try:
        envelope, kind, *_ = wire.decode_parts(data)
        if kind not in EVENT_KINDS:
            return None
        body = wire.body_as(envelope, kind)
        if kind == "processEvent":
            return [_EVENT(body)]
        return [_EVENT(e) for e in wire.batch_events(body)]
    except wire.DecodeError:
        return MALFORMED


def compiled_read(data: bytes) -> Any:
    kind = wire.decode_parts(data)[1]
    return wireread.read_events(data, kind, _EVENT_SHAPE)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types; floats bit for bit (-0.0, NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_the_compiled_reader_is_built_where_a_compiler_is() -> None:
    assert_built(
        wireread.IMPLEMENTATION, "daemoneye._wireread", "pycapnp's reader", little_endian=True
    )


@compiled
def test_a_full_event_and_a_batch_read_the_same() -> None:
    for kind, body in (
        ("processEvent", FULL_EVENT),
        ("processEventBatch", {"events": [FULL_EVENT, {"kind": "stop"}, FULL_EVENT]}),
        ("processEventBatch", {"events": []}),
        ("processEventBatch", {}),
        ("processEvent", {}),
    ):
        data = wire.encode_envelope(HEADER, kind, body)
        rows = compiled_read(data)
        assert rows is not None and same(rows, through_pycapnp(data)), kind
    assert len(compiled_read(wire.encode_envelope(HEADER, "processEvent", FULL_EVENT))[0]) == len(
        _EVENT_FIELDS
    )


@compiled
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WELL_FORMED, max_size=3))
def test_what_the_collector_writes_is_read_by_both_alike(events: list[dict]) -> None:
    """Every body the writers take (the collector's own and any other well-formed one),
    as one event and as a batch: the compiled reader reads it, to pycapnp's values."""
    bodies = [("processEventBatch", {"events": events})]
    if events:
        bodies.append(("processEvent", events[0]))
    for kind, body in bodies:
        data = wire.encode_envelope(HEADER, kind, body)
        rows = compiled_read(data)
        assert rows is not None
        assert same(rows, through_pycapnp(data))


@compiled
def test_a_message_of_several_segments_is_left_to_pycapnp() -> None:
    msg = wire.Envelope.new_message(num_first_segment_words=8)  # the body spills over
    msg.schemaVersion, msg.sourceId, msg.bootId, msg.seq = wire.SCHEMA_VERSION, "s", "b", 1
    event = msg.body.init("processEvent")
    event.kind, event.record.pid, event.record.name = "stop", 7, "sh"
    data = msg.to_bytes()
    assert data[:4] != b"\0\0\0\0"  # more than one segment
    assert compiled_read(data) is None
    assert through_pycapnp(data)[0][1]["name"] == "sh"


_MESSAGE = wire.encode_envelope(
    HEADER, "processEventBatch", {"events": [FULL_EVENT, {"kind": "modify", "record": {}}]}
)


def flips_of(message: bytes) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Up to six bytes of `message` set to other values (the segment table kept)."""
    byte = st.tuples(st.integers(8, len(message) - 1), st.integers(0, 255))
    return st.lists(byte, min_size=1, max_size=6)


def flipped(message: bytes, flips: list[tuple[int, int]]) -> bytes | None:
    """`message` with `flips` applied; None when wirecheck refuses it (before any
    reader: nothing to compare)."""
    data = bytearray(message)
    for at, value in flips:
        data[at] = value
    try:
        wire.decode_parts(bytes(data))
    except wire.DecodeError:
        return None
    return bytes(data)


@compiled
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips_of(_MESSAGE))
def test_hostile_bytes_read_as_pycapnp_reads_them_or_are_left_to_it(flips: list) -> None:
    """Bytes changed anywhere (pointers, sizes, texts, enumerants) in a message wirecheck
    still lets through: the compiled reader gives pycapnp's values, or leaves the message
    to pycapnp; never values where pycapnp finds the message malformed."""
    data = flipped(_MESSAGE, flips)
    if data is None:
        return
    rows, python = compiled_read(data), through_pycapnp(data)
    if rows is not None:
        assert python not in (MALFORMED, None), "read by the compiled reader, not by pycapnp"
        assert same(rows, python)


@compiled
def test_texts_pycapnp_refuses_are_left_to_it() -> None:
    body = {"kind": "start", "record": {"pid": 1, "name": "aXb", "exePath": "QzR"}}
    clean = wire.encode_envelope(HEADER, "processEvent", body)
    embedded = bytearray(clean)
    embedded[embedded.index(b"aXb") + 1] = 0  # a NUL inside: pycapnp keeps it
    rows = compiled_read(bytes(embedded))
    assert rows is not None and rows[0][1]["name"] == "a\x00b"
    assert same(rows, through_pycapnp(bytes(embedded)))
    invalid = bytearray(clean)
    invalid[invalid.index(b"QzR") + 1] = 0xFF  # not UTF-8: pycapnp raises
    assert compiled_read(bytes(invalid)) is None
    assert through_pycapnp(bytes(invalid)) == MALFORMED
    unterminated = bytearray(clean)
    at = unterminated.index(b"QzR")
    unterminated[at + 3] = ord("!")  # the NUL gone: pycapnp refuses the text
    assert compiled_read(bytes(unterminated)) is None
    assert through_pycapnp(bytes(unterminated)) == MALFORMED


@compiled
def test_reading_does_not_grow_the_heap() -> None:
    bad = bytearray(wire.encode_envelope(HEADER, "processEvent", {"record": {"name": "QzR"}}))
    bad[bad.index(b"QzR") + 1] = 0xFF

    def step() -> None:
        compiled_read(_MESSAGE)
        compiled_read(bytes(bad))

    grown = heap_kept(step, 5000)
    assert grown < 64 << 10, f"{grown} bytes kept after 10,000 reads"


@compiled
def test_a_shape_refuses_fields_it_cannot_read() -> None:
    kinds = wireread.READ_KINDS
    shape_type = wireread._native.Shape
    with pytest.raises(ValueError):
        shape_type(((99, 0, 0, None),), None)  # no such kind
    with pytest.raises(TypeError):
        shape_type(((kinds["struct"], 0, 0, None),), None)  # a struct without its Shape
    with pytest.raises(ValueError):
        tuple_shape = shape_type(((kinds["uint8"], 0, 0, None),), None)
        shape_type(((kinds["struct"], 0, 0, tuple_shape),), None)  # nested: a dict
    with pytest.raises(ValueError):
        shape_type(((kinds["uint8"], 0, 0, None),), ("a", "b"))  # one key a field
    assert wireread.shape(wire.ProcessRecord.schema, ("pid", "name"), as_dict=True) is not None


def _events_pointer_at(data: bytes) -> int:
    """The byte of a batch's events pointer (near pointers all the way)."""
    word = lambda i: int.from_bytes(data[8 + 8 * i : 16 + 8 * i], "little")  # noqa: E731
    root = word(0)
    envelope = 1 + ((root & 0xFFFFFFFF) >> 2)
    body_slot, events_slot = wireread._EVENT_SLOTS["processEventBatch"]
    body_at = envelope + ((root >> 32) & 0xFFFF) + body_slot
    body = word(body_at)
    batch = body_at + 1 + ((body & 0xFFFFFFFF) >> 2)
    return 8 + 8 * (batch + ((body >> 32) & 0xFFFF) + events_slot)


def test_a_batch_whose_events_are_not_a_struct_list_is_malformed_not_a_crash() -> None:
    """A bit list where the events should be: the detector counts the message malformed
    (a DecodeError), as for any other hostile body, instead of logging a traceback."""
    data = bytearray(_MESSAGE)
    at = _events_pointer_at(bytes(data))
    pointer = int.from_bytes(data[at : at + 8], "little")
    assert pointer & 3 == 1 and (pointer >> 32) & 7 == 7  # a struct list, as written
    data[at : at + 8] = (pointer & ~(7 << 32) | 1 << 32).to_bytes(8, "little")  # bits
    envelope, kind, *_ = wire.decode_parts(bytes(data))  # wirecheck lets it through
    with pytest.raises(wire.DecodeError):
        wire.batch_events(wire.body_as(envelope, kind))
    assert through_pycapnp(bytes(data)) == MALFORMED
    if wireread.IMPLEMENTATION == "c":
        assert compiled_read(bytes(data)) is None


# --- alerts (the alerter) ---------------------------------------------------------------

ALERTS = struct_bodies(wire.Alert.schema, hostile=False)


def alert_through_pycapnp(data: bytes) -> Any:
    """What the alerter reads without the compiled reader: (its key fields, the whole
    alert), each MALFORMED where pycapnp refuses it; None: not an alert."""
    envelope, kind, *_ = wire.decode_parts(data)
    if kind != "alert":
        return None
    try:
        alert = wire.body_as(envelope, kind)
    except wire.DecodeError:  # the body pointer is not a struct: the alerter counts it
        return MALFORMED, MALFORMED
    try:
        rule, severity = alert_model._RULE_AND_SEVERITY(alert)
        key: Any = (rule, severity, alert_model.dedup_key(alert), alert.timeNs)
    except wire.DecodeError:
        key = MALFORMED
    try:
        whole = alert_model._alert_to_dict(alert)
    except wire.DecodeError:
        whole = MALFORMED
    return key, whole


def alert_compiled(data: bytes) -> tuple[Any, Any]:
    """The same read by the compiled reader: each None where it leaves it to pycapnp."""
    key_fields = wireread.read_alert(data, wireread.alert_key_shape())
    key = None
    if key_fields is not None:
        rule, severity, own, time_ns, process = key_fields
        key = (rule, severity, alert_model.dedup_key_of(rule, own, process), time_ns)
    return key, wireread.read_alert(data, wireread.alert_shape())


def agree(compiled_read: tuple[Any, Any], python: Any) -> None:
    for mine, theirs in zip(compiled_read, python, strict=True):
        if mine is not None:
            assert theirs != MALFORMED, "read by the compiled reader, refused by pycapnp"
            assert same(mine, theirs)


@compiled
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ALERTS)
def test_alerts_read_by_both_alike(body: dict) -> None:
    """Every well-formed alert: the same key fields (rule, severity, dedup key, time)
    and the same whole dict (as wire.dict_reader gives it), whether the alerter reads
    it compiled or through pycapnp."""
    data = wire.encode_envelope(HEADER, "alert", body)
    compiled_alert = alert_compiled(data)
    assert None not in compiled_alert
    agree(compiled_alert, alert_through_pycapnp(data))


_ALERT_MESSAGE = wire.encode_envelope(
    HEADER,
    "alert",
    {
        "ruleId": "r1", "severity": "high", "title": "t", "process": FULL_EVENT["record"],
        "tags": ["a"], "ancestry": [{"pid": 1, "name": "sh", "cmdline": ["sh", "-c", "x"]}] * 3,
    },
)  # fmt: skip


@compiled
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips_of(_ALERT_MESSAGE))
def test_hostile_alert_bytes_read_as_pycapnp_reads_them_or_are_left_to_it(flips: list) -> None:
    data = flipped(_ALERT_MESSAGE, flips)
    python = None if data is None else alert_through_pycapnp(data)
    if python is not None:
        agree(alert_compiled(data), python)
