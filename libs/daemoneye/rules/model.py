"""Rules: the YAML format, loading with line numbers, and the problems loading finds."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemoneye.wire import SEVERITIES

if TYPE_CHECKING:
    import yaml

MAX_RULE_FILE_BYTES = 256 * 1024
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
KNOWN_FIELDS = {
    "id",
    "name",
    "description",
    "severity",
    "sql",
    "enabled",
    "tags",
    "references",
    "interval",
    "author",
    "source",
    "falsepositives",
    "status",
    "tests",
}
TEST_EXPECTATIONS = ("match", "no_match")
KNOWN_FIELDS |= {"dedup_by", "exceptions"}  # alert tuning (exceptions.py)


@dataclass
class Rule:
    id: str
    name: str
    sql: str
    severity: str = "medium"
    description: str = ""
    enabled: bool = True
    tags: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    interval: float | None = None  # seconds, for rules run on a cadence
    path: str = "<inline>"
    sql_line: int = 1  # line of the file where the SQL text starts
    # what a benign host may do that matches too: said to the operator with each alert
    falsepositives: list[str] = field(default_factory=list)
    status: str = ""  # Sigma's maturity (stable, test, experimental...), when imported
    # sample processes and what the rule must do with them (cases.py runs them offline)
    tests: list[dict[str, Any]] = field(default_factory=list)
    test_lines: list[int] = field(default_factory=list)  # the line of each case in the file
    # alert tuning: the output columns that make the dedup key (empty: exe + argv), and
    # named exceptions over the output columns (exceptions.RuleException)
    dedup_by: list[str] = field(default_factory=list)
    exceptions: list[Any] = field(default_factory=list)

    def to_yaml_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "severity": self.severity,
            "enabled": self.enabled,
            "tags": list(self.tags),
        }
        if self.references:
            out["references"] = list(self.references)
        if self.interval is not None:
            out["interval"] = self.interval
        if self.status:
            out["status"] = self.status
        if self.falsepositives:
            out["falsepositives"] = list(self.falsepositives)
        if self.dedup_by:
            out["dedup_by"] = list(self.dedup_by)
        if self.exceptions:
            out["exceptions"] = [e.to_yaml_dict() for e in self.exceptions]
        out["sql"] = self.sql
        if self.tests:
            out["tests"] = list(self.tests)
        return out


@dataclass(frozen=True)
class Problem:
    """One reason a rule is rejected: where (file, rule id, line) and why."""

    path: str
    rule_id: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: rule {self.rule_id or '?'}: {self.reason}"


class RuleError(ValueError):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _sql_line(node: yaml.Node) -> int:
    """1-based line where the SQL text itself starts (block scalars start a line later)."""
    line = node.start_mark.line + 1
    style = getattr(node, "style", None)
    return line + 1 if style in ("|", ">") else line


def _check_tests(tests: Any) -> str | None:
    """What is wrong with a `tests:` list's shape, or None (cases.py checks the columns)."""
    if not isinstance(tests, list):
        return "tests must be a list of cases"
    for n, case in enumerate(tests, 1):
        if not isinstance(case, dict):
            return f"test {n} must be a mapping"
        unknown = sorted(set(map(str, case)) - {"name", "expect", "process", "events"})
        if unknown:
            return f"test {n}: unknown field(s) {', '.join(unknown)}"
        if case.get("expect") not in TEST_EXPECTATIONS:
            return f"test {n}: expect must be one of {', '.join(TEST_EXPECTATIONS)}"
        if ("process" in case) == ("events" in case):
            return f"test {n}: give either process (one row) or events (a sequence)"
        rows = [case["process"]] if "process" in case else case["events"]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            return f"test {n}: process must be a mapping, events a non-empty list of mappings"
    return None


def rule_from_mapping(
    data: Any, path: str, sql_line: int = 1, line: int = 1, lines: dict[str, int] | None = None
) -> Rule:
    """Check the fields of one rule document and build the Rule (`lines`: the line of
    each field, for problems in tuning fields)."""
    rid = str(data.get("id", "")) if isinstance(data, dict) else ""

    def fail(reason: str, at: int = line) -> RuleError:
        return RuleError(Problem(path, rid, at, reason))

    if not isinstance(data, dict):
        raise fail(f"a rule must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(map(str, data)) - KNOWN_FIELDS)
    if unknown:
        raise fail(f"unknown field(s) {', '.join(unknown)}")
    for key in ("id", "name", "sql"):
        if not data.get(key):
            raise fail(f"missing required field {key!r}")
    if not isinstance(data["id"], str) or not ID_PATTERN.match(data["id"]):
        raise fail("id must be 1-128 characters of letters, digits, '_', '.', ':' or '-'")
    if not isinstance(data["sql"], str):
        raise fail("sql must be a string", sql_line)
    severity = str(data.get("severity", "medium")).lower()
    if severity not in SEVERITIES:
        raise fail(f"severity {data.get('severity')!r} is not one of {', '.join(SEVERITIES)}")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail("enabled must be true or false")
    tags = data.get("tags") or []
    refs = data.get("references") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise fail("tags must be a list of strings")
    if not isinstance(refs, list):
        raise fail("references must be a list")
    interval = data.get("interval")
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0
    ):
        raise fail("interval must be a positive number of seconds")
    falsepositives = data.get("falsepositives") or []
    if isinstance(falsepositives, str):
        falsepositives = [falsepositives]
    if not isinstance(falsepositives, list) or not all(isinstance(f, str) for f in falsepositives):
        raise fail("falsepositives must be a text or a list of texts")
    status = data.get("status") or ""
    if not isinstance(status, str):
        raise fail("status must be a text (stable, test, experimental...)")
    tests = data.get("tests") or []
    wrong = _check_tests(tests)
    if wrong:
        raise fail(wrong)
    dedup_by, exceptions = _tuning(data, lines or {}, fail, line)
    return Rule(
        id=data["id"],
        name=str(data["name"]),
        sql=data["sql"],
        severity=severity,
        description=str(data.get("description") or ""),
        enabled=enabled,
        tags=list(tags),
        references=[str(r) for r in refs],
        interval=float(interval) if interval is not None else None,
        path=path,
        sql_line=sql_line,
        falsepositives=list(falsepositives),
        status=status,
        tests=list(tests),
        dedup_by=dedup_by,
        exceptions=exceptions,
    )


def _tuning(data: dict, lines: dict[str, int], fail: Any, line: int) -> tuple[list[str], list]:
    """`dedup_by` and `exceptions` (checked against the SQL's columns by the validator)."""
    from .exceptions import ExceptionError, parse_list

    dedup_by = data.get("dedup_by") or []
    if not isinstance(dedup_by, list) or not all(isinstance(c, str) and c for c in dedup_by):
        raise fail("dedup_by must be a list of output column names", lines.get("dedup_by", line))
    try:
        exceptions = parse_list(data.get("exceptions"), lines.get("exceptions", line), lines)
    except ExceptionError as exc:
        raise fail(exc.reason, exc.line or line) from None
    return list(dedup_by), exceptions


def parse_rules_text(text: str, path: str) -> tuple[list[Rule], list[Problem]]:
    """Every rule document in one YAML text (a file may hold several, separated by ---)."""
    import yaml  # here, not at the top: the detector loads rule files in a child (offload.py)

    rules: list[Rule] = []
    problems: list[Problem] = []
    if len(text.encode()) > MAX_RULE_FILE_BYTES:
        return [], [Problem(path, "", 1, f"file is larger than {MAX_RULE_FILE_BYTES} bytes")]
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        reason = getattr(exc, "problem", None) or str(exc)
        return [], [Problem(path, "", line, f"invalid YAML: {reason}")]
    for node in nodes:
        if node is None:
            continue
        line = node.start_mark.line + 1
        sql_line = line
        test_lines: list[int] = []
        lines: dict[str, int] = {}
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[str(getattr(key, "value", ""))] = key.start_mark.line + 1
                if getattr(key, "value", None) == "exceptions" and isinstance(
                    value, yaml.SequenceNode
                ):  # each exception's own line, for its problems
                    for i, item in enumerate(value.value):
                        lines[f"exceptions.{i}"] = item.start_mark.line + 1
                if getattr(key, "value", None) == "sql":
                    sql_line = _sql_line(value)
                elif getattr(key, "value", None) == "tests" and isinstance(
                    value, yaml.SequenceNode
                ):
                    test_lines = [item.start_mark.line + 1 for item in value.value]
        try:
            data = yaml.SafeLoader(text).construct_document(node)
            rule = rule_from_mapping(data, path, sql_line, line, lines)
            rule.test_lines = test_lines
            rules.append(rule)
        except RuleError as exc:
            problems.append(exc.problem)
        except yaml.YAMLError as exc:
            problems.append(Problem(path, "", line, f"invalid YAML: {exc}"))
    return rules, problems


def load_rule_file(path: Path) -> tuple[list[Rule], list[Problem]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Problem(str(path), "", 1, f"cannot read: {exc}")]
    return parse_rules_text(text, str(path))


def rule_files(paths: Iterable[Path]) -> list[Path]:
    """The .yml/.yaml files named, or found (recursively, sorted) in the directories named."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix in (".yml", ".yaml") and f.is_file())
        else:
            out.append(p)
    return out
