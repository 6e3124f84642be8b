"""Rule SQL validation: sqlglot checks the shape, then SQLite compiles it under the
sandbox's authorizer (which has the last word on tables, columns and functions).

Every rejection is a `Problem` naming the file, the rule id, the line and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from .functions import ALLOWED_FUNCTIONS, FORBIDDEN_FUNCTIONS, MAX_PATTERN
from .model import Problem, Rule, load_rule_file, rule_files
from .sandbox import Sandbox
from .tables import ALL_COLUMNS, TABLES

MAX_SQL_BYTES = 64 * 1024
MAX_NODES = 20_000
MAX_DEPTH = 200
SYSTEM_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
# sqlglot parses these statement kinds; none may appear anywhere in a rule.
FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, n)
    for n in (
        "Insert",
        "Update",
        "Delete",
        "Create",
        "Drop",
        "Alter",
        "Command",
        "Pragma",
        "Attach",
        "Detach",
        "Transaction",
        "Commit",
        "Rollback",
        "Merge",
        "Set",
        "Use",
        "Analyze",
        "Copy",
        "LoadData",
    )
    if hasattr(exp, n)
)
QUERY_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except)


@dataclass
class Checked:
    """A rule that passed: its parsed tree (used for planning incremental runs)."""

    rule: Rule
    tree: exp.Expression


class SqlRejected(Exception):
    def __init__(self, reason: str, needle: str | None = None, line: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.needle = needle
        self.line = line


def line_of(sql: str, needle: str | None) -> int:
    """1-based line of the first occurrence of `needle` (case-insensitive) in the SQL."""
    if not needle:
        return 1
    m = re.search(re.escape(needle), sql, re.IGNORECASE)
    return sql.count("\n", 0, m.start()) + 1 if m else 1


def problem_for(rule: Rule, exc: SqlRejected) -> Problem:
    line = exc.line if exc.line is not None else line_of(rule.sql, exc.needle)
    return Problem(rule.path, rule.id, rule.sql_line + line - 1, exc.reason)


def check_sql(sql: str) -> exp.Expression:
    """The sqlglot half: raise SqlRejected with a reason, or return the parsed tree."""
    if not sql.strip():
        raise SqlRejected("the SQL is empty")
    if len(sql.encode()) > MAX_SQL_BYTES:
        raise SqlRejected(f"the SQL is longer than {MAX_SQL_BYTES} bytes")
    if "\x00" in sql:
        raise SqlRejected("the SQL contains a NUL byte")
    try:
        statements = [s for s in sqlglot.parse(sql, read="sqlite") if s is not None]
    except ParseError as exc:
        err = exc.errors[0] if exc.errors else {}
        desc = str(err.get("description") or exc).split("\n")[0]
        raise SqlRejected(f"SQL syntax error: {desc}", line=err.get("line") or 1) from None
    except TokenError as exc:
        raise SqlRejected(f"SQL syntax error: {exc}") from None
    except RecursionError:
        raise SqlRejected(f"the SQL nests deeper than the parser allows (> {MAX_DEPTH})") from None
    if len(statements) != 1:
        raise SqlRejected(f"exactly one statement is allowed, found {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, QUERY_ROOTS):
        kind = type(tree).__name__.upper()
        raise SqlRejected(f"only a SELECT is allowed, not {kind}", needle=sql.split()[0])
    _check_tree(tree)
    return tree


def _check_tree(tree: exp.Expression) -> None:
    cte_names: set[str] = set()
    aliases: set[str] = set()
    for count, node in enumerate(tree.walk(), 1):
        if count > MAX_NODES:
            raise SqlRejected(f"the SQL is too large (more than {MAX_NODES} syntax nodes)")
        if node.depth > MAX_DEPTH:
            raise SqlRejected(f"the SQL nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, FORBIDDEN_NODES):
            word = type(node).__name__.upper()
            raise SqlRejected(f"{word} is not allowed in a rule", needle=word)
        if isinstance(node, exp.With):
            if node.args.get("recursive"):
                raise SqlRejected("recursive CTEs (WITH RECURSIVE) are not allowed", "recursive")
            cte_names |= {c.alias_or_name.lower() for c in node.expressions}
        elif isinstance(node, exp.TableAlias):
            aliases.add(node.name.lower())
            aliases |= {c.name.lower() for c in node.columns}
        elif isinstance(node, exp.Alias):
            aliases.add(node.alias.lower())
        elif isinstance(node, exp.Placeholder | exp.Parameter):
            raise SqlRejected("parameters (?, :name, $name) are not allowed", "?")
    for node in tree.find_all(exp.Table):
        _check_table(node, cte_names)
    for node in tree.find_all(exp.Func):
        _check_function(node)
    for node in tree.find_all(exp.Column):
        _check_column(node, aliases, cte_names)


def _check_table(node: exp.Table, cte_names: set[str]) -> None:
    if not isinstance(node.this, exp.Identifier):
        name = node.this.sql() if node.this else "?"
        raise SqlRejected(f"table-valued functions are not allowed ({name})", needle=name[:20])
    name = node.name.lower()
    if node.args.get("db") or node.args.get("catalog"):
        raise SqlRejected(f"schema-qualified table {node.sql()} is not allowed", needle=node.name)
    if name in SYSTEM_TABLES:
        raise SqlRejected(f"system table {name} is not allowed", needle=name)
    if name not in TABLES and name not in cte_names:
        known = ", ".join(sorted(TABLES))
        raise SqlRejected(f"unknown table {node.name!r} (known: {known})", needle=node.name)


def _function_names(node: exp.Func) -> list[str]:
    if isinstance(node, exp.Anonymous):
        return [str(node.this).lower()]
    names = [n.lower() for n in type(node).sql_names()]
    return names or [node.key.lower()]


def _check_function(node: exp.Func) -> None:
    """Calls sqlglot does not know must be allowed by name; the ones it does know are
    standard SQL, and SQLite's authorizer checks the exact name they compile to."""
    names = _function_names(node)
    shown = names[0]
    if any(n in FORBIDDEN_FUNCTIONS for n in names):
        raise SqlRejected(f"function {shown}() is forbidden", needle=shown)
    if isinstance(node, exp.Anonymous) and shown not in ALLOWED_FUNCTIONS:
        raise SqlRejected(f"function {shown}() is not in the allow-list", needle=shown)
    if isinstance(node, exp.RegexpLike):
        _check_pattern("REGEXP", node.expression)
    elif isinstance(node, exp.Anonymous) and shown in ("regex_match", "regex_split", "regexp"):
        args = node.expressions
        _check_pattern(shown, args[0] if shown == "regexp" else (args[1:2] or [None])[0])


# A group holding an unbounded quantifier, itself unboundedly quantified: (a+)+,
# (\w*)*, (x+){2,} -- exponential backtracking. Bounded repeats ({2,20}) are fine.
NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*](?:[^()]*)\)(?:[+*]|\{\d*,\})")


def _check_pattern(fn: str, pattern: exp.Expression | None) -> None:
    """Regular expressions run in Python, out of reach of SQLite's budget: they must be
    literals (never process data, which an attacker controls), compile, and have no
    nested quantifiers (catastrophic backtracking)."""
    if isinstance(pattern, exp.Literal) and pattern.is_string:
        text = pattern.this
    elif (  # "..." that names no column: SQLite (and osquery) read it as a string
        isinstance(pattern, exp.Column)
        and pattern.this.quoted
        and not pattern.table
        and pattern.name.lower() not in ALL_COLUMNS
    ):
        text = pattern.name
    else:
        raise SqlRejected(f"{fn}: the pattern must be a string literal", needle=fn)
    try:
        re.compile(text)
    except re.error as exc:
        raise SqlRejected(f"{fn}: invalid regular expression {text!r}: {exc}", needle=fn) from None
    if len(text) > MAX_PATTERN or NESTED_QUANTIFIER.search(text):
        raise SqlRejected(
            f"{fn}: pattern {text[:60]!r} has nested quantifiers or is too long (backtracking)",
            needle=fn,
        )


def _check_column(node: exp.Column, aliases: set[str], cte_names: set[str]) -> None:
    name = node.name.lower()
    if isinstance(node.this, exp.Star):
        return
    qualifier = node.table.lower()
    if qualifier in TABLES and qualifier not in aliases and qualifier not in cte_names:
        if name not in TABLES[qualifier].column_names and name != "rowid":
            raise SqlRejected(f"unknown column {qualifier}.{name}", needle=node.name)
        return
    if qualifier or name in ALL_COLUMNS or name in aliases or node.this.quoted:
        return  # qualified by an alias: SQLite resolves it exactly when it compiles
    raise SqlRejected(f"unknown column {node.name!r}", needle=node.name)


def compile_problem(sandbox: Sandbox, sql: str) -> SqlRejected | None:
    """Prepare `sql` on the sandbox without running it: SQLite's own verdict."""
    text = sandbox.compile_error(sql)
    if text is None:
        return None
    m = re.search(r"(?:no such (?:column|function|table)|ambiguous column name): ([\w.]+)", text)
    needle = m.group(1).split(".")[-1] if m else None
    if "not authorized" in text or "prohibited" in text:
        text = f"{text} (the sandbox allows reads of known tables and allowed functions only)"
    return SqlRejected(f"SQLite rejects it: {text}", needle=needle)


def output_columns(tree: exp.Expression) -> set[str] | None:
    """The names of a query's result columns; None when a `*` leaves them open."""
    select = tree
    while isinstance(select, exp.Union | exp.Intersect | exp.Except):
        select = select.this
    if not isinstance(select, exp.Select):
        return None
    if any(isinstance(e, exp.Star) or isinstance(e.this, exp.Star) for e in select.expressions):
        return None
    return set(select.named_selects)


def tuning_problem(rule: Rule, tree: exp.Expression) -> Problem | None:
    """A `dedup_by` or exception column that the rule's SQL does not output."""
    from .exceptions import check_columns, misfit

    columns = output_columns(tree)
    if columns is None:
        return None
    missing = [c for c in rule.dedup_by if c not in columns]
    if missing:
        reason = f"dedup_by column(s) {', '.join(missing)} not in the rule's output"
        return Problem(rule.path, rule.id, rule.sql_line, reason)
    reason = check_columns(rule.exceptions, columns)
    if reason:
        bad = misfit(rule.exceptions, columns)
        return Problem(rule.path, rule.id, bad.line if bad else rule.sql_line, reason)
    return None


class Validator:
    """Checks rules against the tables; one sandbox is reused for every compile."""

    def __init__(self, sandbox: Sandbox | None = None) -> None:
        self.sandbox = sandbox or Sandbox()

    def check(self, rule: Rule) -> Checked | Problem:
        try:
            tree = check_sql(rule.sql)
            rejected = compile_problem(self.sandbox, rule.sql)
            if rejected:
                raise rejected
        except SqlRejected as exc:
            return problem_for(rule, exc)
        problem = tuning_problem(rule, tree)  # dedup_by and exceptions name output columns
        if problem is not None:
            return problem
        return Checked(rule, tree)

    def check_sql(self, sql: str) -> str | None:
        """For ad-hoc queries: None when acceptable, else the reason."""
        try:
            check_sql(sql)
            rejected = compile_problem(self.sandbox, sql)
        except SqlRejected as exc:
            return exc.reason
        return rejected.reason if rejected else None

    def load(self, paths: Iterable[Path]) -> tuple[list[Checked], list[Problem]]:
        """Load and check every rule file; duplicate ids are problems too."""
        checked: list[Checked] = []
        problems: list[Problem] = []
        seen: dict[str, str] = {}
        for path in rule_files(paths):
            rules, found = load_rule_file(path)
            problems += found
            for rule in rules:
                if rule.id in seen:
                    problems.append(
                        Problem(
                            rule.path,
                            rule.id,
                            rule.sql_line,
                            f"duplicate id (also in {seen[rule.id]})",
                        )
                    )
                    continue
                result = self.check(rule)
                if isinstance(result, Problem):
                    problems.append(result)
                else:
                    seen[rule.id] = rule.path
                    checked.append(result)
        return checked, problems
