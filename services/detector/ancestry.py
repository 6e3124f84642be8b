"""The ancestors an alert carries: the live table, then the recent exits (both in
daemoneye.rules.lineage), then the process history in RocksDB, so a parent that lived
a few milliseconds, or exited before this detector started, is still named.

Built per alert, never per event. A history lookup is a prefix scan by pid (a few
tens of microseconds); the answers (found or not) are cached, bounded, because an
alert storm asks about the same few parents again and again.
"""

from __future__ import annotations

from typing import Any

from daemoneye.rules.lineage import RecentExits, chain

from .history import History

HISTORY_ROWS = 256  # rows of one pid read at most from the history
CACHE_MAX = 4096


def history_record(row: dict[str, Any]) -> dict[str, Any]:
    """A process_events row from the history as the record fields an ancestor needs.
    The history keeps the command line joined with spaces: argv is that one text."""
    cmdline = row.get("cmdline") or ""
    return {
        "pid": row.get("pid") or 0,
        "ppid": row.get("parent") or 0,
        "startTicks": row.get("start_ticks") or 0,
        "startTime": float(row.get("start_time") or 0),
        "name": row.get("name") or "",
        "exePath": row.get("path") or "",
        "cmdline": [cmdline] if cmdline else [],
        "uid": row.get("uid") or 0,
        "username": row.get("username") or "",
        "sessionId": row.get("session_id") or 0,
        "pidNamespace": row.get("pid_namespace") or 0,
    }


class Ancestry:
    def __init__(self, tables: Any, history: History | None, depth: int) -> None:
        self.tables = tables  # daemoneye.rules.live.LiveTables
        self.history = history
        self.depth = depth
        self._cache: dict[tuple[int, int, int], dict[str, Any] | None] = {}
        self.history_lookups = 0

    @property
    def exits(self) -> RecentExits:
        return self.tables.exits

    def of(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The Ancestor dicts (schemas/daemoneye.capnp) of a process, parent first."""
        if self.depth <= 0:
            return []
        history = self._from_history if self.history is not None else None
        out = []
        for rec, source in chain(record, self.depth, self.tables.lookup, self.exits, history):
            if source == "unknown":
                out.append({"pid": rec["pid"], "name": "", "exited": True, "source": source})
                continue
            out.append(
                {
                    "pid": rec["pid"],
                    "ppid": rec.get("ppid", 0),
                    "startTicks": rec.get("startTicks", 0),
                    "startTime": float(rec.get("startTime") or 0.0),
                    "name": rec.get("name", ""),
                    "exePath": rec.get("exePath", ""),
                    "cmdline": list(rec.get("cmdline") or ()),
                    "uid": rec.get("uid", 0),
                    "username": rec.get("username", ""),
                    "sessionId": rec.get("sessionId", 0),
                    "exited": source != "live",
                    "source": source,
                }
            )
        return out

    def _from_history(self, pid: int, namespace: int, before_ticks: int) -> dict[str, Any] | None:
        key = (pid, namespace, before_ticks)
        if key in self._cache:
            return self._cache[key]
        assert self.history is not None
        self.history_lookups += 1
        found = None
        try:
            rows = self.history.by_pid(pid, HISTORY_ROWS)
        except Exception:  # a store closed by a failed reopen (disk full): no ancestor
            rows = []
        for row in rows:  # oldest first: the last that fits is the parent
            rec = history_record(row)
            ns = rec["pidNamespace"]
            if namespace and ns and ns != namespace:
                continue
            if before_ticks and rec["startTicks"] > before_ticks:
                continue
            found = rec
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = found
        return found
