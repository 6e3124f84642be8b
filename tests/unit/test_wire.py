"""The wire: every body round-trips; untrusted bytes raise one typed error, never crash."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemoneye import wire, wirepack
from tests.wire_bodies import WELL_FORMED_ALERTS, forget_key_orders

HEADER = wire.Header("collector@test", "boot1", 42, 1_700_000_000_000_000_000)

BODIES = {
    "empty": None,
    "processEvent": {
        "kind": "start",
        "source": "netlink",
        "timeNs": 5,
        "record": {"pid": 10, "ppid": 1, "name": "sh", "cmdline": ["sh", "-c", "true"]},
    },
    "processEventBatch": {"events": [{"kind": "stop", "record": {"pid": 3}}] * 3},
    "heartbeat": {
        "service": "broker",
        "serviceId": "broker@x",
        "metrics": [{"name": "a", "value": 1.5}],
    },
    "registration": {"action": "register", "service": "collector", "serviceId": "c@x"},
    "alert": {"ruleId": "r1", "severity": "high", "process": {"pid": 7}, "tags": ["t"]},
    "auditRecord": {"actor": "detector@x", "action": "rule.load", "detailJson": "{}"},
    "checkpoint": {"origin": "o", "treeSize": 3, "rootHash": b"\x01" * 32},
    "rpcRequest": wire.rpc_request(9, "control.broker", "health", {"a": 1}, 0),
    "rpcReply": wire.rpc_reply(9, result={"ok": True}, payloads=[b"x"]),
    "collectorNotice": {"kind": "degraded", "message": "no netlink", "count": 1},
}


def test_every_body_kind_has_a_round_trip_case() -> None:
    assert set(BODIES) == set(wire.BODY_KINDS)


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_round_trip(kind: str) -> None:
    data = wire.encode_envelope(HEADER, kind, BODIES[kind])
    env = wire.decode_envelope(data)
    assert (env.sourceId, env.bootId, env.seq, env.sentNs) == (
        "collector@test",
        "boot1",
        42,
        HEADER.sent_ns,
    )
    assert env.schemaVersion == wire.SCHEMA_VERSION
    assert wire.body_kind(env) == kind
    assert wire.to_dict(env)["body"].keys() == {kind}


def test_decoded_fields_survive_the_input_buffer() -> None:
    data = bytearray(wire.encode_envelope(HEADER, "processEvent", BODIES["processEvent"]))
    env = wire.decode_envelope(bytes(data))
    data[:] = b"\x00" * len(data)
    assert list(env.body.processEvent.record.cmdline) == ["sh", "-c", "true"]


def test_rpc_helpers() -> None:
    env = wire.decode_envelope(wire.encode_envelope(HEADER, "rpcRequest", BODIES["rpcRequest"]))
    assert wire.rpc_params(env.body.rpcRequest) == {"a": 1}
    env = wire.decode_envelope(wire.encode_envelope(HEADER, "rpcReply", BODIES["rpcReply"]))
    assert wire.rpc_result(env.body.rpcReply) == {"ok": True}
    assert env.body.rpcReply.ok


def test_unknown_body_kind_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="unknown envelope body"):
        wire.encode_envelope(HEADER, "nonsense", {})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a Cap'n Proto message"),
        (b"abc", "not a Cap'n Proto message"),
        (b"\x00" * 8, "no room for the root pointer"),
        (struct.pack("<I", 1000) + b"\x00" * 4, "too many segments"),
        (struct.pack("<II", 0, 100) + b"\x00" * 8, "segment table does not match"),
        (struct.pack("<II", 0, 1) + b"\xff" * 8, "malformed message"),
    ],
)
def test_bad_bytes_raise_decode_error(data: bytes, reason: str) -> None:
    with pytest.raises(wire.DecodeError, match=reason):
        wire.decode_envelope(data)


def test_trailing_garbage_is_refused() -> None:
    data = wire.encode_envelope(HEADER, "empty")
    with pytest.raises(wire.DecodeError, match="segment table"):
        wire.decode_envelope(data + b"\x00" * 8)


def test_wrong_schema_version_is_refused() -> None:
    msg = wire.Envelope.new_message(schemaVersion=99, sourceId="x", body={"empty": None})
    with pytest.raises(wire.DecodeError, match="schema version 99"):
        wire.decode_envelope(msg.to_bytes())


def test_pointer_beyond_the_message_is_refused() -> None:
    # A root struct whose pointer claims a list of 2^29 - 1 eight-byte words far beyond
    # the message: the reader must refuse it rather than read out of bounds.
    words = [
        struct.pack("<II", 0, 3),  # one segment of 3 words
        struct.pack("<q", 0x0001_0000_0000_0000),  # root: struct, 0 data words, 1 pointer
        struct.pack("<II", (0 << 2) | 1, (0x1FFF_FFFF << 3) | 5),  # list of 2^29-1 words
        b"\x00" * 8,
    ]
    with pytest.raises(wire.DecodeError, match="out-of-bounds list pointer"):
        wire.decode_envelope(b"".join(words))


def _use_fully(env: object) -> None:
    """What services may do with an accepted message: none of it may abort the process."""
    _ = env.total_size  # type: ignore[attr-defined]
    env.as_builder().to_bytes()  # type: ignore[attr-defined]
    with contextlib.suppress(wire.DecodeError):  # a malformed field is reported, not fatal
        wire.to_dict(env)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        env = wire.decode_envelope(data)
    except wire.DecodeError:
        return
    _use_fully(env)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_messages_never_crash(data: st.DataObject) -> None:
    original = bytearray(wire.encode_envelope(HEADER, "processEvent", BODIES["processEvent"]))
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(original) - 1))
        original[index] = data.draw(st.integers(0, 255))
    try:
        env = wire.decode_envelope(bytes(original))
    except wire.DecodeError:
        return
    _use_fully(env)


@pytest.mark.parametrize(
    ("words", "reason"),
    [
        # a far pointer whose landing pad is another far pointer
        (
            [
                struct.pack("<II", 0, 2),
                struct.pack("<II", (1 << 3) | 2, 0),
                struct.pack("<II", 2, 0),
            ],
            "lands on another far",
        ),
        # a far pointer into a segment that does not exist
        ([struct.pack("<II", 0, 1), struct.pack("<II", 2, 7)], "unknown segment"),
        # a capability pointer
        ([struct.pack("<II", 0, 1), struct.pack("<II", 3, 0)], "capability"),
        # a void list claiming 2^28 elements: an amplification attack
        ([struct.pack("<II", 0, 1), struct.pack("<II", 1, (1 << 31) | 0)], "traversal limit"),
    ],
)
def test_structural_attacks_are_named(words: list[bytes], reason: str) -> None:
    with pytest.raises(wire.DecodeError, match=reason):
        wire.decode_envelope(b"".join(words))


# --- encoding: every field round-trips, the bytes are pycapnp's own, errors name fields


def _reference_fill(builder: object, values: dict) -> None:
    """The plain way to fill a builder (setattr by name, init by name): what the encoder
    must produce byte for byte, only faster."""
    for key, value in values.items():
        if isinstance(value, dict):
            _reference_fill(builder.init(key), value)  # type: ignore[attr-defined]
        elif isinstance(value, list | tuple):
            items = builder.init(key, len(value))  # type: ignore[attr-defined]
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _reference_fill(items[i], item)
                else:
                    items[i] = item
        else:
            setattr(builder, key, value)


def _reference_encode(kind: str, body: dict) -> bytes:
    words = wire._first_segment_words(kind, body)
    msg = wire.Envelope.new_message(num_first_segment_words=words) if words else None
    msg = msg or wire.Envelope.new_message()
    msg.schemaVersion = wire.SCHEMA_VERSION
    msg.sourceId, msg.bootId = HEADER.source_id, HEADER.boot_id
    msg.seq, msg.sentNs = HEADER.seq, HEADER.sent_ns
    _reference_fill(msg.body.init(kind), body)
    return msg.to_bytes()


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1),
}


def _strategy_of(field: object) -> st.SearchStrategy:
    kind = field.proto.slot.type.which()  # type: ignore[attr-defined]
    if kind in _RANGES:
        low, high = _RANGES[kind]
        # defaults and small values often: the encoder skips those it recognises
        return st.one_of(st.sampled_from([0, 1, -1] if low else [0, 1]), st.integers(low, high))
    if kind == "float64":
        return st.floats(allow_nan=False)
    if kind == "bool":
        return st.booleans()
    if kind == "text":
        return _TEXT
    assert kind == "list", kind
    element = field.proto.slot.type.list.elementType.which()  # type: ignore[attr-defined]
    if element == "struct":  # EnvVar
        return st.lists(st.fixed_dictionaries({"name": _TEXT, "value": _TEXT}), max_size=3)
    return st.lists(_TEXT, max_size=6)


RECORDS = st.fixed_dictionaries(
    {},
    optional={
        name: _strategy_of(field) for name, field in wire.ProcessRecord.schema.fields.items()
    },
)
EVENTS = st.fixed_dictionaries(
    {"record": RECORDS},
    optional={
        "kind": st.sampled_from(["start", "stop", "modify", "suspicious"]),
        "source": st.sampled_from(["snapshot", "netlink", "psutil"]),
        "timeNs": st.integers(0, (1 << 63) - 1),
        "previous": RECORDS,
        "changedFields": st.lists(_TEXT, max_size=3),
        "reason": _TEXT,
        "severity": st.sampled_from(wire.SEVERITIES),
        "runtimeNs": st.sampled_from([0, 5]),
        "exitCode": st.integers(-(1 << 31), (1 << 31) - 1),
        "hostname": _TEXT,
    },
)


def _expected(record: dict) -> dict:
    """What to_dict reads back: every number and bool (its default when not given),
    the texts and lists that were set."""
    out = {}
    for name, field in wire.ProcessRecord.schema.fields.items():
        kind = field.proto.slot.type.which()
        if name in record:
            out[name] = record[name]
        elif kind not in ("text", "list"):
            out[name] = getattr(field.proto.slot.defaultValue, kind)
    return out


@settings(max_examples=150, deadline=None)
@given(EVENTS)
def test_process_events_round_trip_byte_identical(event: dict) -> None:
    data = wire.encode_envelope(HEADER, "processEvent", event)
    assert data == _reference_encode("processEvent", event)
    got = wire.to_dict(wire.decode_envelope(data))["body"]["processEvent"]
    assert got["record"] == _expected(event["record"])
    if "previous" in event:
        assert got["previous"] == _expected(event["previous"])
    for key in ("kind", "source", "timeNs", "changedFields", "reason", "severity", "exitCode"):
        if key in event:
            assert got[key] == event[key]


def _filled(kind: str, body: dict, fill: object) -> bytes:
    msg = wire.Envelope.new_message()
    fill(msg.body.init(kind), body, wire._BODY_PLANS[kind])  # type: ignore[operator]
    return msg.to_bytes()


@settings(max_examples=100, deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=4))
def test_the_fast_filler_sets_the_bytes_the_plan_sets(events: list[dict]) -> None:
    """encode_envelope's fast way (straight-line code per key order) takes well-formed
    bodies without falling back, and sets exactly what _fill_plan sets."""
    wire._fast_fills.clear()  # room for this example's key orders
    for kind, body in (("processEvent", events[0]), ("processEventBatch", {"events": events})):
        assert _filled(kind, body, wire._fill_fast) == _filled(kind, body, wire._fill_plan)
        reordered = dict(reversed(body.items()))
        assert _filled(kind, reordered, wire._fill_fast) == _filled(
            kind, reordered, wire._fill_plan
        )
    data = wire.encode_envelope(HEADER, "processEvent", events[0])
    assert data == wire.encode_envelope(HEADER, "processEvent", events[0], fast=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=4))
def test_the_packer_writes_the_bytes_pycapnp_builds(events: list[dict]) -> None:
    """encode_envelope's own writer (wirepack) takes well-formed process events without
    falling back to pycapnp, and writes exactly the bytes pycapnp builds."""
    forget_key_orders()
    for kind, body in (("processEvent", events[0]), ("processEventBatch", {"events": events})):
        for order in (body, dict(reversed(body.items()))):
            packed = wire._pack_envelope(HEADER, wire._PACKED[kind], order)
            assert packed == wire.encode_envelope(HEADER, kind, order, fast=False)


@settings(max_examples=100, deadline=None)
@given(WELL_FORMED_ALERTS)
def test_the_packer_writes_the_alert_bytes_pycapnp_builds(alert: dict) -> None:
    """The detector's alerts too (with their process and ancestry): no fallback to
    pycapnp, and exactly its bytes."""
    forget_key_orders()
    for order in (alert, dict(reversed(alert.items()))):
        packed = wire._pack_envelope(HEADER, wire._PACKED["alert"], order)
        assert packed == wire.encode_envelope(HEADER, "alert", order, fast=False)


@pytest.mark.parametrize(
    "bad",
    [
        {"record": {"pid": -1}},  # out of range
        {"record": {"pid": "1"}},  # a text for a number
        {"record": {"exeDeleted": 1}},  # a number for a bool
        {"record": {"name": 5}},  # a number for a text
        {"record": {"cmdline": "ls"}},  # a text for a list
        {"record": {"env": [("A", "b")]}},  # a tuple for a struct
        {"severity": "dire"},  # no such enumerant
        {"record": {"nosuch": 1}},  # no such field
    ],
)
def test_what_the_packer_refuses_pycapnp_names(bad: dict) -> None:
    with pytest.raises(Exception):  # noqa: B017 - whatever it raises, it raises
        wire._pack_envelope(HEADER, wire._PACKED["processEvent"], bad)
    with pytest.raises((ValueError, TypeError)):
        wire.encode_envelope(HEADER, "processEvent", bad)


# one body in two key orders: an encoder that compiles per key order meets both
FIRST_ORDER = {"record": {"pid": 1, "name": "a"}, "hostname": "h"}
SECOND_ORDER = {"hostname": "h", "record": {"name": "a", "pid": 1}}


def _encode_both_orders_as_pycapnp() -> None:
    for body in (FIRST_ORDER, SECOND_ORDER, FIRST_ORDER):
        assert wire.encode_envelope(HEADER, "processEvent", body) == _reference_encode(
            "processEvent", body
        )


def test_dicts_past_the_packers_key_orders_take_pycapnp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wirepack, "MAX_KEY_ORDERS", 1)
    forget_key_orders()
    _encode_both_orders_as_pycapnp()
    with pytest.raises(wirepack.Unpackable):
        wire._pack_envelope(HEADER, wire._PACKED["processEvent"], SECOND_ORDER)
    wire._pack_envelope(HEADER, wire._PACKED["processEvent"], FIRST_ORDER)  # still packed
    forget_key_orders()


def test_dicts_past_the_key_orders_kept_take_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_KEY_ORDERS", 1)
    monkeypatch.setattr(wire, "_PACKED", {})  # pycapnp's fast way, not wirepack's
    wire._fast_fills.clear()
    _encode_both_orders_as_pycapnp()
    with pytest.raises(wire._NoFastWay):
        _filled("processEvent", SECOND_ORDER, wire._fill_fast)
    wire._fast_fills.clear()


@settings(max_examples=20, deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=40))
def test_batches_round_trip_byte_identical(events: list[dict]) -> None:
    body = {"events": events}
    data = wire.encode_envelope(HEADER, "processEventBatch", body)
    assert data == _reference_encode("processEventBatch", body)
    got = wire.to_dict(wire.decode_envelope(data))["body"]["processEventBatch"]["events"]
    assert [e["record"] for e in got] == [_expected(e["record"]) for e in events]


@settings(max_examples=50, deadline=None)
@given(RECORDS, st.lists(_TEXT, max_size=4), st.integers(0, (1 << 32) - 1))
def test_alerts_round_trip_byte_identical(record: dict, tags: list[str], count: int) -> None:
    body = dict(BODIES["alert"], process=record, tags=tags, count=count, severity="critical")
    data = wire.encode_envelope(HEADER, "alert", body)
    assert data == _reference_encode("alert", body)
    got = wire.to_dict(wire.decode_envelope(data))["body"]["alert"]
    assert (got["process"], got.get("tags", []), got["count"]) == (_expected(record), tags, count)


@pytest.mark.parametrize("kind", sorted(k for k in BODIES if k != "empty"))
def test_every_body_is_byte_identical_to_plain_pycapnp(kind: str) -> None:
    assert wire.encode_envelope(HEADER, kind, BODIES[kind]) == _reference_encode(kind, BODIES[kind])


def test_defaults_given_explicitly_read_back_as_defaults() -> None:
    record = {"pid": 0, "onDisk": -1, "accessible": False, "nice": 0, "name": ""}
    data = wire.encode_envelope(HEADER, "processEvent", {"record": record, "exitCode": 0})
    got = wire.decode_envelope(data).body.processEvent
    assert (got.record.pid, got.record.onDisk, got.record.accessible, got.exitCode) == (
        0,
        -1,
        False,
        0,
    )
    assert got.record.name == "" and got.record._has("name")  # a given text is still set


@pytest.mark.parametrize(
    ("kind", "body", "error", "message"),
    [
        (
            "processEvent",
            {"record": {"nope": 1}},
            ValueError,
            r"processEvent\.record\.nope: no such",
        ),
        ("processEvent", {"record": {"pid": "x"}}, TypeError, r"record\.pid: expected uint32"),
        ("processEvent", {"record": {"pid": -1}}, ValueError, r"record\.pid: .*out of range"),
        ("processEvent", {"record": {"pid": 1 << 40}}, ValueError, r"record\.pid: .*out of range"),
        ("processEvent", {"record": {"pid": False}}, TypeError, r"record\.pid: expected uint32"),
        ("processEvent", {"record": {"exeDeleted": 0}}, TypeError, r"exeDeleted: expected bool"),
        ("processEvent", {"record": {"name": 5}}, TypeError, r"record\.name: expected text"),
        ("processEvent", {"record": {"cmdline": "ab"}}, TypeError, r"cmdline: expected list"),
        ("processEvent", {"record": {"cmdline": ["a", 1]}}, TypeError, r"cmdline\[1\]: expected"),
        ("processEvent", {"kind": "bogus"}, ValueError, r"processEvent\.kind: .*not a value"),
        ("processEvent", {"record": 5}, TypeError, r"processEvent\.record: expected struct"),
        ("processEvent", {"record": None}, TypeError, r"processEvent\.record: expected struct"),
        (
            "processEventBatch",
            {"events": [{}, {"record": {"uid": "0"}}]},
            TypeError,
            r"processEventBatch\.events\[1\]\.record\.uid: expected uint32",
        ),
        ("processEventBatch", {"events": [{}, 5]}, TypeError, r"events\[1\]: expected struct"),
        ("alert", {"severity": "dire"}, ValueError, r"alert\.severity: .*not a value"),
    ],
)
def test_bad_fields_are_named_when_encoding(
    kind: str, body: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        wire.encode_envelope(HEADER, kind, body)


@pytest.mark.parametrize(
    ("record", "error", "message"),
    [
        ({"name": "\ud800"}, ValueError, r"record\.name: .*not valid Unicode"),
        ({"startTime": 10**400}, ValueError, r"record\.startTime: .*out of range"),
        ({"startTime": "x"}, TypeError, r"record\.startTime: expected float64"),
        ({5: 1}, ValueError, r"record\.5: no such field"),
    ],
)
def test_odd_values_are_named_when_encoding(
    record: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        wire.encode_envelope(HEADER, "processEvent", {"record": record})


def test_fill_names_the_struct_for_any_builder() -> None:
    builder = wire.ProcessEvent.new_message()
    with pytest.raises(TypeError, match=r"ProcessEvent\.record\.pid: expected uint32"):
        wire._fill(builder, {"record": {"pid": "x"}})
    wire._fill(builder, {"record": {"pid": 3}, "hostname": "h"})
    assert (builder.record.pid, builder.hostname) == (3, "h")


# --- reading bodies ------------------------------------------------------------------


def _body_schema(kind: str):
    return wire.Envelope.schema.fields["body"].schema.fields[kind].schema


def _within(slow, fast, where: str = "") -> None:
    """Every value to_dict read is read alike by dict_reader (which adds unset text)."""
    if isinstance(slow, dict):
        for key, value in slow.items():
            _within(value, fast[key], f"{where}.{key}")
    elif isinstance(slow, list):
        assert len(slow) == len(fast), where
        for i, (a, b) in enumerate(zip(slow, fast, strict=True)):
            _within(a, b, f"{where}[{i}]")
    else:
        assert slow == fast, where


@pytest.mark.parametrize("kind", sorted(k for k in BODIES if BODIES[k] is not None))
def test_dict_reader_reads_what_to_dict_reads(kind: str) -> None:
    body = wire.body_of(wire.decode_envelope(wire.encode_envelope(HEADER, kind, BODIES[kind])))
    fast = wire.dict_reader(_body_schema(kind))(body)
    _within(wire.to_dict(body), fast, kind)
    assert set(fast) == set(_body_schema(kind).fields)  # every key, set or not


def test_dict_reader_converts_enums_data_lists_and_structs() -> None:
    data = wire.encode_envelope(HEADER, "processEventBatch", BODIES["processEventBatch"])
    batch = wire.dict_reader(_body_schema("processEventBatch"))(
        wire.body_of(wire.decode_envelope(data))
    )
    event = batch["events"][0]
    assert event["kind"] == "stop" and type(event["kind"]) is str
    assert event["record"]["pid"] == 3 and event["record"]["cmdline"] == []
    assert event["record"]["onDisk"] == -1 and event["record"]["name"] == ""  # defaults
    data = wire.encode_envelope(HEADER, "checkpoint", BODIES["checkpoint"])
    checkpoint = wire.dict_reader(_body_schema("checkpoint"), ["rootHash", "treeSize"])(
        wire.body_of(wire.decode_envelope(data))
    )
    assert checkpoint == {"rootHash": "01" * 32, "treeSize": 3}


def test_tuple_reader_converted_and_raw() -> None:
    data = wire.encode_envelope(HEADER, "alert", BODIES["alert"])
    alert = wire.body_of(wire.decode_envelope(data))
    read = wire.tuple_reader(wire.Alert.schema, ["severity", "ruleId", "process", "tags"])
    assert read(alert) == ("high", "r1", {**read(alert)[2], "pid": 7}, ["t"])
    severity, process = wire.tuple_reader(wire.Alert.schema, ["severity", "process"], raw=True)(
        alert
    )
    assert str(severity) == "high"
    assert wire.tuple_reader(wire.ProcessRecord.schema, ["pid"])(process) == (7,)


def test_a_malformed_field_is_a_decode_error() -> None:
    """Invalid UTF-8 in a body text passes the structure check; reading it is refused."""
    data = bytearray(wire.encode_envelope(HEADER, "alert", {"ruleId": "r1", "title": "TITLE"}))
    at = data.index(b"TITLE")
    data[at : at + 5] = b"\xff\xfe\xfd\xfc\xfb"
    alert = wire.body_of(wire.decode_envelope(bytes(data)))
    with pytest.raises(wire.DecodeError, match="malformed field"):
        wire.dict_reader(wire.Alert.schema)(alert)
    with pytest.raises(wire.DecodeError, match="malformed field"):
        wire.tuple_reader(wire.Alert.schema, ["ruleId", "title"])(alert)
    assert wire.tuple_reader(wire.Alert.schema, ["ruleId"])(alert) == ("r1",)  # not read


def test_unions_are_refused_at_compile_time() -> None:
    with pytest.raises(ValueError, match="union member"):
        wire.dict_reader(wire.Envelope.schema.fields["body"].schema)


def test_severities_are_the_schemas_enum_lowest_first() -> None:
    assert wire.SEVERITIES == ("info", "low", "medium", "high", "critical")
    for rank, severity in enumerate(wire.SEVERITIES):
        data = wire.encode_envelope(HEADER, "alert", {"ruleId": "r", "severity": severity})
        alert = wire.body_of(wire.decode_envelope(data))
        assert wire.tuple_reader(wire.Alert.schema, ["severity"], raw=True)(alert)[0].raw == rank


def test_a_list_of_millions_of_empty_structs_in_a_small_frame_is_refused() -> None:
    """What the wire fuzzer found: a 1,280-byte processEventBatch whose events list
    declares 1.8 million zero-sized elements. It passed the check (a word of budget an
    element, under the global limit) and to_dict then took 2 GB; the detector would
    have queued every element as an event. The budget now follows the frame's size."""
    header = wire.Header("collector@fuzz", "boot", 1, 1)
    data = bytearray(wire.encode_envelope(header, "processEventBatch", {"events": [{}]}))
    words = [int.from_bytes(data[i : i + 8], "little") for i in range(8, len(data), 8)]
    lists = [  # (where, offset) of composite list pointers: kind 1, element size 7
        (i, (w & 0xFFFFFFFF) >> 2) for i, w in enumerate(words) if w & 3 == 1 and (w >> 32) & 7 == 7
    ]
    assert len(lists) == 1, lists  # the events list
    where, offset = lists[0]
    tag = 8 + 8 * (where + 1 + offset)  # its tag, in bytes (after the segment table)
    data[tag : tag + 8] = (2_000_000 << 2).to_bytes(8, "little")  # 2M elements of 0 words
    with pytest.raises(wire.DecodeError, match="traversal limit"):
        wire.decode_parts(bytes(data))
    assert len(data) < 2048
