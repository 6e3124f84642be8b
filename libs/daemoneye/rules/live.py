"""The live tables: process events in, rows of `processes`, `process_events`, `hash`
and `file` out, plus the change tables incremental rules read.

Process identity is (pid namespace, pid, startTicks): collectors in different pid
namespaces (containers) report the same pid numbers for different processes, and
must not overwrite each other; two collectors on one host report a process with
the same identity, so it is one row (whichever reported it last is its `collector`).
The namespace is the record's `pidNamespace` (the inode of the process's pid
namespace; 0 when the collector could not read it). A record of a process first seen
with namespace 0 and later with its namespace (or the reverse) is the same process.
A record arrives as the dict form of a ProcessRecord (camelCase names, as on the wire).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from daemoneye.wire import ARGV_LOST

from . import sources
from .lineage import RecentExits
from .sandbox import Sandbox
from .tables import EVENT_COLUMNS, FILE, HASH, PROCESS_COLUMNS, PROCESSES, USERS

log = logging.getLogger("daemoneye.rules")
SYSCALL = {"start": "execve", "stop": "exit", "modify": "modify", "suspicious": "suspicious"}
_ECOLS = ", ".join(c.name for c in PROCESS_COLUMNS + EVENT_COLUMNS)
_PCOLS = ", ".join(c.name for c in PROCESSES.columns)
_PMARKS = ", ".join("?" * (len(PROCESSES.columns) + 1))
_EMARKS = ", ".join("?" * (len(PROCESS_COLUMNS) + len(EVENT_COLUMNS) + 1))
_HMARKS = ", ".join("?" * len(HASH.columns))
_FMARKS = ", ".join("?" * len(FILE.columns))


# Every ProcessRecord field with its wire default: records are normalised to all keys.
RECORD_DEFAULTS: dict[str, Any] = {
    "pid": 0, "ppid": 0, "startTicks": 0, "startTime": 0.0, "name": "", "exePath": "",
    "cmdline": [], "cwd": "", "root": "", "uid": 0, "gid": 0, "euid": 0, "egid": 0,
    "suid": 0, "sgid": 0, "loginUid": 4294967295, "username": "", "state": "", "threads": 0,
    "nice": 0, "pgroup": 0, "sessionId": 0, "userTimeMs": 0, "systemTimeMs": 0,
    "residentBytes": 0, "virtualBytes": 0, "diskReadBytes": 0, "diskWriteBytes": 0,
    "sha256": "", "exeDeleted": False, "onDisk": -1, "exeDevice": 0, "exeInode": 0,
    "exeSize": 0, "exeMtimeNs": 0, "exeChangedAfterExec": False, "cgroupPath": "",
    "containerId": "", "pidNamespace": 0, "accessible": False, "tty": "", "env": [],
}  # fmt: skip
# itemgetters over a record in `processes` column order: the row is one tuple display of
# their results (about twice as fast as slicing and converting field by field)
_IDENT = itemgetter("pid", "name", "exePath")
_CREDS = itemgetter("state", "cwd", "root", "uid", "gid", "euid", "egid", "suid", "sgid", "onDisk")
_USAGE = itemgetter(
    "residentBytes", "virtualBytes", "userTimeMs", "systemTimeMs", "diskReadBytes",
    "diskWriteBytes",
)  # fmt: skip
_TAIL = itemgetter("ppid", "pgroup", "threads", "nice")
_OURS = itemgetter("cgroupPath", "startTicks", "loginUid", "username", "sha256")
_MORE = itemgetter("sessionId", "tty", "containerId", "pidNamespace")
_NO_FAMILY = (None, None, None)
_NO_FILE = (None,) * 5  # mode, owner uid and gid, atime, ctime of an executable not stat()ed


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    """A record with every field present (wire dicts omit empty text fields)."""
    if len(record) >= len(RECORD_DEFAULTS):
        return record
    return {**RECORD_DEFAULTS, **record}


@dataclass(slots=True)
class Proc:
    rowid: int  # of its current version in `processes`
    record: dict[str, Any]
    row: tuple
    first_seen: float
    fired: set[str] = field(default_factory=set)  # rule ids that fired on this process
    collector: str = ""  # source id of the collector that last reported it
    # seen only through fork and exit, never ran a program of its own: its record is a
    # copy of its parent's image, which the rules judged already (see `is_fork_copy`)
    fork_copy: bool = False


def new_image(rec: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether a record of a known process tells of another program image (an exec, or
    a fork seen before its exec): an executable, argv or name known in both and not the
    same. The name (the kernel's comm) changes at exec, and an exiting process keeps it:
    an exec read too late for its executable and argv still tells by its name.

    An empty one tells nothing new: /proc read as the process exits (argv read, then
    the executable gone) or a zombie (both gone), in a rescan or a snapshot; and one
    empty before and known now is the same image better known. Judged afresh, either
    would alert the process again under another dedup key (rule, exe, argv), which the
    alerter cannot tell from another process's. A rule that has not fired on the
    process still judges every new version of its row."""
    exe, old_exe, argv, old_argv = rec["exePath"], old["exePath"], rec["cmdline"], old["cmdline"]
    name, old_name = rec.get("name"), old.get("name")
    return (
        bool(exe and old_exe and exe != old_exe)
        or bool(argv and old_argv and argv != old_argv)
        or bool(name and old_name and name != old_name)
    )


def same_image(rec: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """A record of the same image that lost its executable or argv (see `new_image`):
    they are still what the process runs, so rules and alerts keep seeing them."""
    exe, argv = rec["exePath"] or old["exePath"], rec["cmdline"] or old["cmdline"]
    return {**rec, "exePath": exe, "cmdline": argv}


def tells_more(rec: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether a record tells of the process what `old` (all that was known of it) did
    not: another image (`new_image`), or an executable or argv where `old` had none."""
    return (
        new_image(rec, old)
        or bool(rec["exePath"] and not old["exePath"])
        or bool(rec["cmdline"] and not old["cmdline"])
    )


def is_fork_copy(rec: dict[str, Any], parent: dict[str, Any] | None) -> bool:
    """A subshell or worker that forked and never exec'd (`( ... )`, `$( ... )`, gdb or
    useradd helpers): the collector reports it with its parent's name, path and argv and
    `accessible` false. Alerting on it would repeat its parent's alert once per fork."""
    return (
        not rec["accessible"]
        and parent is not None
        and rec["exePath"] == parent["exePath"]
        and rec["cmdline"] == parent["cmdline"]
    )


@dataclass
class EventIn:
    kind: str  # start, stop, modify, suspicious
    record: dict[str, Any]
    time_ns: int = 0
    source: str = "snapshot"
    collector: str = ""
    changed_fields: list[str] = field(default_factory=list)
    reason: str = ""
    severity: str = ""
    exit_code: int = 0
    runtime_ns: int = 0
    hostname: str = ""


@dataclass
class Batch:
    """What one applied batch wrote: rowids from `first_rowid`/`first_eid` on."""

    first_rowid: int = 0
    first_eid: int = 0
    procs: dict[int, Proc] = field(default_factory=dict)  # rowid -> process
    events: dict[int, tuple[EventIn, Proc | None]] = field(default_factory=dict)  # eid ->
    event_rows: list[tuple] = field(default_factory=list)  # (eid, *process_events columns)
    stopped: list[tuple[int]] = field(default_factory=list)  # rowids to drop after rules


def process_row(
    rec: dict[str, Any], parent: dict[str, Any] | None, collector: str, first: float, now: float
) -> tuple:
    """The `processes` columns of a normalised record."""
    start = rec["startTime"] or 0.0
    if parent is not None:
        family = (parent["name"], parent["exePath"], " ".join(parent["cmdline"]))
    else:
        family = _NO_FAMILY
    return (
        *_IDENT(rec),
        " ".join(rec["cmdline"]),
        *_CREDS(rec),
        0,
        *_USAGE(rec),
        int(start),
        *_TAIL(rec),
        int(now - start) if start else 0,
        *_OURS(rec),
        int(rec["exeDeleted"]),
        *family,
        *_MORE(rec),
        collector,
        rec.get("hostname", ""),
        first,
        now,
        # `processes` only (process_events has its own env column): see _event_columns
        int(rec["accessible"]),
        env_text(rec["env"]) if rec["env"] else "",
    )


def env_text(env: list[dict[str, str]]) -> str:
    """osquery's form of an environment: `NAME=value` separated by spaces."""
    return " ".join(f"{v['name']}={v['value']}" for v in env)


Key = tuple[int, int, int]  # (pid namespace, pid, startTicks)
SYNC_ROWS = 2000  # writes waiting (rows) from which they are made without a statement
_EVENT_NAME = 1 + [c.name for c in PROCESS_COLUMNS + EVENT_COLUMNS].index("name")
_ANY_NAME = ("not text",)  # the key of a name that is not text


def _name_key(name: Any) -> Any:
    return name if name is None or type(name) is str else _ANY_NAME


def key_of(rec: dict[str, Any]) -> Key:
    return (rec["pidNamespace"], rec["pid"], rec["startTicks"])


class LiveTables:
    def __init__(self, sandbox: Sandbox, window_s: float, window_rows: int) -> None:
        self.sandbox = sandbox
        self.window_s = window_s
        self.window_rows = window_rows
        self.live: dict[Key, Proc] = {}
        self.by_pid: dict[tuple[int, int], Key] = {}  # (namespace, pid) -> its process
        self.latest: dict[int, Key] = {}  # pid -> the process last seen with it, any namespace
        self._next_rowid = 1
        self.next_eid = 1
        self._hashed: dict[str, str] = {}
        self._files: dict[str, tuple | None] = {}
        self.events_seen = 0
        self.exits = RecentExits()  # ancestors that exited stay named (lineage.py)
        # the names in process_events, counted (a name that is not text, which SQLite
        # may store converted, counts as any): see `has_event_name`
        self.event_names: Counter[Any] = Counter()
        # Writes not made yet (see `sync`): `processes` rows by rowid, rowids of rows
        # written and since replaced or stopped, `process_events` rows
        self._unwritten: dict[int, tuple] = {}
        self._deletes: list[tuple[int]] = []
        self._event_rows: list[tuple] = []
        self.rows_refused = 0  # rows SQLite would not take (see `_insert`)
        sandbox.before_run = self.sync  # every statement run sees every row

    # --- processes -------------------------------------------------------------

    def parent_of(self, rec: dict[str, Any], collector: str = "") -> dict[str, Any] | None:
        """The parent in the same namespace; else (a container's first process, whose
        parent lives outside it) the process with that pid the same collector reported."""
        ppid = rec["ppid"]
        key = self.by_pid.get((rec["pidNamespace"], ppid))
        if key is None:
            key = self.latest.get(ppid)
            proc = self.live.get(key) if key else None
            return proc.record if proc is not None and proc.collector == collector else None
        proc = self.live.get(key)
        return proc.record if proc else None

    def lookup(self, pid: int, namespace: int = 0, before_ticks: int = 0) -> dict | None:
        """The live record of `pid` that could be the parent of a process started at
        `before_ticks` (0: any): a later start is a reused pid, not the parent."""
        key = self.by_pid.get((namespace, pid)) or self.latest.get(pid)
        proc = self.live.get(key) if key else None
        if proc is None or (before_ticks and proc.record["startTicks"] > before_ticks):
            return None
        return proc.record

    def find(self, pid: int) -> Proc | None:
        """The live process last seen with `pid` (any namespace)."""
        key = self.latest.get(pid)
        return self.live.get(key) if key else None

    def _resolve(self, key: Key) -> Key:
        """The key the process is known under: the same pid and start seen with namespace 0
        (unreadable at first) and now with its namespace, or the reverse."""
        ns, pid, ticks = key
        if ns:
            other = (0, pid, ticks)
            if other in self.live:
                return other
        else:
            known = self.latest.get(pid)
            if known is not None and known[2] == ticks:
                return known
        return key

    def apply(self, events: list[EventIn], record_events: bool = True) -> Batch:
        """Write events to every table. Each process that changed gets a new rowid, so
        rules find this batch's rows as `rowid >= first_rowid`; processes that stopped
        stay visible until `finish()` (a process that lived a few ms still gets judged).

        `record_events=False` (a snapshot rebuild) changes the live table only."""
        now = time.time()
        batch = Batch(self._next_rowid, self.next_eid)
        pending: dict[int, tuple] = {}  # rowid -> row, written by this batch
        deletes: list[tuple[int]] = []
        event_rows: list[tuple] = []
        paths: list[tuple[str, str]] = []
        live, by_pid, procs = self.live, self.by_pid, batch.procs
        files, hashed = self._files, self._hashed
        for ev in events:
            rec = ev.record = normalise(ev.record)
            key = key_of(rec)
            proc = live.get(key)
            if proc is None:
                key = self._resolve(key)
                proc = live.get(key)
            if ev.kind == "stop":
                self.exits.add(proc.record if proc is not None else rec)
                if proc is not None:
                    self._forget(key)
                    batch.stopped.append((proc.rowid,))
                row = process_row(rec, self.parent_of(rec, ev.collector), ev.collector, now, now)
            elif proc is None and self.exited(key):
                # a start or modify sent before the exit taken in (another collector's, a
                # hand-over's, a replay's): an event, but the process stays gone
                row = process_row(rec, self.parent_of(rec, ev.collector), ev.collector, now, now)
                gone = self.exits.record(key[1], key[2], key[0])
                if gone is None or tells_more(rec, gone):
                    # what its exit did not know (a zombie's record: no executable or
                    # argv): judged once, as a process that stopped in this batch
                    self.exits.add(rec)
                    proc = Proc(self._next_rowid, rec, row, now, collector=ev.collector)
                    self._next_rowid += 1
                    procs[proc.rowid] = proc
                    pending[proc.rowid] = row
                    batch.stopped.append((proc.rowid,))
                    paths += ((rec["exePath"], rec["sha256"]), (rec["cwd"], ""))
            else:
                slot = (key[0], key[1])
                old = by_pid.get(slot)
                if old is not None and old != key:  # pid reuse: the old process is gone
                    gone = live[old]
                    self.exits.add(gone.record)
                    self._forget(old)
                    batch.stopped.append((gone.rowid,))
                rowid = self._next_rowid
                self._next_rowid += 1
                if proc is None:
                    proc = Proc(rowid, rec, (), now)
                    live[key] = proc
                    by_pid[slot] = key
                    self.latest[key[1]] = key
                else:  # a new version replaces the old row
                    old_rec = proc.record
                    # an exec whose argv and executable were lost is a new image even
                    # under the same name (bash exec'ing bash): not its predecessor's
                    image = new_image(rec, old_rec) or ev.reason.startswith(ARGV_LOST)
                    if not image and (not rec["exePath"] or not rec["cmdline"]):
                        rec = ev.record = same_image(rec, old_rec)
                    if image:
                        # a new program image (an exec, or a fork seen before its exec):
                        # the rules judge it afresh, as osquery's "added" would
                        proc.fired.clear()
                    if proc.rowid in pending and image:
                        # an image this batch wrote and the process already left (perl -e
                        # 'exec "/bin/sh"', env X=1 prog, sh -c 'exec ...'): it stays for
                        # the rules to judge too, then goes with the stopped rows
                        procs[proc.rowid] = Proc(
                            proc.rowid, old_rec, proc.row, proc.first_seen, proc.fired,
                            proc.collector, proc.fork_copy,
                        )  # fmt: skip
                        batch.stopped.append((proc.rowid,))
                    else:
                        if pending.pop(proc.rowid, None) is None:
                            deletes.append((proc.rowid,))
                        procs.pop(proc.rowid, None)
                    proc.rowid = rowid
                proc.record = rec
                proc.collector = ev.collector
                parent = self.parent_of(rec, ev.collector)
                proc.fork_copy = is_fork_copy(rec, parent)
                row = proc.row = process_row(rec, parent, ev.collector, proc.first_seen, now)
                pending[rowid] = row
                procs[rowid] = proc
                exe, sha, cwd = rec["exePath"], rec["sha256"], rec["cwd"]
                # most paths are known already: `_paths` need only see the others
                if exe not in files or (sha and hashed.get(exe) != sha):
                    paths.append((exe, sha))
                if cwd not in files:
                    paths.append((cwd, ""))
            if record_events:
                eid = self.next_eid
                self.next_eid += 1
                batch.events[eid] = (ev, proc)
                event_rows.append((eid, *row[:-2], *self._event_columns(ev, rec, eid, row)))
        self.events_seen += len(event_rows)
        batch.event_rows = event_rows
        self.event_names.update(_name_key(r[_EVENT_NAME]) for r in event_rows)
        self._drop(deletes)
        self._unwritten.update(pending)
        self._event_rows += event_rows
        hash_rows, file_rows, hash_gone = self._paths(paths)
        if hash_rows or file_rows:  # a path not seen before: rare, written at once
            with self.sandbox.trusted() as c:
                c.executemany("DELETE FROM hash WHERE path = ?", hash_gone)
                c.executemany(f"INSERT INTO hash VALUES ({_HMARKS})", hash_rows)
                c.executemany(f"INSERT INTO file VALUES ({_FMARKS})", file_rows)
        if len(self._unwritten) + len(self._deletes) + len(self._event_rows) >= SYNC_ROWS:
            self.sync()
        return batch

    def finish(self, batch: Batch) -> None:
        """After the rules ran: drop the rows of processes that stopped."""
        self._drop(batch.stopped)

    def _drop(self, rowids: list[tuple[int]]) -> None:
        """Rows of `processes` gone: a row never written is simply not written."""
        unwritten, deletes = self._unwritten, self._deletes
        for item in rowids:
            if unwritten.pop(item[0], None) is None:
                deletes.append(item)

    def sync(self) -> None:
        """Make the writes of the batches applied since the last sync, in one transaction.

        The tables are written only when a statement is about to read them (Sandbox.run
        calls this first: a rule, a screen only SQLite can judge, a query), when the window
        is trimmed (every second), or when SYNC_ROWS writes wait: most batches of a busy
        host are settled by the screens in Python and touch no table, and a process that
        starts and stops between two statements is neither inserted nor deleted. A
        statement sees the same rows either way (what a batch changed is found by rowid)."""
        if not (self._unwritten or self._deletes or self._event_rows):
            return
        rows = [(rowid, *row) for rowid, row in self._unwritten.items()]
        deletes, events = self._deletes, self._event_rows
        self._unwritten, self._deletes, self._event_rows = {}, [], []
        with self.sandbox.trusted() as c:
            c.execute("BEGIN")
            try:
                if deletes:
                    c.executemany("DELETE FROM processes WHERE rowid = ?", deletes)
                self._insert(c, f"INSERT INTO processes (rowid, {_PCOLS}) VALUES ({_PMARKS})", rows)
                self._insert(
                    c, f"INSERT INTO process_events (rowid, {_ECOLS}) VALUES ({_EMARKS})", events
                )
            finally:
                c.execute("COMMIT")  # no journal: what was written stays, as it would anyway

    def _insert(self, c: Any, sql: str, rows: list[tuple]) -> None:
        """Insert `rows`; one SQLite refuses (a number beyond 64 bits, which a frame may
        carry in a UInt64) is left out and counted, and the others are written: a row
        refused in the middle of a transaction must not leave it open, which would fail
        every write after."""
        while rows:
            before = c.total_changes
            try:
                c.executemany(sql, rows)
                return
            except (sqlite3.Error, OverflowError, ValueError) as exc:
                done = c.total_changes - before  # the rows before the one refused
                self.rows_refused += 1
                if self.rows_refused == 1 or self.rows_refused % 100 == 0:
                    log.warning("row not written to the live tables (%d so far): %s",
                                self.rows_refused, exc)  # fmt: skip
                rows = rows[done + 1 :]

    def exited(self, key: Key) -> bool:
        """Whether the process `key` (resolved) is gone for good: not live, and its exit
        taken in. Whatever was read or sent of it before that exit (a snapshot, a late
        start or modify) must not bring it back; a process that reuses the pid has
        another start (ticks), so it is another key."""
        return key not in self.live and self.exits.has(key[1], key[2], key[0])

    def _forget(self, key: Key) -> None:
        self.live.pop(key, None)
        slot = (key[0], key[1])
        if self.by_pid.get(slot) == key:
            del self.by_pid[slot]
        if self.latest.get(key[1]) == key:
            del self.latest[key[1]]

    def _event_columns(self, ev: EventIn, rec: dict[str, Any], eid: int, row: tuple) -> tuple:
        """The event columns; `row` is the process's `processes` row (its cmdline joined,
        its environment last, after `accessible`)."""
        cmd, env = row[3], row[-1]
        info = self._files.get(rec["exePath"])
        mode, ouid, ogid, atime, ctime = (
            (info[6], info[4], info[5], info[10], info[12]) if info else _NO_FILE
        )
        euid, egid = rec["euid"], rec["egid"]
        time_ns = ev.time_ns or time.time_ns()
        return (
            ev.kind,
            time_ns // 1_000_000_000,
            time_ns,
            eid,
            SYSCALL.get(ev.kind, ev.kind),
            ",".join(ev.changed_fields),
            ev.reason,
            ev.severity if ev.kind == "suspicious" else "",
            ev.source,
            ev.exit_code,
            ev.runtime_ns // 1_000_000,
            mode,
            len(cmd) if cmd.isascii() else len(cmd.encode()),
            env,
            len(rec["env"]),
            len(env.encode()),
            ouid,
            ogid,
            atime,
            rec["exeMtimeNs"] // 1_000_000_000,
            ctime,
            0,
            "",
            0,
            euid,
            egid,
        )

    # --- hash and file ---------------------------------------------------------

    def _paths(self, paths: list[tuple[str, str]]) -> tuple[list[tuple], list[tuple], list]:
        """New `hash` and `file` rows for paths not seen before (or re-hashed)."""
        hash_rows: list[tuple] = []
        file_rows: list[tuple] = []
        gone: list[tuple[str]] = []
        hashed, files = self._hashed, self._files
        for path, sha in paths:
            if not path or (path in files and (not sha or hashed.get(path) == sha)):
                continue
            if sha and hashed.get(path) != sha:
                if path in hashed:
                    gone.append((path,))
                hashed[path] = sha
                hash_rows.append((path, path.rpartition("/")[0] or "/", "", "", sha, "", 0, ""))
            if path not in self._files:
                row = sources.file_row(path)
                self._files[path] = row
                if row is not None:
                    file_rows.append(row)
        return hash_rows, file_rows, gone

    # --- maintenance -----------------------------------------------------------

    def trim_events(self, now: float | None = None) -> int:
        """Keep process_events within its time and row limits; returns rows dropped."""
        now = time.time() if now is None else now
        names = self.event_names
        self.sync()
        with self.sandbox.trusted() as c:
            before = c.total_changes
            for sql, arg in (
                ("rowid <= ?", self.next_eid - 1 - self.window_rows),
                ("time < ?", int(now - self.window_s)),
            ):
                gone = c.execute(f"DELETE FROM process_events WHERE {sql} RETURNING name", (arg,))
                names.subtract(_name_key(name) for (name,) in gone.fetchall())
            names += Counter()  # drops the names no row has any more
            return c.total_changes - before

    def oldest_event(self) -> tuple[int, float | None] | None:
        """The smallest rowid and the earliest time in process_events (what trim_events
        drops first), None when it is empty."""
        self.sync()
        with self.sandbox.trusted() as c:
            (rowid,) = c.execute("SELECT min(rowid) FROM process_events").fetchone()
            if rowid is None:
                return None
            (when,) = c.execute("SELECT min(time) FROM process_events").fetchone()  # indexed
        return rowid, when

    def has_event_name(self, names: frozenset[str]) -> bool:
        """Whether some process_events row may have one of `names`."""
        counts = self.event_names
        return counts[_ANY_NAME] > 0 or any(counts[n] > 0 for n in names)

    def refresh_users(self) -> None:
        rows = sources.users_rows()
        with self.sandbox.trusted() as c:
            c.execute("BEGIN")
            c.execute("DELETE FROM users")
            c.executemany(f"INSERT INTO users VALUES ({', '.join('?' * len(USERS.columns))})", rows)
            c.execute("COMMIT")

    def refresh_sockets(self) -> None:
        rows = sources.open_sockets_rows()
        with self.sandbox.trusted() as c:
            c.execute("BEGIN")
            c.execute("DELETE FROM process_open_sockets")
            c.executemany(
                "INSERT INTO process_open_sockets VALUES (" + ", ".join("?" * 12) + ")", rows
            )
            c.execute("COMMIT")

    def rebuild(self, records: list[dict[str, Any]], collector: str) -> Batch:
        """Replace what `collector` reported with its snapshot (other collectors' processes
        stay); process_events is untouched. The batch holds what is new or changed."""
        # a snapshot read before its collector took in an exit the detector has (a new
        # collector's first rescan reads the zombies of exits its predecessor published)
        resolve, exited = self._resolve, self.exited
        records = [r for r in map(normalise, records) if not exited(resolve(key_of(r)))]
        identities = {self._resolve(key_of(r)) for r in records}
        stale = [
            EventIn("stop", p.record, collector=collector)
            for k, p in self.live.items()
            if k not in identities and p.collector in (collector, "")
        ]
        fresh = [EventIn("start", r, source="snapshot", collector=collector) for r in records]
        fresh.sort(key=lambda e: e.record["startTicks"])  # parents before children
        return self.apply(stale + fresh, record_events=False)
