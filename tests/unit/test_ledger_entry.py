"""The canonical entry encoding: layout as documented, hash, parsing and errors."""

from __future__ import annotations

import struct

import blake3
import pytest

from daemoneye.ledger import entry as entries


def test_encoding_follows_the_documented_layout() -> None:
    ph, prev = b"\x11" * 32, b"\x22" * 32
    enc = entries.encode(7, -5, b"collector@h", b"events.process.start", ph, prev)
    want = (
        b"\x01"
        + struct.pack(">Q", 7)
        + struct.pack(">q", -5)
        + struct.pack(">H", 11)
        + b"collector@h"
        + struct.pack(">H", 20)
        + b"events.process.start"
        + ph
        + prev
    )
    assert enc == want
    e = entries.parse_encoding(enc, blake3.blake3(enc).digest())
    assert (e.seq, e.time_ns, e.actor, e.action) == (7, -5, "collector@h", "events.process.start")
    assert (e.payload_hash, e.prev_hash) == (ph, prev)
    assert e.computed_hash() == e.stored_hash == blake3.blake3(want).digest()


def test_fast_unpack_agrees_with_parse() -> None:
    enc = entries.encode(42, 1, "é".encode(), b"a", b"p" * 32, b"q" * 32)
    record = entries.record(blake3.blake3(enc).digest(), enc)
    assert entries.unpack_record(record) == (42, enc, b"p" * 32, b"q" * 32)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r[:40], "truncated"),
        (lambda r: r + b"x", "fields need"),
        (lambda r: r[:32] + b"\x02" + r[33:], "unknown entry version 2"),
        (lambda r: r[:20], "shorter than an entry hash"),
    ],
)
def test_malformed_records_are_named(mutate, reason: str) -> None:
    enc = entries.encode(1, 1, b"a", b"b", b"p" * 32, b"q" * 32)
    record = mutate(entries.record(b"h" * 32, enc))
    with pytest.raises(entries.EntryError, match=reason):
        entries.unpack_record(record)
    with pytest.raises(entries.EntryError, match=reason):
        entries.parse_record(record)


def test_long_strings_are_cut_not_refused() -> None:
    enc = entries.encode(0, 0, b"a" * 70000, b"b", b"p" * 32, b"q" * 32)
    assert len(entries.parse_encoding(enc).actor) == entries.MAX_TEXT
