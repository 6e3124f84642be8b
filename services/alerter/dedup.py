"""Dedup by key within a window: the first alert of a key goes out, repeats are counted.

A key's window starts with the alert that goes out. Repeats inside it only add to
a count; when the window ends the count is reported by a summary (`expire`), or,
if a new alert of the key arrives before the sweep saw the end, carried on it.
Entries sit in a dict in window-start order, so expiry pops from the front.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class Window:
    ends: float  # monotonic
    repeats: int = 0
    first_ns: int = 0  # first and last repeat, wall clock
    last_ns: int = 0
    record_key: int = 0  # the store key of the alert that opened the window


class Deduper:
    def __init__(
        self,
        window_s: float,
        max_keys: int,
        on_close: Callable[[Hashable], None] | None = None,
    ) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self.on_close = on_close  # told of every window that ends (a stored copy goes)
        self.windows: dict[Hashable, Window] = {}
        self.suppressed = 0

    def check(self, key: Hashable, now: float, time_ns: int) -> tuple[bool, int]:
        """(deliver?, repeats carried from an ended window not yet summarised)."""
        if self.window_s <= 0:
            return True, 0
        window = self.windows.get(key)
        if window is not None and now < window.ends:
            window.repeats += 1
            window.first_ns = window.first_ns or time_ns
            window.last_ns = time_ns
            self.suppressed += 1
            return False, 0
        carried = 0
        if window is not None:
            carried = window.repeats
            del self.windows[key]  # re-insert at the back: keeps window-start order
        self.windows[key] = Window(ends=now + self.window_s)
        return True, carried

    def opened_by(self, key: Hashable, record_key: int) -> None:
        """Remember which stored record opened the window: the summary repeats it."""
        window = self.windows.get(key)
        if window is not None:
            window.record_key = record_key

    def expire(self, now: float) -> list[tuple[Hashable, Window]]:
        """Windows that ended (or were evicted to stay under max_keys) and had repeats."""
        ended: list[tuple[Hashable, Window]] = []
        while self.windows:
            key, window = next(iter(self.windows.items()))
            if window.ends > now and len(self.windows) <= self.max_keys:
                break
            del self.windows[key]
            if self.on_close is not None:
                self.on_close(key)
            if window.repeats:
                ended.append((key, window))
        return ended

    def restore(self, key: Hashable, ends: float, record_key: int) -> None:
        """A window stored by an earlier run (call in order of `ends`)."""
        if self.window_s > 0:
            self.windows[key] = Window(ends=ends, record_key=record_key)
