"""Cap'n Proto bytes written straight from dicts, for wire.encode_envelope only.

pycapnp costs ~0.5 us a field set: a process event (60 fields with its record) took
~30 us to encode, most of the collector's work per event. Here each struct type and
dict key order gets straight-line code, compiled once from the schema: the data
section in one struct.pack_into, each text, list and nested struct appended to one
bytearray in the order pycapnp allocates them, so the bytes are those pycapnp builds
(tests/unit/test_wirepack.py holds them to it). What the code does not cover (unions
inside a body, groups, Data, lists of numbers, a struct reader as a value, a value
of another type) raises, and wire.py builds the message through pycapnp instead,
which names what is wrong.

Where the optional C extension `daemoneye._wirepack` was built (setup.py), a message is
written by its compiled copy of the same writer first (`IMPLEMENTATION`): each struct
type gets a native Layout, and each key order a plan made here from the schema
(`_native_fields`, the twin of `_compile`). What the C writer does not take, it refuses
(Unpackable), and the Python writer below runs, then pycapnp.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from typing import Any

# pointer words (capnp encoding): struct 0, list 1; list element sizes
_POINTERS = 6  # a list of pointers (List(Text))
_COMPOSITE = 7  # a list of structs: a tag word, then the elements
_BYTE = 2  # a Text: bytes and a NUL
_PAD = [bytes(8 - i) for i in range(8)]  # a text of n bytes is followed by _PAD[n & 7]
_FORMATS = {
    "int8": "b",
    "int16": "h",
    "int32": "i",
    "int64": "q",
    "uint8": "B",
    "uint16": "H",
    "uint32": "I",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
    "enum": "H",
}
_LISTS = [f"<{m}Q" for m in range(256)]  # the pointers of a list of m texts
_SIZES = {"b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "q": 8, "Q": 8, "f": 4, "d": 8}
MAX_KEY_ORDERS = 64  # per struct type; dicts in other orders go through pycapnp
# the field kinds of a native plan (the K_* numbers of _wirepack.c)
NATIVE_KINDS = {
    name: number
    for number, name in enumerate(
        (
            "void", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
            "uint64", "float32", "float64", "enum", "text", "struct", "textList", "structList",
        )
    )
}  # fmt: skip


class Unpackable(Exception):
    """A struct type or a dict this module leaves to pycapnp."""


def struct_size(schema: Any) -> tuple[int, int]:
    node = schema.node.struct
    return node.dataWordCount, node.pointerCount


class _Struct:
    """One struct type: its size and its compiled fillers, one per key order."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self.data_words, self.pointers = struct_size(schema)
        self.bytes = 8 * (self.data_words + self.pointers)
        self.zeros = bytes(self.bytes)
        self.fillers: dict[tuple[Any, ...], Callable[[bytearray, int, Any], None] | None] = {}
        self.native = (
            None if _native is None else _native.Layout(self.data_words, self.pointers, self._plan)
        )

    def _plan(self, values: dict[str, Any]) -> None:
        """The C writer met a key order it has no plan for: make one (refused where the
        Python writer refuses it), within the same MAX_KEY_ORDERS."""
        assert self.native is not None
        keys = tuple(values)
        if not all(type(k) is str for k in keys):
            raise Unpackable(keys)  # never a native plan: it matches exact str keys only
        if keys not in self.fillers:
            if len(self.fillers) >= MAX_KEY_ORDERS:
                raise Unpackable(keys)
            self.fillers[keys] = _compile(self, keys)
        if self.native.orders >= MAX_KEY_ORDERS:
            raise Unpackable(keys)
        fields = None if self.fillers[keys] is None else _native_fields(self, keys)
        self.native.add(keys, fields)

    def forget_orders(self) -> None:
        """Drop every key order's filler and plan (tests)."""
        self.fillers.clear()
        if self.native is not None:
            self.native.forget()

    def fill(self, buf: bytearray, at: int, values: dict[str, Any]) -> None:
        """Fill the struct at byte `at` of `buf` (allocated, zeroed) from `values`."""
        keys = tuple(values)
        filler = self.fillers.get(keys)
        if filler is None:
            if keys in self.fillers or len(self.fillers) >= MAX_KEY_ORDERS:
                raise Unpackable(keys)
            filler = self.fillers[keys] = _compile(self, keys)
            if filler is None:
                raise Unpackable(keys)
        filler(buf, at, values)


_structs: dict[int, _Struct] = {}


def struct_of(schema: Any) -> _Struct:
    known = _structs.get(schema.node.id)
    if known is None:
        known = _structs[schema.node.id] = _Struct(schema)
    return known


def _default_bits(proto: Any, kind: str) -> int | None:
    """The default as the bits capnp XORs a stored value with; None: not supported."""
    default = getattr(proto.slot.defaultValue, kind, 0)
    if kind in ("float32", "float64"):
        return 0 if default == 0 else None
    if kind == "bool":
        return int(bool(default))
    if kind == "enum":
        return int(default)
    return int(default)


def _compile(st: _Struct, keys: tuple[Any, ...]) -> Callable[[bytearray, int, Any], None] | None:
    """Straight-line code for a dict with exactly these keys in this order; None when a
    key or a field type is one left to pycapnp."""
    fields = st.schema.fields
    if not all(isinstance(k, str) and k in fields for k in keys):
        return None
    if st.schema.node.struct.discriminantCount:
        return None  # a union in the struct: pycapnp's way
    scope: dict[str, Any] = {
        "pack": struct.pack_into,
        "PAD": _PAD,
        "LISTS": _LISTS,
        "Unpackable": Unpackable,
    }
    names = [f"x{i}" for i in range(len(keys))]
    lines = ["def filler(buf, at, v):"]
    if keys:
        scope["getter"] = operator.itemgetter(*keys)
        lines.append(f"    {names[0] if len(keys) == 1 else ', '.join(names)} = getter(v)")
    scalars: list[tuple[int, str, str]] = []  # (byte offset, format, expression)
    bools: dict[int, list[str]] = {}  # byte offset -> expressions of its bits
    body: list[str] = []  # the pointer fields, in key order (pycapnp's allocation order)
    pointers: dict[int, str] = {}  # slot -> the variable of its pointer word
    numbers: list[str] = []  # the values of number fields
    ptr_base = 8 * st.data_words
    for i, key in enumerate(keys):
        proto = fields[key].proto
        if proto.which() != "slot":
            return None  # a group
        kind = proto.slot.type.which()
        offset = proto.slot.offset
        x = names[i]
        if kind == "bool":
            default = _default_bits(proto, kind)
            lines.append(f"    if {x} is not True and {x} is not False: raise Unpackable({key!r})")
            bit = f"({x} is not {bool(default)})" if default else f"({x} is True)"
            bools.setdefault(offset // 8, []).append(f"{bit} << {offset % 8}")
        elif kind in _FORMATS:
            default = _default_bits(proto, kind)
            if default is None:
                return None
            fmt = _FORMATS[kind]
            expr = x
            if kind != "enum":
                numbers.append(x)  # pycapnp refuses a bool for a number; struct would not
            if kind == "enum":
                scope[f"e{i}"] = dict(fields[key].schema.enumerants)
                expr = f"e{i}[{x}]"
            if default:
                expr = f"({expr} ^ {default})"
            scalars.append((offset * _SIZES[fmt], fmt, expr))
        elif kind == "void":
            continue
        elif kind == "text":
            body += _text_code(x, f"p{offset}", f"ps + {8 * offset}")
            pointers[offset] = f"p{offset}"
        elif kind == "struct":
            sub = struct_of(fields[key].schema)
            scope[f"s{i}"] = sub
            body += _struct_code(x, f"p{offset}", f"ps + {8 * offset}", f"s{i}", sub)
            pointers[offset] = f"p{offset}"
        elif kind == "list":
            element = proto.slot.type.list.elementType.which()
            q = f"ps + {8 * offset}"
            if element == "text":
                body += _text_list_code(x, f"p{offset}", q)
            elif element == "struct":
                sub = struct_of(fields[key].schema.elementType)
                scope[f"s{i}"] = sub
                body += _struct_list_code(x, f"p{offset}", q, f"s{i}", sub)
            else:
                return None
            pointers[offset] = f"p{offset}"
        else:
            return None  # data, interfaces, anyPointer
    for byte, exprs in bools.items():
        scalars.append((byte, "B", " | ".join(exprs)))
    if numbers:
        refused = " or ".join(f"{x}.__class__ is bool" for x in numbers)
        lines.append(f"    if {refused}: raise Unpackable('a bool for a number')")
    if scalars:
        scalars.sort()
        fmt, end, exprs = "<", 0, []
        for byte, f, expr in scalars:
            if byte < end:
                return None  # overlapping fields (a union): not here
            fmt += f"{byte - end}x{f}" if byte > end else f
            end = byte + _SIZES[f]
            exprs.append(expr)
        scope["fmt"] = struct.Struct(fmt)
        lines.append(f"    fmt.pack_into(buf, at, {', '.join(exprs)})")
    if pointers:  # what a pointer is measured from: the word after it, ps + 8 * slot
        lines.append(f"    ps = at + {ptr_base + 8}")
        lines += body
        last = max(pointers) + 1
        scope["ptrs"] = struct.Struct(f"<{last}Q")
        words = ", ".join(pointers.get(k, "0") for k in range(last))
        lines.append(f"    ptrs.pack_into(buf, at + {ptr_base}, {words})")
    if len(lines) == 1:
        lines.append("    pass")
    source = "\n".join(lines) + "\n"
    exec(compile(source, "<wire packer>", "exec"), scope)
    return scope["filler"]  # type: ignore[no-any-return]


def _native_fields(
    st: _Struct, keys: tuple[str, ...]
) -> tuple[tuple[int, int, Any, Any], ...] | None:
    """The plan of the C writer for this key order: (kind, at, default, extra) a key,
    `at` a byte offset (a bool's: bit offset; a pointer's: slot). None where _compile
    refuses the order (the same checks, in the same place)."""
    fields = st.schema.fields
    if not all(isinstance(k, str) and k in fields for k in keys):
        return None
    if st.schema.node.struct.discriminantCount:
        return None
    plan: list[tuple[int, int, Any, Any]] = []
    spans: dict[int, int] = {}  # byte -> size of the scalars, bools by byte
    for key in keys:
        field = fields[key]
        proto = field.proto
        if proto.which() != "slot":
            return None
        kind = proto.slot.type.which()
        offset = proto.slot.offset
        if kind == "bool":
            plan.append((NATIVE_KINDS["bool"], offset, bool(_default_bits(proto, kind)), None))
            spans[offset // 8] = 1
        elif kind in _FORMATS:
            default = _default_bits(proto, kind)
            if default is None:
                return None
            size = _SIZES[_FORMATS[kind]]
            extra = dict(field.schema.enumerants) if kind == "enum" else None
            plan.append((NATIVE_KINDS[kind], offset * size, default or None, extra))
            spans[offset * size] = size
        elif kind == "void":
            plan.append((NATIVE_KINDS["void"], 0, None, None))
        elif kind == "text":
            plan.append((NATIVE_KINDS["text"], offset, None, None))
        elif kind == "struct":
            plan.append((NATIVE_KINDS["struct"], offset, None, struct_of(field.schema).native))
        elif kind == "list":
            element = proto.slot.type.list.elementType.which()
            if element == "text":
                plan.append((NATIVE_KINDS["textList"], offset, None, None))
            elif element == "struct":
                sub = struct_of(field.schema.elementType).native
                plan.append((NATIVE_KINDS["structList"], offset, None, sub))
            else:
                return None
        else:
            return None
    end = 0
    for byte in sorted(spans):
        if byte < end:
            return None  # overlapping fields (a union): not here
        end = byte + spans[byte]
    return tuple(plan)


def _text_code(x: str, var: str, q: str, indent: str = "    ") -> list[str]:
    """Append the text `x`; `var`: the word of a pointer at byte `q` to it."""
    return [
        f"{indent}b = {x}.encode()",
        f"{indent}n = len(b)",
        f"{indent}w = len(buf)",
        f"{indent}buf += b",
        f"{indent}buf += PAD[n & 7]",
        f"{indent}{var} = ((w - ({q})) >> 1) | {_BYTE << 32 | 1} | (n + 1) << 35",
    ]


def _struct_code(x: str, var: str, q: str, s: str, sub: _Struct) -> list[str]:
    word = (sub.data_words << 32) | (sub.pointers << 48)
    return [
        f"    if type({x}) is not dict: raise Unpackable({x!r})",
        "    w = len(buf)",
        f"    buf += {s}.zeros",
        f"    {var} = ((w - ({q})) >> 1) | {word}",
        f"    {s}.fill(buf, w, {x})",
    ]


def _text_list_code(x: str, var: str, q: str) -> list[str]:
    return [
        f"    if type({x}) is not list and type({x}) is not tuple: raise Unpackable({x!r})",
        f"    m = len({x})",
        "    lw = len(buf)",
        "    buf += bytes(8 * m)",
        f"    {var} = ((lw - ({q})) >> 1) | {_POINTERS << 32 | 1} | m << 35",
        "    if m:",
        "        items = []",
        f"        for i, t in enumerate({x}):",
        *_text_code("t", "e", "lw + 8 + 8 * i", "            "),
        "            items.append(e)",
        "        pack(LISTS[m] if m < 256 else f'<{m}Q', buf, lw, *items)",
    ]


def _struct_list_code(x: str, var: str, q: str, s: str, sub: _Struct) -> list[str]:
    words = sub.data_words + sub.pointers
    tag = (sub.data_words << 32) | (sub.pointers << 48)
    return [
        f"    if type({x}) is not list and type({x}) is not tuple: raise Unpackable({x!r})",
        f"    m = len({x})",
        "    lw = len(buf)",
        f"    buf += bytes(8 + {8 * words} * m)",
        f"    {var} = ((lw - ({q})) >> 1) | {_COMPOSITE << 32 | 1} | ({words} * m) << 35",
        f"    pack('<Q', buf, lw, (m << 2) | {tag})",
        f"    for i, item in enumerate({x}):",
        "        if type(item) is not dict: raise Unpackable(item)",
        f"        {s}.fill(buf, lw + 8 + {8 * words} * i, item)",
    ]


def finish(
    prefix: bytearray, source_at: int, source: str, boot_at: int, boot: str, slot: int,
    st: _Struct, body: dict[str, Any],
) -> bytes | None:  # fmt: skip
    """The compiled writer's message (see wire._pack_envelope), or None where there is
    no compiled writer or it does not take this body."""
    if st.native is None:
        return None
    try:
        native = _native.finish  # type: ignore[union-attr]
        return native(prefix, source_at, source, boot_at, boot, slot, st.native, body)
    except Exception:  # the Python writer runs, and names what is wrong
        return None


def append_text(buf: bytearray, q: int, text: str) -> None:
    """Append `text` and point the pointer at byte `q` of `buf` to it."""
    b = text.encode()
    n = len(b)
    w = len(buf)
    buf += b
    buf += _PAD[n & 7]
    struct.pack_into("<Q", buf, q, ((w - q - 8) >> 1) | 1 | _BYTE << 32 | (n + 1) << 35)


def append_struct(buf: bytearray, q: int, st: _Struct, values: dict[str, Any]) -> None:
    """Append a struct filled from `values`, pointed to by the pointer at byte `q`."""
    w = len(buf)
    buf += st.zeros
    struct.pack_into("<Q", buf, q, ((w - q - 8) >> 1) | st.data_words << 32 | st.pointers << 48)
    st.fill(buf, w, values)


try:
    from daemoneye import _wirepack as _native
except ImportError:  # built without a compiler: the Python writer alone
    _native = None
else:
    _native.configure(Unpackable)

IMPLEMENTATION = "c" if _native is not None else "python"
