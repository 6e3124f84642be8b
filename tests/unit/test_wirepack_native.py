"""The compiled event writer (daemoneye._wirepack) against wirepack's Python writer.

Both write an envelope's body from the same dict. The compiled one must write the same
bytes wherever it writes any, and must write them for every well-formed body; where it
refuses (a value neither takes, a str subclass, a key order past the limit) the Python
writer runs and names what is wrong. test_wire.py holds the Python writer to pycapnp.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemoneye import wire, wirepack
from tests.compiled import assert_built, heap_kept
from tests.wire_bodies import (
    FULL_ALERT,
    FULL_EVENT,
    HOSTILE_ALERTS,
    HOSTILE_EVENTS,
    WELL_FORMED,
    WELL_FORMED_ALERTS,
    Text,
    forget_key_orders,
)

HEADER = wire.Header("collector@test", "boot1", 42, 1_700_000_000_000_000_000)
REFUSED = "refused"
compiled = pytest.mark.skipif(
    wirepack.IMPLEMENTATION != "c",
    reason="daemoneye._wirepack was not built here: the Python writer runs "
    "(test_the_compiled_writer_is_built_where_a_compiler_is says whether it should be)",
)


def both(kind: str, body: Any) -> tuple[Any, Any]:
    """(compiled, python): each writer's bytes, or REFUSED."""
    discriminant, slot, packer = wire._PACKED[kind]
    prefix = wire._envelope_prefix(HEADER, discriminant)
    try:
        native = wirepack._native.finish(  # type: ignore[union-attr]
            bytes(prefix), wire._SOURCE_AT, HEADER.source_id, wire._BOOT_AT, HEADER.boot_id,
            slot, packer.native, body,
        )  # fmt: skip
    except Exception as exc:
        assert not isinstance(exc, SystemError), exc  # a C error path that lost its exception
        native = REFUSED
    try:
        python = wire._python_pack_envelope(prefix, HEADER, slot, packer, body)
    except Exception:
        python = REFUSED
    return native, python


def assert_written_the_same(kind: str, body: Any) -> None:
    """A well-formed body: the Python writer takes it, the compiled one writes the same."""
    native, python = both(kind, body)
    assert python != REFUSED  # the strategies' bodies are the Python writer's to take
    assert native == python


def assert_the_same_or_refused(kind: str, body: Any) -> None:
    """What the compiled writer writes, the Python writer writes the same; what it
    refuses, the Python writer refuses too unless a str subclass is in it."""
    native, python = both(kind, body)
    if native != REFUSED:
        assert native == python
    elif python != REFUSED:
        assert _has_str_subclass(body), body


def test_the_compiled_writer_is_built_where_a_compiler_is() -> None:
    assert_built(wirepack.IMPLEMENTATION, "daemoneye._wirepack", "the Python writer")


@compiled
def test_a_full_event_and_a_batch_are_written_the_same() -> None:
    forget_key_orders()
    native, python = both("processEvent", FULL_EVENT)
    assert native != REFUSED and native == python
    assert native == wire.encode_envelope(HEADER, "processEvent", FULL_EVENT, fast=False)
    batch = {"events": [FULL_EVENT, {"kind": "stop", "record": {"pid": 3}}, FULL_EVENT]}
    native, python = both("processEventBatch", batch)
    assert native != REFUSED and native == python
    assert wire.encode_envelope(HEADER, "processEventBatch", batch) == python


@compiled
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WELL_FORMED, min_size=1, max_size=3))
def test_well_formed_bodies_are_written_by_both_byte_for_byte(events: list[dict]) -> None:
    forget_key_orders()  # room for this example's key orders
    for kind, body in (("processEvent", events[0]), ("processEventBatch", {"events": events})):
        assert_written_the_same(kind, body)


@compiled
def test_a_full_alert_is_written_the_same() -> None:
    """An alert with its process and ancestry (the detector's): both writers, pycapnp's
    bytes."""
    forget_key_orders()
    native, python = both("alert", FULL_ALERT)
    assert native != REFUSED and native == python
    assert native == wire.encode_envelope(HEADER, "alert", FULL_ALERT, fast=False)


@compiled
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(WELL_FORMED_ALERTS)
def test_well_formed_alerts_are_written_by_both_byte_for_byte(alert: dict) -> None:
    forget_key_orders()
    assert_written_the_same("alert", alert)


def _has_str_subclass(value: Any) -> bool:
    if isinstance(value, str):
        return type(value) is not str
    if isinstance(value, dict):
        return any(_has_str_subclass(k) or _has_str_subclass(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_str_subclass(v) for v in value)
    return False


@compiled
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HOSTILE_EVENTS, min_size=1, max_size=3))
@example([{"record": {"pid": -1}}])
@example([{"record": {"onDisk": 200}}])
@example([{"record": {"onDisk": -128}}])
@example([{"record": {"exeDeleted": 1}}])
@example([{"record": {"startTime": True}}])
@example([{"record": {"startTime": 1 << 1100}}])
@example([{"record": {"name": "\udcff"}}])
@example([{"record": {"cmdline": ["a", Text("b")]}}])
@example([{"record": {"env": [("A", "b")]}}])
@example([{"severity": "dire"}])
@example([{"severity": ["unhashable"]}])
@example([{"timeNs": 1.5}])
@example([{"record": {"pid": 1, "nosuch": 1}}])
def test_hostile_bodies_are_written_the_same_or_refused(events: list[dict]) -> None:
    forget_key_orders()
    for kind, body in (("processEvent", events[0]), ("processEventBatch", {"events": events})):
        assert_the_same_or_refused(kind, body)


@compiled
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE_ALERTS)
@example({"severity": "dire"})
@example({"count": -1})
@example({"tags": ["a", Text("b")]})
@example({"ancestry": [{"exited": 1}]})
@example({"ancestry": [("pid", 1)]})
@example({"process": {"pid": 1, "nosuch": 1}})
def test_hostile_alerts_are_written_the_same_or_refused(alert: dict) -> None:
    forget_key_orders()
    assert_the_same_or_refused("alert", alert)


@compiled
def test_key_orders_past_the_limit_are_refused_then_written_in_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forget_key_orders()
    monkeypatch.setattr(wirepack, "MAX_KEY_ORDERS", 1)
    first = {"record": {"pid": 1, "name": "a"}, "hostname": "h"}
    second = {"hostname": "h", "record": {"name": "a", "pid": 1}}
    assert both("processEvent", first)[0] != REFUSED
    native, python = both("processEvent", second)
    assert native == REFUSED and python == REFUSED  # past MAX_KEY_ORDERS: pycapnp's
    expected = wire.encode_envelope(HEADER, "processEvent", second, fast=False)
    assert wire.encode_envelope(HEADER, "processEvent", second) == expected
    assert both("processEvent", first)[0] != REFUSED  # the first order still has its plan
    forget_key_orders()


@compiled
def test_references_are_given_back_on_every_path() -> None:
    """A written body and a refused one leave every object's reference count as it was
    (a missed DECREF leaks each event's record; an extra one frees it under us)."""
    forget_key_orders()
    name, argv, env = "x" * 40, ["a" * 30, "b" * 30], [{"name": "A", "value": "v" * 20}]
    record = {"pid": 1, "name": name, "cmdline": argv, "env": env}
    bad = {"pid": 1, "name": name, "cmdline": argv, "env": env, "uid": -5}
    held = [name, argv, env, env[0], record, bad]
    both("processEvent", {"record": record})  # plans made first: they keep their keys
    both("processEvent", {"record": bad, "kind": "stop"})
    before = [sys.getrefcount(x) for x in held]
    for _ in range(50):
        native, _python = both("processEvent", {"record": record, "severity": "high"})
        assert native != REFUSED
        assert both("processEvent", {"record": bad, "kind": "stop"})[0] == REFUSED
    del native, _python
    assert [sys.getrefcount(x) for x in held] == before


@compiled
def test_writing_does_not_grow_the_heap() -> None:
    forget_key_orders()
    batch = {"events": [FULL_EVENT] * 4}
    bad = {"events": [FULL_EVENT, {"record": {"pid": "1"}}]}

    def step() -> None:
        both("processEventBatch", batch)
        both("processEventBatch", bad)

    grown = heap_kept(step, 3000)
    assert grown < 64 << 10, f"{grown} bytes kept after 6,000 writes"


@compiled
def test_a_layout_refuses_a_plan_outside_its_struct() -> None:
    layout = wirepack._native.Layout(1, 1, lambda values: None)  # type: ignore[union-attr]
    kinds = wirepack.NATIVE_KINDS
    with pytest.raises(ValueError, match="outside"):
        layout.add(("a",), ((kinds["uint64"], 8, None, None),))  # past the data word
    with pytest.raises(ValueError, match="outside"):
        layout.add(("a",), ((kinds["text"], 1, None, None),))  # past the one pointer
    with pytest.raises(ValueError, match="outside"):
        layout.add(("a",), ((kinds["bool"], 64, False, None),))
    with pytest.raises(TypeError):
        layout.add(("a",), ((kinds["struct"], 0, None, None),))  # no Layout for it
    with pytest.raises(ValueError):
        layout.add(("a", "b"), ((kinds["uint8"], 0, None, None),))  # one field a key
    layout.add(("a",), ((kinds["uint32"], 4, None, None),))
    assert layout.orders == 1


@compiled
def test_defaults_are_stored_xored_as_capnp_stores_them() -> None:
    """The schema's own defaults are all 0 but onDisk's: a hand layout with a bool that
    defaults to true, an Int8 to -1 and an enum to its second name."""
    kinds = wirepack.NATIVE_KINDS
    layout = wirepack._native.Layout(1, 0, lambda values: None)  # type: ignore[union-attr]
    fields = (
        (kinds["bool"], 3, True, None),
        (kinds["int8"], 1, -1, None),
        (kinds["enum"], 2, 1, {"a": 0, "b": 1, "c": 2}),
    )
    layout.add(("on", "level", "mode"), fields)
    discriminant, slot, _packer = wire._PACKED["processEvent"]
    prefix = wire._envelope_prefix(HEADER, discriminant)

    def data_word(on: bool, level: int, mode: str) -> int:
        data = wirepack._native.finish(  # type: ignore[union-attr]
            bytes(prefix), wire._SOURCE_AT, "s", wire._BOOT_AT, "b", slot, layout,
            {"on": on, "level": level, "mode": mode},
        )  # fmt: skip
        pointer = int.from_bytes(data[slot : slot + 8], "little")
        at = slot + 8 + 8 * ((pointer & 0xFFFFFFFF) >> 2)
        return int.from_bytes(data[at : at + 8], "little")

    assert data_word(True, -1, "b") == 0  # every value its default: nothing stored
    assert data_word(False, -1, "b") == 1 << 3
    assert data_word(True, 0, "b") == 0xFF << 8  # 0 ^ -1
    assert data_word(True, 5, "b") == (5 ^ 0xFF) << 8
    assert data_word(True, -1, "c") == (2 ^ 1) << 16
