"""Executable hashing in a worker thread, cached by (device, inode, size, mtime).

`lookup` answers from the cache at once; `submit` queues a binary the cache lacks.
The worker reads `/proc/<pid>/exe` (the running inode, even when deleted or
replaced) and falls back to the path when the process is gone and the file on
disk is still the same inode. Results come back through `results()`; `wake_fd`
becomes readable when there are some, so the service loop can poll it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from daemoneye import priority

Key = tuple[int, int, int, int]
CHUNK = 1 << 20


def key_of(rec: dict[str, Any]) -> Key | None:
    if not rec.get("exeInode"):
        return None
    return (rec["exeDevice"], rec["exeInode"], rec["exeSize"], rec["exeMtimeNs"])


@dataclass(frozen=True, slots=True)
class HashResult:
    key: Key
    sha256: str  # "" when it could not be computed
    error: str = ""


class Hasher:
    def __init__(self, max_bytes: int, cache_entries: int) -> None:
        self.max_bytes = max_bytes
        self.cache_entries = cache_entries
        self._cache: OrderedDict[Key, str] = OrderedDict()
        self._queued: set[Key] = set()
        self._jobs: queue.Queue[tuple[Key, int, str] | None] = queue.Queue()
        self._done: deque[HashResult] = deque()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.hashed = 0
        self.failed = 0
        self.skipped_large = 0
        self._thread = threading.Thread(target=self._work, name="hasher", daemon=True)
        self._thread.start()

    @property
    def wake_fd(self) -> int:
        return self._rfd

    def lookup(self, key: Key) -> str | None:
        sha = self._cache.get(key)
        if sha is not None:
            self._cache.move_to_end(key)
        return sha

    def submit(self, key: Key, pid: int, path: str) -> None:
        if key in self._queued or key in self._cache:
            return
        if key[2] > self.max_bytes:
            self.skipped_large += 1
            self._remember(key, "")
            return
        self._queued.add(key)
        self._jobs.put((key, pid, path))

    def results(self) -> list[HashResult]:
        with contextlib.suppress(BlockingIOError):
            os.read(self._rfd, 4096)
        out = []
        while self._done:
            res = self._done.popleft()
            self._queued.discard(res.key)
            self._remember(res.key, res.sha256)
            out.append(res)
        return out

    def _remember(self, key: Key, sha: str) -> None:
        self._cache[key] = sha
        while len(self._cache) > self.cache_entries:
            self._cache.popitem(last=False)

    def pending(self) -> int:
        return len(self._queued)

    def _work(self) -> None:
        priority.background()  # hashing may wait: events may not
        while True:
            job = self._jobs.get()
            if job is None:
                return
            key, pid, path = job
            sha, err = self._hash(key, pid, path)
            if sha:
                self.hashed += 1
            else:
                self.failed += 1
            self._done.append(HashResult(key, sha, err))
            with contextlib.suppress(BlockingIOError):
                os.write(self._wfd, b"h")

    @staticmethod
    def _open_same(key: Key, pid: int, path: str) -> int | None:
        for candidate in (f"/proc/{pid}/exe", path):
            if not candidate:
                continue
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) == key:
                return fd
            os.close(fd)
        return None

    def _hash(self, key: Key, pid: int, path: str) -> tuple[str, str]:
        fd = self._open_same(key, pid, path)
        if fd is None:
            return "", "executable gone or changed before it could be hashed"
        try:
            h = hashlib.sha256()
            while chunk := os.read(fd, CHUNK):
                h.update(chunk)
            return h.hexdigest(), ""
        except OSError as exc:
            return "", f"read failed: {exc.strerror}"
        finally:
            os.close(fd)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=2)
        os.close(self._rfd)
        os.close(self._wfd)
