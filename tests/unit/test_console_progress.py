"""The progress callback comes from the verifier's own loop, and the console's bar is
drawn only on a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemoneye.console import common
from daemoneye.ledger import verify as verifying
from daemoneye.ledger.note import Signer
from daemoneye.ledger.store import LedgerStore, LedgerWriter, entry_key, open_store

SIZE = 100


@pytest.fixture
def ledger(tmp_path: Path):
    signer = Signer("test/ledger", Ed25519PrivateKey.generate())
    store = LedgerStore(open_store(tmp_path / "db"))
    writer = LedgerWriter(store)
    for i in range(SIZE):
        writer.append("a", "audit.test", f"p{i}".encode(), time_ns=i)
    writer.sign_checkpoint(signer, "test/ledger")
    writer.commit()
    yield store, signer
    store.close()


def test_verify_reports_progress_as_it_goes(ledger, monkeypatch) -> None:
    store, signer = ledger
    monkeypatch.setattr(verifying, "PROGRESS_EVERY", 16)
    calls: list[tuple[int, int]] = []
    report = verifying.verify_ledger(
        store, signer.verifier, progress=lambda d, t: calls.append((d, t))
    )
    assert report.ok
    assert calls == [(n, SIZE) for n in range(16, SIZE, 16)] + [(SIZE, SIZE)]


def test_progress_counts_the_range_checked(ledger, monkeypatch) -> None:
    store, signer = ledger
    monkeypatch.setattr(verifying, "PROGRESS_EVERY", 16)
    calls: list[tuple[int, int]] = []
    report = verifying.verify_ledger(
        store, signer.verifier, 40, 90, lambda d, t: calls.append((d, t))
    )
    assert report.ok
    # entries 40..89: callbacks when entries 48, 64 and 80 are done, then at the end
    assert calls == [(8, 50), (24, 50), (40, 50), (50, 50)]


def test_progress_stops_where_the_verifier_stops(ledger, monkeypatch) -> None:
    store, signer = ledger
    monkeypatch.setattr(verifying, "PROGRESS_EVERY", 16)
    value = bytearray(store.db.get(entry_key(70)))
    value[40] ^= 1
    store.db.put(entry_key(70), bytes(value))
    calls: list[tuple[int, int]] = []
    report = verifying.verify_ledger(
        store, signer.verifier, progress=lambda d, t: calls.append((d, t))
    )
    assert report.problem is not None and report.problem.seq == 70
    assert calls == [(16, SIZE), (32, SIZE), (48, SIZE), (64, SIZE)]


def test_no_bar_unless_stdout_and_stderr_are_terminals(monkeypatch) -> None:
    # under pytest neither is a terminal
    with common.progress_bar("x") as progress:
        assert progress is None
    monkeypatch.setattr(type(common.console), "is_terminal", property(lambda self: True))
    with common.progress_bar("x", enabled=False) as progress:
        assert progress is None  # --json
    with common.progress_bar("x") as progress:
        assert callable(progress)
        progress(5, 10)
