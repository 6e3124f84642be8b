"""Structural validation of an unpacked Cap'n Proto message before any reader touches it.

pycapnp translates errors of single-field reads into exceptions, but some bulk
operations (`total_size`, copying a reader into a builder) abort the process on a
malformed pointer. So every pointer is checked here first, schema-agnostic, the way
the Cap'n Proto reader would: bounds of structs, lists and far pointers, nesting
depth, and a traversal budget in words against amplification. A message that passes
can be copied and measured safely; a field of the wrong type still raises an
ordinary exception on access.

It runs on every message a service receives, so it is written for speed: each
segment is unpacked into integers once, and pointers are walked with an explicit
stack instead of recursion.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_ELEMENT_BITS = (0, 1, 8, 16, 32, 64, 64, 0)  # by list element-size code
_LOW30 = 0x3FFFFFFF


class StructureError(ValueError):
    """Why the message is not a well-formed Cap'n Proto message."""


def check_message(segments: Sequence[bytes], max_words: int, max_depth: int) -> None:
    """Raise StructureError unless every pointer reachable from the root is sound."""
    if not segments or len(segments[0]) < 8:
        raise StructureError("the first segment has no room for the root pointer")
    words = [struct.unpack(f"<{len(s) // 8}Q", s) for s in segments]
    nseg = len(words)
    budget = max_words
    stack = [(0, 0, 0)]  # (segment, word index of a pointer, depth)
    pop, push = stack.pop, stack.append
    while stack:
        seg, pos, depth = pop()
        value = words[seg][pos]
        if value == 0:
            continue
        kind = value & 3
        if kind < 2:
            offset = (value & 0xFFFFFFFF) >> 2
            if offset & 0x20000000:
                offset -= 0x40000000
            at = pos + 1 + offset
        elif kind == 2:
            seg, at, value = _land(words, nseg, value)
        else:
            raise StructureError("capability pointers are not allowed")
        if depth > max_depth:
            raise StructureError("nesting limit exceeded")
        if at < 0:
            raise StructureError("pointer before the start of its segment")
        size = len(words[seg])
        if value & 3 == 0:  # struct
            data_words = (value >> 32) & 0xFFFF
            pointers = value >> 48
            if at + data_words + pointers > size:
                raise StructureError("out-of-bounds struct pointer")
            budget -= data_words + pointers or 1  # empty objects cost 1: no amplification
            if pointers:
                budget = _scan(words[seg], seg, at + data_words, pointers, depth + 1, budget, push)
        else:  # list
            element = (value >> 32) & 7
            count = value >> 35
            if element == 7:
                if at + 1 + count > size:
                    raise StructureError("out-of-bounds list pointer")
                tag = words[seg][at]
                if tag & 3:
                    raise StructureError("composite list tag is not a struct tag")
                elements = (tag & 0xFFFFFFFF) >> 2
                data_words = (tag >> 32) & 0xFFFF
                pointers = tag >> 48
                stride = data_words + pointers
                if elements * stride > count:
                    raise StructureError("composite list larger than its words")
                budget -= (count if stride else elements) or 1
                if pointers:
                    seg_words = words[seg]
                    base = at + 1 + data_words
                    for e in range(elements):
                        budget = _scan(
                            seg_words, seg, base + e * stride, pointers, depth + 1, budget, push
                        )
            elif element == 6:
                if at + count > size:
                    raise StructureError("out-of-bounds list pointer")
                budget -= count or 1
                # pointer slots like a struct's: Text elements are checked in place
                budget = _scan(words[seg], seg, at, count, depth + 1, budget, push)
            else:
                span = (count * _ELEMENT_BITS[element] + 63) // 64
                if at + span > size:
                    raise StructureError("out-of-bounds list pointer")
                budget -= (span if element else count) or 1  # void lists cost a word each
        if budget < 0:
            raise StructureError("traversal limit exceeded")


def _scan(
    seg_words: tuple[int, ...],
    seg: int,
    first: int,
    count: int,
    depth: int,
    budget: int,
    push: object,
) -> int:
    """Check a run of pointer slots. Lists of primitives (Text, Data, numbers: most
    pointers) are checked here at once; anything else is pushed for the main loop."""
    size = len(seg_words)
    i = first
    for value in seg_words[first : first + count]:  # a slice iterates faster than indexing
        if value:
            element = (value >> 32) & 7
            if value & 3 == 1 and element < 6:
                offset = (value & 0xFFFFFFFF) >> 2
                if offset & 0x20000000:
                    offset -= 0x40000000
                at = i + 1 + offset
                n = value >> 35
                span = (n * _ELEMENT_BITS[element] + 63) >> 6
                if at < 0 or at + span > size:
                    raise StructureError("out-of-bounds list pointer")
                budget -= (span if element else n) or 1
            else:
                push((seg, i, depth))  # type: ignore[operator]
        i += 1
    return budget


def _land(words: list[tuple[int, ...]], nseg: int, value: int) -> tuple[int, int, int]:
    """Follow a far pointer: (segment, target word, the struct/list pointer to apply)."""
    double = (value >> 2) & 1
    pad = (value >> 3) & 0x1FFFFFFF
    seg = value >> 32
    if seg >= nseg:
        raise StructureError("far pointer to an unknown segment")
    if pad + 1 + double > len(words[seg]):
        raise StructureError("far pointer landing pad out of bounds")
    landing = words[seg][pad]
    if not double:
        if landing & 3 > 1:
            raise StructureError("far pointer lands on another far or capability pointer")
        if landing == 0:
            return seg, pad + 1, 0  # a null landing pad: nothing to check
        offset = (landing & 0xFFFFFFFF) >> 2
        if offset & 0x20000000:
            offset -= 0x40000000
        return seg, pad + 1 + offset, landing
    tag = words[seg][pad + 1]
    if landing & 7 != 2:
        raise StructureError("double-far landing pad is not a far pointer")
    if tag & 3 > 1 or tag & 0xFFFFFFFC:
        raise StructureError("double-far tag is malformed")
    content_seg = landing >> 32
    if content_seg >= nseg:
        raise StructureError("far pointer to an unknown segment")
    return content_seg, (landing >> 3) & 0x1FFFFFFF, tag
