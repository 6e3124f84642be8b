"""Delivery state in RocksDB (`<data_dir>/alerter`).

Keys (n: the alerter's record key, a unique, increasing wall-clock ns):
  h/<be64 n>                 the alert record as delivered (JSON)
  p/<sink>\\0<be64 n>          pending delivery to a sink: {"attempts", "error"}
  f/<sink>\\0<be64 n>          dead letter: retries exhausted or refused for good
  d/<be64 dedup key>          an open dedup window: be64 ends_ns, be64 record key
                             (the key is a 64-bit digest, see model.key_digest; an
                             older layout, d/<16-byte digest> with the key's parts
                             after the two numbers, is rewritten on the first read)
  c/<source>\\0<stream>        the last seq taken in from each alert stream (a cursor)
A delivery is pending from before it is first tried until it is confirmed (the
pending key is deleted) or dead-lettered (moved to f/). Records are written with
their pending keys in one batch, so a crash never leaves a record without them;
the same batch carries the cursors of the alerts it holds and the dedup windows they
opened, so after a restart the alerter asks the detector for exactly what it missed,
and a repeat of an alert it delivered before the crash is still a repeat.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemoneye.replay import Cursor, StreamKey, load_cursors, put_cursors
from daemoneye.store import SMALL_BLOCK_CACHE_BYTES, Store, be64, service_store, un_be64

from .model import key_digest

HISTORY = b"h/"
PENDING = b"p/"
FAILED = b"f/"
DEDUP = b"d/"


MEMTABLE_BYTES = 2 << 20
_WINDOW = struct.Struct(">QQ")  # ends_ns, record key


def _window_key(dkey: int) -> bytes:
    return DEDUP + be64(dkey)


def _sink_prefix(table: bytes, sink: str) -> bytes:
    return table + sink.encode() + b"\0"


class DeliveryStore:
    def __init__(self, data_dir: Path, sync: bool = False) -> None:
        # Smaller memtables than the shared default (8 MB, two): at 1,000 alerts/s the
        # memtables alone swing RSS by ~16 MB as they fill and flush, which reads as
        # growth in a soak. Flushing every ~2 MB costs little at the alerter's rates.
        # The block cache small too (see store.SMALL_BLOCK_CACHE_BYTES): records are read
        # back for a repeat summary or an RPC, not per alert.
        self.store: Store = service_store(
            data_dir,
            "alerter",
            sync=sync,
            memtable_bytes=MEMTABLE_BYTES,
            block_cache_bytes=SMALL_BLOCK_CACHE_BYTES,
        )
        last = self.store.last(HISTORY)
        self._last = un_be64(last[0][len(HISTORY) :]) if last else 0
        self._lock = threading.Lock()  # next_key is called from the main thread only; cheap

    def next_key(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last

    # --- writes ---------------------------------------------------------------

    def add(
        self,
        records: list[tuple[int, bytes, list[str]]],
        cursors: dict[StreamKey, Cursor] | None = None,
        windows: dict[int, tuple[int, int]] | None = None,
        closed: set[int] | None = None,
    ) -> None:
        """Store records, each pending for its sinks, with the cursors of the alerts
        read and the dedup windows opened (dedup key -> (ends_ns, record key)) or closed
        since the last write, in one atomic batch."""
        batch = self.store.batch()
        for key, data, sinks in records:
            batch.put(HISTORY + be64(key), data)
            for sink in sinks:
                batch.put(_sink_prefix(PENDING, sink) + be64(key), b"{}")
        if cursors:
            put_cursors(batch, cursors)
        for dkey in closed or ():
            batch.delete(_window_key(dkey))
        for dkey, (ends_ns, record_key) in (windows or {}).items():
            batch.put(_window_key(dkey), _WINDOW.pack(ends_ns, record_key))
        self.store.write(batch)

    def delivered(self, sink: str, keys: list[int]) -> None:
        batch = self.store.batch()
        prefix = _sink_prefix(PENDING, sink)
        for key in keys:
            batch.delete(prefix + be64(key))
        self.store.write(batch)

    def attempt_failed(self, sink: str, key: int, attempts: int, error: str) -> None:
        meta = json.dumps({"attempts": attempts, "error": error}).encode()
        self.store.put(_sink_prefix(PENDING, sink) + be64(key), meta)

    def dead(self, sink: str, key: int, attempts: int, error: str) -> None:
        meta = {"attempts": attempts, "error": error, "time_ns": time.time_ns()}
        batch = self.store.batch()
        batch.delete(_sink_prefix(PENDING, sink) + be64(key))
        batch.put(_sink_prefix(FAILED, sink) + be64(key), json.dumps(meta).encode())
        self.store.write(batch)

    def retry(self, sink: str | None = None, keys: set[int] | None = None) -> list[tuple[str, int]]:
        """Move dead letters back to pending (all, or one sink's, or some keys)."""
        moved: list[tuple[str, int]] = []
        batch = self.store.batch()
        for name, key, _meta in self.failed(sink):
            if keys is not None and key not in keys:
                continue
            batch.delete(_sink_prefix(FAILED, name) + be64(key))
            batch.put(_sink_prefix(PENDING, name) + be64(key), b"{}")
            moved.append((name, key))
        if moved:
            self.store.write(batch)
        return moved

    def prune(self, before_ns: int) -> int:
        """Drop history older than `before_ns`, but never a record still pending or failed."""
        floor = before_ns
        for table in (PENDING, FAILED):
            for k, _ in self.store.scan(table):
                floor = min(floor, un_be64(k[-8:]))
        removed = 0
        for k, _ in self.store.scan(HISTORY):
            if un_be64(k[len(HISTORY) :]) >= floor:
                break
            removed += 1
        if removed:
            self.store.delete_range(HISTORY, HISTORY + be64(floor))
        return removed

    # --- reads ----------------------------------------------------------------

    def cursors(self) -> list[tuple[str, str, str, int]]:
        return list(load_cursors(self.store))

    def windows(self) -> list[tuple[int, int, int]]:
        """(dedup key, ends_ns, record key) of stored windows, soonest end first."""
        out = []
        legacy = self.store.batch()
        migrated = False
        for k, value in self.store.scan(DEDUP):
            if len(value) < _WINDOW.size:
                continue  # a damaged window: that key's next alert is delivered
            ends_ns, record_key = _WINDOW.unpack_from(value)
            if len(k) == len(DEDUP) + 8:
                dkey = un_be64(k[len(DEDUP) :])
            else:  # the older layout: the key's parts follow the numbers
                parts = value[_WINDOW.size :].decode(errors="surrogatepass").split("\0")
                dkey = key_digest(tuple(parts))
                legacy.delete(k)
                legacy.put(_window_key(dkey), value[: _WINDOW.size])
                migrated = True
            out.append((dkey, ends_ns, record_key))
        if migrated:
            self.store.write(legacy)
        return sorted(out, key=lambda w: w[1])

    def window(self, dkey: int) -> tuple[int, int] | None:
        """(ends_ns, record key) of a stored window."""
        value = self.store.get(_window_key(dkey))
        if value is None or len(value) < _WINDOW.size:
            return None
        return _WINDOW.unpack_from(value)  # type: ignore[return-value]

    def record(self, key: int) -> bytes | None:
        return self.store.get(HISTORY + be64(key))

    def is_pending(self, sink: str, key: int) -> bool:
        return self.store.get(_sink_prefix(PENDING, sink) + be64(key)) is not None

    def pending(self, sink: str, after: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        prefix = _sink_prefix(PENDING, sink)
        start = prefix + be64(after + 1) if after else None
        for k, v in self.store.scan(prefix, start=start):
            yield un_be64(k[len(prefix) :]), json.loads(v)

    def count(self, table: bytes, sink: str) -> int:
        return sum(1 for _ in self.store.scan(_sink_prefix(table, sink)))

    def failed(self, sink: str | None = None) -> Iterator[tuple[str, int, dict[str, Any]]]:
        prefix = _sink_prefix(FAILED, sink) if sink else FAILED
        for k, v in self.store.scan(prefix):
            # <sink>\0<be64 key>: the key's bytes may hold a 0, so cut by length
            name, raw = k[len(FAILED) : -9], k[-8:]
            yield name.decode(), un_be64(raw), json.loads(v)

    def status(self, key: int, sinks: list[str]) -> dict[str, str]:
        """Per sink: pending, failed or delivered."""
        out = {}
        for sink in sinks:
            if self.store.get(_sink_prefix(PENDING, sink) + be64(key)) is not None:
                out[sink] = "pending"
            elif self.store.get(_sink_prefix(FAILED, sink) + be64(key)) is not None:
                out[sink] = "failed"
            else:
                out[sink] = "delivered"
        return out

    def history(
        self, after: int = 0, before: int = 0, newest_first: bool = True
    ) -> Iterator[tuple[int, bytes]]:
        start = None
        if newest_first and before:
            start = HISTORY + be64(before - 1)
        elif not newest_first and after:
            start = HISTORY + be64(after + 1)
        for k, v in self.store.scan(HISTORY, start=start, reverse=newest_first):
            key = un_be64(k[len(HISTORY) :])
            if newest_first and key <= after:
                return
            yield key, v

    def close(self) -> None:
        self.store.close()
