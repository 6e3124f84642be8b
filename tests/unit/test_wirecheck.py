"""wirecheck against a plain reference, its compiled walk against its Python one, the
nesting limit as pycapnp counts it, and the header that decode_parts reads from the
words against pycapnp's reads of the same bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemoneye import wire, wirecheck
from tests.compiled import assert_built

HEADER = wire.Header("collector@test", "boot1", 42, 1_700_000_000_000_000_000)
RECORD = {
    "pid": 10,
    "ppid": 1,
    "name": "python3",
    "exePath": "/usr/bin/python3.11",
    "cmdline": ["python3", "-m", "http.server", ""],
    "cwd": "/home/user",
    "username": "user",
    "state": "S",
    "sha256": "ab" * 32,
}
EVENT = {"kind": "start", "source": "netlink", "timeNs": 5, "record": RECORD, "hostname": "h"}
SAMPLES = [
    ("processEvent", EVENT),
    ("processEventBatch", {"events": [dict(EVENT, record=dict(RECORD, pid=i)) for i in range(5)]}),
    ("alert", {"ruleId": "r1", "severity": "high", "process": RECORD, "tags": ["t", "u"]}),
    ("heartbeat", {"service": "s", "metrics": [{"name": "a", "value": 1.0}], "notes": ["x"]}),
    ("rpcReply", wire.rpc_reply(1, result=[1], payloads=[b"x", b"", b"y" * 20])),
    ("checkpoint", {"origin": "o", "treeSize": 3, "rootHash": b"\x01" * 32}),
    ("empty", None),
]
ELEMENT_BITS = (0, 1, 8, 16, 32, 64, 64, 0)


def reference_check(segments: list[bytes], max_words: int, max_depth: int) -> None:
    """The rules of wirecheck written plainly (recursive, one pointer at a time)."""
    words = [struct.unpack(f"<{len(s) // 8}Q", s) for s in segments]
    if not words or not words[0]:
        raise wirecheck.StructureError("no root pointer")
    budget = [max_words]

    def spend(n: int) -> None:
        budget[0] -= n
        if budget[0] < 0:
            raise wirecheck.StructureError("traversal limit exceeded")

    def signed30(v: int) -> int:
        off = (v & 0xFFFFFFFF) >> 2
        return off - (1 << 30) if off >= 1 << 29 else off

    def follow(seg: int, pos: int, depth: int) -> None:
        value = words[seg][pos]
        if value == 0:
            return
        if depth >= max_depth:
            raise wirecheck.StructureError("nesting limit exceeded")
        kind = value & 3
        if kind == 3:
            raise wirecheck.StructureError("capability")
        if kind == 2:
            double, pad, seg = (value >> 2) & 1, (value >> 3) & 0x1FFFFFFF, value >> 32
            if seg >= len(words) or pad + 1 + double > len(words[seg]):
                raise wirecheck.StructureError("far pointer")
            landing = words[seg][pad]
            if not double:
                if landing & 3 > 1:
                    raise wirecheck.StructureError("far to far")
                if landing == 0:
                    spend(1)
                    return
                at, value = pad + 1 + signed30(landing), landing
            else:
                tag = words[seg][pad + 1]
                if (
                    landing & 7 != 2
                    or tag & 3 > 1
                    or tag & 0xFFFFFFFC
                    or landing >> 32 >= len(words)
                ):
                    raise wirecheck.StructureError("double far")
                seg, at, value = landing >> 32, (landing >> 3) & 0x1FFFFFFF, tag
        else:
            at = pos + 1 + signed30(value)
        size = len(words[seg])
        if at < 0:
            raise wirecheck.StructureError("before the segment")
        if value & 3 == 0:
            data, ptrs = (value >> 32) & 0xFFFF, value >> 48
            if at + data + ptrs > size:
                raise wirecheck.StructureError("struct out of bounds")
            spend(data + ptrs or 1)
            for p in range(ptrs):
                follow(seg, at + data + p, depth + 1)
            return
        element, count = (value >> 32) & 7, value >> 35
        if element == 7:
            if at + 1 + count > size:
                raise wirecheck.StructureError("list out of bounds")
            tag = words[seg][at]
            n, data, ptrs = (tag & 0xFFFFFFFF) >> 2, (tag >> 32) & 0xFFFF, tag >> 48
            if tag & 3 or n * (data + ptrs) > count:
                raise wirecheck.StructureError("composite")
            spend((count if data + ptrs else n) or 1)
            for e in range(n):
                for p in range(ptrs):
                    follow(seg, at + 1 + e * (data + ptrs) + data + p, depth + 1)
        elif element == 6:
            if at + count > size:
                raise wirecheck.StructureError("list out of bounds")
            spend(count or 1)
            for p in range(count):
                follow(seg, at + p, depth + 1)
        else:
            span = (count * ELEMENT_BITS[element] + 63) // 64
            if at + span > size:
                raise wirecheck.StructureError("list out of bounds")
            spend((span if element else count) or 1)

    follow(0, 0, 0)


def verdict(check, segments: list[bytes], max_words: int = 1 << 22, depth: int = 16) -> bool:
    return why_refused(check, segments, max_words, depth) is None


def why_refused(check, segments: list[bytes], max_words: int = 1 << 22, depth: int = 16):
    try:
        check(segments, max_words, depth)
    except wirecheck.StructureError as exc:
        return str(exc)
    return None


def python_check(segments: list[bytes], max_words: int, max_depth: int) -> None:
    """The module's Python walk, whichever check_words this install uses."""
    wirecheck.python_check_words(
        [wirecheck.segment_words(s) for s in segments], max_words, max_depth
    )


def test_the_compiled_walk_is_built_where_a_compiler_is() -> None:
    assert_built(
        wirecheck.IMPLEMENTATION, "daemoneye._wirecheck", "the Python walk", little_endian=True
    )


def segments_of(data: bytes) -> list[bytes]:
    return [bytes(s) for s in wire.split_segments(data)]


def small_first_segment(kind: str, body: object) -> bytes:
    """The same message built across many segments, so far pointers appear."""
    msg = wire.Envelope.new_message(num_first_segment_words=1)
    msg.schemaVersion = wire.SCHEMA_VERSION
    msg.sourceId, msg.bootId, msg.seq = "far@x", "boot", 7
    if body is None:
        msg.body.empty = None
    else:
        wire._fill(msg.body.init(kind), body)
    return msg.to_bytes()


def test_the_samples_are_valid_and_agree() -> None:
    for kind, body in SAMPLES:
        for data in (wire.encode_envelope(HEADER, kind, body), small_first_segment(kind, body)):
            segments = segments_of(data)
            assert verdict(wirecheck.check_message, segments)
            assert verdict(python_check, segments)
            assert verdict(reference_check, segments)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_messages_get_the_reference_verdict(data: st.DataObject) -> None:
    kind, body = data.draw(st.sampled_from(SAMPLES))
    spread = data.draw(st.booleans())
    message = (
        small_first_segment(kind, body) if spread else wire.encode_envelope(HEADER, kind, body)
    )
    segments = [bytearray(s) for s in segments_of(message)]
    for _ in range(data.draw(st.integers(1, 6))):
        seg = segments[data.draw(st.integers(0, len(segments) - 1))]
        if not seg:
            continue
        word = data.draw(st.integers(0, len(seg) // 8 - 1)) * 8
        if data.draw(st.booleans()):  # a whole new pointer-like word
            seg[word : word + 8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
        else:
            seg[word + data.draw(st.integers(0, 7))] ^= 1 << data.draw(st.integers(0, 7))
    frozen = [bytes(s) for s in segments]
    for budget in (1 << 22, 40):  # a small budget exercises the traversal limit too
        why = why_refused(python_check, frozen, budget)
        assert (why is None) == verdict(reference_check, frozen, budget)
        assert why_refused(wirecheck.check_message, frozen, budget) == why  # the compiled walk


def least_budget(check, segments: list[bytes]) -> int:
    """The smallest traversal budget `check` accepts the message with."""
    low, high = 0, 1 << 22
    while low < high:
        mid = (low + high) // 2
        if verdict(check, segments, mid, 64):
            high = mid
        else:
            low = mid + 1
    return low


def test_every_walk_counts_the_same_words() -> None:
    # what each kind of pointer costs in the traversal budget, to the word
    for kind, body in SAMPLES:
        for data in (wire.encode_envelope(HEADER, kind, body), small_first_segment(kind, body)):
            segments = segments_of(data)
            least = least_budget(reference_check, segments)
            assert least_budget(python_check, segments) == least
            assert least_budget(wirecheck.check_message, segments) == least


def pointer_words() -> st.SearchStrategy[int]:
    """Words that are mostly pointers a walk will follow: structs, lists of every element
    size, far and double-far pointers into a few small segments, with small offsets."""
    offset = st.integers(-6, 12).map(lambda o: (o & 0x3FFFFFFF) << 2)
    struct_ = st.builds(
        lambda o, d, p: o | (d << 32) | (p << 48), offset, st.integers(0, 3), st.integers(0, 4)
    )
    list_ = st.builds(
        lambda o, e, n: o | 1 | (e << 32) | (n << 35), offset, st.integers(0, 7), st.integers(0, 12)
    )
    far = st.builds(
        lambda d, pad, seg: 2 | (d << 2) | (pad << 3) | (seg << 32),
        st.integers(0, 1),
        st.integers(0, 10),
        st.integers(0, 3),
    )
    return st.one_of(struct_, list_, far, st.just(0), st.integers(0, 2**64 - 1))


@settings(max_examples=600, deadline=None)
@given(
    st.lists(st.lists(pointer_words(), min_size=0, max_size=24), min_size=1, max_size=3),
    st.integers(1, 200),
    st.integers(1, 8),
)
def test_compiled_and_python_walks_agree_on_pointer_soup(
    segments_words: list[list[int]], budget: int, depth: int
) -> None:
    segments = [b"".join(struct.pack("<Q", w) for w in words) for words in segments_words]
    why = why_refused(python_check, segments, budget, depth)
    assert why_refused(wirecheck.check_message, segments, budget, depth) == why
    assert (why is None) == verdict(reference_check, segments, budget, depth)


def nested_chain(pointer_depth: int, text_leaf: bool) -> bytes:
    """An Envelope whose body is a chain of structs; its deepest non-null pointer lies
    `pointer_depth` levels below the root pointer (the root pointer is level 0)."""
    body = [struct.pack("<q", 1 << 48)] * (pointer_depth - 2)  # struct of 1 pointer, at +1
    body.append(struct.pack("<II", 1, (8 << 3) | 2) if text_leaf else struct.pack("<q", 1 << 48))
    body.append(b"leafdat\x00" if text_leaf else b"\x00" * 8)
    root = [
        struct.pack("<q", (3 << 48) | (3 << 32)),  # root: 3 data words, 3 pointers
        struct.pack("<HHI", wire.SCHEMA_VERSION, 1, 0),  # version, body = processEvent
        struct.pack("<q", 1),
        struct.pack("<q", 1),
        b"\x00" * 16,  # sourceId, bootId: null
        struct.pack("<q", 1 << 48),  # body -> the chain, at the next word
    ]
    words = b"".join(root + body)
    return struct.pack("<II", 0, len(words) // 8) + words


@pytest.mark.parametrize("text_leaf", [False, True])
def test_nesting_is_limited_as_pycapnp_counts_it(text_leaf: bool) -> None:
    # pycapnp's reader refuses a non-null pointer NESTING_LIMIT levels down (and its
    # total_size/copy abort the process on it): the deepest it copies is one level less.
    deepest = wire.decode_envelope(nested_chain(wire.NESTING_LIMIT - 1, text_leaf))
    _ = deepest.total_size
    deepest.as_builder().to_bytes()
    with pytest.raises(wire.DecodeError, match="nesting limit"):
        wire.decode_envelope(nested_chain(wire.NESTING_LIMIT, text_leaf))


def header_the_slow_way(data: bytes) -> tuple[str, str, str, int] | None:
    """What pycapnp reads from the same bytes once they pass the structure check (with
    the traversal budget every reader gives a frame of that size)."""
    segments = segments_of(data)
    try:
        wirecheck.check_message(segments, wire.check_budget(len(data)), wire.NESTING_LIMIT)
        reader = wire.Envelope.from_segments(segments, nesting_limit=wire.NESTING_LIMIT)
        return wire._read_header_slowly(reader, len(data))
    except (wirecheck.StructureError, wire.DecodeError):
        return None


def header_read_fast(data: bytes) -> tuple[str, str, str, int] | None:
    try:
        _, kind, source, boot, seq = wire.decode_parts(data)
    except wire.DecodeError:
        return None
    return kind, source, boot, seq


def test_header_of_every_body_kind() -> None:
    for kind, body in SAMPLES:
        data = wire.encode_envelope(HEADER, kind, body)
        assert header_read_fast(data) == (kind, HEADER.source_id, HEADER.boot_id, HEADER.seq)
        spread = small_first_segment(kind, body)  # a far root: pycapnp reads the header
        assert header_read_fast(spread) == (kind, "far@x", "boot", 7)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_header_read_from_words_is_what_pycapnp_reads(data: st.DataObject) -> None:
    header = wire.Header(
        data.draw(st.sampled_from(["c@h", "", "a\x00b", "caf\u00e9" * 9])), "b", 9, 1
    )
    kind, body = data.draw(st.sampled_from(SAMPLES))
    message = bytearray(wire.encode_envelope(header, kind, body))
    for _ in range(data.draw(st.integers(0, 4))):
        index = data.draw(st.integers(8, min(len(message), 200) - 1))  # around the header
        message[index] = data.draw(st.integers(0, 255))
    assert header_read_fast(bytes(message)) == header_the_slow_way(bytes(message))


def test_invalid_header_texts_are_decode_errors() -> None:
    data = bytearray(wire.encode_envelope(wire.Header("abc", "b", 1, 1), "empty"))
    at = data.index(b"abc\x00")
    data[at + 1] = 0xFF  # not UTF-8
    with pytest.raises(wire.DecodeError, match="UnicodeDecodeError"):
        wire.decode_envelope(bytes(data))
    data[at + 1], data[at + 3] = ord("b"), ord("!")  # no NUL at its end
    with pytest.raises(wire.DecodeError, match="NUL-terminated"):
        wire.decode_envelope(bytes(data))


def test_batches_are_built_in_one_segment() -> None:
    # Far pointers between segments make every reader slower: a batch is sized up front.
    events = [dict(EVENT, record=dict(RECORD, cmdline=["x" * 2000] * 4)) for _ in range(64)]
    wire.encode_envelope(HEADER, "processEventBatch", {"events": events})  # may spill once
    data = wire.encode_envelope(HEADER, "processEventBatch", {"events": events})
    assert struct.unpack_from("<I", data)[0] == 0  # one segment
    got = wire.decode_envelope(data).body.processEventBatch.events
    assert [e.record.cmdline[0] for e in got] == ["x" * 2000] * 64
    reply = wire.rpc_reply(1, result=[1], payloads=[b"p" * 1000] * 300)
    assert struct.unpack_from("<I", wire.encode_envelope(HEADER, "rpcReply", reply))[0] == 0


def text_at(offset: int, length: int, words_after: int) -> list[bytes]:
    """One segment: a root struct of one pointer slot, holding a Text pointer."""
    return [
        struct.pack("<q", 1 << 48)  # root: struct at +0, 0 data words, 1 pointer
        + struct.pack("<II", (offset << 2 | 1) & 0xFFFFFFFF, (length << 3) | 2)
        + b"\x00" * 8 * words_after
    ]


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 16, 17])
def test_text_bounds_at_the_end_of_the_segment(length: int) -> None:
    span = (length + 7) // 8
    fits, short = text_at(0, length, span), text_at(0, length, span - 1)
    for check in (wirecheck.check_message, python_check, reference_check):
        assert verdict(check, fits)
        assert verdict(check, short) is not bool(span)


@pytest.mark.parametrize(("offset", "valid"), [(-1, True), (-2, True), (-3, False), (-100, False)])
def test_text_pointers_backwards(offset: int, valid: bool) -> None:
    # the pointer is word 1; a negative offset lands on word 1 + 1 + offset
    segments = text_at(offset, 8, 0)
    for check in (wirecheck.check_message, python_check, reference_check):
        assert verdict(check, segments) is valid


WALKS = [
    pytest.param(wirecheck.check_message, id="check_message"),
    pytest.param(python_check, id="python"),
    pytest.param(reference_check, id="reference"),
]


def double_far_root(tag: int) -> list[bytes]:
    """A root pointer that is a double far: segment 0 points at a landing pad in segment 1
    (a far pointer to segment 2, word 0, and the tag of what lies there)."""
    return [
        struct.pack("<Q", 2 | 1 << 2 | 0 << 3 | 1 << 32),  # double far: segment 1, pad 0
        struct.pack("<QQ", 2 | 0 << 3 | 2 << 32, tag),  # landing: far to segment 2, word 0
        struct.pack("<QQ", 7, 0),  # the struct's data word and its one (null) pointer
    ]


@pytest.mark.parametrize("check", WALKS)
def test_a_double_far_tag_must_not_carry_an_offset(check) -> None:
    struct_tag = 1 << 32 | 1 << 48  # one data word, one pointer
    assert verdict(check, double_far_root(struct_tag))
    assert not verdict(check, double_far_root(struct_tag | 1 << 2))  # offset 1: malformed


def composite_list(elements: int, words: int) -> list[bytes]:
    """A root struct of one pointer: a composite list of `elements` structs of one data
    word each, in a list of `words` words (plus slack, so the bounds hold either way)."""
    return [
        struct.pack("<Q", 1 << 48)  # root: struct at +0, one pointer
        + struct.pack("<Q", 1 | 7 << 32 | words << 35)  # composite list at +0, `words` words
        + struct.pack("<Q", elements << 2 | 1 << 32)  # its tag: `elements` of 1 data word
        + b"\x00" * 8 * (words + 4)
    ]


@pytest.mark.parametrize("check", WALKS)
def test_a_composite_list_fits_its_words(check) -> None:
    assert verdict(check, composite_list(3, 3))
    assert not verdict(check, composite_list(4, 3))
