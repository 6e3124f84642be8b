"""Messages per stream, from the positions sources put in their heartbeats.

The broker forwards in C (forwarder.py) and so no longer sees each message; every
heartbeat carries, per stream, the last sequence number its source sent (the same
positions subscribers use to find a lost tail). The growth of those positions is the
number of messages published on each stream: exact for every source that heartbeats,
one heartbeat interval late. Sources that never heartbeat (tools, a hostile
publisher) are not counted here: their frames show in the proxy's frame counts, and
any a subscriber refuses in that subscriber's drop counts.
"""

from __future__ import annotations

from collections.abc import Iterable

OTHER = "(other)"  # streams beyond the bound are summed here


class StreamCounts:
    def __init__(self, max_streams: int, max_positions: int | None = None) -> None:
        self.max_streams = max_streams
        self.max_positions = max_positions or 4 * max_streams
        self.counts: dict[str, int] = {}
        # (source, stream) -> (boot, last seq seen in a heartbeat)
        self._positions: dict[tuple[str, str], tuple[str, int]] = {}

    def observe(self, source_id: str, boot_id: str, positions: Iterable[tuple[str, int]]) -> None:
        """One heartbeat's (stream, last seq sent) pairs."""
        for stream, last in positions:
            key = (source_id, stream)
            seen = self._positions.get(key)
            if seen is None:
                if len(self._positions) >= self.max_positions:
                    continue  # bounded: a publisher may invent sources and streams
                grown = last  # first sight: what this boot has sent so far
            elif seen[0] == boot_id:
                if last <= seen[1]:
                    continue  # nothing new (or an old heartbeat late)
                grown = last - seen[1]
            else:
                # A new boot either continues the old sequence (a collector resuming
                # from its WAL) or starts again at 1.
                grown = last - seen[1] if last >= seen[1] else last
            self._positions[key] = (boot_id, last)
            if grown > 0:
                self._add(stream, grown)

    def _add(self, stream: str, n: int) -> None:
        counts = self.counts
        if stream in counts or len(counts) < self.max_streams:
            counts[stream] = counts.get(stream, 0) + n
        else:
            counts[OTHER] = counts.get(OTHER, 0) + n
