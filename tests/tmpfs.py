"""A small tmpfs to fill: a real full disk for the tests that need one (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path


def mount_tmpfs(path: Path, size: str = "4m", mode: str = "0750") -> str:
    """Mount a tmpfs of `size` at `path`; '' on success, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return "" if done.returncode == 0 else f"cannot mount a tmpfs: {done.stderr.strip()}"


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, chunk: int = 4096) -> Path:
    """Write a file until the filesystem is full; the file, to unlink for room."""
    filler = path / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * chunk)
    return filler
