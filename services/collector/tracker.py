"""The lifecycle tracker: one table of live processes keyed by (pid, start ticks),
fed by netlink items and /proc rescans, producing start / stop / modify / suspicious.

- fork: the child is held as pending; its exec publishes the start with the
  exec'd record (so a start shows the program, not a copy of its parent). A child
  that never execs is published after `fork_publish_delay_s`, or at its exit.
- exec of a process already started: modify (exec in place), previous record kept.
- exit: stop, with runtime and exit code.
- rescan: reads /proc/<pid>/stat for known processes (plus the exe link), full
  records only for new ones; missed starts and stops are caught here, and PID
  reuse (same pid, other start ticks) is a stop plus a start.
The tracker never touches sockets: the service publishes what it returns.
"""

from __future__ import annotations

import copy
import gc
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from daemoneye import procfs
from daemoneye.wire import ARGV_LOST

from . import suspicious
from .hasher import Hasher, key_of
from .netlink import COMM, EXEC, EXIT, FORK, GID, UID, ProcEvent

Record = dict[str, Any]
COMPARED = (
    "exePath",
    "cmdline",
    "name",
    "uid",
    "euid",
    "gid",
    "egid",
    "ppid",
    "cwd",
    "root",
    "exeDeleted",
)
# Recent exits, so a zombie is not a new start: a zombie lives until its parent reaps it,
# and 8-16k exits cover that many times over. Two generations of int sets (~60 bytes an
# exit; (pid, ticks) tuples in an OrderedDict cost ~200: 13 MB of a 60 MB budget at 65k).
EXITED_GENERATION = 8192


class RecentExits:
    """The last 8,192 to 16,384 (pid, start ticks) that exited, in O(1) and little memory."""

    def __init__(self, generation: int = EXITED_GENERATION) -> None:
        self.generation = generation
        self._new: set[int] = set()
        self._old: set[int] = set()

    def add(self, pid: int, ticks: int) -> None:
        if len(self._new) >= self.generation:
            self._old, self._new = self._new, set()
        self._new.add(exit_key(pid, ticks))

    def __contains__(self, pid_ticks: tuple[int, int]) -> bool:
        key = exit_key(*pid_ticks)
        return key in self._new or key in self._old

    def __len__(self) -> int:
        return len(self._new) + len(self._old)


@dataclass
class Out:
    kind: str  # start, stop, modify, suspicious
    source: str  # snapshot, netlink
    record: Record
    previous: Record | None = None
    changed: list[str] = field(default_factory=list)
    reason: str = ""
    severity: str = "info"
    runtime_ns: int = 0
    exit_code: int = 0
    time_ns: int = 0  # when it happened, where the kernel said (an exit); 0: when published


@dataclass
class Tracked:
    record: Record
    flagged: set[str] = field(default_factory=set)  # heuristics already reported
    stat_raw: bytes = b""  # /proc/<pid>/stat at the last rescan: unchanged means no work


@dataclass
class PendingFork:
    ppid: int
    kernel_ns: int
    seen: float  # monotonic


def wall_ns(kernel_ns: int) -> int:
    """The wall-clock time of a kernel event stamp (CLOCK_MONOTONIC, as ours): an exit's
    time is when it happened, not when the reader's hold let it through. 0 (now) for a
    stamp that cannot be recent (a test's, another clock's)."""
    ago = time.monotonic_ns() - kernel_ns
    return time.time_ns() - ago if kernel_ns > 0 and 0 <= ago < 60_000_000_000 else 0


def exit_key(pid: int, ticks: int) -> int:
    return pid << 44 | ticks  # ticks fit 44 bits for 5,000 years at 100 Hz


def decode_exit(status: int) -> int:
    """A wait status as a shell shows it: the exit code, or minus the killing signal."""
    if status & 0x7F:
        return -(status & 0x7F)
    return (status >> 8) & 0xFF


def zombie_exit_code(stat_raw: bytes) -> int:
    """The exit code in a zombie's /proc/<pid>/stat (field 52, exit_code, Linux 3.5+).
    The kernel shows 0 to whoever may not ptrace the process: as a clean exit."""
    fields = stat_raw[stat_raw.rfind(b")") + 2 :].split()
    try:
        return decode_exit(int(fields[49]))  # fields[n - 3] is field n of proc(5)
    except (IndexError, ValueError):
        return 0


def diff(old: Record, new: Record) -> list[str]:
    return [f for f in COMPARED if old.get(f) != new.get(f)]


class Tracker:
    def __init__(
        self,
        writable_places: Iterable[str] = ("/tmp", "/var/tmp", "/dev/shm"),
        shell_parents: Iterable[str] = (),
        hasher: Hasher | None = None,
        read: Callable[[int], Record | None] = procfs.read_process,
    ) -> None:
        self.procs: dict[int, Tracked] = {}
        self.pending: dict[int, PendingFork] = {}
        self.exited = RecentExits()
        self.writable_places = tuple(writable_places)
        self.shell_parents = tuple(shell_parents)
        self.hasher = hasher
        self.read = read
        self.full_rescan_reads = False  # degraded mode: rescans also read uids
        self.read_workers = 1  # processes reading /proc when a rescan finds many new ones

    # --- helpers --------------------------------------------------------------

    def _enrich(self, rec: Record) -> None:
        if self.hasher is None or rec.get("sha256"):
            return
        key = key_of(rec)
        if key is None:
            return
        sha = self.hasher.lookup(key)
        if sha is not None:
            rec["sha256"] = sha
        else:
            self.hasher.submit(key, rec["pid"], rec.get("exePath", ""))

    def _heuristics(
        self, tracked: Tracked, previous: Record | None, source: str, out: list[Out]
    ) -> None:
        rec = tracked.record
        parent = self.procs.get(rec.get("ppid", 0))
        for hid, severity, msg in suspicious.check(
            rec,
            previous,
            parent.record if parent else None,
            self.writable_places,
            self.shell_parents,
        ):
            if hid in tracked.flagged and hid != "uid_raised_to_root":
                continue
            tracked.flagged.add(hid)
            out.append(
                Out("suspicious", source, rec, previous, reason=f"{hid}: {msg}", severity=severity)
            )

    def _start(self, rec: Record, source: str, out: list[Out], reason: str = "") -> None:
        old = self.procs.get(rec["pid"])
        if old is not None:  # the pid was reused under us: the old one is gone
            self._stop(old, source, 0, out)
        self._enrich(rec)
        tracked = Tracked(rec)
        self.procs[rec["pid"]] = tracked
        out.append(Out("start", source, rec, reason=reason))
        self._heuristics(tracked, None, source, out)

    def _stop(
        self,
        tracked: Tracked,
        source: str,
        exit_code: int,
        out: list[Out],
        when_ns: int = 0,
        stat: procfs.Stat | None = None,
    ) -> None:
        """`stat`: the process's last /proc/<pid>/stat, for its final state (a zombie)."""
        rec = tracked.record
        if stat is not None:
            rec = dict(rec)
            procfs.apply_stat(rec, stat)
        self.procs.pop(rec["pid"], None)
        self._remember_exit(rec["pid"], rec.get("startTicks", 0))
        end = when_ns or time.time_ns()
        runtime = max(0, end - int(rec.get("startTime", 0) * 1e9))
        out.append(
            Out("stop", source, rec, runtime_ns=runtime, exit_code=exit_code, time_ns=when_ns)
        )

    def _modify(
        self, tracked: Tracked, new: Record, source: str, out: list[Out], reason: str = ""
    ) -> None:
        previous = tracked.record
        changed = diff(previous, new)
        if not new.get("sha256") and new.get("exeInode") == previous.get("exeInode"):
            new["sha256"] = previous.get("sha256", "")
        self._enrich(new)
        tracked.record = new
        if changed:
            out.append(Out("modify", source, new, previous, changed, reason=reason))
        self._heuristics(tracked, previous, source, out)

    def _remember_exit(self, pid: int, ticks: int) -> None:
        self.exited.add(pid, ticks)

    def _from_parent(self, pid: int, ppid: int, kernel_ns: int) -> Record:
        """What the kernel and the parent tell about a child that is already gone."""
        parent = self.procs.get(ppid)
        rec = copy.deepcopy(parent.record) if parent else procfs.empty_record(pid)
        rec.update(pid=pid, ppid=ppid, accessible=False, sha256=rec.get("sha256", ""))
        ticks = kernel_ns * procfs.CLK_TCK // 1_000_000_000
        rec["startTicks"] = ticks
        rec["startTime"] = procfs.start_time_of(ticks)
        return rec

    # --- netlink --------------------------------------------------------------

    def on_event(self, ev: ProcEvent, rec: Record | None, argv_lost: str = "") -> list[Out]:
        """What one kernel event leads to. `argv_lost`: an exec's process was gone before
        its argv was read, and why (the reader's ARGV_LOST_WHY)."""
        out: list[Out] = []
        if ev.what == FORK:
            if not ev.is_thread and not self._late_fork(ev):
                self.pending[ev.pid] = PendingFork(ev.ppid, ev.timestamp_ns, time.monotonic())
        elif ev.what == EXEC:
            self._on_exec(ev, rec, out, argv_lost)
        elif ev.what == EXIT:
            if not ev.is_thread:
                self._on_exit(ev, out)
        elif ev.what in (UID, GID) and not ev.is_thread:
            tracked = self.procs.get(ev.pid)
            same = tracked is not None and rec is not None
            if same and rec.get("startTicks") == tracked.record.get("startTicks"):
                self._modify(tracked, rec, "netlink", out)
        elif ev.what == COMM and not ev.is_thread:
            tracked = self.procs.get(ev.pid)
            if tracked is not None and ev.comm != tracked.record.get("name"):
                new = dict(tracked.record, name=ev.comm)
                self._modify(tracked, new, "netlink", out)
        return out

    def _late_fork(self, ev: ProcEvent) -> bool:
        """The fork of a process already started, by its exec or by a snapshot: the reader
        reads forks and execs from two sockets, so a fork stamped before its read but
        queued after it comes a frame after its exec, and a fork the reader holds (when
        no exec wakes it) can come after a snapshot found the child. The process started
        at the fork (the tick of the kernel's time, or the one before); one that had the
        pid before started earlier (the boot clock only runs ahead of the kernel's
        monotonic one)."""
        tracked = self.procs.get(ev.pid)
        if tracked is None:
            return False
        ticks = ev.timestamp_ns * procfs.CLK_TCK // 1_000_000_000
        return int(tracked.record.get("startTicks", 0)) >= ticks - 1

    def _on_exec(self, ev: ProcEvent, rec: Record | None, out: list[Out], argv_lost: str) -> None:
        pending = self.pending.pop(ev.pid, None)
        tracked = self.procs.get(ev.pid)
        if rec is None or not rec.get("startTicks"):
            ppid = pending.ppid if pending else (tracked.record["ppid"] if tracked else 0)
            kernel_ns = pending.kernel_ns if pending else ev.timestamp_ns
            gone = self._from_parent(ev.pid, ppid, kernel_ns)
            if tracked is not None:
                gone["startTicks"] = tracked.record["startTicks"]
                gone["startTime"] = tracked.record["startTime"]
            # the exec replaced the parent's image: its argv and environment are not the
            # parent's (a rule on them would fire again, on a child that ran something
            # else); unknown unless read before the process vanished
            gone["cmdline"] = rec.get("cmdline", []) if rec is not None else []
            gone["env"] = []
            gone["name"] = gone["exePath"] = ""
            gone["sha256"] = ""
            rec = gone
        elif pending is not None and pending.ppid and rec.get("ppid") != pending.ppid:
            # its parent exited before /proc was read (reparented): name the one that
            # forked it, or the ancestry of a short-lived parent's child is lost
            rec["ppid"] = pending.ppid
        reason = ""
        if argv_lost:
            # said in its event (wire.ARGV_LOST): a detector then takes it for the new
            # image it is; not read whole (a zombie's has its name and no more)
            reason = f"{ARGV_LOST}: {argv_lost}"
            rec["accessible"] = False
        if tracked is not None and tracked.record.get("startTicks") == rec["startTicks"]:
            self._modify(tracked, rec, "netlink", out, reason)
        else:
            self._start(rec, "netlink", out, reason)

    def _on_exit(self, ev: ProcEvent, out: list[Out]) -> None:
        code = decode_exit(ev.exit_code)
        pending = self.pending.pop(ev.pid, None)
        tracked = self.procs.get(ev.pid)
        if pending is not None and tracked is None:
            # forked, never exec'd and already gone: it still existed
            self._start(self._from_parent(ev.pid, pending.ppid, pending.kernel_ns), "netlink", out)
            tracked = self.procs.get(ev.pid)
        if tracked is not None:
            self._stop(tracked, "netlink", code, out, wall_ns(ev.timestamp_ns))

    def flush_pending(self, delay_s: float) -> list[Out]:
        """Publish children that forked and did not exec within `delay_s`."""
        out: list[Out] = []
        if not self.pending:
            return out
        now = time.monotonic()
        for pid, fork in list(self.pending.items()):
            if now - fork.seen < delay_s:
                continue
            rec = self.read(pid)
            if rec is None:
                if now - fork.seen > delay_s * 10 + 5:
                    del self.pending[pid]  # its exit was lost; the rescan repairs
                continue
            del self.pending[pid]
            known = self.procs.get(pid)
            if known is not None and known.record.get("startTicks") == rec["startTicks"]:
                continue  # a snapshot already started it
            if (pid, rec["startTicks"]) not in self.exited:
                self._start(rec, "netlink", out)
        return out

    # --- snapshots ------------------------------------------------------------

    def rescan(self, source: str = "snapshot", publish_new: bool = True) -> list[Out]:
        """Walk /proc: new processes start, missing ones stop, changes modify.

        A known process costs one read of /proc/<pid>/stat, and no parsing at all when
        those bytes are unchanged since the last pass (a sleeping process). New ones are
        read in full after the walk, all together (`read_many`: in parallel when many)."""
        if not procfs.IS_LINUX:
            return self._rescan_psutil(publish_new)
        # Thousands of new (acyclic) records would trigger full cyclic-GC passes over
        # everything alive, again and again: ~40 % of a cold snapshot. None are garbage.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._rescan_proc(source, publish_new)
        finally:
            if paused:
                gc.enable()

    def _rescan_proc(self, source: str, publish_new: bool) -> list[Out]:
        out: list[Out] = []
        seen: set[int] = set()
        procs = self.procs
        # new processes: (pid, stat bytes), read in full after the walk; a pid never
        # seen has its stat read there too (by the parallel readers on a cold snapshot)
        new: list[tuple[int, bytes | None]] = []
        for pid in procfs.list_pids():
            tracked = procs.get(pid)
            if tracked is None:
                if pid not in self.pending:
                    new.append((pid, None))
                    seen.add(pid)
                continue
            raw = procfs.read_stat_raw(pid)
            if raw is None:
                continue
            seen.add(pid)
            if raw == tracked.stat_raw and not self.full_rescan_reads:
                continue
            st = procfs.parse_stat(pid, raw)
            if st is None:
                continue
            if tracked.record.get("startTicks") == st.start_ticks:
                if st.state == "Z" and self.full_rescan_reads:
                    # no netlink to tell its exit: a zombie has exited, only its parent
                    # has not reaped it yet (which may be never)
                    self._stop(tracked, source, zombie_exit_code(raw), out, stat=st)
                    continue
                self._refresh(tracked, st, source, out)
                tracked.stat_raw = raw
            elif pid not in self.pending and (pid, st.start_ticks) not in self.exited:
                new.append((pid, raw))  # the pid was reused: _start stops the old one
        for pid, (raw, rec) in zip((p for p, _ in new), self._read_new(new), strict=True):
            if raw is None or rec is None:
                seen.discard(pid)  # gone while we looked: the next pass sees it
                continue
            if (pid, rec["startTicks"]) in self.exited:
                continue  # its exit was seen already (a zombie)
            if rec.get("state") == "Z":
                self._found_exited(rec, raw, source, publish_new, out)
                continue
            if publish_new:
                self._start(rec, source, out)
            else:
                self._enrich(rec)
                procs[pid] = Tracked(rec)
            if pid in procs:
                procs[pid].stat_raw = raw
        for pid in [p for p in procs if p not in seen]:
            self._stop(procs[pid], source, 0, out)
        self._check_exes(source, out)
        return out

    def _found_exited(
        self, rec: Record, stat_raw: bytes, source: str, publish: bool, out: list[Out]
    ) -> None:
        """A process found exited, its parent not having reaped it (a zombie), whose
        exit we did not see: a new main's first scan finds those of its predecessor's
        exits, a rescan those netlink lost. It is no live process: its start and its
        stop, with what /proc still gives (name, ppid, start, state, ids, exit code;
        no executable, argv or cwd). Not published (what runs at start is not news),
        its exit is still remembered, so no later scan starts it."""
        if not publish:
            self.procs.pop(rec["pid"], None)  # an older process of the pid is gone too
            self._remember_exit(rec["pid"], rec["startTicks"])
            return
        self._start(rec, source, out)
        # stamped now, not when it exited (unknown): its runtime is an upper bound
        self._stop(self.procs[rec["pid"]], source, zombie_exit_code(stat_raw), out)

    def _read_new(self, new: list[tuple[int, bytes | None]]) -> list[procfs.Read]:
        if self.read is procfs.read_process:
            return procfs.read_many(new, self.read_workers)
        reads: list[procfs.Read] = []
        for pid, raw in new:  # an injected reader (tests)
            rec = self.read(pid)
            reads.append((raw or procfs.read_stat_raw(pid), rec))
        return reads

    def _rescan_psutil(self, publish_new: bool) -> list[Out]:
        """Where there is no /proc (macOS, Windows): full psutil reads, same diffing."""
        out: list[Out] = []
        seen: set[int] = set()
        for pid in procfs.list_pids():
            rec = self.read(pid)
            if rec is None:
                continue
            seen.add(pid)
            tracked = self.procs.get(pid)
            if tracked is not None and tracked.record["startTicks"] == rec["startTicks"]:
                self._modify(tracked, rec, "psutil", out)
            elif publish_new:
                self._start(rec, "psutil", out)
            else:
                self.procs[pid] = Tracked(rec)
        for pid in [p for p in self.procs if p not in seen]:
            self._stop(self.procs[pid], "psutil", 0, out)
        return out

    def _refresh(self, tracked: Tracked, st: procfs.Stat, source: str, out: list[Out]) -> None:
        rec = tracked.record
        changed = st.name != rec.get("name")
        if not changed and self.full_rescan_reads:
            # no netlink to tell uid changes: compare the ids too (one more small read)
            ids = procfs.read_ids(st.pid)
            changed = ids is not None and ids != (rec["uid"], rec["euid"], rec["gid"], rec["egid"])
        if changed:
            new = self.read(st.pid)
            if new is not None and new["startTicks"] == st.start_ticks:
                self._modify(tracked, new, source, out)
            return
        if st.ppid != rec.get("ppid"):  # reparented: the kernel does not tell
            new = dict(rec)
            procfs.apply_stat(new, st)
            self._modify(tracked, new, source, out)
            return
        procfs.apply_stat(rec, st)  # cpu, memory, state: no event, fresh for snapshot RPCs

    def _check_exes(self, source: str, out: list[Out]) -> None:
        """Executables deleted or replaced on disk: one stat per distinct binary, then a
        look at the processes running one that changed."""
        by_binary: dict[tuple[int, int, str], list[Tracked]] = {}
        for tracked in self.procs.values():
            rec = tracked.record
            if rec.get("exeInode") and rec.get("onDisk") == 1:
                key = (rec["exeDevice"], rec["exeInode"], rec["exePath"])
                by_binary.setdefault(key, []).append(tracked)
        for (dev, ino, path), group in by_binary.items():
            try:
                info = os.stat(path)
                if (info.st_dev, info.st_ino) == (dev, ino):
                    continue
            except OSError:
                pass
            for tracked in group:
                rec = tracked.record
                link = _exe_link(rec["pid"])
                if link is None:
                    continue  # gone: the next pass stops it
                new = dict(rec, onDisk=0)
                new["exeDeleted"] = link.endswith(procfs.DELETED_SUFFIX)
                new["exeChangedAfterExec"] = not new["exeDeleted"] or os.path.exists(path)
                self._modify(tracked, new, source, out)

    def records(self) -> list[Record]:
        return [t.record for t in self.procs.values()]

    def apply_hash(self, key: tuple[int, int, int, int], sha: str) -> list[Out]:
        """A hash came back: fill it in and tell subscribers with a modify."""
        out: list[Out] = []
        if not sha:
            return out
        for tracked in list(self.procs.values()):
            rec = tracked.record
            if not rec.get("sha256") and key_of(rec) == key:
                new = dict(rec, sha256=sha)
                tracked.record = new
                out.append(Out("modify", "snapshot", new, rec, ["sha256"]))
        return out


def _exe_link(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
