"""File sink: JSON lines, rotation by size and age, an fsync policy."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import BinaryIO

from daemoneye import formats

from .base import Delivery, Sink, SinkError

TAIL_BYTES = 1 << 20  # far more than one unconfirmed batch (the most a crash leaves)


class FileSink(Sink):
    kind = "file"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.path: Path = Path(self.config.path or self.data_dir / "alerts.jsonl").expanduser()
        self._fh: BinaryIO | None = None
        self._size = 0
        self._opened_at = 0.0
        self._synced_at = 0.0
        self._dirty = False
        self.rotations = 0
        self.lines = 0

    def _open(self) -> BinaryIO:
        if self._fh is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open between batches
            except OSError as exc:
                raise SinkError(f"cannot open {self.path}: {exc.strerror or exc}") from None
            info = os.fstat(self._fh.fileno())
            self._size = info.st_size
            # Age counts from the file's last change if it has content: close enough to
            # its creation for rotation, and it survives restarts.
            self._opened_at = info.st_mtime if info.st_size else time.time()
        return self._fh

    def _due_for_rotation(self, incoming: int) -> bool:
        cfg = self.config
        if self._size == 0:
            return False
        if cfg.rotate_bytes and self._size + incoming > cfg.rotate_bytes:
            return True
        return bool(cfg.rotate_age_s and time.time() - self._opened_at >= cfg.rotate_age_s)

    def rotate(self) -> None:
        """alerts.jsonl -> alerts.jsonl.1 -> .2 ... keeping `keep` old files."""
        self._close_file()
        keep = self.config.keep
        old = lambda i: self.path.with_name(f"{self.path.name}.{i}")  # noqa: E731
        try:
            if keep == 0:
                self.path.unlink(missing_ok=True)
            else:
                old(keep).unlink(missing_ok=True)
                for i in range(keep - 1, 0, -1):
                    if old(i).exists():
                        old(i).rename(old(i + 1))
                if self.path.exists():
                    self.path.rename(old(1))
        except OSError as exc:
            raise SinkError(f"cannot rotate {self.path}: {exc.strerror or exc}") from None
        self.rotations += 1

    def send(self, batch: list[Delivery]) -> None:
        data = b"".join(self.body(d) + b"\n" for d in batch)
        fh = self._open()
        if self._due_for_rotation(len(data)):
            self.rotate()
            fh = self._open()
        try:
            fh.write(data)
            fh.flush()
            self._size += len(data)
            self._dirty = True
            if self.config.fsync == "batch":
                self._sync()
        except OSError as exc:
            # A partial write may leave a torn line; the retry writes whole lines again.
            self._close_file()
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.lines += len(batch)
        if self.config.fsync == "interval":
            self.flush()

    def already_sent(self, batch: list[Delivery]) -> set[int]:
        """Keys of `batch` in the file's last lines: a crash between the write and the
        store's confirmation leaves at most the last batch written but still pending."""
        wanted = {d.key for d in batch}
        found: set[int] = set()
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
        except OSError:
            return found  # no file yet: nothing was sent
        for line in tail.splitlines():
            try:
                key = formats.key_of(json.loads(line))  # of our JSON, OCSF or ECS
            except (ValueError, AttributeError):
                continue  # the cut first line, or a torn last one
            if key in wanted:
                found.add(key)
        return found

    def _sync(self) -> None:
        if self._fh is not None and self._dirty:
            os.fsync(self._fh.fileno())
            self._dirty = False
            self._synced_at = time.monotonic()

    def flush_in_s(self) -> float | None:
        if self.config.fsync != "interval" or not self._dirty:
            return None
        return max(0.0, self._synced_at + self.config.fsync_interval_s - time.monotonic())

    def flush(self) -> None:
        due = time.monotonic() - self._synced_at >= self.config.fsync_interval_s
        if self.config.fsync == "interval" and self._dirty and due:
            with contextlib.suppress(OSError):
                self._sync()

    def _close_file(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                if self.config.fsync != "never":
                    self._sync()
                self._fh.close()
            self._fh = None
            self._size = 0

    def close(self) -> None:
        self._close_file()

    def metrics(self) -> dict[str, float]:
        return {"lines": self.lines, "rotations": self.rotations}
