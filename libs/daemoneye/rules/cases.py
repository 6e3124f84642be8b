"""A rule's own test cases, run offline: each case's sample processes go through a fresh
engine (the detector's own tables, plans and prefilter, in memory; no service), and the
rule must fire (`expect: match`) or stay silent (`expect: no_match`).

A case is one process (`process:`) or a short sequence (`events:`, applied one event per
batch as the collector would send them; then the scheduled rules run once, so an
aggregate sees the whole sequence). A row is written with the column names of
`processes` / `process_events` (TABLES.md); the runner builds the wire record from them:

    cmdline: the command as typed; split like a shell would (shlex) and joined with
             spaces, exactly as the live table shows an argv (a list is taken as argv)
    env: {LD_PRELOAD: /tmp/x.so} or "LD_PRELOAD=/tmp/x.so"
    parent_name, parent_path, parent_cmdline: a parent process started first (its own
             firings do not count: it is context)
    event: start (default), stop, modify or suspicious (with reason, severity)
    ago: seconds before now the event happened (for windows of aggregates)
    context: true: the process is there for the others (a parent, an earlier step);
             what the rule does with it does not count
    repeat: N: the row stands for N processes alike (bursts, storms)

Unnamed fields get ordinary values: a fresh pid, uid 1000 (user), one session and
process group per case.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine import Engine, Firing
from .live import EventIn
from .model import Problem, Rule, load_rule_file, rule_files
from .validate import Checked, Validator

# column -> ProcessRecord field
RECORD_OF_COLUMN = {
    "pid": "pid", "name": "name", "path": "exePath", "cmdline": "cmdline", "cwd": "cwd",
    "root": "root", "uid": "uid", "gid": "gid", "euid": "euid", "egid": "egid",
    "suid": "suid", "sgid": "sgid", "on_disk": "onDisk", "parent": "ppid",
    "pgroup": "pgroup", "threads": "threads", "nice": "nice", "state": "state",
    "start_ticks": "startTicks", "auid": "loginUid", "username": "username",
    "sha256": "sha256", "exe_deleted": "exeDeleted", "session_id": "sessionId", "tty": "tty",
    "container_id": "containerId", "cgroup_path": "cgroupPath", "env": "env",
    "resident_size": "residentBytes", "hostname": "hostname", "accessible": "accessible",
}  # fmt: skip
PARENT_COLUMNS = {"parent_name": "name", "parent_path": "exePath", "parent_cmdline": "cmdline"}
EVENT_FIELDS = {"event", "reason", "severity", "ago", "status", "context", "repeat"}
MAX_REPEAT = 1000
KNOWN = set(RECORD_OF_COLUMN) | set(PARENT_COLUMNS) | EVENT_FIELDS
KINDS = ("start", "stop", "modify", "suspicious")
SESSION = 4242  # the session (and process group) of a case's processes, unless given
FIRST_PID = 40_000


class CaseError(ValueError):
    """A case that cannot be built (an unknown column, a value of the wrong type)."""


@dataclass
class CaseResult:
    rule: Rule
    index: int  # 1-based, in the rule's tests list
    name: str
    expect: str
    got: str  # match, no_match, or error
    fired: list[dict[str, Any]] = field(default_factory=list)  # the rows that fired
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.got == self.expect

    @property
    def line(self) -> int:
        lines = self.rule.test_lines
        return lines[self.index - 1] if len(lines) >= self.index else self.rule.sql_line

    def __str__(self) -> str:
        where = f"{self.rule.path}:{self.line}: rule {self.rule.id} test {self.index}"
        title = f" ({self.name})" if self.name else ""
        if self.error:
            return f"{where}{title}: {self.error}"
        if self.ok:
            return f"{where}{title}: {self.got} as expected"
        if self.got == "match":
            rows = "; ".join(_short(r) for r in self.fired[:3])
            return f"{where}{title}: expected no_match, but it fired on {rows}"
        return f"{where}{title}: expected match, but it did not fire"


@dataclass
class Report:
    results: list[CaseResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # rules that do not load
    rules: list[Rule] = field(default_factory=list)  # every rule loaded

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    def missing(self) -> list[tuple[Rule, str]]:
        """Rules without a case of each kind: (rule, the kinds it lacks)."""
        out = []
        for rule in self.rules:
            kinds = {str(case.get("expect")) for case in rule.tests}
            lacking = [k for k in ("match", "no_match") if k not in kinds]
            if lacking:
                out.append((rule, " and ".join(lacking)))
        return out


def _short(row: dict[str, Any]) -> str:
    shown = {k: row[k] for k in ("pid", "name", "cmdline") if k in row} or row
    text = ", ".join(f"{k}={v!r}" for k, v in shown.items())
    return text if len(text) <= 160 else text[:157] + "..."


def _argv(value: Any, column: str) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if not isinstance(value, str):
        raise CaseError(f"{column} must be a text or a list of texts")
    try:
        return shlex.split(value)
    except ValueError:
        return value.split()  # an unbalanced quote: split as the kernel would not care


def _env(value: Any) -> list[dict[str, str]]:
    if isinstance(value, dict):
        return [{"name": str(k), "value": str(v)} for k, v in value.items()]
    if isinstance(value, str):
        pairs = [item.partition("=") for item in value.split()]
        return [{"name": k, "value": v} for k, _, v in pairs]
    raise CaseError("env must be a mapping of NAME: value, or a text of NAME=value")


class CaseRunner:
    """Runs cases; validation is shared, an engine is made per case (isolation)."""

    def __init__(self) -> None:
        self.validator = Validator()

    def run_paths(self, paths: Iterable[Path]) -> Report:
        report = Report()
        seen: set[str] = set()
        for path in rule_files(paths):
            rules, problems = load_rule_file(path)
            report.problems += problems
            for rule in rules:
                if rule.id in seen:
                    report.problems.append(
                        Problem(rule.path, rule.id, rule.sql_line, "duplicate id")
                    )
                    continue
                seen.add(rule.id)
                checked = self.validator.check(rule)
                if isinstance(checked, Problem):
                    report.problems.append(checked)
                    continue
                report.rules.append(rule)
                report.results += self.run_rule(checked)
        return report

    def run_rule(self, checked: Checked) -> list[CaseResult]:
        return [self.run_case(checked, n, case) for n, case in enumerate(checked.rule.tests, 1)]

    def run_case(self, checked: Checked, index: int, case: dict[str, Any]) -> CaseResult:
        rule = checked.rule
        result = CaseResult(rule, index, str(case.get("name") or ""), case["expect"], "no_match")
        try:
            events, context = self.events_of(case)
        except CaseError as exc:
            result.got, result.error = "error", f"bad case: {exc}"
            return result
        disabled: list[str] = []
        # a case may hold hundreds of rows (a burst): a wide row bound, no batch is cut
        engine = Engine(on_disable=lambda _r, why: disabled.append(why), max_rows=10_000)
        engine.load([checked])
        firings: list[Firing] = []
        for ev in events:
            firings += engine.apply([ev])[0]
        firings += engine.run_due(force=True)
        if disabled:
            result.got, result.error = "error", f"the rule was disabled: {disabled[0]}"
            return result
        own = [f for f in firings if f.record is None or f.record.get("pid") not in context]
        if own:
            result.got = "match"
            result.fired = [f.row for f in own]
        return result

    def events_of(self, case: dict[str, Any]) -> tuple[list[EventIn], set[int]]:
        """The case's events (parents first), and the pids of parents made for context."""
        rows = [case["process"]] if "process" in case else case["events"]
        rows = [r for row in rows for r in [row] * self._repeat(row)]
        now = time.time()
        next_pid = FIRST_PID
        events: list[EventIn] = []
        context: set[int] = set()
        latest: dict[int, dict[str, Any]] = {}  # pid -> its last record (stop, modify)
        parents: dict[tuple, int] = {}  # a parent described twice is one process
        for row in rows:
            unknown = sorted(set(map(str, row)) - KNOWN)
            if unknown:
                raise CaseError(f"unknown column(s) {', '.join(unknown)} (see TABLES.md)")
            ago = float(row.get("ago", 0) or 0)
            at = now - ago
            kind = str(row.get("event", "start"))
            if kind not in KINDS:
                raise CaseError(f"event must be one of {', '.join(KINDS)}")
            described = {k: row[k] for k in PARENT_COLUMNS if k in row}
            ppid = row.get("parent")
            if described:
                key = (ppid, *sorted((k, str(v)) for k, v in described.items()))
                if key not in parents:
                    pid = int(ppid) if ppid is not None else next_pid
                    next_pid += 1
                    parent = self._record(pid, {}, at - 0.01)
                    for column, name in PARENT_COLUMNS.items():
                        if column in described:
                            value = described[column]
                            parent[name] = _argv(value, column) if name == "cmdline" else str(value)
                    parent["ppid"] = 1
                    events.append(EventIn("start", parent, int((at - 0.01) * 1e9)))
                    context.add(pid)
                    latest[pid] = parent
                    parents[key] = pid
                ppid = parents[key]
            pid = row.get("pid")
            if kind in ("stop", "modify") and pid is not None and int(pid) in latest:
                rec = dict(latest[int(pid)])
            else:
                if pid is None:
                    pid, next_pid = next_pid, next_pid + 1
                rec = self._record(int(pid), row, at)
            if ppid is not None:
                rec["ppid"] = int(ppid)
            for column, value in row.items():
                name = RECORD_OF_COLUMN.get(column)
                if name is None or column in ("pid", "parent"):
                    continue
                rec[name] = self._value(column, name, value)
            if not rec.get("name"):  # as the kernel names it: the executable's base name
                argv0 = rec.get("cmdline") or [""]
                rec["name"] = (rec.get("exePath") or argv0[0]).rpartition("/")[2][:15]
            if not rec.get("exePath") and rec["name"]:
                rec["exePath"] = f"/usr/bin/{rec['name']}"
            latest[rec["pid"]] = rec
            if row.get("context"):
                context.add(rec["pid"])
            events.append(
                EventIn(
                    kind,
                    rec,
                    int(at * 1e9),
                    source="netlink",
                    reason=str(row.get("reason", "")),
                    severity=str(row.get("severity", "")),
                    exit_code=int(row.get("status", 0) or 0),
                )
            )
        return events, context

    @staticmethod
    def _repeat(row: dict[str, Any]) -> int:
        count = row.get("repeat", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REPEAT:
            raise CaseError(f"repeat must be a whole number from 1 to {MAX_REPEAT}")
        if count > 1 and "pid" in row:
            raise CaseError("a repeated row cannot name its pid")
        return count

    @staticmethod
    def _record(pid: int, row: dict[str, Any], at: float) -> dict[str, Any]:
        uid = int(row.get("uid", 1000))
        return {
            "pid": pid,
            "ppid": 1,
            "startTicks": int(at * 100) + pid,  # unique per process of the case
            "startTime": at,
            "uid": uid,
            "euid": uid,
            "suid": uid,
            "gid": uid,
            "egid": uid,
            "sgid": uid,
            "username": "root" if uid == 0 else "user",
            "cwd": "/root" if uid == 0 else "/home/user",
            "root": "/",
            "state": "R",
            "threads": 1,
            "pgroup": SESSION,
            "sessionId": SESSION,
            "onDisk": 1,
            "accessible": True,
        }

    @staticmethod
    def _value(column: str, name: str, value: Any) -> Any:
        if name == "cmdline":
            return _argv(value, column)
        if name == "env":
            return _env(value)
        if name in ("exeDeleted", "accessible"):
            return bool(value)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise CaseError(f"{column} must be a text or a number")
        kind = RECORD_TYPES.get(name, str)
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise CaseError(f"{column}: {value!r} is not a {kind.__name__}") from None


RECORD_TYPES: dict[str, type] = {
    "pid": int, "ppid": int, "uid": int, "gid": int, "euid": int, "egid": int, "suid": int,
    "sgid": int, "onDisk": int, "pgroup": int, "threads": int, "nice": int, "startTicks": int,
    "loginUid": int, "sessionId": int, "residentBytes": int,
}  # fmt: skip
