"""Events a new main process is given again: what the previous one published of them.

A reader keeps every frame until the main acks it, and the main acks a little late
(a fork waiting for its exec must be seen again), so after a crash or restart the
new main takes frames the old one already turned into events. Their events are in
the WAL: read its tail back to the oldest frame given again, and hold back any event
of the same process (pid, start ticks), kind and detail. The tracker still takes
the frames, so its table is right (a later stop is published).
"""

from __future__ import annotations

import time
from typing import Any

from daemoneye import wire

from .tracker import Out
from .wal import Wal

MARGIN_NS = 2_000_000_000  # event times are the main's clock, frame times the reader's
STEP = 512  # entries read back at a time
MOST = 100_000  # never read back more than this many entries
ACTIVE_S = 2.0  # after the last frame given again, keep holding back this long

Key = tuple[str, int, int, Any]


def key_of(kind: str, pid: int, ticks: int, reason: str, changed: Any) -> Key:
    detail: Any = reason if kind == "suspicious" else tuple(changed) if kind == "modify" else ""
    return (kind, pid, ticks, detail)


def out_key(out: Out) -> Key:
    rec = out.record
    return key_of(out.kind, rec.get("pid", 0), rec.get("startTicks", 0), out.reason, out.changed)


def published_since(wal: Wal, since_ns: int) -> set[Key]:
    """Keys of every event the WAL holds that was observed at `since_ns` or later: the
    tail is read back (doubling) until its first entry is older than that."""
    last = wal.last_seq
    if not last:
        return set()
    first = wal.first_seq or 1
    step = STEP
    while True:
        start = max(first, last - step + 1)
        entries = wal.read(start, last, MOST)
        head = _events(entries[0].data) if entries else []
        if start == first or step >= MOST or any(ev.timeNs < since_ns for ev in head):
            break
        step *= 2
    keys: set[Key] = set()
    for entry in entries:
        if entry.topic.startswith("events.process."):
            for ev in _events(entry.data):
                if ev.timeNs >= since_ns:
                    rec = ev.record
                    changed = list(ev.changedFields)
                    keys.add(key_of(str(ev.kind), rec.pid, rec.startTicks, ev.reason, changed))
    return keys


def _events(data: bytes) -> list[Any]:
    try:
        return wire.process_events(wire.decode_envelope(data))
    except Exception:  # a damaged entry: nothing to hold back for it
        return []


class Handover:
    """Holds back events the previous main published, while frames come again."""

    def __init__(self, keys: set[Key], backlog: int) -> None:
        self.keys = keys
        self.backlog = backlog  # frames the reader had kept for us at connect
        self.held_back = 0
        self._until = 0.0

    @classmethod
    def from_wal(cls, wal: Wal, oldest_ns: int, backlog: int) -> Handover:
        return cls(published_since(wal, oldest_ns - MARGIN_NS), backlog)

    def seen(self, out: Out) -> bool:
        if out_key(out) in self.keys:
            self.held_back += 1
            return True
        return False

    def done(self, frames_taken: int) -> bool:
        """True once the frames given again are taken and ACTIVE_S has passed."""
        if frames_taken < self.backlog:
            return False
        now = time.monotonic()
        if not self._until:
            self._until = now + ACTIVE_S
        return now >= self._until
