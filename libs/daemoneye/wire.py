"""The only code that touches Cap'n Proto bytes.

Services build and read messages through this module: `encode_envelope` turns a
header and a body dict into bytes, `decode_envelope` turns untrusted bytes into a
reader or raises `DecodeError`, and `dict_reader`/`tuple_reader` read a body's
fields into plain Python (the fast way, compiled per struct from the schema).
Readers returned by `decode_envelope` keep their bytes alive, so they are safe to
hold after the call.
"""

from __future__ import annotations

import json
import operator
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import capnp

from daemoneye import wirepack
from daemoneye.wirecheck import StructureError, check_words, segment_words

SCHEMA_FILE = "daemoneye.capnp"
TRAVERSAL_LIMIT_WORDS = 1 << 26  # what pycapnp may read in total, summed over every pass
CHECK_LIMIT_WORDS = TRAVERSAL_LIMIT_WORDS // 16  # what one message may hold: room for 16 passes
NESTING_LIMIT = 16  # our deepest message nests 4 levels
# A sound message costs at most about a word of traversal per word it holds (an empty
# object costs 1, paid for by the pointer word that reaches it). Lists of zero-sized
# structs are the exception: a 1 KB frame can declare millions of elements that take no
# bytes, and every reader expands each into a full record (a fuzzer found one that took
# 2 GB in to_dict, and the detector would have queued a million events). So the check's
# budget follows the frame's own size, not only the global limit.
BUDGET_PER_WORD = 2
BUDGET_SLACK_WORDS = 64


def check_budget(size_bytes: int) -> int:
    """Traversal words a frame of this size may cost in the check."""
    return min(CHECK_LIMIT_WORDS, BUDGET_PER_WORD * (size_bytes // 8) + BUDGET_SLACK_WORDS)


MAX_SEGMENTS = 64

capnp.remove_import_hook()


def schema_dir() -> Path:
    """Where the .capnp files are: inside an installed wheel, or the repo's schemas/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas", here.parents[1] / "schemas"):
        if (candidate / SCHEMA_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{SCHEMA_FILE} not found beside {here}")


_schema = capnp.load(str(schema_dir() / SCHEMA_FILE))
Envelope = _schema.Envelope
ProcessRecord = _schema.ProcessRecord
ProcessEvent = _schema.ProcessEvent
Alert = _schema.Alert
Heartbeat = _schema.Heartbeat
AuditRecord = _schema.AuditRecord
SCHEMA_VERSION: int = _schema.schemaVersion
# The schema's `enum Severity`, lowest first: the one list of severities.
SEVERITIES: tuple[str, ...] = tuple(
    sorted(_schema.Severity.schema.enumerants, key=_schema.Severity.schema.enumerants.get)
)
# A start or modify event's `reason` when the process was gone before its argv was
# read: `argv_lost: late_wake` or `argv_lost: busy` (the collector's argv.lost). Its
# record holds what the kernel told (pid, parent, start; the name if a zombie was left
# to read), no argv or executable: a new program image all the same, not a version of
# the one before it with argv missing.
ARGV_LOST = "argv_lost"
BODY_KINDS: tuple[str, ...] = tuple(Envelope.new_message().body.schema.union_fields)
_SEGMENT_HEAD = struct.Struct("<II")  # segment count - 1, first segment's size in words


def _envelope_layout() -> tuple[int, int, int, int, int, int, int, int, dict[int, str]]:
    """Where the Envelope header sits in its struct, from the schema (not hard-coded):
    (word, shift) of schemaVersion and of the body discriminant, the word of seq, the
    pointer slots of sourceId and bootId, and the body kind of each discriminant."""
    node = Envelope.schema.node.struct
    slots = {f.name: f.slot for f in node.fields if f.which() == "slot"}
    body = Envelope.new_message().body.schema.node.struct
    kinds = {f.discriminantValue: f.name for f in body.fields}
    assert slots["schemaVersion"].type.which() == "uint16" and slots["seq"].type.which() == "uint64"
    version, disc = slots["schemaVersion"].offset, body.discriminantOffset  # in 16-bit units
    return (
        version // 4,
        version % 4 * 16,
        disc // 4,
        disc % 4 * 16,
        slots["seq"].offset,
        slots["sourceId"].offset,
        slots["bootId"].offset,
        max(slots["sourceId"].offset, slots["bootId"].offset) + 1,
        kinds,
    )


(
    _VERSION_WORD,
    _VERSION_SHIFT,
    _KIND_WORD,
    _KIND_SHIFT,
    _SEQ_WORD,
    _SOURCE_SLOT,
    _BOOT_SLOT,
    _TEXT_SLOTS,
    _KIND_OF,
) = _envelope_layout()
_HEADER_WORDS = max(_VERSION_WORD, _KIND_WORD, _SEQ_WORD) + 1


class DecodeError(ValueError):
    """Untrusted bytes that are not a valid envelope: why, and how many bytes."""

    def __init__(self, reason: str, size: int) -> None:
        super().__init__(f"{reason} ({size} bytes)")
        self.reason = reason
        self.size = size


@dataclass(frozen=True, slots=True)
class Header:
    source_id: str
    boot_id: str
    seq: int
    sent_ns: int


def encode_envelope(
    header: Header, body_kind: str, body: dict[str, Any] | None = None, fast: bool = True
) -> bytes:
    """Build one Envelope. `body` is a dict of the body's fields (None for `empty`).

    A field that is not in the schema, or a value of the wrong type or out of range,
    raises ValueError or TypeError naming it, e.g. "processEvent.record.pid: ...".
    `fast`: set the fields the way compiled for the dicts' key orders (_fill_fast);
    False: one by one through the plan (the same bytes; what names a bad field).
    """
    if fast and body_kind in _PACKED and type(body) is dict:
        try:
            return _pack_envelope(header, _PACKED[body_kind], body)
        except Exception:  # pycapnp's way below: the same bytes, or the error named
            pass
    plan = _BODY_PLANS.get(body_kind)
    if plan is None:
        raise ValueError(f"unknown envelope body {body_kind!r}")
    words = _first_segment_words(body_kind, body)
    msg = Envelope.new_message(num_first_segment_words=words) if words else Envelope.new_message()
    set_ = msg._set_by_field
    set_(_F_VERSION, SCHEMA_VERSION)
    set_(_F_SOURCE, header.source_id)
    set_(_F_BOOT, header.boot_id)
    set_(_F_SEQ, header.seq)
    set_(_F_SENT, header.sent_ns)
    field = _BODY_FIELDS[body_kind]
    if body_kind == "empty":
        msg.body._set_by_field(field, None)
    elif body is None:
        raise ValueError(f"envelope body {body_kind!r} needs a value")
    elif fast:
        try:
            _fill_fast(msg.body._init_by_field(field), body, plan)
        except Exception:  # built again the general way, which names what is wrong
            return encode_envelope(header, body_kind, body, fast=False)
    else:
        try:
            _fill_plan(msg.body._init_by_field(field), body, plan)
        except _FieldError as exc:
            raise exc.error(body_kind) from None
    data = msg.to_bytes()
    if words and data[0] | data[1] | data[2] | data[3]:  # spilled into more segments
        _learn_batch_words(body_kind, body, len(data) // 8)
    return data


def _pack_envelope(header: Header, packed: tuple[int, int, Any], body: dict[str, Any]) -> bytes:
    """encode_envelope's bytes written by wirepack: the root struct, then in pycapnp's
    order the header texts, the body's struct and what it holds. The compiled writer
    first, where it was built and takes the body; else wirepack's Python writer."""
    discriminant, slot, st = packed
    buf = _envelope_prefix(header, discriminant)
    source, boot = header.source_id, header.boot_id
    data = wirepack.finish(buf, _SOURCE_AT, source, _BOOT_AT, boot, slot, st, body)
    if data is not None:
        return data
    return _python_pack_envelope(buf, header, slot, st, body)


def _envelope_prefix(header: Header, discriminant: int) -> bytearray:
    """The segment table (its size still 0), the root pointer and struct, header set."""
    buf = bytearray(_ENVELOPE_START)
    struct.pack_into("<Q", buf, 8, _ENVELOPE_ROOT)
    _HEADER_PACK.pack_into(buf, 16, SCHEMA_VERSION, discriminant, header.seq, header.sent_ns)
    return buf


def _python_pack_envelope(
    buf: bytearray, header: Header, slot: int, st: wirepack._Struct, body: dict[str, Any]
) -> bytes:
    """_pack_envelope by wirepack's Python writer, from the prefix on."""
    wirepack.append_text(buf, _SOURCE_AT, header.source_id)
    wirepack.append_text(buf, _BOOT_AT, header.boot_id)
    wirepack.append_struct(buf, slot, st, body)
    _SEGMENT_HEAD.pack_into(buf, 0, 0, (len(buf) - 8) >> 3)
    return bytes(buf)


def _packing() -> tuple[dict[str, tuple[int, int, Any]], int, int, struct.Struct, int, int]:
    """What _pack_envelope needs from the schema: per packed body kind (discriminant,
    byte of its pointer, its struct); the root's size, pointer and header layout."""
    node = Envelope.schema.node.struct
    words, pointers = node.dataWordCount, node.pointerCount
    root = 16 + 8 * words  # segment table, root pointer, then the data section
    slots = {f.name: f.slot for f in node.fields if f.which() == "slot"}
    union = Envelope.schema.fields["body"].schema
    places = {
        "version": 2 * slots["schemaVersion"].offset,
        "seq": 8 * slots["seq"].offset,
        "sent": 8 * slots["sentNs"].offset,
        "kind": 2 * union.node.struct.discriminantOffset,
    }
    order = sorted(places, key=places.__getitem__)  # one pack: the fields by offset
    formats = {"version": "H", "seq": "Q", "sent": "q", "kind": "H"}
    fmt, end = "<", 0
    for name in order:
        at = places[name]
        fmt += (f"{at - end}x" if at > end else "") + formats[name]
        end = at + struct.calcsize(formats[name])
    assert order == ["version", "kind", "seq", "sent"], order  # _pack_envelope's order
    packed = {}
    # the collector's events, and the detector's alerts: with its ancestry an alert took
    # ~52 us through pycapnp's fast way, ~12 us here (an alert storm's largest piece)
    for kind in ("processEvent", "processEventBatch", "alert"):
        member = union.fields[kind]
        packed[kind] = (
            member.proto.discriminantValue,
            root + 8 * member.proto.slot.offset,
            wirepack.struct_of(member.schema),
        )
    return (
        packed,
        root + 8 * pointers,
        (words << 32) | (pointers << 48),
        struct.Struct(fmt),
        root + 8 * slots["sourceId"].offset,
        root + 8 * slots["bootId"].offset,
    )


_PACKED, _ENVELOPE_START, _ENVELOPE_ROOT, _HEADER_PACK, _SOURCE_AT, _BOOT_AT = _packing()


# Messages are built in one segment where we can size it: a reader follows far pointers
# between segments much more slowly (two per event in a batch otherwise), and so does
# wirecheck. pycapnp starts with 1024 words, enough for all but batches and RPC payloads.
_words_per_event = 192  # grows when a batch spills over; what one event takes, with room
MAX_FIRST_SEGMENT_WORDS = 1 << 17  # 1 MiB: bigger messages may take several segments
MAX_WORDS_PER_EVENT = 2048  # one outsized event must not make every later batch huge


def _first_segment_words(body_kind: str, body: dict[str, Any] | None) -> int | None:
    if not body:
        return None
    if body_kind == "processEventBatch":
        words = 64 + _words_per_event * len(body.get("events") or ())
    elif body_kind in ("rpcRequest", "rpcReply"):
        payloads = body.get("payloads") or ()
        texts = sum(len(v) for v in body.values() if isinstance(v, str | bytes))
        words = 128 + (texts + sum(len(p) + 15 for p in payloads)) // 8
    else:
        return None
    return min(words, MAX_FIRST_SEGMENT_WORDS) if words > 1024 else None


def _learn_batch_words(body_kind: str, body: dict[str, Any] | None, words: int) -> None:
    global _words_per_event
    if body_kind == "processEventBatch" and body and body.get("events"):
        grown = words * 5 // 4 // len(body["events"]) + 1
        _words_per_event = min(max(_words_per_event, grown), MAX_WORDS_PER_EVENT)


# How each field of a struct is set, worked out once per struct type from the schema:
# name -> (field, how, plan of the nested struct, default). Setting by field object
# skips pycapnp's lookup by name, about half the cost of setattr. A number or bool
# that IS its default (the cached small int or the bool singleton) is not set at all:
# its bits are zero either way, so the bytes are the same.
_VALUE, _STRUCT, _STRUCT_LIST, _LIST, _GROUP = range(5)
_Plan = dict[str, tuple[Any, int, Any, Any]]
_plans: dict[int, _Plan] = {}
_NO_DEFAULT = object()  # never `is` a value: the field is always set
_INT_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
# What pycapnp raises for a value it cannot set (KjException for a type mismatch or a
# number out of range, AttributeError for an unknown enumerant, OverflowError, ...).
_SET_ERRORS = (capnp.KjException, AttributeError, TypeError, ValueError, OverflowError)


def _skippable_default(proto: Any) -> Any:
    """The default of a number or bool field as the object `is` can spot; else none."""
    if proto.discriminantValue != 0xFFFF:  # a union member: setting it picks the member
        return _NO_DEFAULT
    kind = proto.slot.type.which()
    default = getattr(proto.slot.defaultValue, kind, None) if kind != "void" else None
    if kind == "bool":
        return bool(default)
    if kind in _INT_TYPES and -5 <= int(default) <= 256:  # CPython's cached small ints
        return int(default)
    return _NO_DEFAULT


def _plan_of(schema: Any) -> _Plan:
    plan = _plans.get(schema.node.id)
    if plan is not None:
        return plan
    plan = _plans[schema.node.id] = {}  # registered first: a struct may contain itself
    for name, field in schema.fields.items():
        proto = field.proto
        if proto.which() == "group":
            plan[name] = (field, _GROUP, None, _NO_DEFAULT)
            continue
        kind = proto.slot.type.which()
        if kind == "struct":
            plan[name] = (field, _STRUCT, _plan_of(field.schema), _NO_DEFAULT)
        elif kind == "list" and proto.slot.type.list.elementType.which() == "struct":
            plan[name] = (field, _STRUCT_LIST, _plan_of(field.schema.elementType), _NO_DEFAULT)
        elif kind == "list":
            plan[name] = (field, _LIST, None, _NO_DEFAULT)
        else:
            plan[name] = (field, _VALUE, None, _skippable_default(proto))
    return plan


def _body_plans() -> tuple[dict[str, _Plan], dict[str, Any]]:
    union = Envelope.schema.fields["body"].schema
    plans, fields = {}, {}
    for kind in BODY_KINDS:
        field = fields[kind] = union.fields[kind]
        plans[kind] = _plan_of(field.schema) if field.proto.slot.type.which() == "struct" else {}
    return plans, fields


_BODY_PLANS, _BODY_FIELDS = _body_plans()
_F_VERSION, _F_SOURCE, _F_BOOT, _F_SEQ, _F_SENT = (
    Envelope.schema.fields[name]
    for name in ("schemaVersion", "sourceId", "bootId", "seq", "sentNs")
)


def _fill(builder: Any, values: dict[str, Any]) -> None:
    """Fill any struct builder from a dict, as encode_envelope fills a body."""
    try:
        _fill_plan(builder, values, _plan_of(builder.schema))
    except _FieldError as exc:
        raise exc.error(builder.schema.node.displayName.rsplit(":", 1)[-1]) from None


def _fill_plan(builder: Any, values: dict[str, Any], plan: _Plan) -> None:
    """Set fields one by one: several times faster in pycapnp than its dict conversion."""
    set_ = builder._set_by_field
    for key, value in values.items():
        try:
            field, how, sub, default = plan[key]
        except (KeyError, TypeError):
            raise _FieldError(key, ValueError, "no such field in the schema") from None
        if value is default:
            continue
        try:
            if how == _VALUE:
                set_(field, value)
            elif how == _STRUCT:
                if isinstance(value, dict):
                    _fill_plan(builder._init_by_field(field), value, sub)
                else:
                    set_(field, value)  # a struct reader or builder is copied
            elif isinstance(value, list | tuple):
                _fill_list(builder._init_by_field(field, len(value)), value, field, sub)
            elif how == _GROUP:
                _fill_plan(getattr(builder, key), value, _plan_of(field.schema))
            else:
                set_(field, value)  # not a list: pycapnp refuses it
        except _FieldError as exc:
            raise exc.inside(key) from None
        except _SET_ERRORS as exc:
            raise _FieldError(key, *_reason(exc, field, value)) from None


# --- the fast way: one function per struct type and key order ------------------------
# Events come as dicts of the same keys in the same order (procfs.FIELDS, event_body),
# so each order gets straight-line code, compiled once: its values taken with one
# itemgetter call, each set by its field object, defaults skipped, in the dict's order
# (the order pycapnp allocates texts and lists in: the bytes are those of _fill_plan).
# No checks: whatever goes wrong, encode_envelope builds the message again through
# _fill_plan, which raises the named error. ~15 % less than _fill_plan per record.
MAX_KEY_ORDERS = 64  # per struct type; dicts in other orders take _fill_plan
_fast_fills: dict[int, dict[tuple[Any, ...], Callable[[Any, Any], None] | None]] = {}


class _NoFastWay(Exception):
    """A dict _compile_fill leaves to _fill_plan."""


def _fill_fast(builder: Any, values: dict[str, Any], plan: _Plan) -> None:
    orders = _fast_fills.get(id(plan))
    if orders is None:
        orders = _fast_fills[id(plan)] = {}
    keys = tuple(values)
    fill = orders.get(keys)
    if fill is None:
        if keys in orders or len(orders) >= MAX_KEY_ORDERS:
            raise _NoFastWay
        fill = orders[keys] = _compile_fill(plan, keys)
        if fill is None:
            raise _NoFastWay
    fill(builder, values)


def _compile_fill(plan: _Plan, keys: tuple[Any, ...]) -> Callable[[Any, Any], None] | None:
    """Straight-line code filling a struct from a dict with exactly these keys, in this
    order, as _fill_plan would; None when a key is unknown or a group (left to it)."""
    if not all(isinstance(k, str) and k in plan for k in keys):
        return None
    if not keys:
        return _fill_nothing
    scope: dict[str, Any] = {
        "getter": operator.itemgetter(*keys),
        "fast": _fill_fast,
        "fill_list": _fill_list,
    }
    names = [f"x{i}" for i in range(len(keys))]
    lines = ["def filler(b, v):", "    set_ = b._set_by_field", "    init = b._init_by_field"]
    unpack = names[0] if len(keys) == 1 else ", ".join(names)  # one key: no tuple
    lines.append(f"    {unpack} = getter(v)")
    for i, key in enumerate(keys):
        field, how, sub, default = plan[key]
        x, f = names[i], f"f{i}"
        scope[f], scope[f"s{i}"], scope[f"d{i}"] = field, sub, default
        if how == _VALUE:
            if default is _NO_DEFAULT:
                lines.append(f"    set_({f}, {x})")
            else:
                lines.append(f"    if {x} is not d{i}:")
                lines.append(f"        set_({f}, {x})")
        elif how == _STRUCT:
            lines.append(f"    if isinstance({x}, dict):")
            lines.append(f"        fast(init({f}), {x}, s{i})")
            lines.append("    else:")
            lines.append(f"        set_({f}, {x})")
        elif how in (_LIST, _STRUCT_LIST):
            lines.append(f"    if isinstance({x}, (list, tuple)):")
            lines.append(f"        fill_list(init({f}, len({x})), {x}, {f}, s{i}, fast)")
            lines.append("    else:")
            lines.append(f"        set_({f}, {x})")
        else:
            return None  # a group: _fill_plan's way
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<wire filler>", "exec"), scope)
    return scope["filler"]


def _fill_nothing(builder: Any, values: Any) -> None:
    pass


def _fill_list(
    items: Any,
    values: list[Any] | tuple[Any, ...],
    field: Any,
    sub: Any,
    fill: Callable[[Any, dict, Any], None] | None = None,
) -> None:
    """A list's items; a dict item's struct by `fill` (_fill_plan, or _fill_fast from
    the compiled fillers)."""
    fill = fill or _fill_plan
    i = 0
    try:
        if sub is None:
            for i, item in enumerate(values):
                items[i] = item
        else:
            for i, item in enumerate(values):
                if isinstance(item, dict):
                    fill(items[i], item, sub)
                else:
                    items[i] = item  # pycapnp copies a struct reader, refuses the rest
    except _FieldError as exc:
        raise exc.inside(f"[{i}]") from None
    except _SET_ERRORS as exc:
        raise _FieldError(f"[{i}]", *_reason(exc, field, values[i], element=True)) from None


class _FieldError(Exception):
    """A field that could not be set, with its path, until encode_envelope names it."""

    def __init__(self, name: str, kind: type[Exception], reason: str) -> None:
        super().__init__(reason)
        self.path = [str(name)]
        self.kind = kind
        self.reason = reason

    def inside(self, name: str) -> _FieldError:
        self.path.append(name)
        return self

    def error(self, body_kind: str) -> Exception:
        path = body_kind
        for name in reversed(self.path):
            path += name if name.startswith("[") else f".{name}"
        return self.kind(f"{path}: {self.reason}")


def _reason(
    exc: Exception, field: Any, value: Any, element: bool = False
) -> tuple[type[Exception], str]:
    """(ValueError or TypeError, why) for what pycapnp raised on setting a field, or
    an element of a list field."""
    slot_type = field.proto.slot.type if field.proto.which() == "slot" else None
    expected = slot_type.which() if slot_type is not None else "group"
    if expected == "list":
        element_type = slot_type.list.elementType.which()
        expected = element_type if element else f"list of {element_type}"
    text = str(exc)
    got = f"{type(value).__name__} {value!r:.60}"
    if isinstance(exc, UnicodeError):
        return ValueError, f"{got} is not valid Unicode text: {exc}"
    if "out-of-range" in text or isinstance(exc, OverflowError):
        return ValueError, f"{got} is out of range for {expected}"
    if "enumerant" in text:
        return ValueError, f"{got} is not a value of the enum"
    if "no such member" in text:
        return ValueError, f"{got}: no such field in the schema"
    return TypeError, f"expected {expected}, got {got}"


def split_segments(data: bytes | memoryview) -> list[memoryview]:
    """Check the segment table of an unpacked message and return its segments.

    Cheap enough for the broker to run on every frame: it reads only the header.
    """
    view = memoryview(data)
    size = len(view)
    if size < 8 or size % 8:
        raise DecodeError("not a Cap'n Proto message: length is not a positive multiple of 8", size)
    (count_minus_one,) = struct.unpack_from("<I", view, 0)
    count = count_minus_one + 1
    if count > MAX_SEGMENTS:
        raise DecodeError(f"too many segments ({count} > {MAX_SEGMENTS})", size)
    header_words = (count + 2) // 2  # 4-byte count + 4 bytes per size, padded to 8
    if size < header_words * 8:
        raise DecodeError("truncated segment table", size)
    sizes = struct.unpack_from(f"<{count}I", view, 4)
    if header_words * 8 + sum(sizes) * 8 != size:
        raise DecodeError("segment table does not match the message length", size)
    segments = []
    offset = header_words * 8
    for words in sizes:
        segments.append(view[offset : offset + words * 8])
        offset += words * 8
    return segments


def decode_envelope(data: bytes | memoryview) -> Any:
    """Decode untrusted bytes into an Envelope reader.

    The structure of the whole message is validated (see wirecheck) and the header is
    read, so a returned reader can be copied and measured safely. A body field of the
    wrong type or with invalid UTF-8 still raises on access: readers of a body catch
    that as a malformed message (Subscriber does for the services).
    """
    return decode_parts(data)[0]


def decode_parts(data: bytes | memoryview) -> tuple[Any, str, str, str, int]:
    """decode_envelope, also returning the header it read on the way:
    (reader, body kind, sourceId, bootId, seq). Raises DecodeError."""
    if type(data) is not bytes:
        data = bytes(data)  # the reader keeps the bytes: they must not change under it
    size = len(data)
    count_minus_one, first_words = _SEGMENT_HEAD.unpack_from(data) if size >= 8 else (1, 0)
    if count_minus_one == 0 and first_words * 8 + 8 == size and size >= 16:
        # One segment, as nearly every message: no table to walk, nothing copied.
        views = [memoryview(data)[8:]]
        base = 8
    else:
        views = split_segments(data)
        base = size - sum(len(v) for v in views)  # where the first segment starts
    segments = [segment_words(v) for v in views]
    try:
        check_words(segments, check_budget(size), NESTING_LIMIT)
    except StructureError as exc:
        raise DecodeError(f"malformed message: {exc}", size) from None
    try:
        reader = Envelope.from_segments(
            views, traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS, nesting_limit=NESTING_LIMIT
        )
    except Exception as exc:  # not expected once checked; kept typed all the same
        raise DecodeError(f"malformed message: {type(exc).__name__}: {exc}", size) from None
    header = _read_header(segments[0], data, base, size)
    if header is None:  # an unusual layout (a far root, far texts): pycapnp reads it
        header = _read_header_slowly(reader, size)
    return (reader, *header)


def _read_header(words: Any, data: bytes, base: int, size: int) -> tuple[str, str, str, int] | None:
    """The header straight from the checked words, where the root is a near struct and
    its texts near lists; None otherwise. Same values and errors as pycapnp's reads."""
    root = words[0]
    if root & 0x80000003:  # not a struct, or at a negative offset
        return None
    at = 1 + ((root & 0xFFFFFFFF) >> 2)
    data_words = (root >> 32) & 0xFFFF
    pointers = root >> 48
    if data_words < _HEADER_WORDS or pointers < _TEXT_SLOTS:
        return None  # fields past the section read as defaults: leave that to pycapnp
    version = (words[at + _VERSION_WORD] >> _VERSION_SHIFT) & 0xFFFF
    if version != SCHEMA_VERSION:
        raise DecodeError(f"schema version {version} is not the supported {SCHEMA_VERSION}", size)
    discriminant = (words[at + _KIND_WORD] >> _KIND_SHIFT) & 0xFFFF
    kind = _KIND_OF.get(discriminant)
    if kind is None:
        raise DecodeError(f"unknown body kind {discriminant!r}", size)
    source = _text(words, at + data_words + _SOURCE_SLOT, data, base, size)
    boot = _text(words, at + data_words + _BOOT_SLOT, data, base, size)
    if source is None or boot is None:
        return None
    return kind, source, boot, words[at + _SEQ_WORD]


def _text(words: Any, slot: int, data: bytes, base: int, size: int) -> str | None:
    """A Text field at a pointer slot of the first segment (bounds already checked);
    None when it is not a near pointer, for pycapnp to read."""
    value = words[slot]
    if not value:
        return ""
    if value & 0x7_8000_0003 != 0x2_0000_0001:
        return None  # a far pointer, or not a byte list: pycapnp reads it, or says why not
    length = value >> 35
    start = base + (slot + 1 + ((value & 0xFFFFFFFF) >> 2)) * 8
    if not length or data[start + length - 1]:
        raise DecodeError(
            "malformed message: Message contains text that is not NUL-terminated", size
        )
    try:
        return data[start : start + length - 1].decode()
    except UnicodeDecodeError as exc:
        raise DecodeError(f"malformed message: UnicodeDecodeError: {exc}", size) from None


def _read_header_slowly(reader: Any, size: int) -> tuple[str, str, str, int]:
    try:
        kind = reader.body.which()
        source, boot = reader.sourceId, reader.bootId  # header texts must be valid UTF-8
        version, seq = reader.schemaVersion, reader.seq
    except capnp.KjException as exc:
        raise DecodeError(f"malformed message: {_kj_reason(exc)}", size) from None
    except Exception as exc:  # pycapnp raises assorted types for hostile input
        raise DecodeError(f"malformed message: {type(exc).__name__}: {exc}", size) from None
    if version != SCHEMA_VERSION:
        raise DecodeError(f"schema version {version} is not the supported {SCHEMA_VERSION}", size)
    if kind not in BODY_KINDS:
        raise DecodeError(f"unknown body kind {kind!r}", size)
    return str(kind), source, boot, seq


def _kj_reason(exc: Exception) -> str:
    text = str(exc)
    return text.split("failed: ", 1)[-1].splitlines()[0][:200]


def body_kind(reader: Any) -> str:
    return str(reader.body.which())


def body_of(reader: Any) -> Any:
    return getattr(reader.body, str(reader.body.which()))


_F_BODY = Envelope.schema.fields["body"]
_F_EVENTS = _schema.ProcessEventBatch.schema.fields["events"]


def body_as(reader: Any, kind: str) -> Any:
    """The body of an Envelope reader whose kind is known (decode_parts read it): by
    field object, 0.35 us where `reader.body.<kind>` looks both names up in 1.3 us. A
    body pointer of the wrong type raises DecodeError."""
    try:
        return reader._get_by_field(_F_BODY)._get_by_field(_BODY_FIELDS[kind])
    except capnp.KjException as exc:
        raise DecodeError(f"malformed field: {_kj_reason(exc)}", 0) from None


def batch_events(batch: Any) -> Any:
    """The events of a processEventBatch body reader; a malformed list pointer (another
    kind of list, a struct where a list should be) raises DecodeError."""
    try:
        return batch._get_by_field(_F_EVENTS)
    except Exception as exc:  # pycapnp's KjException, or what it raises for hostile bytes
        raise _malformed(exc) from None


def process_events(reader: Any) -> list[Any]:
    """The ProcessEvent(s) of a processEvent or processEventBatch envelope; [] for any
    other body."""
    kind = body_kind(reader)
    if kind == "processEventBatch":
        return list(reader.body.processEventBatch.events)
    return [reader.body.processEvent] if kind == "processEvent" else []


# --- reading bodies ------------------------------------------------------------------


_Read = Callable[[Any], Any]


def dict_reader(schema: Any, names: Iterable[str] | None = None) -> Callable[[Any], dict]:
    """reader -> dict for one struct type: what services read bodies with, several times
    faster than `to_dict` (which dispatches dynamically on every field). Each field is
    read by its schema object (pycapnp's `_get_by_field`, no lookup by name) and only
    the values that need it are converted: enums to their names, Data to hex, lists to
    lists, structs (and lists of them) to dicts. Unlike `to_dict`, unset text fields
    appear as "" so every dict has every key. `names`: only these fields (a field not
    read costs nothing). A malformed field raises DecodeError."""
    return _compile(schema, tuple(schema.fields if names is None else names), "dict")


def tuple_reader(schema: Any, names: Iterable[str], raw: bool = False) -> _Read:
    """reader -> tuple of the named fields, in order, converted as by `dict_reader` (to
    build an object positionally). `raw`: unconverted, for hot paths that need a few
    fields of a message they may then drop: texts and numbers as they are, structs as
    readers (to read further), lists as list readers, enums as enumerants. A malformed
    field raises DecodeError."""
    return _compile(schema, tuple(names), "tuple", raw)


def _malformed(exc: Exception) -> DecodeError:
    if isinstance(exc, DecodeError):
        return exc
    return DecodeError(f"malformed field: {type(exc).__name__}: {exc}", 0)


def _compile(
    schema: Any, names: tuple[str, ...], shape: str, raw: bool = False, checked: bool = True
) -> _Read:
    """A reader for the named fields of a struct, compiled from the schema once, as
    dataclasses and namedtuple compile their methods: one dict (or tuple) display
    reading each field by its schema object, with no per-field loop or type dispatch at
    run time (10-15 % faster than the best generic loop, and it runs for every process
    event and alert). The source holds only repr-quoted schema names and calls of the
    objects bound in `scope`. `checked`: pycapnp's errors become DecodeError (nested
    readers leave that to the outermost)."""
    scope: dict[str, Any] = {"_malformed": _malformed}
    reads = []
    for i, name in enumerate(names):
        field = schema.fields[name]
        if field.proto.discriminantValue != 0xFFFF:
            raise ValueError(f"{schema.node.displayName}.{name}: a union member: use to_dict")
        scope[f"f{i}"] = field
        read = f"get(f{i})"
        fix = None if raw else _conversion(field.proto.slot.type, lambda f=field: f.schema)
        if fix is not None:
            scope[f"c{i}"] = fix
            read = f"c{i}({read})"
        reads.append((name, read))
    if shape == "dict":
        value = "{" + ", ".join(f"{name!r}: {read}" for name, read in reads) + "}"
    else:
        value = "(" + ", ".join(read for _, read in reads) + ",)"
    body = f"    get = reader._get_by_field\n    return {value}\n"
    if checked:
        body = (
            "    try:\n" + body.replace("    ", "        ")
            + "    except Exception as exc:\n        raise _malformed(exc) from None\n"
        )  # fmt: skip
    source = "def read(reader):\n" + body
    exec(compile(source, f"<wire reader of {schema.node.displayName}>", "exec"), scope)
    return scope["read"]


def _conversion(slot_type: Any, schema: Callable[[], Any]) -> _Read | None:
    """How a value read of this type becomes plain Python (None: it already is);
    `schema()` gives the type's schema (only structs and lists have one to ask for)."""
    kind = slot_type.which()
    if kind == "enum":
        return str
    if kind == "data":
        return _hex
    if kind == "struct":
        struct_schema = schema()
        return _compile(struct_schema, tuple(struct_schema.fields), "dict", checked=False)
    if kind == "list":
        element = _conversion(slot_type.list.elementType, lambda: schema().elementType)
        if element is None:
            return list
        return partial(_each, element)
    if kind in ("anyPointer", "interface"):
        raise ValueError(f"no conversion for {kind} fields: read with to_dict")
    return None


def _hex(value: Any) -> str:
    return bytes(value).hex()


def _each(convert: _Read, items: Any) -> list[Any]:
    return [convert(item) for item in items]


def to_dict(reader: Any) -> dict[str, Any]:
    """A JSON-ready dict of a decoded message; Data fields become hex strings.

    Raises DecodeError when a field of the (structurally valid) message is malformed.
    """
    try:
        return _jsonable(reader.to_dict())
    except Exception as exc:  # a wrong-typed pointer, a bad enum, invalid UTF-8
        raise DecodeError(f"malformed field: {type(exc).__name__}: {exc}", 0) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


# --- RPC bodies -------------------------------------------------------------


def rpc_request(
    request_id: int,
    target: str,
    verb: str,
    params: dict[str, Any] | None,
    deadline_ns: int,
    payload: bytes = b"",
    payloads: list[bytes] | None = None,
) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "target": target,
        "verb": verb,
        "deadlineNs": deadline_ns,
        "paramsJson": json.dumps(params or {}),
        "payload": payload,
        "payloads": payloads or [],
    }


def rpc_reply(
    request_id: int,
    *,
    result: Any = None,
    error: str = "",
    error_code: str = "",
    payloads: list[bytes] | None = None,
) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "ok": not error_code,
        "errorCode": error_code,
        "error": error,
        "resultJson": json.dumps(result) if result is not None else "",
        "payloads": payloads or [],
    }


def rpc_params(request: Any) -> dict[str, Any]:
    """The params of a decoded RpcRequest; a bad JSON text raises DecodeError."""
    text = request.paramsJson
    if not text:
        return {}
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise DecodeError(f"RPC params are not JSON: {exc}", len(text)) from None
    if not isinstance(params, dict):
        raise DecodeError("RPC params must be a JSON object", len(text))
    return params


def rpc_result(reply: Any) -> Any:
    text = reply.resultJson
    return json.loads(text) if text else None
