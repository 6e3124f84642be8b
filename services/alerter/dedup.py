"""Dedup by key within a window: the first alert of a key goes out, repeats are counted.

A key's window starts with the alert that goes out. Repeats inside it only add to
a count; when the window ends the count is reported by a summary (`expire`), or,
if a new alert of the key arrives before the sweep saw the end, carried on it.

Memory is the point here: a storm of distinct alerts keeps `max_keys` windows open
(100,000 by default), so an open window costs one dict entry (key -> end time, both
small objects the caller supplies: the alerter's keys are 64-bit digests) plus two
pointers in the queues that order windows by start. The repeat count, and when it
happened, exist only for windows that had repeats. Everything else about a window
(the record that opened it) lives in the alerter's store.

Measured (bench/alerter_memory.py): ~160 bytes an open window with 30,000 open (a
storm at 100 alerts/s, 300 s windows), of which the dict's table was half: keys
going in and out make CPython resize it for three times its live keys, twice what
a copy needs. After each such resize a copy replaces it (`_shrink`).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class Repeats:
    count: int = 0
    first_ns: int = 0  # first and last repeat, wall clock
    last_ns: int = 0


class Deduper:
    def __init__(self, window_s: float, max_keys: int) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self.windows: dict[Hashable, float] = {}  # key -> end (monotonic)
        self.repeats: dict[Hashable, Repeats] = {}  # open windows that had repeats
        # Window-start order, for expiry from the front. Popping the front of a dict is
        # O(deleted entries before it) in CPython, so order is kept here instead; an
        # entry whose key was reopened since (its end is not the key's) is skipped.
        self._keys: deque[Hashable] = deque()
        self._ends: deque[float] = deque()
        self.suppressed = 0
        self._table_bytes = sys.getsizeof(self.windows)  # the dict's size after _shrink

    def check(self, key: Hashable, now: float, time_ns: int) -> tuple[bool, int]:
        """(deliver?, repeats carried from an ended window not yet summarised)."""
        if self.window_s <= 0:
            return True, 0
        ends = self.windows.get(key)
        if ends is not None and now < ends:
            seen = self.repeats.get(key)
            if seen is None:
                seen = self.repeats[key] = Repeats(first_ns=time_ns)
            seen.count += 1
            seen.last_ns = time_ns
            self.suppressed += 1
            return False, 0
        carried = 0
        if ends is not None:  # ended, not swept yet: its queue entry is now stale
            seen = self.repeats.pop(key, None)
            carried = seen.count if seen is not None else 0
        self._open(key, now + self.window_s)
        return True, carried

    def _open(self, key: Hashable, ends: float) -> None:
        self.windows[key] = ends
        self._keys.append(key)
        self._ends.append(ends)

    def next_end(self) -> float | None:
        """When the oldest open window ends, at the latest (None: none is open); a
        window reopened since may make it early, never late."""
        return self._ends[0] if self._ends else None

    def over_limit(self) -> bool:
        """More windows than max_keys: expire evicts the oldest at once."""
        return len(self.windows) > self.max_keys

    def expire(self, now: float) -> list[tuple[Hashable, Repeats | None]]:
        """Every window that ended (or was evicted to stay under max_keys), oldest
        first, with its repeats (None if it had none)."""
        closed: list[tuple[Hashable, Repeats | None]] = []
        windows, keys, ends_q = self.windows, self._keys, self._ends
        while keys:
            key, ends = keys[0], ends_q[0]
            if windows.get(key) is not ends:  # reopened since: a stale entry
                keys.popleft()
                ends_q.popleft()
                continue
            if ends > now and len(windows) <= self.max_keys:
                break
            keys.popleft()
            ends_q.popleft()
            del windows[key]
            closed.append((key, self.repeats.pop(key, None)))
        self._shrink()
        return closed

    def _shrink(self) -> None:
        """If CPython resized the dict since the last call, a copy (sized for the live
        keys, 1.5x) takes its place when smaller: 1.25 MB instead of 2.5 for 30,000
        windows, 5 MB instead of 10 for 100,000. O(n) only after CPython itself spent
        O(n) resizing, and cheap to check (every sweep)."""
        size = sys.getsizeof(self.windows)
        if size <= self._table_bytes:
            return
        copy = dict(self.windows)  # same order, same value objects (see expire)
        if sys.getsizeof(copy) < size:
            self.windows = copy
        self._table_bytes = sys.getsizeof(self.windows)

    def restore(self, key: Hashable, ends: float) -> None:
        """A window stored by an earlier run (call in order of `ends`)."""
        if self.window_s > 0:
            self._open(key, ends)
