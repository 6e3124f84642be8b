"""Process events and alerts read straight from an envelope's bytes, where the C reader
was built.

The detector reads every process event the collectors publish, the alerter every
alert. Through pycapnp (wire.tuple_reader) that is a call a field: ~20 us an event with
its record warm, ~60 us an alert with its ancestry. Where the optional C extension
`daemoneye._wireread` was built (setup.py), `read_events` and `read_alert` read the same
values from the checked bytes instead, by a Shape made here from the schema: the values
`wire.tuple_reader(schema, names)` gives, structs as dicts of every field. It reads only
the layout pycapnp and wirepack write (one segment, near pointers, valid texts, known
enumerants); for anything else it returns None, and the caller reads the message
through pycapnp as before, which reads it or says why not.
tests/unit/test_wireread.py holds the two readers to the same values.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from daemoneye import wire

# the field kinds of a Shape (the R_* numbers of _wireread.c)
READ_KINDS = {
    name: number
    for number, name in enumerate(
        (
            "void", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
            "uint64", "float32", "float64", "enum", "text", "data", "struct", "textList",
            "structList",
        )
    )
}  # fmt: skip
_WIDTHS = {
    "int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint8": 1, "uint16": 2, "uint32": 4,
    "uint64": 8, "float32": 4, "float64": 8, "enum": 2,
}  # fmt: skip

try:
    from daemoneye import _wireread as _native
except ImportError:  # built without a compiler: pycapnp reads every event
    _native = None  # type: ignore[assignment]

# The C reader reads words in the machine's order: the wire is little-endian.
IMPLEMENTATION = "c" if _native is not None and sys.byteorder == "little" else "python"


def shape(schema: Any, names: tuple[str, ...], as_dict: bool = False) -> Any:
    """How the C reader reads these fields of a struct type: as a tuple in this order
    (as wire.tuple_reader), or a dict (as dict_reader); None where it cannot (no C
    reader here, a union member, a group, a list of numbers, an interface)."""
    if IMPLEMENTATION != "c":
        return None
    fields = []
    for name in names:
        read = _field(schema.fields[name])
        if read is None:
            return None
        fields.append(read)
    return _native.Shape(tuple(fields), names if as_dict else None)


def _field(field: Any) -> tuple[int, int, int, Any] | None:
    """(kind, at, default bits, extra) of one field: `at` a byte offset in the data
    section (a bool's: bit offset), or a pointer slot."""
    proto = field.proto
    if proto.discriminantValue != 0xFFFF or proto.which() != "slot":
        return None
    slot_type = proto.slot.type
    kind = slot_type.which()
    offset = proto.slot.offset
    default = proto.slot.defaultValue
    if kind == "void":
        return READ_KINDS["void"], 0, 0, None
    if kind == "bool":
        return READ_KINDS["bool"], offset, int(bool(default.bool)), None
    if kind in ("float32", "float64"):
        fmt = "<f" if kind == "float32" else "<d"
        bits = int.from_bytes(struct.pack(fmt, getattr(default, kind)), "little")
        return READ_KINDS[kind], offset * _WIDTHS[kind], bits, None
    if kind == "enum":
        numbers = field.schema.enumerants  # name -> number
        names: list[str | None] = [None] * (max(numbers.values(), default=-1) + 1)
        for name, number in numbers.items():
            names[number] = name
        return READ_KINDS["enum"], offset * 2, int(default.enum), tuple(names)
    if kind in _WIDTHS:
        bits = int(getattr(default, kind)) & ((1 << (8 * _WIDTHS[kind])) - 1)
        return READ_KINDS[kind], offset * _WIDTHS[kind], bits, None
    if kind in ("text", "data", "struct", "list") and proto.slot.hadExplicitDefault:
        return None  # a null pointer reads as that default: pycapnp's to give
    if kind in ("text", "data"):
        return READ_KINDS[kind], offset, 0, None
    if kind == "struct":
        sub = _record_shape(field.schema)
        return None if sub is None else (READ_KINDS["struct"], offset, 0, sub)
    if kind == "list":
        element = slot_type.list.elementType.which()
        if element == "text":
            return READ_KINDS["textList"], offset, 0, None
        if element == "struct":
            sub = _record_shape(field.schema.elementType)
            return None if sub is None else (READ_KINDS["structList"], offset, 0, sub)
    return None


def _record_shape(schema: Any) -> Any:
    """A nested struct read whole, as a dict (wire's conversion of a struct field)."""
    return shape(schema, tuple(schema.fields), as_dict=True)


_BODY = wire.Envelope.schema.fields["body"].schema.fields  # the Envelope's body union
_BATCH_EVENTS = _BODY["processEventBatch"].schema.fields["events"].proto.slot.offset
# per event body kind: the Envelope's pointer slot of the body, and the batch's of its
# events (-1: the body is the event)
_EVENT_SLOTS = {
    "processEvent": (_BODY["processEvent"].proto.slot.offset, -1),
    "processEventBatch": (_BODY["processEventBatch"].proto.slot.offset, _BATCH_EVENTS),
}
_ALERT_SLOT = _BODY["alert"].proto.slot.offset


def _read(data: bytes, body_slot: int, events_slot: int, body_shape: Any) -> list | None:
    """The compiled read of a body (see _wireread.c's read_body); None: pycapnp's."""
    try:
        return _native.read_body(data, body_slot, events_slot, body_shape)  # type: ignore[no-any-return]
    except Exception:  # pycapnp reads it, and says what is wrong
        return None


def read_events(data: bytes, kind: str, event_shape: Any) -> list[tuple] | None:
    """The events of a checked processEvent or processEventBatch envelope, each the tuple
    of `event_shape`'s fields; None: read the message through pycapnp."""
    slots = _EVENT_SLOTS.get(kind)
    if event_shape is None or slots is None:
        return None
    return _read(data, *slots, event_shape)


def alert_shape() -> Any:
    """How the C reader reads an Alert: a dict of every field, as wire.dict_reader."""
    return _record_shape(wire.Alert.schema)


ALERT_KEY_FIELDS = ("ruleId", "severity", "dedupKey", "timeNs", "process")


def alert_key_shape() -> Any:
    """What the alerter needs of every alert, repeats included (check, dedup): the
    tuple of ALERT_KEY_FIELDS, the process a dict of its exePath and cmdline alone."""
    if IMPLEMENTATION != "c":
        return None
    fields = wire.Alert.schema.fields
    plan = [_field(fields[name]) for name in ALERT_KEY_FIELDS[:-1]]
    process = shape(wire.ProcessRecord.schema, ("exePath", "cmdline"), as_dict=True)
    if process is None or None in plan:
        return None
    plan.append((READ_KINDS["struct"], fields["process"].proto.slot.offset, 0, process))
    return _native.Shape(tuple(plan), None)


def read_alert(data: bytes, shape_of_alert: Any) -> Any:
    """The Alert of a checked alert envelope as `shape_of_alert` reads it (alert_shape():
    a dict; alert_key_shape(): a tuple); None: read the message through pycapnp."""
    if shape_of_alert is None:
        return None
    alerts = _read(data, _ALERT_SLOT, -1, shape_of_alert)
    return None if alerts is None else alerts[0]
