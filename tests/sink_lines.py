"""Reading the alerter's JSON-lines file sink while the alerter may be writing it.

A reader can see a write half done: the file's last line without its newline yet. Only
newline-terminated lines are records; the unterminated tail is taken on the next read,
as `tail -F` would. No pytest here, so any harness can import it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def written_records(path: Path) -> list[dict[str, Any]]:
    """The records of every complete line in `path` (none if it does not exist)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def records_of(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The complete lines' records of each file in `paths`, in order."""
    for path in paths:
        yield from written_records(path)
