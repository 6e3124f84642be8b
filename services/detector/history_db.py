"""The detector's RocksDB (`<data_dir>/detector`): process history and the alert log
share it. After a failed write (a full disk) RocksDB refuses every later write until
the database is reopened; `reopen_in_place` does that without changing the object the
history and the alert log hold."""

from __future__ import annotations

from pathlib import Path

from daemoneye.store import Store


class DetectorStore(Store):
    reopens = 0

    def reopen_in_place(self) -> None:
        """A fresh RocksDB handle on the same directory. Raises StoreError when it cannot
        be opened (still no space): the old handle is closed either way, and every use
        fails with StoreError until a later reopen succeeds."""
        self.close()
        fresh = Store(self.path, sync=self.sync)  # raises StoreError
        self.db = fresh.db
        self.reopens += 1


def open_store(data_dir: Path) -> DetectorStore:
    path = Path(data_dir) / "detector"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    return DetectorStore(path)  # raises StoreError naming the path and why
