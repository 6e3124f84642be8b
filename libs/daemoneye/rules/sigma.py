"""Import of Sigma `process_creation` rules into DaemonEye rules (pySigma + its SQLite
backend), with the field mapping onto the `processes` table.

Each converted rule is validated like any hand-written one; a Sigma rule that cannot
be converted (another log source, an unmapped field, a modifier the backend does not
support) is reported with its file and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .model import SEVERITIES, Problem, Rule, rule_from_mapping
from .validate import Validator

FIELD_MAP = {
    "Image": "path",
    "CommandLine": "cmdline",
    "ParentImage": "parent_path",
    "ParentCommandLine": "parent_cmdline",
    "User": "username",
    "CurrentDirectory": "cwd",
    "ProcessId": "pid",
    "ParentProcessId": "parent",
    "LogonId": "auid",
}
LEVELS = {"informational": "info", "low": "low", "medium": "medium", "high": "high"}
LEVELS["critical"] = "critical"
# Sigma's maturity, from the most to the least trusted
STATUSES = ("stable", "test", "experimental", "deprecated", "unsupported")
ATTRIBUTION = (
    "# Detection logic from the Sigma project (https://github.com/SigmaHQ/sigma), licensed\n"
    "# under the Detection Rule License (DRL) 1.1\n"
    "# (https://github.com/SigmaHQ/Detection-Rule-License).\n"
)


@dataclass
class Converted:
    source: Path
    rule: Rule
    author: str = ""


@dataclass
class Skipped:
    """A rule left out by the importer's filters (not a problem: a choice)."""

    source: Path
    rule_id: str
    reason: str


def _backend() -> Any:
    from sigma.backends.sqlite import sqliteBackend
    from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
    from sigma.processing.transformations import FieldMappingTransformation

    pipeline = ProcessingPipeline(
        name="daemoneye processes",
        priority=20,
        items=[
            ProcessingItem(
                identifier="daemoneye-field-mapping",
                transformation=FieldMappingTransformation(FIELD_MAP),
            )
        ],
    )
    return sqliteBackend(pipeline, collect_errors=True, table="processes")


class SigmaImporter:
    """`min_level` (a DaemonEye severity) and `statuses` (Sigma statuses) keep Sigma's own
    judgement: rules below the level or of another maturity are skipped, and counted."""

    def __init__(
        self,
        validator: Validator | None = None,
        min_level: str | None = None,
        statuses: tuple[str, ...] | None = None,
    ) -> None:
        self.validator = validator or Validator()
        self.backend = _backend()
        if min_level is not None and min_level not in SEVERITIES:
            raise ValueError(f"min level {min_level!r} is not one of {', '.join(SEVERITIES)}")
        unknown = sorted(set(statuses or ()) - set(STATUSES))
        if unknown:
            raise ValueError(f"status {unknown[0]!r} is not one of {', '.join(STATUSES)}")
        self.min_level = min_level
        self.statuses = statuses
        self.skipped: list[Skipped] = []

    def _filtered(self, sigma_rule: Any, path: Path, rid: str) -> bool:
        severity = LEVELS.get(_level(sigma_rule), "medium")
        status = _status(sigma_rule)
        if self.min_level and SEVERITIES.index(severity) < SEVERITIES.index(self.min_level):
            self.skipped.append(Skipped(path, rid, f"level {severity} below {self.min_level}"))
            return True
        if self.statuses is not None and status not in self.statuses:
            shown = status or "none"
            self.skipped.append(
                Skipped(path, rid, f"status {shown} not in {','.join(self.statuses)}")
            )
            return True
        return False

    def convert_file(self, path: Path) -> tuple[list[Converted], list[Problem]]:
        from sigma.collection import SigmaCollection
        from sigma.exceptions import SigmaError

        path = Path(path)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
            collection = SigmaCollection.from_yaml(text, collect_errors=True)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, SigmaError) as exc:
            return [], [Problem(where, "", 1, f"cannot read Sigma rule: {exc}")]
        out: list[Converted] = []
        problems: list[Problem] = []
        for sigma_rule in collection.rules:
            rid = str(sigma_rule.id or path.stem)
            errors = list(getattr(sigma_rule, "errors", []) or [])
            if errors:
                problems.append(Problem(where, rid, 1, f"invalid Sigma rule: {errors[0]}"))
                continue
            if self._filtered(sigma_rule, path, rid):
                continue
            category = sigma_rule.logsource.category
            if category != "process_creation":
                reason = f"log source category {category!r} is not process_creation"
                problems.append(Problem(where, rid, 1, f"cannot convert: {reason}"))
                continue
            try:
                queries = self.backend.convert_rule(sigma_rule)
            except SigmaError as exc:
                problems.append(Problem(where, rid, 1, f"cannot convert: {exc}"))
                continue
            if self.backend.errors:
                _, exc = self.backend.errors[-1]
                self.backend.errors.clear()
                problems.append(Problem(where, rid, 1, f"cannot convert: {exc}"))
                continue
            if len(queries) != 1 or not isinstance(queries[0], str):
                problems.append(Problem(where, rid, 1, f"cannot convert: {len(queries)} queries"))
                continue
            rule = self._rule(sigma_rule, rid, queries[0], where)
            checked = self.validator.check(rule)
            if isinstance(checked, Problem):
                reason = f"converted SQL is not a valid rule: {checked.reason}"
                problems.append(Problem(where, rid, 1, reason))
                continue
            out.append(Converted(path, rule, str(sigma_rule.author or "")))
        return out, problems

    def _rule(self, sigma_rule: Any, rid: str, sql: str, where: str) -> Rule:
        data = {
            "id": rid,
            "name": str(sigma_rule.title or rid),
            "description": (sigma_rule.description or "").strip(),
            "severity": LEVELS.get(_level(sigma_rule), "medium"),
            "status": _status(sigma_rule),
            "enabled": True,
            "tags": [f"{t.namespace}.{t.name}" for t in sigma_rule.tags or []] + ["sigma"],
            "references": [str(r) for r in sigma_rule.references or []],
            "falsepositives": [str(f) for f in sigma_rule.falsepositives or []],
            "sql": sql,
        }
        return rule_from_mapping(data, where)


def _level(sigma_rule: Any) -> str:
    level = getattr(sigma_rule.level, "name", None) or str(sigma_rule.level or "medium")
    return level.lower()


def _status(sigma_rule: Any) -> str:
    status = getattr(sigma_rule.status, "name", None) or str(sigma_rule.status or "")
    return status.lower()


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def rule_yaml(rule: Rule, source: Path | None = None, author: str = "") -> str:
    head = f"# Converted from Sigma rule {source.name} by `daemoneye rules import-sigma`.\n"
    if author:
        head += f"# Sigma rule author(s): {author}\n"
    head += ATTRIBUTION
    body = yaml.dump(
        rule.to_yaml_dict(), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )
    return (head if source else "") + body


def write_rules(converted: list[Converted], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for item in converted:
        target = directory / f"sigma-{item.source.stem}.yml"
        target.write_text(rule_yaml(item.rule, item.source, item.author), encoding="utf-8")
        written.append(target)
    return written
