"""Ancestry: a process's chain of parents, from the live table and the recent exits.

A parent that exec'd and exited within a few milliseconds is gone from the live table
by the time the rules run over its child (a batch applies every event before any rule
runs), so the live table remembers the last processes that exited (`RecentExits`): a
chain walks the live table first, then those. The detector adds its process history
(RocksDB) behind both for ancestors older than what memory keeps.

Nothing here runs per event except `RecentExits.add` on a stop (a list append); a
chain is only built for an alert, or when a rule calls one of the SQL functions below
(so a rule set that does not use them pays nothing for them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from operator import itemgetter
from typing import Any

MAX_EXITS = (
    4096  # exits remembered: seconds of a storm; the history (written every batch) has the rest
)
MAX_DEPTH = 32  # no chain walks further, whatever a rule asks (pid loops are cut too)
# The SQL functions: name -> (record field, separator). Nearest ancestor first.
FUNCTIONS: dict[str, tuple[str, str]] = {
    "ancestor_names": ("name", ","),
    "ancestor_paths": ("exePath", ","),
    "ancestor_cmdlines": ("cmdline", "\n"),
}
DOC_LINES = [
    "",
    "## Ancestry functions",
    "",
    "Functions over a process's ancestors (parent first, up to 8 by default; at most",
    f"{MAX_DEPTH}), from the live table and the processes that exited recently, so a parent",
    "that lived a few milliseconds is still there. They cost nothing unless a rule calls",
    "them; each call walks the chain in memory (about a microsecond per ancestor).",
    "",
    "| function | returns |",
    "|---|---|",
    "| `ancestor_names(pid [, depth])` | the ancestors' names, comma-separated |",
    "| `ancestor_paths(pid [, depth])` | the ancestors' executable paths, comma-separated |",
    "| `ancestor_cmdlines(pid [, depth])` | the ancestors' command lines, one per line |",
    "",
    "Example: a shell whose ancestry holds a web server:",
    "`SELECT pid, cmdline FROM processes WHERE name IN ('sh', 'bash')",
    "AND ',' || ancestor_names(pid) || ',' LIKE '%,nginx,%'`.",
    "Alerts carry the same chain in full (pid, start, name, executable, argv, user; the",
    "process history fills in what memory no longer holds): see `detector.ancestry_depth`.",
]


# What an exited process is remembered by: the fields an ancestor shows, as a tuple
# (one C call to take, ~200 bytes to keep; the whole record would be ~2 KB).
KEPT = ("pid", "ppid", "startTicks", "startTime", "name", "exePath", "cmdline", "uid",
        "username", "sessionId", "pidNamespace")  # fmt: skip
_keep = itemgetter(*KEPT)
_TICKS, _NS = KEPT.index("startTicks"), KEPT.index("pidNamespace")


class RecentExits:
    """The last `max_entries` processes that exited, by pid (a pid may recur)."""

    def __init__(self, max_entries: int = MAX_EXITS) -> None:
        self.max_entries = max_entries
        self._by_pid: dict[int, list[tuple]] = {}
        self._order: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def add(self, record: dict[str, Any]) -> None:
        kept = _keep(record)
        pid = kept[0]
        same = self._by_pid.get(pid)
        if same is None:
            self._by_pid[pid] = [kept]
        else:
            same.append(kept)
        self._order.append(pid)
        if len(self._order) > self.max_entries:
            old = self._order.popleft()
            oldest = self._by_pid[old]
            del oldest[0]
            if not oldest:
                del self._by_pid[old]

    def has(self, pid: int, ticks: int, namespace: int = 0) -> bool:
        """Whether the process (pid, start ticks) is among those that exited (a
        namespace 0 on either side matches any: it was unreadable)."""
        return self._kept(pid, ticks, namespace) is not None

    def record(self, pid: int, ticks: int, namespace: int = 0) -> dict[str, Any] | None:
        """What is remembered of the process (pid, start ticks) that exited (the last
        record kept), as `has` matches it."""
        kept = self._kept(pid, ticks, namespace)
        return None if kept is None else dict(zip(KEPT, kept, strict=True))

    def _kept(self, pid: int, ticks: int, namespace: int) -> tuple | None:
        for kept in reversed(self._by_pid.get(pid, ())):
            ns = kept[_NS]
            if kept[_TICKS] == ticks and (not namespace or not ns or ns == namespace):
                return kept
        return None

    def find(self, pid: int, namespace: int = 0, before_ticks: int = 0) -> dict[str, Any] | None:
        """The latest exited process with `pid` that could be the parent of a process
        started at `before_ticks` (0: any), in `namespace` when both are known."""
        for kept in reversed(self._by_pid.get(pid, ())):
            ns = kept[_NS]
            if namespace and ns and ns != namespace:
                continue
            if before_ticks and kept[_TICKS] > before_ticks:
                continue
            return dict(zip(KEPT, kept, strict=True))
        return None


Lookup = Callable[[int, int, int], "dict[str, Any] | None"]  # (pid, namespace, before_ticks)


def chain(
    record: dict[str, Any],
    depth: int,
    live: Lookup,
    exits: RecentExits,
    history: Lookup | None = None,
) -> list[tuple[dict[str, Any], str]]:
    """(ancestor record, where it was found: live, exited, history), parent first. An
    ancestor found nowhere ends the chain with a record of its pid alone ("unknown")."""
    out: list[tuple[dict[str, Any], str]] = []
    seen = {record["pid"]}
    current = record
    for _ in range(min(depth, MAX_DEPTH)):
        ppid = current["ppid"]
        if not ppid or ppid in seen:
            break
        seen.add(ppid)
        ns, ticks = current["pidNamespace"], current["startTicks"]
        parent, source = live(ppid, ns, ticks), "live"
        if parent is None:
            parent, source = exits.find(ppid, ns, ticks), "exited"
        if parent is None and history is not None:
            parent, source = history(ppid, ns, ticks), "history"
        if parent is None:
            if ppid > 1:  # init unseen (no snapshot yet) is no news
                out.append(({"pid": ppid}, "unknown"))
            break
        out.append((parent, source))
        current = parent
    return out


def sql_functions(
    lookup: Lookup, exits: RecentExits, default_depth: int = 8
) -> dict[str, Callable[..., str | None]]:
    """The ancestry functions rules call, over the live table (`lookup`) and its exits.
    A pid no longer live (it stopped in this batch) is found among the exits."""

    def make(fieldname: str, sep: str) -> Callable[..., str | None]:
        def ancestry(pid: Any, depth: Any = default_depth) -> str | None:
            if not isinstance(pid, int) or isinstance(depth, bool) or not isinstance(depth, int):
                return None
            record = lookup(pid, 0, 0) or exits.find(pid)
            if record is None:
                return None
            values = []
            for parent, source in chain(record, max(1, depth), lookup, exits):
                if source == "unknown":
                    break
                value = parent.get(fieldname, "")
                values.append(" ".join(value) if isinstance(value, list) else str(value))
            return sep.join(values)

        return ancestry

    return {name: make(fieldname, sep) for name, (fieldname, sep) in FUNCTIONS.items()}
