"""daemoneye.ed25519: PyNaCl's Ed25519, the same keys, signatures and PEM as the
`cryptography` package's (which reads the PEM forms it does not)."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemoneye import ed25519

# RFC 8032 7.1, TEST 2 (one byte of message)
SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
PUBLIC = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
MESSAGE = bytes.fromhex("72")
SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def test_the_rfc_8032_vector() -> None:
    key = ed25519.PrivateKey(SEED)
    assert key.public_key().public_bytes_raw() == PUBLIC
    assert key.sign(MESSAGE) == SIGNATURE
    assert ed25519.PublicKey(PUBLIC).verify(SIGNATURE, MESSAGE)
    assert not ed25519.PublicKey(PUBLIC).verify(SIGNATURE, MESSAGE + b"x")
    assert not ed25519.PublicKey(PUBLIC).verify(SIGNATURE[:-1] + b"\x01", MESSAGE)
    assert not ed25519.PublicKey(PUBLIC).verify(SIGNATURE[:63], MESSAGE)


def test_signatures_and_pem_are_cryptography_s() -> None:
    ours = ed25519.PrivateKey.generate()
    theirs = serialization.load_pem_private_key(ours.pem(), password=None)
    assert isinstance(theirs, Ed25519PrivateKey)
    assert theirs.private_bytes_raw() == ours.private_bytes_raw()
    data = b"origin\n12\nroot\n"
    assert theirs.sign(data) == ours.sign(data)  # deterministic
    theirs.public_key().verify(ours.sign(data), data)
    with pytest.raises(InvalidSignature):
        theirs.public_key().verify(ours.sign(data), data + b"\n")
    pem = theirs.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert pem == ours.pem()  # byte for byte what cryptography wrote before
    assert ed25519.from_pem(pem).private_bytes_raw() == ours.private_bytes_raw()


def test_other_pems_go_to_the_full_parser() -> None:
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ed25519.NotEd25519):
        ed25519.from_pem(other)
    locked = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(TypeError):  # a password is needed
        ed25519.from_pem(locked)
    with pytest.raises(ValueError):
        ed25519.from_pem(b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError):
        ed25519.PrivateKey(b"short")


def test_a_public_key_off_the_curve_verifies_nothing() -> None:
    assert not ed25519.PublicKey(b"\xff" * 32).verify(SIGNATURE, MESSAGE)
