"""Ed25519 keys, signatures and PKCS#8 PEM through the libcrypto Python already maps.

The ledger signs a checkpoint a second; with the `cryptography` package that cost its
15 MB Rust extension mapped (~7 MB resident, 6 MB of `daemoneye up`'s PSS at idle) for
two calls. OpenSSL's libcrypto (>= 1.1.1) signs Ed25519 too and is in every process
already (hashlib links it), so the calls go there through ctypes. Where it is missing
or too old, `cryptography` does the same work (imported then); a PEM this module does
not read itself (an encrypted or v2 PKCS#8 key) is handed to it as well. Signatures
are the same either way: Ed25519 is deterministic (RFC 8032).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import os
from typing import Any

NID_ED25519 = 1087  # EVP_PKEY_ED25519
SEED_BYTES = 32
SIGNATURE_BYTES = 64
# PKCS#8 v1 (RFC 8410) of an Ed25519 key: this prefix, then the 32-byte seed
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
PEM_HEADER = b"-----BEGIN PRIVATE KEY-----"
PEM_FOOTER = b"-----END PRIVATE KEY-----"


class NotEd25519(ValueError):
    """A private key of another algorithm."""


def _load() -> Any:
    names = ["libcrypto.so.3", "libcrypto.so.1.1", ctypes.util.find_library("crypto")]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if not all(
            hasattr(lib, f)
            for f in ("EVP_PKEY_new_raw_private_key", "EVP_DigestSign", "EVP_DigestVerify")
        ):
            continue  # OpenSSL < 1.1.1
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        for fn, args, res in (
            ("EVP_PKEY_new_raw_private_key", [ctypes.c_int, vp, ctypes.c_char_p, sz], vp),
            ("EVP_PKEY_new_raw_public_key", [ctypes.c_int, vp, ctypes.c_char_p, sz], vp),
            (
                "EVP_PKEY_get_raw_public_key",
                [vp, ctypes.c_char_p, ctypes.POINTER(sz)],
                ctypes.c_int,
            ),
            ("EVP_PKEY_free", [vp], None),
            ("EVP_MD_CTX_new", [], vp),
            ("EVP_MD_CTX_free", [vp], None),
            ("EVP_DigestSignInit", [vp, vp, vp, vp, vp], ctypes.c_int),
            ("EVP_DigestVerifyInit", [vp, vp, vp, vp, vp], ctypes.c_int),
            (
                "EVP_DigestSign",
                [vp, ctypes.c_char_p, ctypes.POINTER(sz), ctypes.c_char_p, sz],
                ctypes.c_int,
            ),
            ("EVP_DigestVerify", [vp, ctypes.c_char_p, sz, ctypes.c_char_p, sz], ctypes.c_int),
            ("ERR_clear_error", [], None),
        ):
            getattr(lib, fn).argtypes = args
            getattr(lib, fn).restype = res
        return lib
    return None


_LIB = None if os.environ.get("DAEMONEYE_ED25519_NO_LIBCRYPTO") else _load()


def native() -> bool:
    """Whether libcrypto does the work here (else the `cryptography` package)."""
    return _LIB is not None


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
        if _LIB is None:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            try:
                Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
            except InvalidSignature:
                return False
            return True
        pkey = _LIB.EVP_PKEY_new_raw_public_key(NID_ED25519, None, self.raw, SEED_BYTES)
        if not pkey:
            _LIB.ERR_clear_error()
            return False
        ctx = _LIB.EVP_MD_CTX_new()
        try:
            ok = (
                ctx
                and _LIB.EVP_DigestVerifyInit(ctx, None, None, None, pkey) == 1
                and _LIB.EVP_DigestVerify(ctx, signature, len(signature), data, len(data)) == 1
            )
            if not ok:
                _LIB.ERR_clear_error()
            return bool(ok)
        finally:
            _LIB.EVP_MD_CTX_free(ctx)
            _LIB.EVP_PKEY_free(pkey)


class PrivateKey:
    """An Ed25519 private key (its 32-byte seed). `sign` and `public_key()` are named as
    `cryptography`'s Ed25519PrivateKey's, so code taking one takes either."""

    _pkey: Any = None  # libcrypto's EVP_PKEY, freed with the key

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 private key has 32 bytes, not {len(seed)}")
        self._seed = bytes(seed)
        if _LIB is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            self._key = Ed25519PrivateKey.from_private_bytes(self._seed)
            self._public = PublicKey(self._key.public_key().public_bytes_raw())
            return
        self._pkey = _LIB.EVP_PKEY_new_raw_private_key(NID_ED25519, None, self._seed, SEED_BYTES)
        if not self._pkey:
            _LIB.ERR_clear_error()
            raise ValueError("libcrypto refused the Ed25519 key")
        raw, size = ctypes.create_string_buffer(SEED_BYTES), ctypes.c_size_t(SEED_BYTES)
        if _LIB.EVP_PKEY_get_raw_public_key(self._pkey, raw, ctypes.byref(size)) != 1:
            _LIB.ERR_clear_error()
            raise ValueError("libcrypto gave no public key for the Ed25519 key")
        self._public = PublicKey(raw.raw[: size.value])

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(os.urandom(SEED_BYTES))  # any 32 bytes are a key (RFC 8032 5.1.5)

    def __del__(self) -> None:
        if self._pkey and _LIB is not None:
            _LIB.EVP_PKEY_free(self._pkey)
            self._pkey = None

    def public_key(self) -> PublicKey:
        return self._public

    def private_bytes_raw(self) -> bytes:
        return self._seed

    def sign(self, data: bytes) -> bytes:
        if _LIB is None:
            return self._key.sign(data)
        ctx = _LIB.EVP_MD_CTX_new()
        if not ctx:
            raise MemoryError("EVP_MD_CTX_new")
        try:
            sig, size = (
                ctypes.create_string_buffer(SIGNATURE_BYTES),
                ctypes.c_size_t(SIGNATURE_BYTES),
            )
            if (
                _LIB.EVP_DigestSignInit(ctx, None, None, None, self._pkey) != 1
                or _LIB.EVP_DigestSign(ctx, sig, ctypes.byref(size), data, len(data)) != 1
            ):
                _LIB.ERR_clear_error()
                raise ValueError("libcrypto could not sign with the Ed25519 key")
            return sig.raw[: size.value]
        finally:
            _LIB.EVP_MD_CTX_free(ctx)

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
