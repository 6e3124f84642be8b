"""Executable hashing: the worker's result, the (dev, inode, size, mtime) cache,
the size cap, and a binary that changed before it could be hashed."""

from __future__ import annotations

import hashlib
import os
import select
from pathlib import Path

import pytest

from daemoneye.services.collector.hasher import Hasher, HashResult


def key(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def results(h: Hasher, n: int) -> list[HashResult]:
    out: list[HashResult] = []
    while len(out) < n:
        ready, _, _ = select.select([h.wake_fd], [], [], 10)
        assert ready, "the hasher never answered"
        out += h.results()
    return out


@pytest.fixture
def hasher():
    h = Hasher(max_bytes=1 << 20, cache_entries=16)
    yield h
    h.close()


def test_hash_once_then_cached(hasher: Hasher, tmp_path: Path) -> None:
    exe = tmp_path / "prog"
    exe.write_bytes(os.urandom(200_000))
    k = key(exe)
    assert hasher.lookup(k) is None
    hasher.submit(k, 0, str(exe))
    hasher.submit(k, 0, str(exe))  # queued once
    (res,) = results(hasher, 1)
    assert res.sha256 == hashlib.sha256(exe.read_bytes()).hexdigest()
    assert hasher.lookup(k) == res.sha256 and hasher.hashed == 1
    hasher.submit(k, 0, str(exe))
    assert hasher.pending() == 0


def test_running_process_is_hashed_from_proc() -> None:
    """No path given: the executable is read through /proc/<pid>/exe, and the digest is
    the SHA-256 of the very file this interpreter runs from."""
    exe = Path(os.path.realpath(f"/proc/{os.getpid()}/exe"))
    want = hashlib.sha256(exe.read_bytes()).hexdigest()
    h = Hasher(max_bytes=exe.stat().st_size, cache_entries=16)  # under the cap, whatever its size
    try:
        k = key(Path(f"/proc/{os.getpid()}/exe"))
        h.submit(k, os.getpid(), "")
        (res,) = results(h, 1)
        assert (res.sha256, res.error) == (want, "")
        assert h.lookup(k) == want
    finally:
        h.close()


def test_size_cap(tmp_path: Path) -> None:
    h = Hasher(max_bytes=10, cache_entries=16)
    try:
        exe = tmp_path / "big"
        exe.write_bytes(b"x" * 100)
        h.submit(key(exe), 0, str(exe))
        assert h.lookup(key(exe)) == "" and h.skipped_large == 1
    finally:
        h.close()


def test_changed_file_is_not_hashed_under_the_old_key(hasher: Hasher, tmp_path: Path) -> None:
    exe = tmp_path / "prog"
    exe.write_bytes(b"one")
    old = key(exe)
    exe.write_bytes(b"two, longer")
    hasher.submit(old, 0, str(exe))
    (res,) = results(hasher, 1)
    assert res.sha256 == "" and "changed" in res.error


def test_cache_is_bounded(tmp_path: Path) -> None:
    h = Hasher(max_bytes=1 << 20, cache_entries=16)
    try:
        for i in range(20):
            f = tmp_path / f"f{i}"
            f.write_bytes(str(i).encode())
            h.submit(key(f), 0, str(f))
        results(h, 20)
        assert len(h._cache) == 16
    finally:
        h.close()
