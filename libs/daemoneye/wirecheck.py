"""Structural validation of an unpacked Cap'n Proto message before any reader touches it.

pycapnp translates errors of single-field reads into exceptions, but some bulk
operations (`total_size`, copying a reader into a builder) abort the process on a
malformed pointer. So every pointer is checked here first, schema-agnostic, the way
the Cap'n Proto reader would: bounds of structs, lists and far pointers, nesting
depth, and a traversal budget in words against amplification. A message that passes
can be copied and measured safely; a field of the wrong type still raises an
ordinary exception on access.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_U64 = struct.Struct("<Q").unpack_from
_ELEMENT_BITS = (0, 1, 8, 16, 32, 64, 64, 0)  # by list element-size code


class StructureError(ValueError):
    """Why the message is not a well-formed Cap'n Proto message."""


class _Checker:
    def __init__(self, segments: Sequence[bytes], max_words: int, max_depth: int) -> None:
        self.segments = segments
        self.words = [len(s) // 8 for s in segments]
        self.budget = max_words
        self.max_depth = max_depth

    def charge(self, words: int) -> None:
        self.budget -= max(1, words)  # empty objects cost 1, so they cannot amplify
        if self.budget < 0:
            raise StructureError("traversal limit exceeded")

    def pointer(self, seg: int, pos: int, depth: int) -> None:
        value = _U64(self.segments[seg], pos * 8)[0]
        if value == 0:
            return
        kind = value & 3
        if kind < 2:
            offset = (value & 0xFFFFFFFF) >> 2
            if offset & 0x20000000:
                offset -= 0x40000000
            self.target(seg, pos + 1 + offset, value, depth)
        elif kind == 2:
            self.far(value, depth)
        else:
            raise StructureError("capability pointers are not allowed")

    def far(self, value: int, depth: int) -> None:
        double = (value >> 2) & 1
        pad = (value >> 3) & 0x1FFFFFFF
        seg = value >> 32
        if seg >= len(self.segments):
            raise StructureError("far pointer to an unknown segment")
        if pad + 1 + double > self.words[seg]:
            raise StructureError("far pointer landing pad out of bounds")
        if not double:
            landing = _U64(self.segments[seg], pad * 8)[0]
            if landing & 3 > 1:
                raise StructureError("far pointer lands on another far or capability pointer")
            if landing:
                self.pointer(seg, pad, depth)
            return
        first = _U64(self.segments[seg], pad * 8)[0]
        tag = _U64(self.segments[seg], pad * 8 + 8)[0]
        if first & 7 != 2:
            raise StructureError("double-far landing pad is not a far pointer")
        if tag & 3 > 1 or tag & 0xFFFFFFFC:
            raise StructureError("double-far tag is malformed")
        content_seg = first >> 32
        if content_seg >= len(self.segments):
            raise StructureError("far pointer to an unknown segment")
        self.target(content_seg, (first >> 3) & 0x1FFFFFFF, tag, depth)

    def target(self, seg: int, at: int, value: int, depth: int) -> None:
        if depth > self.max_depth:
            raise StructureError("nesting limit exceeded")
        if at < 0:
            raise StructureError("pointer before the start of its segment")
        size = self.words[seg]
        if value & 3 == 0:
            data_words = (value >> 32) & 0xFFFF
            pointers = value >> 48
            if at + data_words + pointers > size:
                raise StructureError("out-of-bounds struct pointer")
            self.charge(data_words + pointers)
            for i in range(pointers):
                self.pointer(seg, at + data_words + i, depth + 1)
            return
        element = (value >> 32) & 7
        count = value >> 35
        if element == 7:
            self.composite(seg, at, count, depth)
        elif element == 6:
            if at + count > size:
                raise StructureError("out-of-bounds list pointer")
            self.charge(count)
            for i in range(count):
                self.pointer(seg, at + i, depth + 1)
        else:
            words = (count * _ELEMENT_BITS[element] + 63) // 64
            if at + words > size:
                raise StructureError("out-of-bounds list pointer")
            self.charge(words if element else count)  # void lists cost a word each, as in capnp

    def composite(self, seg: int, at: int, word_count: int, depth: int) -> None:
        if at + 1 + word_count > self.words[seg]:
            raise StructureError("out-of-bounds list pointer")
        tag = _U64(self.segments[seg], at * 8)[0]
        if tag & 3:
            raise StructureError("composite list tag is not a struct tag")
        elements = (tag & 0xFFFFFFFF) >> 2
        data_words = (tag >> 32) & 0xFFFF
        pointers = tag >> 48
        stride = data_words + pointers
        if elements * stride > word_count:
            raise StructureError("composite list larger than its words")
        self.charge(word_count if stride else elements)
        base = at + 1
        for e in range(elements):
            for i in range(pointers):
                self.pointer(seg, base + e * stride + data_words + i, depth + 1)


def check_message(segments: Sequence[bytes], max_words: int, max_depth: int) -> None:
    """Raise StructureError unless every pointer reachable from the root is sound."""
    if not segments or len(segments[0]) < 8:
        raise StructureError("the first segment has no room for the root pointer")
    _Checker(segments, max_words, max_depth).pointer(0, 0, 0)
