"""Rule exceptions and the allowlist: checked at load with file and line, each
suppression counted per rule and exception, a near miss still fires; and the
proposal `rules except --from-alert` prints is a valid exception."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from daemoneye.console.common import CommandError
from daemoneye.console.rules_except import proposal
from daemoneye.rules.engine import Engine
from daemoneye.rules.exceptions import check_columns, load_allowlist, parse_list
from daemoneye.rules.live import EventIn
from daemoneye.rules.model import parse_rules_text
from daemoneye.rules.validate import ALL_COLUMNS, Validator
from daemoneye.services.detector.tuning import Tuning

RULE = """\
id: tmp-exec
name: exec from tmp
severity: high
sql: SELECT pid, name, path, cmdline, username FROM processes WHERE path LIKE '/tmp/%'
exceptions:
  - name: build cache
    reason: the CI job runs its own tools from /tmp/build
    match:
      path: {prefix: [/tmp/build/, /tmp/cache/]}
      username: [ci, builder]
  - name: installer
    match:
      cmdline: {glob: "/tmp/install-* --quiet"}
"""


def rec(pid: int, path: str, argv: list[str], user: str = "ci") -> dict:
    return {"pid": pid, "ppid": 1, "startTicks": pid, "startTime": time.time(),
            "exePath": path, "name": path.rsplit("/", 1)[-1], "cmdline": argv,
            "username": user}  # fmt: skip


def loaded(text: str, tmp_path: Path, allowlist: str | None = None) -> tuple[Engine, Tuning, list]:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "r.yml").write_text(text)
    engine = Engine()
    _, problems = engine.load_paths([rules_dir])
    configured = None
    if allowlist is not None:
        configured = tmp_path / "allow.yml"
        configured.write_text(allowlist)
    tuning = Tuning()
    problems += tuning.install(engine, configured, rules_dir)
    return engine, tuning, problems


def test_an_exception_suppresses_its_match_counts_it_and_a_near_miss_fires(tmp_path) -> None:
    engine, tuning, problems = loaded(RULE, tmp_path)
    assert not problems
    firings, _ = engine.apply(
        [
            EventIn("start", rec(10, "/tmp/build/cc", ["/tmp/build/cc", "-O2"])),  # excepted
            EventIn("start", rec(11, "/tmp/cache/ld", ["/tmp/cache/ld"], user="builder")),
            EventIn("start", rec(12, "/tmp/install-x", ["/tmp/install-x", "--quiet"], "ann")),
            EventIn("start", rec(13, "/tmp/builder/cc", ["/tmp/builder/cc"])),  # near miss
            EventIn("start", rec(14, "/tmp/build/cc", ["/tmp/build/cc"], user="ann")),  # miss
        ]
    )
    kept = tuning.keep(firings)
    assert sorted(f.row["pid"] for f in kept) == [13, 14]
    summary = tuning.summary(engine.rules["tmp-exec"])
    assert summary["suppressed"] == 3
    assert {e["name"]: e["suppressed"] for e in summary["exceptions"]} == {
        "build cache": 2,
        "installer": 1,
    }
    assert tuning.suppressor.total == 3


@pytest.mark.parametrize(
    ("snippet", "line", "reason"),
    [
        ("exceptions:\n  - name: a\n    match: {path: {regex: x}}\n", 5,
         "give one of equals, prefix, glob"),
        ("exceptions:\n  - match: {path: /x}\n", 5, "needs a name"),
        ("exceptions:\n  - name: a\n    match: {parent_name: sshd}\n", 5,
         "column(s) parent_name not in the rule's output"),
        ("exceptions:\n  - name: a\n    match: {path: /a}\n  - name: a\n    match: {path: /b}\n",
         7, "exception names must be unique"),
        ("exceptions:\n  - name: a\n    match: {path: []}\n", 5, "needs at least one value"),
        ("exceptions:\n  - name: a\n    match: {path: /a}\n    when: now\n", 5,
         "unknown field(s) when"),
        ("dedup_by: [cwd]\n", 3, "dedup_by column(s) cwd not in the rule's output"),
    ],
)  # fmt: skip
def test_bad_tuning_is_rejected_at_load_with_file_line_and_reason(
    tmp_path: Path, snippet: str, line: int, reason: str
) -> None:
    text = "id: r\nname: R\nsql: SELECT pid, path, cmdline FROM processes\n" + snippet
    path = tmp_path / "r.yml"
    path.write_text(text)
    checked, problems = Validator().load([path])
    assert not checked and len(problems) == 1
    problem = problems[0]
    assert (problem.path, problem.rule_id, problem.line) == (str(path), "r", line)
    assert reason in problem.reason, problem.reason


def test_the_allowlist_covers_rules_by_glob_and_reads_columns_from_the_process(
    tmp_path: Path,
) -> None:
    allow = (
        "- name: backup host tools\n"
        "  rules: ['tmp-*']\n"
        "  match:\n"
        "    path: /tmp/backup/agent\n"
        "- name: for another rule\n"
        "  rules: [other]\n"
        "  match: {path: /tmp/never}\n"
    )
    bare = "id: tmp-exec\nname: x\nsql: SELECT pid FROM processes WHERE path LIKE '/tmp/%'\n"
    engine, tuning, problems = loaded(bare, tmp_path, allow)
    assert not problems
    firings, _ = engine.apply(
        [
            EventIn("start", rec(20, "/tmp/backup/agent", ["/tmp/backup/agent"])),
            EventIn("start", rec(21, "/tmp/never", ["/tmp/never"])),
        ]
    )
    # the rule outputs only pid: `path` comes from the alert's process
    assert [f.row["pid"] for f in tuning.keep(firings)] == [21]
    summary = tuning.summary(engine.rules["tmp-exec"])
    assert summary["exceptions"] == [
        {"name": "backup host tools", "origin": str(tmp_path / "allow.yml"), "suppressed": 1}
    ]


def test_a_bad_allowlist_entry_is_named_and_the_others_apply(tmp_path: Path) -> None:
    path = tmp_path / "allow.yml"
    path.write_text(
        "- name: good\n  match: {path: /x}\n"
        "- name: bad\n  match: {no_such_column: 1}\n"
        "- name: worse\n  rules: 7\n  match: {path: /y}\n"
    )
    entries, problems = load_allowlist(path, set(ALL_COLUMNS))
    assert [e.name for e in entries] == ["good"]
    assert [(p.line, p.reason) for p in problems] == [
        (3, "allowlist: exception 'bad': unknown column(s) no_such_column"),
        (5, "allowlist: exception 'worse': rules must be a list of rule ids or globs"),
    ]
    missing = Tuning().install(Engine(), tmp_path / "nope.yml", tmp_path)
    assert "allowlist: file does not exist" in missing[0].reason


def test_a_proposal_from_an_alert_is_a_valid_exception_of_its_rule() -> None:
    row = {"pid": 4242, "name": "tar", "path": "/usr/bin/tar",
           "cmdline": "tar -czf /backup/etc.tgz /etc", "username": "root"}  # fmt: skip
    alert = {"key": 17, "ruleId": "tmp-exec", "rowJson": json.dumps(row),
             "process": {"exePath": "/usr/bin/tar"}}  # fmt: skip
    text = proposal(alert)
    assert text.startswith("# exception for rule tmp-exec, from alert 17\n")
    data = yaml.safe_load(text)
    (exc,) = parse_list(data["exceptions"])
    assert "pid" not in exc.columns()  # a pid changes with every run
    assert exc.columns() == {"path", "cmdline", "name", "username"}
    assert check_columns([exc], set(row)) is None
    assert exc.matches(row, None) and not exc.matches({**row, "path": "/bin/tar"}, None)
    with pytest.raises(CommandError, match="no stable column"):
        proposal({**alert, "rowJson": json.dumps({"pid": 1, "count": 3})})
    rules, problems = parse_rules_text(RULE, "r.yml")
    assert not problems and rules[0].to_yaml_dict()["exceptions"][1]["name"] == "installer"


def test_rules_validate_checks_the_allowlist_beside_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemoneye.console.cli import main

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yml").write_text("id: r\nname: R\nsql: SELECT pid FROM processes\n")
    assert main(["rules", "validate", str(rules), "--quiet"]) == 0
    (tmp_path / "allowlist.yml").write_text("- name: bad\n  match: {nope: 1}\n")
    assert main(["rules", "validate", str(rules), "--quiet"]) == 1
    assert "allowlist.yml:1: rule ?: allowlist: exception 'bad': unknown column(s) nope" in (
        capsys.readouterr().out
    )
