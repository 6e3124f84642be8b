"""Structural validation of an unpacked Cap'n Proto message before any reader touches it.

pycapnp translates errors of single-field reads into exceptions, but some bulk
operations (`total_size`, copying a reader into a builder) abort the process on a
malformed pointer. So every pointer is checked here first, schema-agnostic, the way
the Cap'n Proto reader would: bounds of structs, lists and far pointers, nesting
depth (as the reader counts it: a non-null pointer `max_depth` levels below the root
pointer is refused, leaves included), and a traversal budget in words against
amplification. A message that passes can be copied and measured safely; a field of
the wrong type still raises an ordinary exception on access.

It runs on every message a service receives, so it is written for speed: segments are
read in place as 64-bit words (a memoryview cast, no unpacking of data words), the
pointer slots of a struct or pointer list are walked as one run, and the commonest
pointer, a near Text/Data list, is checked inline in a few integer operations. Where the
optional C extension `daemoneye._wirecheck` was built (setup.py), `check_words` runs its
compiled copy of the same walk instead (the same verdicts and messages, 13-60x faster);
`python_check_words` is this module's walk, always there.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence

_ELEMENT_BITS = (0, 1, 8, 16, 32, 64, 64, 0)  # by list element-size code
_BYTES_MASK = 0x7_8000_0003  # pointer kind, list element size and the offset's sign
_NEAR_BYTES = 0x2_0000_0001  # a list of bytes (Text, Data: most pointers) at offset >= 0
_LITTLE_ENDIAN = sys.byteorder == "little"

Words = Sequence[int]


class StructureError(ValueError):
    """Why the message is not a well-formed Cap'n Proto message."""


def segment_words(segment: bytes | memoryview) -> Words:
    """A segment as 64-bit little-endian words: a cast view where the machine allows
    (nothing copied or unpacked up front), unpacked integers elsewhere."""
    view = memoryview(segment)
    if view.format != "B":
        view = view.cast("B")
    if _LITTLE_ENDIAN:
        return view.cast("Q")
    return struct.unpack(f"<{len(view) // 8}Q", view)


def check_message(segments: Sequence[bytes | memoryview], max_words: int, max_depth: int) -> None:
    """Raise StructureError unless every pointer reachable from the root is sound."""
    check_words([segment_words(s) for s in segments], max_words, max_depth)


def python_check_words(segments: Sequence[Words], max_words: int, max_depth: int) -> None:
    """check_message over segments already given as words (see segment_words)."""
    if not segments or len(segments[0]) < 1:
        raise StructureError("the first segment has no room for the root pointer")
    budget = max_words
    runs = [(0, 0, 1, 0)]  # (segment, first pointer slot, slot count, depth of those pointers)
    pop, push = runs.pop, runs.append
    while runs:
        seg, first, count, depth = pop()
        words = segments[seg]
        size = len(words)
        deep = depth >= max_depth
        i = first
        for value in words[first : first + count]:
            if value & _BYTES_MASK == _NEAR_BYTES and not deep:
                span = ((value >> 35) + 7) >> 3
                if i + ((value & 0xFFFFFFFF) >> 2) + span < size:
                    budget -= span or 1
                    i += 1
                    continue
            if value:
                budget = _pointer(segments, seg, i, value, depth, max_depth, budget, push)
            i += 1
        if budget < 0:
            raise StructureError("traversal limit exceeded")


def _pointer(
    segments: Sequence[Words],
    seg: int,
    pos: int,
    value: int,
    depth: int,
    max_depth: int,
    budget: int,
    push: object,
) -> int:
    """Check one non-null pointer at word `pos` of segment `seg`, in full generality;
    the pointer slots of what it points to are pushed as runs. Returns the budget left."""
    if depth >= max_depth:
        raise StructureError("nesting limit exceeded")
    kind = value & 3
    if kind < 2:
        offset = (value & 0xFFFFFFFF) >> 2
        if offset & 0x20000000:
            offset -= 0x40000000
        at = pos + 1 + offset
    elif kind == 2:
        seg, at, value = _land(segments, value)
        if not value:
            return budget - 1  # a null landing pad: nothing to check
    else:
        raise StructureError("capability pointers are not allowed")
    if at < 0:
        raise StructureError("pointer before the start of its segment")
    words = segments[seg]
    size = len(words)
    if value & 3 == 0:  # struct
        data_words = (value >> 32) & 0xFFFF
        pointers = value >> 48
        if at + data_words + pointers > size:
            raise StructureError("out-of-bounds struct pointer")
        if pointers:
            push((seg, at + data_words, pointers, depth + 1))  # type: ignore[operator]
        return budget - (data_words + pointers or 1)  # empty objects cost 1: no amplification
    element = (value >> 32) & 7
    count = value >> 35
    if element == 7:
        if at + 1 + count > size:
            raise StructureError("out-of-bounds list pointer")
        tag = words[at]
        if tag & 3:
            raise StructureError("composite list tag is not a struct tag")
        elements = (tag & 0xFFFFFFFF) >> 2
        data_words = (tag >> 32) & 0xFFFF
        pointers = tag >> 48
        stride = data_words + pointers
        if elements * stride > count:
            raise StructureError("composite list larger than its words")
        budget -= (count if stride else elements) or 1
        if budget < 0:  # before pushing a run per element of a huge list of empty structs
            raise StructureError("traversal limit exceeded")
        if pointers:
            base = at + 1 + data_words
            for e in range(elements):
                push((seg, base + e * stride, pointers, depth + 1))  # type: ignore[operator]
        return budget
    if element == 6:
        if at + count > size:
            raise StructureError("out-of-bounds list pointer")
        if count:
            push((seg, at, count, depth + 1))  # type: ignore[operator]
        return budget - (count or 1)
    span = (count * _ELEMENT_BITS[element] + 63) >> 6
    if at + span > size:
        raise StructureError("out-of-bounds list pointer")
    return budget - ((span if element else count) or 1)  # void lists cost a word each


def _land(segments: Sequence[Words], value: int) -> tuple[int, int, int]:
    """Follow a far pointer: (segment, target word, the struct/list pointer to apply)."""
    nseg = len(segments)
    double = (value >> 2) & 1
    pad = (value >> 3) & 0x1FFFFFFF
    seg = value >> 32
    if seg >= nseg:
        raise StructureError("far pointer to an unknown segment")
    if pad + 1 + double > len(segments[seg]):
        raise StructureError("far pointer landing pad out of bounds")
    landing = segments[seg][pad]
    if not double:
        if landing & 3 > 1:
            raise StructureError("far pointer lands on another far or capability pointer")
        if landing == 0:
            return seg, pad + 1, 0
        offset = (landing & 0xFFFFFFFF) >> 2
        if offset & 0x20000000:
            offset -= 0x40000000
        return seg, pad + 1 + offset, landing
    tag = segments[seg][pad + 1]
    if landing & 7 != 2:
        raise StructureError("double-far landing pad is not a far pointer")
    if tag & 3 > 1 or tag & 0xFFFFFFFC:
        raise StructureError("double-far tag is malformed")
    content_seg = landing >> 32
    if content_seg >= nseg:
        raise StructureError("far pointer to an unknown segment")
    return content_seg, (landing >> 3) & 0x1FFFFFFF, tag


def _compiled_check_words(segments: Sequence[Words], max_words: int, max_depth: int) -> None:
    """python_check_words, compiled: `segments` must be buffers (segment_words' casts)."""
    why = _native_check_words(segments, max_words, max_depth)
    if why is not None:
        raise StructureError(why)


try:  # the words are read in the machine's order: the compiled walk only where that is LE
    from daemoneye._wirecheck import check_words as _native_check_words
except ImportError:  # not built here (no compiler at install): the Python walk
    _native_check_words = None

IMPLEMENTATION = "c" if _native_check_words is not None and _LITTLE_ENDIAN else "python"
check_words = _compiled_check_words if IMPLEMENTATION == "c" else python_check_words
