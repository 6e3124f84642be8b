"""Coverage-guided fuzzing of the rule loader and SQL validator.

    .venv/bin/python tests/fuzz/fuzz_rules.py -runs=100000
    .venv/bin/python tests/fuzz/fuzz_rules.py -max_total_time=600 corpus_dir/

An input is a rule file (first byte even) or a bare query (first byte odd). Loading
never raises: every rule is accepted or becomes a Problem naming the file, line and
reason. Whatever the validator accepts is one read-only SELECT: it compiles in the
sandbox, and running it under a time budget ends with rows, a budget error or a
SQLite error, never a write. Any other exception, an abort or a hang is a finding.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import sqlglot  # noqa: F401  (instrumented: the validator's parser)

    from daemoneye.rules.model import parse_rules_text
    from daemoneye.rules.sandbox import BudgetExceeded, Sandbox
    from daemoneye.rules.validate import Validator

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "rules"
SANDBOX = Sandbox()
VALIDATOR = Validator(SANDBOX)
SQL_SEEDS = [
    "SELECT pid, name FROM processes WHERE name = 'sh'",
    "SELECT parent, count(*) FROM process_events GROUP BY parent HAVING count(*) > 50",
    "ATTACH DATABASE '/tmp/x' AS x",
    "SELECT load_extension('x')",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
    "PRAGMA writable_schema = 1",
]


def seeds() -> list[bytes]:
    files = [b"\x00" + p.read_bytes() for p in sorted(RULES_DIR.glob("*.yml"))]
    return files + [b"\x01" + s.encode() for s in SQL_SEEDS]


def run_accepted(sql: str) -> None:
    """Accepted SQL runs read-only under a budget: rows or a clear error."""
    before = SANDBOX.conn.total_changes
    with contextlib.suppress(BudgetExceeded, sqlite3.Error, ValueError, OverflowError):
        SANDBOX.run(sql, 0.05, 100)
    assert SANDBOX.conn.total_changes == before, f"accepted SQL wrote: {sql!r}"


def one_input(data: bytes) -> None:
    if not data:
        return
    text = data[1:].decode("utf-8", errors="replace")
    if data[0] % 2 == 0:
        rules, problems = parse_rules_text(text, "fuzz.yml")
        for p in problems:
            assert p.path == "fuzz.yml" and p.reason and p.line >= 1, p
        for rule in rules:
            result = VALIDATOR.check(rule)
            if hasattr(result, "reason"):
                assert result.reason, result
            else:
                run_accepted(rule.sql)
    else:
        reason = VALIDATOR.check_sql(text)
        assert reason is None or (isinstance(reason, str) and reason), reason
        if reason is None:
            run_accepted(text)


def main() -> None:
    argv = list(sys.argv)
    if not any(a.startswith("-timeout=") for a in argv):
        argv.append("-timeout=10")  # a hang is a finding, found in seconds
    if not any(a.startswith("-max_total_time=") for a in argv):
        argv.append("-max_total_time=120")  # -runs=N stops at N inputs or 2 minutes
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="fuzz-rules-"))
        for i, seed in enumerate(seeds()):
            (corpus / f"seed{i}").write_bytes(seed)
        argv.append(str(corpus))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
