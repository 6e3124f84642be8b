"""Process history in RocksDB under `<data_dir>/detector`.

Keys: `t/` + be64(time_ns) + be64(eid) -> the process_events row (a time scan),
and `p/` + be32(pid) + be64(time_ns) + be64(eid) -> the `t/` key (a scan by pid).
One batched write per `history_wait_ms` (the detector stages each applied batch's rows
and writes them together), and at once with a batch that fires an alert; retention
drops whole time ranges. Values are
a version byte and the row in `marshal` format: ten times cheaper than JSON on the hot
path, and only ever read back by this module from the detector's own database.

Each write also carries the cursors (last seq taken in per collector stream) of the
events it holds, so after a restart the detector replays exactly what it lacks. A
write that fails (a full disk) keeps its rows and cursors pending, up to a bound, and
they go out with the next write that succeeds: the keys are the same whatever the
attempt, so a retry never duplicates a row. Rows staged and not yet written are lost
by a crash with their cursors, so the restart replays their events: none is missed,
and none fired an alert (a batch that fires is written at once).
"""

from __future__ import annotations

import marshal
import struct
import time
from typing import Any

from daemoneye.replay import Cursor, StreamKey, load_cursors, put_cursors
from daemoneye.rules.tables import PROCESS_EVENTS
from daemoneye.store import Store, StoreError, be32, be64, un_be64

COLUMNS = PROCESS_EVENTS.column_names
_TIME_NS = COLUMNS.index("time_ns")
_PID = COLUMNS.index("pid")
VERSION = b"\x01"
_TIME_EID = struct.Struct(">QQ").pack  # be64(time_ns) + be64(eid), as in every key
_PID_KEY = struct.Struct(">I").pack  # be32(pid)


def _row(value: bytes) -> dict[str, Any]:
    if value[:1] != VERSION:
        return {"error": f"unknown history record version {value[:1]!r}"}
    return dict(zip(COLUMNS, marshal.loads(value[1:]), strict=False))


class History:
    def __init__(self, store: Store, max_pending: int = 200_000) -> None:
        self.store = store
        self.max_pending = max_pending  # rows held while writes fail; the oldest go first
        self.written = 0
        self.write_errors = 0
        self.dropped = 0  # rows given up while writes failed for too long
        self.error = ""  # the last write error while writes are failing, else ""
        self._rows: list[tuple] = []
        self._cursors: dict[StreamKey, Cursor] = {}
        self._staged_at = 0.0  # monotonic time of the oldest row or cursor not yet written

    @property
    def pending(self) -> int:
        return len(self._rows)

    def add(self, rows: list[tuple], cursors: dict[StreamKey, Cursor] | None = None) -> bool:
        """Rows in process_events column order, rowid (eid) first, with the cursors of
        their events, written now. False when the write failed (they stay pending; see
        `error`)."""
        self.stage(rows, cursors)
        return self.commit()

    def stage(self, rows: list[tuple], cursors: dict[StreamKey, Cursor] | None = None) -> None:
        """As `add`, for a later `commit` (see `due`): one write for many batches."""
        if not self._rows and not self._cursors:
            self._staged_at = time.monotonic()
        self._rows.extend(rows)
        if cursors:
            self._cursors.update(cursors)

    @property
    def staged_at(self) -> float | None:
        """Monotonic time the oldest row or cursor not yet written was staged (None:
        nothing is)."""
        return self._staged_at if self._rows or self._cursors else None

    def due(self, wait_s: float, max_rows: int) -> bool:
        """Whether what is staged should be written now: its oldest has waited `wait_s`,
        or `max_rows` rows wait."""
        if not self._rows and not self._cursors:
            return False
        return len(self._rows) >= max_rows or time.monotonic() - self._staged_at >= wait_s

    def commit(self) -> bool:
        """Write what is pending; True when nothing is left pending."""
        if not self._rows and not self._cursors:
            return True
        batch = self.store.batch()
        put, dumps = batch.put, marshal.dumps
        for row in self._rows:  # ~1 us a row less than be64/be32 and attribute lookups
            values = row[1:]
            # timeNs is an Int64: a time before 1970 is keyed as 0, not refused by the
            # packing (which would fail this write and every later one)
            when = _TIME_EID(max(values[_TIME_NS], 0), row[0])
            tkey = b"t/" + when
            put(tkey, VERSION + dumps(values))
            put(b"p/" + _PID_KEY(values[_PID]) + when, tkey)
        put_cursors(batch, self._cursors)
        try:
            self.store.write(batch)
        except StoreError as exc:
            self.write_errors += 1
            self.error = str(exc)
            overflow = len(self._rows) - self.max_pending
            if overflow > 0:
                del self._rows[:overflow]
                self.dropped += overflow
            return False
        self.written += len(self._rows)
        self._rows, self._cursors, self.error = [], {}, ""
        return True

    def cursors(self) -> list[tuple[str, str, str, int]]:
        return list(load_cursors(self.store))

    def by_time(self, since_ns: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        out = []
        for _, value in self.store.scan(b"t/", start=b"t/" + be64(since_ns)):
            out.append(_row(value))
            if len(out) >= limit:
                break
        return out

    def by_pid(self, pid: int, limit: int = 100) -> list[dict[str, Any]]:
        out = []
        for _, tkey in self.store.scan(b"p/" + be32(pid)):
            value = self.store.get(tkey)
            if value is not None:
                out.append(_row(value))
            if len(out) >= limit:
                break
        return out

    def expire(self, retention_days: float, now_ns: int | None = None) -> int:
        """Drop events older than the retention; returns how many pid-index keys went."""
        sweep = self.sweep(retention_days, now_ns)
        while not sweep.step(10_000):
            pass
        return sweep.dropped

    def sweep(self, retention_days: float, now_ns: int | None = None) -> Sweep:
        """Drop events older than the retention: the time range at once (one range
        delete), the pid index in steps (`Sweep.step`), as that needs every key read."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        cutoff = max(0, now_ns - int(retention_days * 86400 * 1e9))
        self.store.delete_range(b"t/", b"t/" + be64(cutoff))
        return Sweep(self.store, cutoff)


class Sweep:
    """Retention of the pid index, a step at a time: a whole pass reads every key of a
    week's history (~4 us a key), too long for one turn of the detector's loop."""

    def __init__(self, store: Store, cutoff_ns: int) -> None:
        self.store, self.cutoff_ns = store, cutoff_ns
        self.next_key: bytes | None = b"p/"  # where the next step starts; None: done
        self.dropped = 0

    def step(self, max_keys: int) -> bool:
        """Read up to `max_keys` keys on from the last step, delete the expired ones;
        True when the pass is done."""
        if self.next_key is None:
            return True
        batch, dropped, cutoff = self.store.batch(), 0, self.cutoff_ns
        after = None
        for read, (key, _) in enumerate(self.store.scan(b"p/", start=self.next_key)):
            if read >= max_keys:
                after = key
                break
            if un_be64(key[6:14]) < cutoff:
                batch.delete(key)
                dropped += 1
        if dropped:
            self.store.write(batch)
        self.dropped += dropped
        self.next_key = after
        return after is None
