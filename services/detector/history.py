"""Process history in RocksDB under `<data_dir>/detector`.

Keys: `t/` + be64(time_ns) + be64(eid) -> the process_events row (a time scan),
and `p/` + be32(pid) + be64(time_ns) + be64(eid) -> the `t/` key (a scan by pid).
One batched write per applied batch; retention drops whole time ranges. Values are
a version byte and the row in `marshal` format: ten times cheaper than JSON on the hot
path, and only ever read back by this module from the detector's own database.
"""

from __future__ import annotations

import marshal
import time
from typing import Any

from daemoneye.rules.tables import PROCESS_EVENTS
from daemoneye.store import Store, be32, be64, un_be64

COLUMNS = PROCESS_EVENTS.column_names
_TIME_NS = COLUMNS.index("time_ns")
_PID = COLUMNS.index("pid")
VERSION = b"\x01"


def _row(value: bytes) -> dict[str, Any]:
    if value[:1] != VERSION:
        return {"error": f"unknown history record version {value[:1]!r}"}
    return dict(zip(COLUMNS, marshal.loads(value[1:]), strict=False))


class History:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.written = 0

    def add(self, rows: list[tuple]) -> None:
        """Rows in process_events column order, rowid (eid) first."""
        if not rows:
            return
        batch = self.store.batch()
        for row in rows:
            eid, values = row[0], row[1:]
            tkey = b"t/" + be64(values[_TIME_NS]) + be64(eid)
            batch.put(tkey, VERSION + marshal.dumps(values))
            batch.put(b"p/" + be32(values[_PID]) + tkey[2:], tkey)
        self.store.write(batch)
        self.written += len(rows)

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
        now_ns = time.time_ns() if now_ns is None else now_ns
        cutoff = max(0, now_ns - int(retention_days * 86400 * 1e9))
        self.store.delete_range(b"t/", b"t/" + be64(cutoff))
        batch, dropped = self.store.batch(), 0
        for key, _ in self.store.scan(b"p/"):
            if un_be64(key[6:14]) < cutoff:
                batch.delete(key)
                dropped += 1
        if dropped:
            self.store.write(batch)
        return dropped
