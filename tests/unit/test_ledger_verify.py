"""The offline verifier names the first bad entry for every kind of tampering."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from daemoneye.ledger.note import Signer
from daemoneye.ledger.store import (
    LedgerStore,
    LedgerWriter,
    checkpoint_key,
    entry_key,
    node_key,
    open_store,
    payload_key,
)
from daemoneye.ledger.verify import verify_ledger

SIZE = 100


@pytest.fixture
def built(tmp_path: Path):
    signer = Signer("test/ledger", Ed25519PrivateKey.generate())
    ledger = LedgerStore(open_store(tmp_path / "db"))
    writer = LedgerWriter(ledger)
    for i in range(SIZE):
        writer.append("a", "events.process.start", f"p{i}".encode() * 3, time_ns=i)
        if i in (39, 99):
            writer.sign_checkpoint(signer, "test/ledger")
            writer.commit()
    assert verify_ledger(ledger, signer.verifier).ok
    return ledger, signer


def flip_byte(ledger: LedgerStore, key: bytes, offset: int) -> None:
    value = bytearray(ledger.db.get(key))
    value[offset] ^= 0x01
    ledger.db.put(key, bytes(value))


def check(ledger: LedgerStore, signer: Signer, seq: int | None, *words: str) -> str:
    report = verify_ledger(ledger, signer.verifier)
    assert not report.ok
    assert report.problem.seq == seq, str(report.problem)
    for word in words:
        assert word in str(report.problem)
    return str(report.problem)


@pytest.mark.parametrize("offset", [0, 31, 32, 33, 45, 60, -40, -1])
def test_any_changed_byte_of_an_entry_is_located(built, offset: int) -> None:
    ledger, signer = built
    flip_byte(ledger, entry_key(57), offset)
    check(ledger, signer, 57)


def test_changed_payload_is_located(built) -> None:
    ledger, signer = built
    flip_byte(ledger, payload_key(13), 2)
    check(ledger, signer, 13, "payload hashes to")


def test_deleted_payload_is_located(built) -> None:
    ledger, signer = built
    ledger.db.delete(payload_key(70))
    check(ledger, signer, 70, "payload missing")


def test_deleted_entry_is_located(built) -> None:
    ledger, signer = built
    ledger.db.delete(entry_key(42))
    check(ledger, signer, 42, "missing")


def test_deleted_last_entries_are_caught_by_the_checkpoint(built) -> None:
    ledger, signer = built
    for seq in (97, 98, 99):
        ledger.db.delete(entry_key(seq))
        ledger.db.delete(payload_key(seq))
    check(ledger, signer, 97, "missing", "checkpoint")


def test_rewritten_entry_with_consistent_hash_breaks_the_chain(built) -> None:
    """Re-hashing a changed entry moves the break to the next link, which is named."""
    from daemoneye.ledger import entry as entries

    ledger, signer = built
    e = entries.parse_record(ledger.db.get(entry_key(20)))
    enc = entries.encode(20, e.time_ns, b"mallory", e.action.encode(), e.payload_hash, e.prev_hash)
    ledger.db.put(entry_key(20), entries.record(entries.blake3_digest(enc), enc))
    check(ledger, signer, 21, "previous-hash link broken")


def test_changed_tree_node_is_located(built) -> None:
    ledger, signer = built
    flip_byte(ledger, node_key(3, 5), 0)  # covers entries 40..47
    check(ledger, signer, 47, "tree node level 3 index 5")


def test_changed_checkpoint_is_rejected(built) -> None:
    ledger, signer = built
    flip_byte(ledger, checkpoint_key(40), 20)
    check(ledger, signer, None, "checkpoint at size 40")


def test_range_verification(built) -> None:
    ledger, signer = built
    flip_byte(ledger, payload_key(80), 0)
    assert verify_ledger(ledger, signer.verifier, 10, 60).ok
    report = verify_ledger(ledger, signer.verifier, 60, 100)
    assert report.problem.seq == 80


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    signer = Signer("test/ledger", Ed25519PrivateKey.generate())
    ledger = LedgerStore(open_store(tmp_path_factory.mktemp("ledger") / "db"))
    writer = LedgerWriter(ledger)
    for i in range(150):
        writer.append(f"actor{i % 7}", "alerts.high", bytes([i % 256]) * (i % 40 + 1), time_ns=i)
        if i % 32 == 31:
            writer.sign_checkpoint(signer, "test/ledger")
            writer.commit()
    writer.sign_checkpoint(signer, "test/ledger")
    writer.commit()
    yield ledger, signer
    ledger.close()


@settings(max_examples=150, deadline=None)
@given(
    seq=st.integers(0, 149),
    target=st.sampled_from(["entry", "payload"]),
    offset=st.integers(0, 10_000),
    bit=st.integers(0, 7),
)
def test_any_flipped_bit_of_any_entry_or_payload_is_located(
    shared, seq: int, target: str, offset: int, bit: int
) -> None:
    ledger, signer = shared
    key = entry_key(seq) if target == "entry" else payload_key(seq)
    original = ledger.db.get(key)
    changed = bytearray(original)
    changed[offset % len(changed)] ^= 1 << bit
    ledger.db.put(key, bytes(changed))
    try:
        report = verify_ledger(ledger, signer.verifier)
        assert not report.ok and report.problem.seq == seq, str(report.problem)
    finally:
        ledger.db.put(key, original)
    assert verify_ledger(ledger, signer.verifier).ok
