"""How a checked rule runs: incrementally over the rows that just changed, or on a cadence.

A rule whose outermost query reads `processes` or `process_events` first, with no
aggregate, window, GROUP BY, LIMIT or compound, is *incremental*: its WHERE gets
`AND <that table>.rowid >= ?`, bound to the first rowid the current batch wrote
(rowids only grow: a process gets a new rowid per version, an event is its eid), so
each run costs in proportion to the rows that changed; and the rowid is selected as
a hidden identity column so a row fires once. Everything else is
*scheduled*: run over the full tables every `interval` seconds, firing for result
rows whose identity (the non-aggregate output columns) was not in the last result.
An incremental plan also carries its screen and needs (prefilter.py): what the engine
checks first to skip the rule for a batch no row of which could match.

A plan is plain data but for its judge (closures): pickled, it carries the judge's plain
screen and links it again where it is loaded (the detector compiles its rules in a
short-lived child, rules/offload.py, and keeps no sqlglot). Planning needs sqlglot
(imported by `make_plan`); a plan, once made, does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .judge import Judge, Screen, link
from .prefilter import Need, row_layout, screen_parts, screen_sql, window_names
from .tables import INCREMENTAL_TABLES

if TYPE_CHECKING:
    from sqlglot import exp

IDENTITY = "__de_identity"


@dataclass
class Plan:
    mode: str  # "incremental" or "scheduled"
    sql: str  # what actually runs
    driver: str = ""  # the table an incremental rule follows
    identity_columns: list[str] | None = None  # scheduled: None = the whole row
    screen: str | None = None  # incremental: see prefilter.py; None = nothing to screen in SQL
    needs: tuple[Need, ...] = ()  # incremental: values some changed row must hold
    judge: Judge | None = None  # incremental: the screen judged in Python (judge.py)
    # incremental: names one of which a process_events row must have (prefilter.py)
    window_names: frozenset[str] | None = None
    judge_screen: Screen | None = None  # what `judge` is linked from (judge_compile.py)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "judge": None}  # closures do not pickle: the screen does

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.judge = _linked(self.judge_screen)


def _has_outer(select: exp.Select, kinds: tuple[type[exp.Expression], ...]) -> bool:
    """Whether `select` itself (not a subquery inside it) uses one of `kinds`."""
    from sqlglot import exp

    for node in select.find_all(*kinds):
        owner = node.find_ancestor(exp.Select)
        if owner is select:
            return True
    return False


def make_plan(tree: exp.Expression, sql: str) -> Plan:
    """`sql` is the rule's own text: scheduled rules run it verbatim."""
    incremental = _incremental(tree)
    if incremental is not None:
        return incremental
    return Plan("scheduled", sql, identity_columns=_identity_columns(tree))


def _incremental(tree: exp.Expression) -> Plan | None:
    from sqlglot import exp

    if not isinstance(tree, exp.Select) or tree.args.get("with_"):
        return None
    if any(tree.args.get(k) for k in ("group", "having", "limit", "offset", "qualify")):
        return None
    if _has_outer(tree, (exp.AggFunc, exp.Window)):
        return None
    source = tree.args.get("from_")
    table = source.this if source is not None else None
    if not isinstance(table, exp.Table) or table.name.lower() not in INCREMENTAL_TABLES:
        return None
    base = table.name.lower()
    rewritten = tree.copy()
    alias = table.alias or table.name
    bound = exp.GTE(this=exp.column("rowid", table=alias), expression=exp.Placeholder())
    rewritten.where(bound, append=True, copy=False)
    rewritten.select(exp.column("rowid", table=alias).as_(IDENTITY), copy=False)
    conjuncts, needs = screen_parts(tree, base, alias)
    judged = _compiled(conjuncts, base) if conjuncts else None
    judge = _linked(judged)
    sql = rewritten.sql(dialect="sqlite")
    return Plan(
        "incremental",
        sql,
        driver=base,
        screen=screen_sql(conjuncts),
        needs=needs,
        judge=judge,
        window_names=window_names(tree),
        judge_screen=judged if judge is not None else None,
    )


def _compiled(conjuncts: list[exp.Expression], table: str) -> Screen | None:
    """The screen judged in Python; None (SQLite screens it) if it will not compile."""
    from .judge_compile import screen_of

    try:
        return screen_of(conjuncts, *row_layout(table))
    except Exception:  # an unforeseen tree: no Python verdict is ever a skip
        return None


def _linked(screen: Screen | None) -> Judge | None:
    if screen is None:
        return None
    try:
        return link(screen)
    except Exception:  # as a screen that would not compile: SQLite screens it
        return None


def _identity_columns(tree: exp.Expression) -> list[str] | None:
    """Output columns without aggregates: a group keeps its identity as its count grows.

    None (the whole row) for compounds and `*`; [] when every column is an aggregate,
    so a rule like `SELECT count(*) ... HAVING count(*) > 50` fires once per episode."""
    from sqlglot import exp

    if not isinstance(tree, exp.Select):
        return None
    names = []
    for projection in tree.expressions:
        if isinstance(projection, exp.Star) or isinstance(projection.this, exp.Star):
            return None
        if projection.find(exp.AggFunc) is None:
            names.append(projection.alias_or_name)
    return names
