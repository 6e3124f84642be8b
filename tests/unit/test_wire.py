"""The wire: every body round-trips; untrusted bytes raise one typed error, never crash."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemoneye import wire

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
