"""CurveZMQ for tcp:// endpoints: key pairs, and a ZAP allow-list of client keys.

Key pairs are ZeroMQ certificate files made by pyzmq's zmq.auth: `NAME.key` (public,
shareable) and `NAME.key_secret` (secret, mode 0600). The broker serves with its
own pair and admits only clients whose public key file is in the authorized
directory; every refusal is counted and logged with the key that was refused.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("daemoneye.security")


class KeyFileError(RuntimeError):
    """A key file is missing or unreadable: says which and how to make it."""


def generate_keypair(keys_dir: Path, name: str) -> tuple[Path, Path]:
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = (Path(p) for p in zmq.auth.create_certificates(keys_dir, name))
    os.chmod(secret, 0o600)
    return public, secret


def load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            f"cannot read public key {path}: {exc}; make one with `daemoneye keys generate`"
        ) from None
    return public


def load_pair(path: Path) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            f"cannot read key pair {path}: {exc}; make one with `daemoneye keys generate`"
        ) from None
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


class AllowList:
    """The admitted client keys: the public key files in one directory, re-read at each
    handshake so adding or removing a file takes effect without a restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.refused = 0
        self._lock = threading.Lock()

    def keys(self) -> set[bytes]:
        admitted = set()
        for path in sorted(self.directory.glob("*.key")):
            try:
                admitted.add(load_public(path))
            except KeyFileError as exc:
                log.warning("ignoring authorized key: %s", exc)
        return admitted

    def callback(self, domain: str, key: bytes) -> bool:  # pyzmq's credentials-provider hook
        if key in self.keys():
            return True
        with self._lock:
            self.refused += 1
        log.warning("refused CurveZMQ client key %s (not in %s)", key.decode(), self.directory)
        return False


class CountingAuthenticator(ThreadAuthenticator):
    """The ZAP handler in its own thread, admitting only keys on the allow-list."""

    def __init__(self, context: zmq.Context, authorized_dir: Path) -> None:
        super().__init__(context)
        self.allow_list = AllowList(authorized_dir)

    @property
    def refused(self) -> int:
        return self.allow_list.refused

    def start(self) -> None:  # type: ignore[override]
        self.allow_list.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().start()
        self.configure_curve_callback(domain="*", credentials_provider=self.allow_list)
