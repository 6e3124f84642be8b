"""RocksDB (rocksdict) for the services that own data: bytes keys and values, batched
writes, prefix scans and time-ordered keys.

Each owning service opens its own directory under `<data_dir>/<service>`. Keys are
laid out so the common reads are prefix scans: `b"<table>/" + be64(time_ns) + ...`
sorts by time, `b"<table>/" + be32(pid) + ...` by pid.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)


class StoreError(RuntimeError):
    """The database cannot be opened or written: says where and why."""


def be64(value: int) -> bytes:
    return struct.pack(">Q", value)


def be32(value: int) -> bytes:
    return struct.pack(">I", value)


def un_be64(data: bytes) -> int:
    return struct.unpack(">Q", data[:8])[0]


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\xff" * (len(prefix) + 1)
    return stripped[:-1] + bytes([stripped[-1] + 1])


# Memory per store, bounded: RocksDB's defaults (64 MB memtables, two of them, and its
# block cache) let each service's RSS climb by ~100 MB under a steady write load
# before the first flush, which reads as a leak in a long soak. 8 MB memtables keep
# batched writes well above 100k records/s (bench/ledger.py) at a flat ~35 MB.
MEMTABLE_BYTES = 8 << 20
MEMTABLES = 2
BLOCK_CACHE_BYTES = 8 << 20
# For a store written all the time and read now and then (the ledger, the alerter):
# RocksDB loads the index partitions of every SST file it writes into the block cache
# (~5 KB per MB of SST), so an 8 MB cache fills over the first ~1.5 GB of data, and a
# soak reads that as growth (4.7 MB at 1.2M ledger entries, a 10-minute soak's). With
# 1 MB the cache is full within minutes and stays there; a read whose index partition
# was evicted reads it from the page cache (a proof or an RPC, not a per-event path).
SMALL_BLOCK_CACHE_BYTES = 1 << 20
# Blocks of SST files that compaction deleted are erased from the block cache at once
# instead of ageing out of it: a compaction that rewrites a whole file (the alerter's
# windows and pending keys span it) otherwise leaves a dead index the size of the
# live one in the cache each time (alerter: ~2.7 MB of RSS growth in 10 minutes at
# 100 alerts/s). 300 is RocksDB's suggested value; a mutable option (RocksDB >= 9.8).
UNCACHE_AGGRESSIVENESS = 300
# RocksDB's level-0 thresholds, in files: compact at 4, slow writes at 20, stop at 36.
L0_FILES = 4
L0_SLOWDOWN_FILES = 20
L0_STOP_FILES = 36


def _options(
    memtable_bytes: int = MEMTABLE_BYTES,
    block_cache_bytes: int = BLOCK_CACHE_BYTES,
    l0_files: int = L0_FILES,
) -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_max_background_jobs(2)
    options.increase_parallelism(2)
    options.set_write_buffer_size(memtable_bytes)
    options.set_max_write_buffer_number(MEMTABLES)
    if l0_files != L0_FILES:  # the slowdown and stop thresholds move with it
        options.set_level_zero_file_num_compaction_trigger(l0_files)
        options.set_level_zero_slowdown_writes_trigger(L0_SLOWDOWN_FILES * l0_files // L0_FILES)
        options.set_level_zero_stop_writes_trigger(L0_STOP_FILES * l0_files // L0_FILES)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(block_cache_bytes))
    # Index blocks bounded too: by default each SST file's whole index stays in memory
    # outside the cache (rocksdb.estimate-table-readers-mem), ~3.7 KB per 1,000 ledger
    # entries for ever: +7 MB in a 10-minute soak at 2,000 entries/s. A partitioned
    # index pins only its small top level; the partitions share the block cache.
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_top_level_index_and_filter(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options.set_block_based_table_factory(table)
    return options


class Store:
    def __init__(
        self,
        path: Path,
        sync: bool = False,
        read_only: bool = False,
        memtable_bytes: int = MEMTABLE_BYTES,
        block_cache_bytes: int = BLOCK_CACHE_BYTES,
        l0_files: int = L0_FILES,
    ) -> None:
        self.path = Path(path)
        self.memtable_bytes = memtable_bytes
        self.block_cache_bytes = block_cache_bytes
        self.l0_files = l0_files
        options = _options(memtable_bytes, block_cache_bytes, l0_files)
        try:
            if not read_only:
                self.path.mkdir(parents=True, exist_ok=True, mode=0o750)
            access = AccessType.read_only() if read_only else AccessType.read_write()
            self.db = Rdict(str(self.path), options, access_type=access)
        except Exception as exc:
            raise StoreError(f"cannot open RocksDB at {self.path}: {exc}") from None
        self.sync = sync
        self._write_options = WriteOptions()
        self._write_options.sync = sync
        self.db.set_write_options(self._write_options)
        if not read_only and UNCACHE_AGGRESSIVENESS:
            # rocksdict's Options has no setter; a build without it keeps plain LRU
            with contextlib.suppress(Exception):
                self.db.set_options({"uncache_aggressiveness": str(UNCACHE_AGGRESSIVENESS)})

    def reopen(self) -> Store:
        """A fresh handle on the same directory: RocksDB refuses every write after an
        I/O error (a full disk) until the database is reopened."""
        self.close()
        return Store(
            self.path,
            sync=self.sync,
            memtable_bytes=self.memtable_bytes,
            block_cache_bytes=self.block_cache_bytes,
            l0_files=self.l0_files,
        )

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.db.put(key, value)

    def delete(self, key: bytes) -> None:
        self.db.delete(key)

    def batch(self) -> WriteBatch:
        return WriteBatch(raw_mode=True)

    def write(self, batch: WriteBatch, sync: bool | None = None) -> None:
        """Apply a batch atomically; `sync=True` makes it durable before returning."""
        try:
            if sync is None:
                self.db.write(batch)
            else:
                options = WriteOptions()
                options.sync = sync
                self.db.write(batch, options)
        except Exception as exc:
            raise StoreError(f"write to {self.path} failed: {exc}") from None

    def scan(
        self, prefix: bytes, start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Keys starting with `prefix` in order (from `start`, a full key, if given)."""
        it = self.db.iter()
        if reverse:
            it.seek_for_prev(start or prefix_end(prefix))
            if it.valid() and not it.key().startswith(prefix):
                it.prev()
        else:
            it.seek(start or prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                return
            yield key, it.value()
            if reverse:
                it.prev()
            else:
                it.next()

    def last(self, prefix: bytes) -> tuple[bytes, bytes] | None:
        return next(self.scan(prefix, reverse=True), None)

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete keys in [start, end): retention by time drops a whole key range."""
        self.db.delete_range(start, end)

    def flush(self) -> None:
        self.db.flush()
        self.db.flush_wal(True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()


def service_store(
    data_dir: Path,
    service: str,
    sync: bool = False,
    memtable_bytes: int = MEMTABLE_BYTES,
    block_cache_bytes: int = BLOCK_CACHE_BYTES,
) -> Store:
    path = Path(data_dir) / service
    os.makedirs(path.parent, mode=0o750, exist_ok=True)
    return Store(
        path, sync=sync, memtable_bytes=memtable_bytes, block_cache_bytes=block_cache_bytes
    )
