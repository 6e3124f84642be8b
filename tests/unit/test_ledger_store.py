"""The stored ledger: append path, stored tree, proofs from O(log n) reads, reopen,
checkpoints, retention and proof documents a third party can check."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemoneye import merkle
from daemoneye.ledger import entry as entries
from daemoneye.ledger.note import NoteError, Signer
from daemoneye.ledger.proofs import consistency_document, inclusion_document
from daemoneye.ledger.store import (
    HASHER,
    LedgerError,
    LedgerStore,
    LedgerWriter,
    open_store,
    prune_payloads,
)
from daemoneye.ledger.verify import verify_ledger, verify_proof_document

ORIGIN = "test/ledger"


def open_ledger(path: Path, read_only: bool = False) -> LedgerStore:
    return LedgerStore(open_store(path, read_only=read_only))


def fill(writer: LedgerWriter, n: int, start: int = 0, t0: int = 1000) -> list[bytes]:
    payloads = []
    for i in range(start, start + n):
        payload = f"payload-{i}".encode()
        writer.append(f"actor-{i % 3}", "events.process.start", payload, time_ns=t0 + i)
        payloads.append(payload)
    return payloads


@pytest.fixture
def signer() -> Signer:
    return Signer(ORIGIN, Ed25519PrivateKey.generate())


def test_entries_chain_and_tree_match_an_in_memory_tree(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "db")
    writer = LedgerWriter(ledger, sync=False)
    payloads = fill(writer, 300)
    writer.commit()
    memory = merkle.MemoryTree(HASHER)
    prev = entries.GENESIS_PREV
    for seq in range(300):
        e = ledger.entry(seq)
        assert e.seq == seq and e.prev_hash == prev and e.actor == f"actor-{seq % 3}"
        assert e.payload_hash == blake3.blake3(payloads[seq]).digest()
        assert e.computed_hash() == e.stored_hash
        assert ledger.payload(seq) == payloads[seq]
        memory.append(HASHER.leaf(e.stored_hash))
        prev = e.stored_hash
    assert ledger.size() == 300
    for size in (1, 2, 3, 4, 5, 64, 255, 256, 257, 300):
        assert ledger.root(size) == memory.root(size)
        for index in {0, size // 2, size - 1}:
            assert ledger.inclusion_proof(index, size) == memory.inclusion_proof(index, size)
        for old in {1, size // 3, size - 1} - {0}:
            assert ledger.consistency_proof(old, size) == memory.consistency_proof(old, size)
    assert writer.root() == memory.root()


def test_proofs_read_olog_n_nodes(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "db")
    writer = LedgerWriter(ledger, sync=False)
    fill(writer, 5000)
    writer.commit()
    reads = []
    real_get = ledger.db.get

    class Counting:
        def get(self, key: bytes):
            reads.append(key)
            return real_get(key)

    ledger.db = Counting()  # counts the store reads a proof makes
    ledger.inclusion_proof(1234, 5000)
    ledger.consistency_proof(1000, 5000)
    assert 0 < len(reads) <= 4 * 13 * 2  # O(log n): a few reads per level, never ~n
    ledger.db = None


def test_reopen_continues_the_chain_and_drops_what_was_not_committed(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "db")
    writer = LedgerWriter(ledger)
    fill(writer, 37)
    writer.commit()
    fill(writer, 5, start=37)  # never committed: as if the process died here
    ledger.close()
    ledger = open_ledger(tmp_path / "db")
    writer = LedgerWriter(ledger)
    assert writer.size == 37
    fill(writer, 20, start=37)
    writer.commit()
    assert ledger.entry(37).prev_hash == ledger.entry(36).stored_hash
    assert verify_ledger(ledger, None).ok
    assert ledger.size() == 57


def test_checkpoints_are_signed_stored_and_verified(tmp_path: Path, signer: Signer) -> None:
    ledger = open_ledger(tmp_path / "db")
    writer = LedgerWriter(ledger)
    fill(writer, 10)
    cp, note, _ = writer.sign_checkpoint(signer, ORIGIN)
    writer.commit()
    assert (cp.size, cp.root) == (10, ledger.root(10))
    assert ledger.latest_checkpoint()[2] == note
    fill(writer, 7, start=10)
    writer.sign_checkpoint(signer, ORIGIN)
    writer.commit()
    report = verify_ledger(ledger, signer.verifier)
    assert report.ok and report.checkpoints == 2 and report.root == ledger.root(17)
    other = Signer(ORIGIN, Ed25519PrivateKey.generate())
    bad = verify_ledger(ledger, other.verifier)
    assert not bad.ok and "checkpoint at size 10" in str(bad.problem)


def test_retention_drops_payloads_but_never_entries(tmp_path: Path, signer: Signer) -> None:
    ledger = open_ledger(tmp_path / "db")
    writer = LedgerWriter(ledger)
    fill(writer, 50, t0=0)  # time_ns = seq
    writer.sign_checkpoint(signer, ORIGIN)
    writer.commit()
    assert prune_payloads(ledger, before_ns=20) == 20
    assert ledger.payload(19) is None and ledger.payload(20) is not None
    assert ledger.size() == 50 and ledger.entry(0).seq == 0
    report = verify_ledger(ledger, signer.verifier)
    assert report.ok and report.payloads_pruned == 20
    assert prune_payloads(ledger, before_ns=20) == 0


def test_proof_documents_verify_with_only_checkpoint_and_key(tmp_path: Path, signer: Signer):
    ledger = open_ledger(tmp_path / "db")
    writer = LedgerWriter(ledger)
    fill(writer, 21)
    writer.sign_checkpoint(signer, ORIGIN)
    writer.commit()
    fill(writer, 12, start=21)
    writer.sign_checkpoint(signer, ORIGIN)
    writer.commit()

    doc = inclusion_document(ledger, 5, with_payload=True)
    assert doc["tree_size"] == 33 and "checkpoint" in doc
    assert set(doc) >= {"leaf_index", "tree_size", "entry_hash", "leaf_hash", "root_hash",
                        "audit_path"}  # fmt: skip
    assert "entry 5 is in test/ledger" in verify_proof_document(doc, signer.verifier)

    cons = consistency_document(ledger, 21, 33)
    assert "extends tree size 21" in verify_proof_document(cons, signer.verifier)

    for field, value in [
        ("entry_hash", "00" * 32),
        ("root_hash", "11" * 32),
        ("leaf_index", 6),
        ("audit_path", [*doc["audit_path"][:-1], "22" * 32]),
        ("payload", "00"),
    ]:
        with pytest.raises(NoteError):
            verify_proof_document({**doc, field: value}, signer.verifier)
    without_cp = {k: v for k, v in doc.items() if k != "checkpoint"}
    with pytest.raises(NoteError, match="checkpoint"):
        verify_proof_document(without_cp, signer.verifier)
    with pytest.raises(NoteError):
        verify_proof_document({**cons, "proof": cons["proof"][1:]}, signer.verifier)
    with pytest.raises(NoteError, match="not a proof"):
        verify_proof_document({"hello": 1}, signer.verifier)


def test_out_of_range_requests_say_why(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "db")
    writer = LedgerWriter(ledger)
    fill(writer, 4)
    writer.commit()
    with pytest.raises(LedgerError, match="outside"):
        ledger.root(5)
    with pytest.raises(LedgerError, match="not inside"):
        inclusion_document(ledger, 4)
    with pytest.raises(LedgerError, match="not in the ledger"):
        ledger.entry(9)


def test_read_only_open_of_a_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    from daemoneye.store import StoreError

    with pytest.raises(StoreError, match="no ledger database"):
        open_ledger(tmp_path / "nothing", read_only=True)
