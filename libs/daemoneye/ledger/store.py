"""The ledger's RocksDB layout, its append path and its proof reads.

Keys (be64 = 8-byte big-endian, so keys sort by number):

    e + be64(seq)                 entry record: entry_hash || canonical encoding
    p + be64(seq)                 payload: the envelope bytes as received (retention may drop)
    n + level + be64(index)       Merkle node, levels >= MIN_STORED_LEVEL, complete subtrees
    c + be64(tree size)           checkpoint: be64(time_ns) || signed note text
    m/payload_floor               be64: payloads below this seq were dropped by retention
    m/cursor/ + source 0x00 stream  be64(last bus seq recorded) || boot id: where to resume

Levels 0 and 1 of the tree are not stored separately: a level-0 node is
H(0x00 || entry hash) of one entry record, a level-1 node two of them, so any
node costs at most two reads and a proof O(log n) reads, while an append writes
about 2.25 keys instead of 3. Every batch (entries, payloads, nodes and the
checkpoint over them) is one atomic RocksDB write, synced when `sync` is set: a
crash leaves the ledger at the end of the last durable batch, never in between.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import blake3

from daemoneye import merkle
from daemoneye.ledger import entry as entries
from daemoneye.ledger.note import Checkpoint, Signer
from daemoneye.store import SMALL_BLOCK_CACHE_BYTES, Store, StoreError, be64, un_be64

ENTRY = b"e"
PAYLOAD = b"p"
NODE = b"n"
CHECKPOINT = b"c"
PAYLOAD_FLOOR = b"m/payload_floor"
CURSOR = b"m/cursor/"
MIN_STORED_LEVEL = 2
HASHER = merkle.BLAKE3  # the append path below inlines BLAKE3 leaf/node hashing


class LedgerError(RuntimeError):
    """A read the ledger cannot answer (missing entry, bad size); says which."""


def entry_key(seq: int) -> bytes:
    return ENTRY + be64(seq)


def payload_key(seq: int) -> bytes:
    return PAYLOAD + be64(seq)


def node_key(level: int, index: int) -> bytes:
    return NODE + bytes([level]) + be64(index)


def checkpoint_key(size: int) -> bytes:
    return CHECKPOINT + be64(size)


# Memtables: 4 MB (two) rather than the shared 8 MB. They are most of what the
# ledger's RSS swings by as they fill and flush (2-16 MB with 8 MB ones, read as growth
# or shrinkage by a soak that compares two instants); 4 MB halves that ceiling. Twice as
# many flushes would mean twice as many compactions of level 0, each rewriting the
# ledger's overlapping bottom level (entries, nodes and payloads are one key range), so
# level 0 is compacted at 8 files (the same bytes as 4 files of 8 MB) instead.
# Measured (1.2M entries of 700 B appended through LedgerWriter, offline): memtables
# at most ~8 MB instead of ~16; compaction CPU 16.6 s instead of 14.8 (~1.5 us per
# entry; at 4 files it was 21.6 s).
MEMTABLE_BYTES = 4 << 20
L0_FILES = 8


def open_store(path: Path, read_only: bool = False, sync: bool = False) -> Store:
    if read_only and not (Path(path) / "CURRENT").exists():
        raise StoreError(f"no ledger database at {path}")
    # written per event, read for proofs and checkpoints only: a small block cache
    return Store(
        path,
        sync=sync,
        read_only=read_only,
        memtable_bytes=MEMTABLE_BYTES,
        block_cache_bytes=SMALL_BLOCK_CACHE_BYTES,
        l0_files=L0_FILES,
    )


class LedgerStore:
    """Reads: entries, payloads, tree nodes, roots, proofs and checkpoints."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # --- entries ---------------------------------------------------------------

    def size(self) -> int:
        last = self.store.last(ENTRY)
        return 0 if last is None else un_be64(last[0][1:]) + 1

    def record(self, seq: int) -> bytes | None:
        return self.db.get(entry_key(seq))

    def entry(self, seq: int) -> entries.Entry:
        value = self.record(seq)
        if value is None:
            raise LedgerError(f"entry {seq} is not in the ledger")
        return entries.parse_record(value)

    def entry_hash(self, seq: int) -> bytes:
        value = self.record(seq)
        if value is None:
            raise LedgerError(f"entry {seq} is not in the ledger")
        return value[: entries.HASH_SIZE]

    def payload(self, seq: int) -> bytes | None:
        return self.db.get(payload_key(seq))

    def payload_floor(self) -> int:
        value = self.db.get(PAYLOAD_FLOOR)
        return 0 if value is None else un_be64(value)

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes]]:
        for key, value in self.store.scan(ENTRY, start=entry_key(start)):
            seq = un_be64(key[1:])
            if stop is not None and seq >= stop:
                return
            yield seq, value

    def cursors(self) -> Iterator[tuple[str, str, str, int]]:
        """(source id, stream, boot id, last seq) of every bus stream recorded so far."""
        for key, value in self.store.scan(CURSOR):
            source, _, stream = key[len(CURSOR) :].partition(b"\x00")
            yield source.decode(), stream.decode(), value[8:].decode(), un_be64(value[:8])

    # --- the tree --------------------------------------------------------------

    def node(self, level: int, index: int) -> bytes:
        if level == 0:
            return HASHER.leaf(self.entry_hash(index))
        if level < MIN_STORED_LEVEL:
            return HASHER.node(self.node(level - 1, 2 * index), self.node(level - 1, 2 * index + 1))
        value = self.db.get(node_key(level, index))
        if value is None:
            raise LedgerError(f"tree node level {level} index {index} is not stored")
        return value

    def _check_size(self, size: int) -> int:
        head = self.size()
        if not 0 <= size <= head:
            raise LedgerError(f"tree size {size} is outside 0..{head}")
        return size

    def root(self, size: int) -> bytes:
        return merkle.root_hash(HASHER, self.node, self._check_size(size))

    def frontier(self, size: int) -> merkle.Frontier:
        return merkle.Frontier.at(HASHER, size, self.node)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return merkle.inclusion_proof(HASHER, self.node, index, self._check_size(size))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        self._check_size(new_size)
        return merkle.consistency_proof(HASHER, self.node, old_size, new_size)

    # --- checkpoints -------------------------------------------------------------

    def checkpoints(self) -> Iterator[tuple[int, int, str]]:
        """(tree size, time_ns, note) of every stored checkpoint, by size."""
        for key, value in self.store.scan(CHECKPOINT):
            yield un_be64(key[1:]), un_be64(value[:8]), value[8:].decode("utf-8", "replace")

    def checkpoint(self, size: int) -> tuple[int, str] | None:
        value = self.db.get(checkpoint_key(size))
        return None if value is None else (un_be64(value[:8]), value[8:].decode())

    def latest_checkpoint(self) -> tuple[int, int, str] | None:
        last = self.store.last(CHECKPOINT)
        if last is None:
            return None
        key, value = last
        return un_be64(key[1:]), un_be64(value[:8]), value[8:].decode()

    def close(self) -> None:
        self.store.close()

    def reopen(self) -> None:
        """Close and open the database again: after an I/O error (a full disk) RocksDB
        refuses every write until it is reopened."""
        self.store = self.store.reopen()
        self.db = self.store.db

    def has_space(self, need: int = 1 << 20) -> bool:
        try:
            st = os.statvfs(self.store.path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= need


class LedgerWriter:
    """The append path: hash chain, tree frontier and one atomic batch per commit."""

    def __init__(self, ledger: LedgerStore, sync: bool = True) -> None:
        self.ledger = ledger
        self.store = ledger.store
        self.sync = sync
        self.reload()

    def reload(self) -> None:
        """(Re)start from what is durable: after open, or after a failed write."""
        size = self.ledger.size()
        self.durable_size = size
        self.prev_hash = self.ledger.entry_hash(size - 1) if size else entries.GENESIS_PREV
        self.frontier = self.ledger.frontier(size)
        self._puts: list[tuple[bytes, bytes]] = []  # the pending batch, kept until durable
        self._pending = 0
        self._dirty = False
        self.failed = ""  # why the last commit failed; the next one reopens and retries
        self.last_checkpoint_size = 0
        latest = self.ledger.latest_checkpoint()
        if latest is not None:
            self.last_checkpoint_size = latest[0]

    @property
    def size(self) -> int:
        """Entries appended, durable or pending."""
        return self.frontier.size

    @property
    def pending(self) -> int:
        return self._pending

    def append(self, actor: str, action: str, payload: bytes, time_ns: int | None = None) -> int:
        """Add one entry to the pending batch; returns its sequence number."""
        frontier = self.frontier
        seq = frontier.size
        b3 = blake3.blake3
        encoding = entries.encode(
            seq,
            time.time_ns() if time_ns is None else time_ns,
            actor.encode(),
            action.encode(),
            b3(payload).digest(),
            self.prev_hash,
        )
        entry_hash = b3(encoding).digest()
        puts = self._puts
        key = be64(seq)
        puts.append((ENTRY + key, entry_hash + encoding))
        puts.append((PAYLOAD + key, payload))
        # Frontier.append inlined (BLAKE3 leaf and nodes): the append path's hot loop
        stack = frontier.hashes
        h = b3(b"\x00" + entry_hash).digest()
        index, level = seq, 0
        while index & 1:
            h = b3(b"\x01" + stack.pop() + h).digest()
            index >>= 1
            level += 1
            if level >= MIN_STORED_LEVEL:
                puts.append((NODE + bytes((level,)) + be64(index), h))
        stack.append(h)
        frontier.size = seq + 1
        self.prev_hash = entry_hash
        self._pending += 1
        self._dirty = True
        return seq

    def root(self) -> bytes:
        return self.frontier.root()

    def put_cursor(self, source: str, stream: str, boot_id: str, seq: int) -> None:
        """Note, in the pending batch, the last bus seq of a stream: committed together
        with the entries it covers, so a restart resumes exactly where the disk is."""
        key = CURSOR + source.encode() + b"\x00" + stream.encode()
        self._puts.append((key, be64(seq) + boot_id.encode()))
        self._dirty = True

    def sign_checkpoint(self, signer: Signer, origin: str) -> tuple[Checkpoint, str, int]:
        """Sign the head as it will be after the next commit and add it to the batch."""
        cp = Checkpoint(origin, self.frontier.size, self.frontier.root())
        note = signer.sign(cp.text())
        now = time.time_ns()
        self._puts.append((checkpoint_key(cp.size), be64(now) + note.encode()))
        self._dirty = True
        self.last_checkpoint_size = cp.size
        return cp, note, now

    def commit(self) -> int:
        """Write the pending batch atomically (durably when `sync`); returns the size.

        A failed write (a full disk, say) keeps everything pending in memory: the next
        commit reopens the database once there is space again and writes it all, so a
        transient failure loses nothing and the chain continues where it was."""
        if not self._dirty:
            return self.durable_size
        if self.failed:
            if not self.ledger.has_space():
                raise StoreError(f"still no space for the ledger ({self.failed})")
            self.ledger.reopen()
            self.store = self.ledger.store
        batch = self.store.batch()
        put = batch.put
        for key, value in self._puts:
            put(key, value)
        try:
            self.store.write(batch, sync=self.sync)
        except StoreError as exc:
            self.failed = str(exc)
            raise
        self.failed = ""
        self._puts = []
        self._pending = 0
        self._dirty = False
        self.durable_size = self.frontier.size
        return self.durable_size


def prune_payloads(ledger: LedgerStore, before_ns: int, limit: int = 100_000) -> int:
    """Drop payloads of entries older than `before_ns` (entries stay); returns how many."""
    floor = ledger.payload_floor()
    new_floor = floor
    for seq, value in ledger.entries(floor, floor + limit):
        if entries.parse_record(value).time_ns >= before_ns:
            break
        new_floor = seq + 1
    if new_floor == floor:
        return 0
    batch = ledger.store.batch()
    batch.delete_range(payload_key(floor), payload_key(new_floor))
    batch.put(PAYLOAD_FLOOR, be64(new_floor))
    ledger.store.write(batch, sync=True)
    return new_floor - floor
