"""Rules carry their own cases: every shipped rule passes its cases offline and has at
least one `match` and one `no_match`; the runner reports what differs, and bad cases are
named, not crashed on."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemoneye.rules.cases import CaseRunner
from daemoneye.rules.model import parse_rules_text

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "rules"


@pytest.fixture(scope="module")
def shipped() -> object:
    return CaseRunner().run_paths([SHIPPED])


def test_shipped_rules_pass_their_own_cases(shipped) -> None:
    assert shipped.problems == [], [str(p) for p in shipped.problems[:5]]
    assert [str(r) for r in shipped.failed] == []
    assert len(shipped.rules) >= 60


def test_every_shipped_rule_has_both_kinds_of_case(shipped) -> None:
    assert [(rule.id, lacking) for rule, lacking in shipped.missing()] == []


def test_every_shipped_rule_says_what_it_is(shipped) -> None:
    """ATT&CK tags with a tactic, a false-positive note, a description."""
    tactics = {
        "reconnaissance", "resource-development", "initial-access", "execution",
        "persistence", "privilege-escalation", "defense-evasion", "credential-access",
        "discovery", "lateral-movement", "collection", "command-and-control",
        "exfiltration", "impact",
    }  # fmt: skip
    for rule in shipped.rules:
        assert rule.falsepositives, rule.id
        assert rule.description.strip(), rule.id
        assert any(t.startswith("attack.t") for t in rule.tags), rule.id
        assert any(t.removeprefix("attack.") in tactics for t in rule.tags), rule.id


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yml"
    path.write_text(textwrap.dedent(text))
    return path


RULE = """\
id: t-tmp
name: exec from tmp
severity: high
sql: SELECT pid, name, cmdline FROM processes WHERE path LIKE '/tmp/%'
tests:
  - name: from tmp
    expect: match
    process: {path: /tmp/x, cmdline: /tmp/x -d}
  - name: wrong on purpose
    expect: no_match
    process: {path: /tmp/y}
  - expect: no_match
    process: {path: /usr/bin/ls, cmdline: ls -l}
"""


def test_a_differing_case_is_named_with_its_line_and_rows(tmp_path: Path) -> None:
    report = CaseRunner().run_paths([write(tmp_path, RULE)])
    assert [r.ok for r in report.results] == [True, False, True]
    text = str(report.failed[0])
    assert text.startswith(f"{tmp_path / 'r.yml'}:9: rule t-tmp test 2 (wrong on purpose)")
    assert "expected no_match, but it fired on" in text and "name='y'" in text


def test_cmdline_is_split_as_a_shell_would_and_joined_as_the_table_shows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        id: t-c
        name: c
        sql: SELECT pid FROM processes WHERE cmdline = 'bash -c echo a | base64 -d | sh'
        tests:
          - expect: match
            process: {cmdline: "bash -c 'echo a | base64 -d | sh'"}
          - expect: no_match
            process: {cmdline: "bash -c 'echo b'"}
        """,
    )
    report = CaseRunner().run_paths([path])
    assert [r.ok for r in report.results] == [True, True], [str(r) for r in report.results]


def test_parents_context_env_and_repeat(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        id: t-env
        name: preload
        sql: |
          SELECT p.pid FROM processes p WHERE p.env LIKE '%LD_PRELOAD=/tmp/%'
            AND p.parent_name = 'sshd'
        tests:
          - expect: match
            process: {cmdline: ls, env: {LD_PRELOAD: /tmp/x.so}, parent_name: sshd}
          - name: the parent is context, its own match does not count
            expect: no_match
            events:
              - {pid: 900, cmdline: bash, env: "LD_PRELOAD=/tmp/x.so", context: true,
                 parent_name: sshd}
              - {parent: 900, cmdline: ls}
        ---
        id: t-burst
        name: burst
        sql: |
          SELECT session_id, count(*) AS n FROM process_events
          WHERE event = 'start' AND time >= CAST(strftime('%s', 'now') AS INTEGER) - 60
          GROUP BY session_id HAVING count(*) >= 30
        tests:
          - expect: match
            events:
              - {cmdline: "sh -c :", repeat: 30}
          - expect: no_match
            events:
              - {cmdline: "sh -c :", repeat: 29}
              - {cmdline: "sh -c :", ago: 120}
        """,
    )
    report = CaseRunner().run_paths([path])
    assert report.problems == []
    assert [r.ok for r in report.results] == [True, True, True, True], [
        str(r) for r in report.results
    ]


def test_bad_cases_are_errors_that_name_the_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        id: t-bad
        name: bad
        sql: SELECT pid FROM processes WHERE name = 'x'
        tests:
          - expect: match
            process: {nmae: x}
          - expect: no_match
            events:
              - {name: x, repeat: 0}
        """,
    )
    report = CaseRunner().run_paths([path])
    assert [r.got for r in report.results] == ["error", "error"]
    assert "unknown column(s) nmae" in str(report.results[0])
    assert "repeat must be a whole number" in str(report.results[1])


@pytest.mark.parametrize(
    ("tests", "reason"),
    [
        ("tests: {a: 1}", "tests must be a list"),
        ("tests: [{process: {name: x}}]", "test 1: expect must be one of match, no_match"),
        ("tests: [{expect: match}]", "test 1: give either process"),
        ("tests: [{expect: match, events: []}]", "non-empty list"),
        ("tests: [{expect: match, process: {}, when: now}]", "unknown field(s) when"),
        ("falsepositives: {a: 1}", "falsepositives must be"),
    ],
)
def test_malformed_tests_are_rule_problems(tests: str, reason: str) -> None:
    text = f"id: r\nname: r\nsql: SELECT pid FROM processes\n{tests}\n"
    rules, problems = parse_rules_text(text, "r.yml")
    assert rules == [] and len(problems) == 1 and reason in problems[0].reason


def test_the_command_runs_offline_and_exits_1_on_a_difference(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "daemoneye", "rules", "test", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={"PATH": "/usr/bin:/bin", "DAEMONEYE_RUN_DIR": str(tmp_path / "none")},
        )

    out = run(str(SHIPPED), "--strict", "--json")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["ok"] and result["failed"] == [] and result["missing"] == []
    out = run(str(write(tmp_path, RULE)))
    assert out.returncode == 1
    assert "rule t-tmp test 2 (wrong on purpose): expected no_match" in out.stdout
    # a rule with no case of one kind passes, unless --strict
    lone = tmp_path / "lone.yml"
    lone.write_text("id: lone\nname: l\nsql: SELECT pid FROM processes\n")
    assert run(str(lone)).returncode == 0
    out = run(str(lone), "--strict")
    assert out.returncode == 1 and "rule lone: no match and no_match case" in out.stdout
