"""Published alerts kept for replay, in the detector's RocksDB.

Every alert envelope is written here before it is sent (as the collector's WAL does
for events), so a subscriber that missed some (the alerter was down, a bus gap) asks
the detector's `replay` verb for them by stream and seq. Seqs continue across the
detector's restarts (the publisher resumes from the last one logged), so a seq names
one alert for as long as it is kept.

Keys: `a/<stream>\\0` + be64(seq) -> be64(time_ns) + be16(len(topic)) + topic + envelope.
Retention: the newest `max_entries` per stream, none older than `max_age_s`.
"""

from __future__ import annotations

import struct
import time

from daemoneye.bus import stream_of
from daemoneye.store import Store, be64, prefix_end, un_be64

PREFIX = b"a/"
_HEAD = struct.Struct(">QH")


def _prefix(stream: str) -> bytes:
    return PREFIX + stream.encode() + b"\0"


class AlertLog:
    def __init__(self, store: Store, max_entries: int = 100_000, max_age_s: float = 7 * 86400):
        self.store = store
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.logged = 0

    def append(self, items: list[tuple[str, int, bytes]]) -> None:
        """(topic, seq, envelope) of alerts about to be sent, in one write (StoreError)."""
        batch = self.store.batch()
        now = time.time_ns()
        for topic, seq, data in items:
            raw = topic.encode()
            key = _prefix(stream_of(topic)) + be64(seq)
            batch.put(key, _HEAD.pack(now, len(raw)) + raw + data)
        self.store.write(batch)
        self.logged += len(items)

    def streams(self) -> dict[str, tuple[int, int]]:
        """stream -> (first seq, last seq) held."""
        out: dict[str, tuple[int, int]] = {}
        start = None
        while True:
            first = next(self.store.scan(PREFIX, start=start), None)
            if first is None:
                return out
            name = first[0][len(PREFIX) :].partition(b"\0")[0]
            prefix = PREFIX + name + b"\0"
            last = self.store.last(prefix)
            if last is not None:
                out[name.decode()] = (un_be64(first[0][-8:]), un_be64(last[0][-8:]))
            start = prefix_end(prefix)

    def read(
        self, stream: str, from_seq: int, to_seq: int | None, limit: int
    ) -> list[tuple[int, str, bytes]]:
        """(seq, topic, envelope) from `from_seq` to `to_seq` (inclusive), at most `limit`."""
        prefix = _prefix(stream)
        out: list[tuple[int, str, bytes]] = []
        for key, value in self.store.scan(prefix, start=prefix + be64(from_seq)):
            seq = un_be64(key[len(prefix) :])
            if (to_seq is not None and seq > to_seq) or len(out) >= limit:
                break
            _t, n = _HEAD.unpack_from(value)
            topic = value[_HEAD.size : _HEAD.size + n].decode()
            out.append((seq, topic, value[_HEAD.size + n :]))
        return out

    def trim(self, now_ns: int | None = None) -> int:
        """Apply retention; how many alerts went."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        cutoff = now_ns - int(self.max_age_s * 1e9)
        dropped = 0
        for stream, (first, last) in self.streams().items():
            prefix = _prefix(stream)
            keep_from = max(first, last - self.max_entries + 1)
            for key, value in self.store.scan(prefix, start=prefix + be64(keep_from)):
                if _HEAD.unpack_from(value)[0] >= cutoff:
                    break
                keep_from = un_be64(key[len(prefix) :]) + 1
            keep_from = min(keep_from, last)  # the newest stays: it carries the seq on
            if keep_from > first:
                self.store.delete_range(prefix, prefix + be64(keep_from))
                dropped += keep_from - first
        return dropped
