"""Exceptions: named, counted ways to silence known-good matches without editing SQL.

A rule may carry `exceptions:`, and a global allowlist file holds more (each naming
the rules it covers). An exception matches a row when every column it lists matches
one of its values (`equals`, `prefix` or `glob`). Exceptions are checked at load as
the SQL is (a clear problem naming the file, the line and why), and each match they
suppress is counted per rule and exception: `daemoneye rules list` shows the counts,
so nothing is ever silenced without a trace.

    exceptions:
      - name: nightly backup
        reason: the backup job tars /etc every night      # optional
        match:
          path: /usr/bin/tar                               # equals
          cmdline: {prefix: ["tar -czf /backup/", "tar -cf /backup/"]}
          username: {equals: [root, backup]}
          parent_name: {glob: "cron*"}

A column a rule does not output is read from the alert's process where it can be
(see RECORD_COLUMNS): a global entry over `path` applies to a rule that outputs only
`pid`.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import Problem

log = logging.getLogger("daemoneye.rules")

OPERATORS = ("equals", "prefix", "glob")
MAX_EXCEPTIONS = 200  # per rule, and in the allowlist file
MAX_VALUES = 1000  # per column
FIELDS = {"name", "reason", "match"}
ALLOWLIST_FIELDS = FIELDS | {"rules"}
# Row column -> how to read it from a process record (a ProcessRecord dict).
RECORD_COLUMNS: dict[str, Any] = {
    "pid": lambda r: r.get("pid"),
    "name": lambda r: r.get("name"),
    "path": lambda r: r.get("exePath"),
    "cmdline": lambda r: " ".join(r.get("cmdline") or ()),
    "cwd": lambda r: r.get("cwd"),
    "uid": lambda r: r.get("uid"),
    "euid": lambda r: r.get("euid"),
    "username": lambda r: r.get("username"),
    "parent": lambda r: r.get("ppid"),
    "session_id": lambda r: r.get("sessionId"),
    "sha256": lambda r: r.get("sha256"),
    "container_id": lambda r: r.get("containerId"),
}


class ExceptionError(ValueError):
    """What is wrong with an exception, and the line it is on when known."""

    def __init__(self, reason: str, line: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class Condition:
    column: str
    op: str  # equals, prefix, glob
    values: tuple[str, ...]

    def holds(self, value: Any) -> bool:
        if value is None:
            return False
        text = value if isinstance(value, str) else str(value)
        if self.op == "equals":
            return text in self.values
        if self.op == "prefix":
            return text.startswith(self.values)
        return any(fnmatch.fnmatchcase(text, pattern) for pattern in self.values)


@dataclass(frozen=True)
class RuleException:
    name: str
    conditions: tuple[Condition, ...]
    reason: str = ""
    rules: tuple[str, ...] = ()  # allowlist entries: rule ids or globs ("*": every rule)
    origin: str = ""  # "rule" or the allowlist file's path
    line: int = 0

    def columns(self) -> set[str]:
        return {c.column for c in self.conditions}

    def matches(self, row: dict[str, Any], record: dict[str, Any] | None) -> bool:
        for cond in self.conditions:
            if cond.column in row:
                value = row[cond.column]
            elif record is not None and cond.column in RECORD_COLUMNS:
                value = RECORD_COLUMNS[cond.column](record)
            else:
                return False
            if not cond.holds(value):
                return False
        return True

    def covers(self, rule_id: str) -> bool:
        return any(fnmatch.fnmatchcase(rule_id, pattern) for pattern in self.rules)

    def to_yaml_dict(self) -> dict[str, Any]:
        match: dict[str, Any] = {}
        for c in self.conditions:
            values: Any = list(c.values) if len(c.values) > 1 else c.values[0]
            match[c.column] = values if c.op == "equals" else {c.op: values}
        out: dict[str, Any] = {"name": self.name}
        if self.reason:
            out["reason"] = self.reason
        out["match"] = match
        return out


def _values(raw: Any, where: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ExceptionError(f"{where}: needs at least one value")
    if len(items) > MAX_VALUES:
        raise ExceptionError(f"{where}: more than {MAX_VALUES} values")
    out = []
    for item in items:
        if isinstance(item, bool) or item is None or not isinstance(item, str | int | float):
            raise ExceptionError(f"{where}: values must be strings or numbers, got {item!r:.40}")
        out.append(str(item))
    return tuple(out)


def parse_one(data: Any, index: int, allowlist: bool = False, line: int = 0) -> RuleException:
    """One exception mapping; ExceptionError says what is wrong."""
    where = f"exception #{index + 1}"
    if not isinstance(data, dict):
        raise ExceptionError(f"{where} must be a mapping with name and match", line)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ExceptionError(f"{where} needs a name (a non-empty string)", line)
    where = f"exception {name!r}"
    unknown = sorted(set(map(str, data)) - (ALLOWLIST_FIELDS if allowlist else FIELDS))
    if unknown:
        raise ExceptionError(f"{where}: unknown field(s) {', '.join(unknown)}", line)
    match = data.get("match")
    if not isinstance(match, dict) or not match:
        raise ExceptionError(f"{where}: match must map columns to values", line)
    conditions = []
    for column, spec in match.items():
        if not isinstance(column, str) or not column:
            raise ExceptionError(f"{where}: column names must be strings", line)
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in OPERATORS:
                raise ExceptionError(
                    f"{where}: {column}: give one of {', '.join(OPERATORS)}, got "
                    f"{', '.join(map(str, spec)) or 'nothing'}",
                    line,
                )
            op, raw = next(iter(spec.items()))
        else:
            op, raw = "equals", spec
        try:
            conditions.append(Condition(column, op, _values(raw, f"{where}: {column}")))
        except ExceptionError as err:
            raise ExceptionError(err.reason, line) from None
    rules: tuple[str, ...] = ()
    if allowlist:
        raw_rules = data.get("rules", ["*"])
        if isinstance(raw_rules, str):
            raw_rules = [raw_rules]
        if not isinstance(raw_rules, list) or not all(isinstance(r, str) for r in raw_rules):
            raise ExceptionError(f"{where}: rules must be a list of rule ids or globs", line)
        rules = tuple(raw_rules) or ("*",)
    reason = data.get("reason") or ""
    return RuleException(name, tuple(conditions), str(reason), rules, line=line)


def parse_list(raw: Any, line: int = 0, lines: dict[str, int] | None = None) -> list[RuleException]:
    """A rule's `exceptions:` field; ExceptionError on the first problem. `line`: the
    field's line; `lines`: each item's, as `exceptions.<index>`."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ExceptionError("exceptions must be a list", line)
    if len(raw) > MAX_EXCEPTIONS:
        raise ExceptionError(f"more than {MAX_EXCEPTIONS} exceptions", line)
    at = [(lines or {}).get(f"exceptions.{i}", line) for i in range(len(raw))]
    out = [parse_one(item, i, line=at[i]) for i, item in enumerate(raw)]
    seen: set[str] = set()
    for exc in out:
        if exc.name in seen:
            raise ExceptionError(f"exception names must be unique: {exc.name!r}", exc.line)
        seen.add(exc.name)
    return [RuleException(e.name, e.conditions, e.reason, origin="rule", line=e.line) for e in out]


def misfit(exceptions: Iterable[RuleException], columns: set[str] | None) -> RuleException | None:
    """The first exception naming a column a rule whose output has `columns` lacks
    (None: all fit, or the output is open, e.g. `SELECT *`)."""
    if columns is None:
        return None
    return next((e for e in exceptions if not e.columns() <= columns), None)


def check_columns(exceptions: Iterable[RuleException], columns: set[str] | None) -> str | None:
    """Why the exceptions do not fit a rule whose output has `columns`, or None."""
    exc = misfit(exceptions, columns)
    if exc is None or columns is None:
        return None
    missing = sorted(exc.columns() - columns)
    return (
        f"exception {exc.name!r}: column(s) {', '.join(missing)} not in the rule's "
        f"output ({', '.join(sorted(columns))})"
    )


ALLOWLIST_NAME = "allowlist.yml"


def allowlist_path(configured: Path | None, rules_dir: Path) -> Path | None:
    """The configured file, else `allowlist.yml` beside the rules directory, if any (not
    inside it: every YAML file there is a rule file)."""
    if configured is not None:
        return Path(configured).expanduser()
    beside = Path(rules_dir).parent / ALLOWLIST_NAME
    return beside if beside.is_file() else None


def load_allowlist(
    path: Path, known_columns: set[str]
) -> tuple[list[RuleException], list[Problem]]:
    """The global allowlist file: a YAML list of exceptions, each with `rules`."""
    import yaml  # here, not at the top: the detector loads rule files in a child (offload.py)

    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Problem(where, "", 1, f"allowlist: cannot read: {exc}")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [], [Problem(where, "", mark.line + 1 if mark else 1, "allowlist: invalid YAML")]
    if root is None:
        return [], []
    if not isinstance(root, yaml.SequenceNode):
        line = root.start_mark.line + 1
        return [], [Problem(where, "", line, "allowlist: must be a list of exceptions")]
    if len(root.value) > MAX_EXCEPTIONS:
        return [], [Problem(where, "", 1, f"allowlist: more than {MAX_EXCEPTIONS} exceptions")]
    out, problems = [], []
    for i, node in enumerate(root.value):
        line = node.start_mark.line + 1
        try:
            data = yaml.SafeLoader(text).construct_document(node)
            exc = parse_one(data, i, allowlist=True, line=line)
        except ExceptionError as err:
            problems.append(Problem(where, "", line, f"allowlist: {err.reason}"))
            continue
        unknown = sorted(exc.columns() - known_columns)
        if unknown:
            reason = f"allowlist: exception {exc.name!r}: unknown column(s) {', '.join(unknown)}"
            problems.append(Problem(where, "", line, reason))
            continue
        out.append(RuleException(exc.name, exc.conditions, exc.reason, exc.rules, where, line))
    return out, problems


@dataclass
class Suppressor:
    """Filters firings through the exceptions, counting each suppression."""

    by_rule: dict[str, list[RuleException]] = field(default_factory=dict)
    allowlist: list[RuleException] = field(default_factory=list)
    # (rule id, exception name) -> matches suppressed; kept across reloads
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    total: int = 0

    def install(self, rules: Iterable[Any], allowlist: list[RuleException]) -> None:
        self.by_rule = {r.id: list(r.exceptions) for r in rules if r.exceptions}
        self.allowlist = allowlist

    def exceptions_for(self, rule_id: str) -> list[RuleException]:
        return self.by_rule.get(rule_id, []) + [e for e in self.allowlist if e.covers(rule_id)]

    def suppressed_by(self, rule_id: str, row: dict[str, Any], record: Any) -> str | None:
        """The name of the first exception that matches, counted; None: it fires."""
        if not self.by_rule and not self.allowlist:
            return None
        for exc in self.exceptions_for(rule_id):
            if exc.matches(row, record):
                key = (rule_id, exc.name)
                count = self.counts[key] = self.counts.get(key, 0) + 1
                self.total += 1
                if count == 1 or count % 1000 == 0:
                    log.info("rule %s: match suppressed by exception %r (%d so far)",
                             rule_id, exc.name, count)  # fmt: skip
                return exc.name
        return None

    def summary(self, rule_id: str) -> dict[str, Any]:
        """For `rules list`: each exception of the rule with its count."""
        rows = [
            {
                "name": e.name,
                "origin": e.origin,
                "suppressed": self.counts.get((rule_id, e.name), 0),
            }
            for e in self.exceptions_for(rule_id)
        ]
        return {"exceptions": rows, "suppressed": sum(r["suppressed"] for r in rows)}
