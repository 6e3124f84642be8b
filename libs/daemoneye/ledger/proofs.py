"""Proof documents: what `daemoneye ledger prove|consistency --json` prints and what
`daemoneye ledger verify-proof` checks, built from the stored tree in O(log n) reads.

A document carries the signed checkpoint(s) for its tree size(s) when one is
stored, so a third party needs nothing else but the ledger's public key.
"""

from __future__ import annotations

from typing import Any

from daemoneye.ledger.store import HASHER, LedgerError, LedgerStore


def default_tree_size(ledger: LedgerStore, index: int | None = None) -> int:
    """The latest checkpointed size (covering `index`), else the current size."""
    latest = ledger.latest_checkpoint()
    if latest is not None and (index is None or index < latest[0]):
        return latest[0]
    return ledger.size()


def inclusion_document(
    ledger: LedgerStore, index: int, tree_size: int | None = None, with_payload: bool = False
) -> dict[str, Any]:
    size = default_tree_size(ledger, index) if tree_size is None else tree_size
    if not 0 <= index < size:
        raise LedgerError(f"entry {index} is not inside a tree of size {size}")
    entry = ledger.entry(index)
    doc: dict[str, Any] = {
        "leaf_index": index,
        "tree_size": size,
        "entry_hash": entry.stored_hash.hex(),
        "leaf_hash": HASHER.leaf(entry.stored_hash).hex(),
        "root_hash": ledger.root(size).hex(),
        "audit_path": [p.hex() for p in ledger.inclusion_proof(index, size)],
        "entry": entry.encoding.hex(),
    }
    if with_payload:
        payload = ledger.payload(index)
        if payload is not None:
            doc["payload"] = payload.hex()
    stored = ledger.checkpoint(size)
    if stored is not None:
        doc["checkpoint"] = stored[1]
    return doc


def consistency_document(ledger: LedgerStore, old_size: int, new_size: int) -> dict[str, Any]:
    if not 0 <= old_size <= new_size:
        raise LedgerError(f"old size {old_size} must be between 0 and the new size {new_size}")
    doc: dict[str, Any] = {
        "old_size": old_size,
        "new_size": new_size,
        "old_root": ledger.root(old_size).hex(),
        "new_root": ledger.root(new_size).hex(),
        "proof": [p.hex() for p in ledger.consistency_proof(old_size, new_size)],
    }
    for name, size in (("old_checkpoint", old_size), ("new_checkpoint", new_size)):
        stored = ledger.checkpoint(size)
        if stored is not None:
            doc[name] = stored[1]
    return doc
