"""Checkpoints as C2SP signed notes, and the Ed25519 key that signs them.

A checkpoint (C2SP tlog-checkpoint) is the note text

    <origin>\\n<tree size, decimal>\\n<base64 root hash>\\n

followed by a blank line and one signature line per signer (C2SP signed-note):

    \\u2014 <key name> <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>\\n

The signature covers the note text. The key id is the first 4 bytes of
SHA-256(key name || 0x0A || 0x01 || public key), 0x01 naming Ed25519. The verifier
key, what `daemoneye ledger key` prints, is `<name>+<key id hex>+<base64(0x01 ||
public key)>` as in Go's golang.org/x/mod/sumdb/note.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from daemoneye.ed25519 import NotEd25519, PrivateKey, PublicKey, from_pem

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "


class NoteError(ValueError):
    """A malformed note or checkpoint, a bad signature or an unusable key; says which."""


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")


@dataclass(frozen=True)
class Verifier:
    name: str
    public: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public)

    def vkey(self) -> str:
        raw = base64.b64encode(bytes([ALG_ED25519]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{raw}"

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        try:
            name, hex_id, raw_b64 = vkey.strip().split("+", 2)
            raw = base64.b64decode(raw_b64, validate=True)
            wanted_id = bytes.fromhex(hex_id)
        except (ValueError, binascii.Error):
            raise NoteError("verifier key must look like <name>+<8 hex>+<base64>") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("verifier key is not an Ed25519 key (algorithm byte 0x01, 32 bytes)")
        verifier = cls(name, raw[1:])
        if verifier.key_id != wanted_id:
            raise NoteError(f"verifier key id {hex_id} does not match its name and key")
        return verifier

    def verify(self, note: str) -> str:
        """The signed text of `note`, or NoteError if no valid signature by this key."""
        text, sep, sigs = note.rpartition("\n\n")
        if not sep or not sigs.endswith("\n"):
            raise NoteError("not a signed note: no blank line before the signatures")
        text += "\n"
        found_name = False
        for line in sigs[:-1].split("\n"):
            if not line.startswith(SIG_PREFIX):
                raise NoteError(f"malformed signature line {line[:60]!r}")
            try:
                name, sig_b64 = line[len(SIG_PREFIX) :].split(" ")
                sig = base64.b64decode(sig_b64, validate=True)
            except (ValueError, binascii.Error):
                raise NoteError(f"malformed signature line {line[:60]!r}") from None
            if name != self.name or sig[:4] != self.key_id:
                continue
            found_name = True
            if not PublicKey(self.public).verify(sig[4:], text.encode()):
                raise NoteError(f"signature by {self.name} does not match the note")
            return text
        if found_name:
            raise NoteError(f"no valid signature by {self.name}")
        raise NoteError(f"note has no signature by key {self.name}+{self.key_id.hex()}")


class Signer:
    def __init__(self, name: str, private: PrivateKey) -> None:
        """`private`: a daemoneye.ed25519 key, or cryptography's (the same methods)."""
        _check_name(name)
        self.name = name
        self.private = private
        self.verifier = Verifier(name, private.public_key().public_bytes_raw())

    def sign(self, text: str) -> str:
        if not text.endswith("\n"):
            raise NoteError("note text must end with a newline")
        sig = self.verifier.key_id + self.private.sign(text.encode())
        return f"{text}\n{SIG_PREFIX}{self.name} {base64.b64encode(sig).decode()}\n"


# --- checkpoints ---------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("checkpoint needs origin, size and root hash lines")
    origin, size_s, root_s = lines[:3]
    if not origin:
        raise NoteError("checkpoint origin line is empty")
    if not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
        raise NoteError(f"checkpoint tree size {size_s[:30]!r} is not a decimal number")
    try:
        root = base64.b64decode(root_s, validate=True)
    except binascii.Error:
        raise NoteError(f"checkpoint root hash {root_s[:60]!r} is not base64") from None
    if len(root) != 32:
        raise NoteError(f"checkpoint root hash has {len(root)} bytes, not 32")
    return Checkpoint(origin, int(size_s), root)


def open_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    """Verify the note's signature, then parse its checkpoint."""
    return parse_checkpoint(verifier.verify(note))


# --- the signing key ---------------------------------------------------------


def load_or_create_key(path: Path) -> PrivateKey:
    """The private key at `path`, created (mode 0600, never overwritten) when missing."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = PrivateKey.generate()
        pem = key.pem()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_key(path)  # another process created it first
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        return key
    return load_key(path)


def load_key(path: Path) -> PrivateKey:
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as exc:
        raise NoteError(f"cannot read signing key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise NoteError(f"signing key {path} has mode {mode:04o}; it must be 0600")
    try:
        return from_pem(data)
    except NotEd25519:
        raise NoteError(f"signing key {path} is not an Ed25519 key") from None
    except (ValueError, TypeError) as exc:
        raise NoteError(f"signing key {path} is not a PEM private key: {exc}") from None


def public_key_path(key_path: Path) -> Path:
    return Path(key_path).with_suffix(".pub")
