"""The ledger's RocksDB memory stays bounded as it grows: SST index blocks live in the
block cache (a partitioned index), not pinned per table for ever, and proofs read
through them as before."""

from __future__ import annotations

import random
from pathlib import Path

from daemoneye import merkle
from daemoneye.ledger.store import (
    HASHER,
    MEMTABLE_BYTES,
    LedgerStore,
    LedgerWriter,
    open_store,
)
from daemoneye.store import SMALL_BLOCK_CACHE_BYTES

ENTRIES = 60_000
PAYLOAD = 500  # bytes: about a process-event envelope


def test_table_readers_and_memtables_stay_small_while_the_ledger_grows(tmp_path: Path) -> None:
    ledger = LedgerStore(open_store(tmp_path / "db"))
    writer = LedgerWriter(ledger, sync=False)
    rng = random.Random(8)
    memtables = 0  # the most the memtables held after a commit
    for _ in range(ENTRIES):
        writer.append("collector@test", "events.process.start", rng.randbytes(PAYLOAD))
        if writer.pending >= 1000:
            writer.commit()
            size = ledger.db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
            memtables = max(memtables, size)
    writer.commit()
    # two memtables of the ledger's size (what its RSS swings by), not the shared 8 MB
    assert MEMTABLE_BYTES < memtables <= 2 * MEMTABLE_BYTES + (1 << 20)
    ledger.store.flush()  # everything into SST files, each with its index
    db = ledger.db
    sst = db.property_int_value("rocksdb.total-sst-files-size")
    readers = db.property_int_value("rocksdb.estimate-table-readers-mem")
    cache = db.property_int_value("rocksdb.block-cache-usage")
    assert sst > 25 << 20
    # A whole index per table would be ~1 % of the data (~300 KB here) and grows with
    # the ledger; the pinned top level of a partitioned one is a few KB.
    assert readers < 64 << 10, f"{readers} bytes of table readers for {sst} bytes of SST"
    # The index partitions of every file written land in the cache (~5 KB per MB of
    # SST): its capacity, not the ledger's size, is their ceiling.
    assert db.property_int_value("rocksdb.block-cache-capacity") == SMALL_BLOCK_CACHE_BYTES
    assert cache <= SMALL_BLOCK_CACHE_BYTES
    root = ledger.root(ENTRIES)
    for index in (0, 1, ENTRIES // 2, ENTRIES - 1):  # proofs read through the index
        proof = ledger.inclusion_proof(index, ENTRIES)
        leaf = HASHER.leaf(ledger.entry_hash(index))
        merkle.verify_inclusion(HASHER, index, ENTRIES, leaf, proof, root)
    ledger.close()
