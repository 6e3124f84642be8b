"""Signed notes and checkpoints (C2SP formats) and the signing key file."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemoneye.ledger.note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    load_key,
    load_or_create_key,
    open_checkpoint,
    parse_checkpoint,
)


@pytest.fixture
def signer() -> Signer:
    return Signer("example.org/log", Ed25519PrivateKey.generate())


def test_checkpoint_note_format(signer: Signer) -> None:
    cp = Checkpoint("example.org/log", 12, bytes(range(32)))
    note = signer.sign(cp.text())
    text, blank, sig_line = note.partition("\n\n")
    assert text == f"example.org/log\n12\n{base64.b64encode(bytes(range(32))).decode()}"
    assert blank and sig_line.startswith("\u2014 example.org/log ") and sig_line.endswith("\n")
    sig = base64.b64decode(sig_line.split(" ")[2])
    public = signer.verifier.public
    key_id = hashlib.sha256(b"example.org/log\n\x01" + public).digest()[:4]
    assert sig[:4] == key_id and len(sig) == 68
    assert open_checkpoint(note, signer.verifier) == cp


def test_vkey_round_trip(signer: Signer) -> None:
    vkey = signer.verifier.vkey()
    name, hex_id, b64 = vkey.split("+", 2)
    assert name == "example.org/log" and len(hex_id) == 8
    assert base64.b64decode(b64)[0] == 1
    assert Verifier.from_vkey(vkey) == signer.verifier
    with pytest.raises(NoteError, match="key id"):
        Verifier.from_vkey(f"other+{hex_id}+{b64}")
    with pytest.raises(NoteError):
        Verifier.from_vkey("garbage")


def test_tampered_or_foreign_notes_fail(signer: Signer) -> None:
    note = signer.sign(Checkpoint("example.org/log", 5, b"\x01" * 32).text())
    with pytest.raises(NoteError, match="does not match"):
        open_checkpoint(note.replace("\n5\n", "\n6\n"), signer.verifier)
    other = Signer("example.org/log", Ed25519PrivateKey.generate())
    with pytest.raises(NoteError, match="no signature by key"):
        open_checkpoint(note, other.verifier)
    with pytest.raises(NoteError, match="not a signed note"):
        open_checkpoint("example.org/log\n5\nAAAA\n", signer.verifier)


@pytest.mark.parametrize(
    "text",
    ["o\n5\n", "\n5\n" + "A" * 44 + "\n", "o\n05\nAA==\n", "o\nx\nAA==\n", "o\n5\n!!\n",
     "o\n5\nAAAA\n"],
)  # fmt: skip
def test_malformed_checkpoints(text: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(text)


def test_key_created_0600_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ed25519.key"
    key = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_key(path)
    assert again.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(NoteError, match="0644"):
        load_key(path)
    path.write_text("nonsense")
    os.chmod(path, 0o600)
    with pytest.raises(NoteError, match="not a PEM"):
        load_key(path)
