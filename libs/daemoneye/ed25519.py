"""Ed25519 keys, signatures and PKCS#8 PEM through PyNaCl (libsodium).

The ledger signs a checkpoint a second; with the `cryptography` package that cost its
15 MB Rust extension mapped (~7 MB resident, 6 MB of `daemoneye up`'s PSS at idle) for
two calls. PyNaCl (the Python Cryptographic Authority's libsodium binding) signs and
verifies the same Ed25519 for ~2 MB. A key is its 32-byte seed; the PEM it lives in is
unencrypted PKCS#8 v1 (RFC 8410: a fixed prefix and the seed), read and written here;
any other PEM form (encrypted, v2 with the public key, another algorithm) is handed to
`cryptography`, imported then, which says what it is. Signatures are the same either
way: Ed25519 is deterministic (RFC 8032).
"""

from __future__ import annotations

import base64
import binascii
import os

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

SEED_BYTES = 32
SIGNATURE_BYTES = 64
# PKCS#8 v1 (RFC 8410) of an Ed25519 key: this prefix, then the 32-byte seed
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
PEM_HEADER = b"-----BEGIN PRIVATE KEY-----"
PEM_FOOTER = b"-----END PRIVATE KEY-----"


class NotEd25519(ValueError):
    """A private key of another algorithm."""


class PublicKey:
    def __init__(self, raw: bytes) -> None:
        if len(raw) != SEED_BYTES:
            raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
        self.raw = bytes(raw)

    def public_bytes_raw(self) -> bytes:
        return self.raw

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether `signature` is this key's over `data`."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            VerifyKey(self.raw).verify(data, signature)
        except (BadSignatureError, ValueError):  # ValueError: not a point on the curve
            return False
        return True


class PrivateKey:
    """An Ed25519 private key (its 32-byte seed). `sign` and `public_key()` are named as
    `cryptography`'s Ed25519PrivateKey's, so code taking one takes either."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 private key has 32 bytes, not {len(seed)}")
        self._seed = bytes(seed)
        self._key = SigningKey(self._seed)
        self._public = PublicKey(bytes(self._key.verify_key))

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(os.urandom(SEED_BYTES))  # any 32 bytes are a key (RFC 8032 5.1.5)

    def public_key(self) -> PublicKey:
        return self._public

    def private_bytes_raw(self) -> bytes:
        return self._seed

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data).signature

    def pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes."""
        body = base64.encodebytes(PKCS8_PREFIX + self._seed)  # 64-column lines
        return PEM_HEADER + b"\n" + body + PEM_FOOTER + b"\n"


def from_pem(data: bytes) -> PrivateKey:
    """The key of an unencrypted PKCS#8 PEM; NotEd25519 if of another algorithm, else
    ValueError (or TypeError: a password is needed) if it is not one."""
    text = data.strip()
    if text.startswith(PEM_HEADER) and text.endswith(PEM_FOOTER):
        try:
            der = base64.b64decode(b"".join(text[len(PEM_HEADER) : -len(PEM_FOOTER)].split()))
        except binascii.Error:
            der = b""
        if len(der) == len(PKCS8_PREFIX) + SEED_BYTES and der.startswith(PKCS8_PREFIX):
            return PrivateKey(der[len(PKCS8_PREFIX) :])
    # Any other form (PKCS#8 v2 with the public key, encrypted, another algorithm): the
    # full parser says what it is
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise NotEd25519(f"a {type(key).__name__}, not an Ed25519 key")
    return PrivateKey(key.private_bytes_raw())
