"""Rule validation: hostile and invalid rules are rejected with the right reason, naming
file, rule id and line; valid rules and real osquery queries are accepted."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemoneye.rules.model import Problem, Rule, parse_rules_text
from daemoneye.rules.validate import Validator
from tests.conftest import corpus, daemoneye, needs_corpus

OSQUERY = corpus("osquery-defense-kit")
# the corpus's queries the validator refuses (file stem -> reason): each for a reason
# that holds of the query itself, so any other refusal, or one of these accepted, shows
REJECTED = {
    "3-pid-hidden-by-rootkit": "recursive CTEs (WITH RECURSIVE) are not allowed",
    "1-unexpected-fetcher-parents": "ambiguous column name: parent_name",
    "process_events": "ambiguous column name: parent_path",
}


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator()


def reason_of(validator: Validator, sql: str) -> str:
    result = validator.check(Rule(id="r1", name="t", sql=sql, path="rules/t.yml"))
    assert isinstance(result, Problem), f"accepted: {sql!r}"
    assert result.path == "rules/t.yml" and result.rule_id == "r1"
    return result.reason


HOSTILE = [
    # statements other than one SELECT
    ("DELETE FROM processes", "only a SELECT"),
    ("INSERT INTO processes (pid) VALUES (1)", "only a SELECT"),
    ("UPDATE processes SET name = 'x'", "only a SELECT"),
    ("DROP TABLE processes", "only a SELECT"),
    ("CREATE TABLE x (a)", "only a SELECT"),
    ("CREATE TEMP VIEW v AS SELECT 1", "only a SELECT"),
    ("ALTER TABLE processes ADD COLUMN x", "only a SELECT"),
    ("PRAGMA writable_schema = 1", "only a SELECT"),
    ("PRAGMA table_info(processes)", "only a SELECT"),
    ("ATTACH DATABASE '/tmp/x.db' AS x", "only a SELECT"),
    ("DETACH DATABASE x", "only a SELECT"),
    ("VACUUM", "only a SELECT"),
    ("BEGIN TRANSACTION", "only a SELECT"),
    ("REINDEX processes", "only a SELECT"),
    ("ANALYZE", "only a SELECT"),
    ("SELECT 1; SELECT 2", "exactly one statement"),
    ("SELECT pid FROM processes; DELETE FROM processes", "exactly one statement"),
    ("", "empty"),
    ("   ", "empty"),
    # forbidden functions
    ("SELECT load_extension('/tmp/evil.so')", "load_extension"),
    ("SELECT readfile('/etc/shadow')", "readfile"),
    ("SELECT writefile('/tmp/x', 'data')", "writefile"),
    ("SELECT randomblob(1000000000)", "randomblob"),
    ("SELECT zeroblob(1000000000)", "zeroblob"),
    ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),
    ("SELECT sqlite_version()", "sqlite_version"),
    ("SELECT edit('x')", "edit"),
    ("SELECT shell('id')", "not in the allow-list"),
    ("SELECT system('id')", "not in the allow-list"),
    ("SELECT pid FROM processes WHERE my_udf(name)", "not in the allow-list"),
    # system tables, unknown tables, schema tricks
    ("SELECT * FROM sqlite_master", "system table"),
    ("SELECT * FROM sqlite_schema", "system table"),
    ("SELECT * FROM sqlite_temp_master", "system table"),
    ("SELECT name FROM main.processes", "schema-qualified"),
    ("SELECT * FROM temp.processes", "schema-qualified"),
    ("SELECT * FROM secrets", "unknown table"),
    ("SELECT * FROM pragma_table_info('processes')", "table-valued"),
    ("SELECT * FROM json_each('[1]')", "table-valued"),
    ("SELECT * FROM processes p JOIN sqlite_master m ON 1", "system table"),
    ("SELECT (SELECT sql FROM sqlite_master) FROM processes", "system table"),
    # unknown columns
    ("SELECT password FROM processes", "unknown column"),
    ("SELECT processes.nope FROM processes", "unknown column processes.nope"),
    ("SELECT p.nope FROM processes p", "no such column"),
    # recursion and parameters
    (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
        "recursive",
    ),
    ("SELECT pid FROM processes WHERE pid = ?", "parameters"),
    ("SELECT pid FROM processes WHERE pid = :pid", "parameters"),
    # regular expressions run outside SQLite's budget: literal, valid, no backtracking traps
    ("SELECT pid FROM processes WHERE regex_match(name, cmdline, 0) IS NULL", "string literal"),
    ("SELECT pid FROM processes WHERE cmdline REGEXP name", "string literal"),
    ("SELECT pid FROM processes WHERE regex_match(cmdline, '(a+)+$', 0)", "nested quantifiers"),
    ("SELECT pid FROM processes WHERE cmdline REGEXP '([a-z]+.)+com'", "nested quantifiers"),
    ("SELECT pid FROM processes WHERE regex_match(path, '(unclosed', 0)", "invalid regular"),
    # syntax and size
    ("SELECT FROM WHERE", "syntax error"),
    ("SELECT pid FROM processes WHERE (pid = 1", "syntax error"),
    ("SELEC pid FROM processes", "syntax error"),
    ("SELECT 'unterminated FROM processes", "syntax error"),
    ("SELECT " + " + ".join(["pid"] * 30_000) + " FROM processes", "longer than"),
    ("SELECT 1\x00", "NUL"),
]


@pytest.mark.parametrize(("sql", "reason"), HOSTILE, ids=[r for _, r in HOSTILE])
def test_hostile_sql_is_rejected_with_the_reason(
    validator: Validator, sql: str, reason: str
) -> None:
    assert reason.lower() in reason_of(validator, sql).lower()


def test_there_are_forty_plus_hostile_cases() -> None:
    assert len(HOSTILE) >= 40


def test_deep_nesting_is_rejected_not_crashing(validator: Validator) -> None:
    sql = "SELECT " + "(" * 400 + "1" + ")" * 400
    assert "nest" in reason_of(validator, sql) or "deep" in reason_of(validator, sql)


VALID = [
    "SELECT pid, name FROM processes WHERE path LIKE '/tmp/%'",
    "SELECT * FROM processes p JOIN processes pp ON p.parent = pp.pid WHERE pp.name = 'nginx'",
    "SELECT parent, count(*) AS n FROM process_events GROUP BY parent HAVING count(*) > 50",
    "WITH shells AS (SELECT pid FROM processes WHERE name = 'bash') SELECT * FROM shells",
    "SELECT regex_match(path, '.*/(.*)', 1) AS base, split(cmdline, ' ', 0) FROM processes",
    "SELECT concat(name, '-', pid), coalesce(cwd, ''), lower(upper(name)) FROM processes",
    "SELECT u.username, p.pid FROM processes p LEFT JOIN users u ON p.uid = u.uid",
    "SELECT h.sha256 FROM processes p JOIN hash h ON p.path = h.path",
    "SELECT f.mode FROM processes p JOIN file f ON p.path = f.path WHERE f.mode LIKE '%7'",
    "SELECT pos.remote_port FROM process_open_sockets pos JOIN processes p ON p.pid = pos.pid",
    "SELECT pid FROM processes WHERE start_time > strftime('%s', 'now') - 60",
    "SELECT pid FROM processes UNION SELECT pid FROM process_events",
    'SELECT pid FROM process_events WHERE syscall = "execve"',  # osquery's double quotes
    "SELECT pid, CASE WHEN uid = 0 THEN 'root' ELSE 'user' END FROM processes",
    "SELECT pid FROM processes WHERE cmdline REGEXP 'nc -e'",
]


@pytest.mark.parametrize("sql", VALID)
def test_valid_sql_is_accepted(validator: Validator, sql: str) -> None:
    result = validator.check(Rule(id="ok", name="ok", sql=sql))
    assert not isinstance(result, Problem), result


def test_rule_file_problems_name_file_rule_and_line(validator: Validator, tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        id: good
        name: fine
        sql: SELECT pid FROM processes
        ---
        id: bad-fn
        name: bad
        severity: high
        sql: |
          SELECT pid
          FROM processes
          WHERE readfile(path) IS NOT NULL
        ---
        id: bad-sev
        name: x
        severity: apocalyptic
        sql: SELECT 1
        ---
        name: missing id
        sql: SELECT 1
        """
    )
    path = tmp_path / "mixed.yml"
    path.write_text(text)
    checked, problems = validator.load([path])
    assert [c.rule.id for c in checked] == ["good"]
    by_id = {p.rule_id: p for p in problems}
    assert by_id["bad-fn"].line == 11 and "readfile" in by_id["bad-fn"].reason
    assert str(by_id["bad-fn"]).startswith(f"{path}:11: rule bad-fn:")
    assert "severity" in by_id["bad-sev"].reason
    assert "missing required field 'id'" in by_id[""].reason


def test_duplicate_ids_and_bad_yaml(validator: Validator, tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("id: same\nname: a\nsql: SELECT 1\n")
    (tmp_path / "b.yml").write_text("id: same\nname: b\nsql: SELECT 2\n")
    (tmp_path / "c.yml").write_text("id: [unclosed\nname: x\n")
    (tmp_path / "d.yml").write_text("id: x\nname: y\nsql: SELECT 1\nrm_rf: true\n")
    checked, problems = validator.load([tmp_path])
    reasons = " | ".join(str(p) for p in problems)
    assert len(checked) == 1
    assert "duplicate id" in reasons and "invalid YAML" in reasons and "unknown field" in reasons


def test_parse_rules_text_rejects_non_mapping() -> None:
    rules, problems = parse_rules_text("- just\n- a list\n", "x.yml")
    assert not rules and "mapping" in problems[0].reason


# --- hypothesis: hostile variants ------------------------------------------------------

WRITES = ["DELETE FROM processes", "DROP TABLE users", "PRAGMA query_only = 0"]
WRITES += ["ATTACH ':memory:' AS x", "INSERT INTO file (path) VALUES ('x')"]
BAD_FUNCS = ["load_extension", "readfile", "writefile", "randomblob", "zeroblob", "edit"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stmt=st.sampled_from(WRITES),
    lead=st.sampled_from(
        ["SELECT 1", "SELECT pid FROM processes", "WITH a AS (SELECT 1) SELECT 2"]
    ),
    ws=st.sampled_from([" ", "\n", "\t", "  /* c */ ", " -- c\n"]),
    upper=st.booleans(),
)
def test_hypothesis_stacked_statements_rejected(
    validator: Validator, stmt: str, lead: str, ws: str, upper: bool
) -> None:
    sql = f"{lead};{ws}{stmt.upper() if upper else stmt}"
    reason = reason_of(validator, sql)
    assert "exactly one statement" in reason or "only a SELECT" in reason or "syntax" in reason


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fn=st.sampled_from(BAD_FUNCS),
    case=st.sampled_from([str.lower, str.upper, str.title]),
    where=st.sampled_from(["select", "where", "subquery", "cte", "having", "order"]),
)
def test_hypothesis_forbidden_functions_anywhere(
    validator: Validator, fn: str, case, where: str
) -> None:
    call = f"{case(fn)}('x')"
    sql = {
        "select": f"SELECT {call} FROM processes",
        "where": f"SELECT pid FROM processes WHERE {call} IS NULL",
        "subquery": f"SELECT pid FROM processes WHERE pid IN (SELECT {call})",
        "cte": f"WITH c AS (SELECT {call} AS v) SELECT v FROM c",
        "having": f"SELECT parent FROM processes GROUP BY parent HAVING {call}",
        "order": f"SELECT pid FROM processes ORDER BY {call}",
    }[where]
    assert fn in reason_of(validator, sql).lower()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True))
def test_hypothesis_unknown_tables_rejected(validator: Validator, table: str) -> None:
    from daemoneye.rules.tables import TABLES

    if table in TABLES:
        return
    reason = reason_of(validator, f'SELECT * FROM "{table}"')
    assert "table" in reason.lower()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_hypothesis_arbitrary_text_never_crashes(validator: Validator, text: str) -> None:
    result = validator.check(Rule(id="fuzz", name="fuzz", sql=text))
    if not isinstance(result, Problem):
        # whatever got through must really be a read-only query that SQLite compiles
        assert validator.sandbox.compile_error(text) is None


# --- osquery corpus ------------------------------------------------------------------


@needs_corpus("osquery-defense-kit")
def test_osquery_corpus_validates_and_runs(validator: Validator) -> None:
    files = sorted(OSQUERY.rglob("*.sql"))
    assert len(files) == 47
    rejected = {}
    for f in files:
        rule = Rule(id=f.stem.replace("_", "-"), name=f.stem, sql=f.read_text(), path=str(f))
        result = validator.check(rule)
        if isinstance(result, Problem):
            rejected[f.stem] = result.reason
            continue
        validator.sandbox.run(rule.sql, budget_s=5.0, max_rows=10)  # must not raise
    assert set(rejected) == set(REJECTED), rejected
    for stem, reason in REJECTED.items():
        assert reason in rejected[stem], (stem, rejected[stem])


@needs_corpus("osquery-defense-kit")
def test_osquery_corpus_wrapped_as_rule_files_through_the_cli(tmp_path: Path) -> None:

    import yaml

    for f in sorted(OSQUERY.rglob("*.sql")):
        rule = {"id": f"osq-{f.stem.replace('_', '-')}", "name": f.stem, "sql": f.read_text()}
        (tmp_path / f"{f.parent.name}-{f.stem}.yml").write_text(yaml.safe_dump(rule))
    run = daemoneye("rules", "validate", str(tmp_path), timeout=300)
    problems = run.stdout.splitlines()
    assert run.returncode == 1
    assert f"{47 - len(REJECTED)} valid rule(s), {len(REJECTED)} problem(s)" in run.stderr
    assert len(problems) == len(REJECTED), problems
    for line in problems:  # file:line: rule id: reason
        assert line.startswith(str(tmp_path)) and ": rule osq-" in line
        assert any(f"-{stem}.yml:" in line and reason in line for stem, reason in REJECTED.items())
