"""Ledger entries and their canonical encoding.

Canonical encoding of entry `seq` (integers big-endian, strings UTF-8):

    offset  size  field
    0       1     version        = 1
    1       8     seq            u64, equal to the entry's leaf index in the Merkle tree
    9       8     time_ns        i64, the ledger's wall clock when it appended the entry
    17      2     len(actor)     u16
    19      a     actor          who sent it: the envelope's sourceId
    19+a    2     len(action)    u16
    21+a    b     action         the bus topic, or the AuditRecord's action for audit.*
    21+a+b  32    payload_hash   BLAKE3(payload): the envelope bytes exactly as received
    53+a+b  32    prev_hash      entry hash of entry seq-1; 32 zero bytes for entry 0

    entry_hash = BLAKE3(encoding)
    Merkle leaf = BLAKE3(0x00 || entry_hash)    (RFC 9162, see daemoneye.merkle)

The stored record is `entry_hash || encoding`, so a verifier can both recompute the
hash and tell which of the two was changed. Strings longer than 65535 bytes are
cut at that many bytes (never seen on the bus: frames are far smaller).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import blake3

VERSION = 1
HASH_SIZE = 32
GENESIS_PREV = bytes(HASH_SIZE)
MAX_TEXT = 0xFFFF

_HEAD = struct.Struct(">BQq")
_LEN = struct.Struct(">H")


class EntryError(ValueError):
    """A stored entry record that cannot be parsed; says why."""


def blake3_digest(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def encode(
    seq: int, time_ns: int, actor: bytes, action: bytes, payload_hash: bytes, prev_hash: bytes
) -> bytes:
    """The canonical encoding; `actor` and `action` are UTF-8 bytes."""
    actor = actor[:MAX_TEXT]
    action = action[:MAX_TEXT]
    return b"".join(
        (
            _HEAD.pack(VERSION, seq, time_ns),
            _LEN.pack(len(actor)),
            actor,
            _LEN.pack(len(action)),
            action,
            payload_hash,
            prev_hash,
        )
    )


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    time_ns: int
    actor: str
    action: str
    payload_hash: bytes
    prev_hash: bytes
    encoding: bytes
    stored_hash: bytes  # the hash kept beside the encoding (may disagree if tampered)

    def computed_hash(self) -> bytes:
        return blake3_digest(self.encoding)

    def as_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "time_ns": self.time_ns,
            "actor": self.actor,
            "action": self.action,
            "payload_hash": self.payload_hash.hex(),
            "prev_hash": self.prev_hash.hex(),
            "entry_hash": self.stored_hash.hex(),
        }


def record(entry_hash: bytes, encoding: bytes) -> bytes:
    return entry_hash + encoding


def parse_encoding(encoding: bytes, stored_hash: bytes = b"") -> Entry:
    """Parse a canonical encoding, raising EntryError naming what is malformed."""
    try:
        version, seq, time_ns = _HEAD.unpack_from(encoding, 0)
        if version != VERSION:
            raise EntryError(f"unknown entry version {version}")
        pos = _HEAD.size
        (n,) = _LEN.unpack_from(encoding, pos)
        actor = encoding[pos + 2 : pos + 2 + n]
        pos += 2 + n
        (n,) = _LEN.unpack_from(encoding, pos)
        action = encoding[pos + 2 : pos + 2 + n]
        pos += 2 + n
    except struct.error:
        raise EntryError(f"truncated entry ({len(encoding)} bytes)") from None
    if len(encoding) != pos + 2 * HASH_SIZE:
        raise EntryError(f"entry is {len(encoding)} bytes; its fields need {pos + 2 * HASH_SIZE}")
    return Entry(
        seq=seq,
        time_ns=time_ns,
        actor=actor.decode("utf-8", "replace"),
        action=action.decode("utf-8", "replace"),
        payload_hash=encoding[pos : pos + HASH_SIZE],
        prev_hash=encoding[pos + HASH_SIZE :],
        encoding=encoding,
        stored_hash=stored_hash,
    )


_SEQ = struct.Struct(">Q")


def unpack_record(value: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(seq, encoding, payload_hash, prev_hash) of a stored record: the verifier's fast path."""
    try:
        a = _LEN.unpack_from(value, 49)[0]
        b = _LEN.unpack_from(value, 51 + a)[0]
    except struct.error:
        a = b = -1
    if value[32:33] != b"\x01" or len(value) != 117 + a + b:
        parse_record(value)  # raises, saying what is wrong
        raise EntryError("malformed entry record")
    return _SEQ.unpack_from(value, 33)[0], value[32:], value[-64:-32], value[-32:]


def parse_record(value: bytes) -> Entry:
    if len(value) < HASH_SIZE:
        raise EntryError(f"record of {len(value)} bytes is shorter than an entry hash")
    return parse_encoding(value[HASH_SIZE:], value[:HASH_SIZE])
