"""A rule's screen compiled for the judge (judge.py): the sqlglot side.

Reads a screen's conjuncts (sqlglot nodes) into a `Screen`, a plain tree of tuples with
every decision the SQL allows already made (which columns, which types, which
constants, computed by SQLite itself) and the parts of each AND and OR in the order
they run (the cheap first): `judge.link` makes the closures from it without sqlglot.
A part it cannot judge is ("maybe",): it costs a statement, never a match.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from sqlglot import exp

from . import functions
from .judge import LIKE_PATTERN_MAX, MAYBE, _like_matcher, truth
from .sandbox import LIMITS

_NUMBER = (int, float)
_DIGITS = re.compile("[0-9]+")
_COMPARE: dict[type[exp.Expression], str] = {
    exp.EQ: "eq",
    exp.NEQ: "ne",
    exp.LT: "lt",
    exp.LTE: "le",
    exp.GT: "gt",
    exp.GTE: "ge",
}
CONSTANT_OPS = 1_000_000  # SQLite VM steps a constant may take to compute at rule load
_MAYBE = ("maybe",)

Part = tuple[tuple, int]  # a compiled predicate (a Screen) and its cost


def _constants_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    functions.register(conn)
    for name, value in LIMITS.items():
        if hasattr(sqlite3, name):
            conn.setlimit(getattr(sqlite3, name), value)
    conn.set_progress_handler(lambda: 1, CONSTANT_OPS)  # past that: interrupted, MAYBE
    return conn


_constants = _constants_db()


def screen_of(
    conjuncts: list[exp.Expression], position: dict[str, int], types: dict[str, str]
) -> tuple:
    """The AND of `conjuncts` (columns unqualified, named by `position` in a row tuple,
    typed by `types`) as a plain screen for `judge.link`."""
    screen, _cost = _Compiler(position, types).all_of(conjuncts)
    return screen


def _verdict(value: Any) -> tuple:
    """A constant truth (True, False, None) as a screen; MAYBE as ("maybe",)."""
    return _MAYBE if value is MAYBE else ("verdict", value)


def _const(value: Any) -> tuple:
    return _MAYBE if value is MAYBE else ("const", value)


class _Compiler:
    """Compiles sqlglot nodes into plain screens. Predicates stand for True/False/None/
    MAYBE; values (`value`) for any SQL value (or MAYBE)."""

    def __init__(self, position: dict[str, int], types: dict[str, str]) -> None:
        self.position = position
        self.types = types

    # --- predicates ----------------------------------------------------------------

    def predicate(self, node: exp.Expression) -> Part:
        while isinstance(node, exp.Paren):
            node = node.this
        if node.find(exp.Column) is None:
            return _verdict(truth(_constant(node))), 0
        if isinstance(node, exp.Escape) and isinstance(node.this, exp.Like):
            negate = bool(node.this.args.get("negate"))
        else:
            negate = bool(node.args.get("negate"))
        screen, cost = self._positive(node)
        return (("not", screen), cost) if negate else (screen, cost)

    def _positive(self, node: exp.Expression) -> Part:
        if isinstance(node, exp.And):
            return self.all_of(_flatten(node, exp.And))
        if isinstance(node, exp.Or):
            return self.any_of(_flatten(node, exp.Or))
        if isinstance(node, exp.Not):
            screen, cost = self.predicate(node.this)
            return ("not", screen), cost
        if type(node) in _COMPARE:
            return self.compare(_COMPARE[type(node)], node.this, node.expression), 1
        if isinstance(node, exp.In):
            return self.member(node), 1
        if isinstance(node, exp.Like):
            return self.like(node.this, node.expression, None), 2
        if isinstance(node, exp.Escape) and isinstance(node.this, exp.Like):
            return self.like(node.this.this, node.this.expression, node.expression), 2
        if isinstance(node, exp.RegexpLike) and not node.args.get("flag"):
            # a call and a search
            return ("regexp", self.value(node.this), self.value(node.expression)), 30
        if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
            return ("is_null", self.value(node.this)), 1
        return ("truth", self.value(node)), 1  # a bare value: its truth

    def all_of(self, nodes: list[exp.Expression]) -> Part:
        # the cheap first: FALSE from any conjunct decides (AND commutes in SQL's logic)
        parts = sorted((self.predicate(n) for n in nodes), key=lambda p: p[1])
        cost = sum(c for _, c in parts)
        return ("all", tuple(screen for screen, _ in parts)), cost

    def any_of(self, nodes: list[exp.Expression]) -> Part:
        # LIKEs on one text column share its folded value and one loop
        likes: dict[int, list[tuple[str, str]]] = {}
        rest: list[Part] = []
        for node in nodes:
            found = self._plain_like(node)
            if found is None:
                rest.append(self.predicate(node))
            else:
                likes.setdefault(found[0], []).append((found[1], ""))
        parts = rest + [(("likes", pos, tuple(ps)), 1 + len(ps)) for pos, ps in likes.items()]
        parts.sort(key=lambda p: p[1])  # the cheap first: TRUE from any decides
        cost = sum(c for _, c in parts)
        return ("any", tuple(screen for screen, _ in parts)), cost

    def _plain_like(self, node: exp.Expression) -> tuple[int, str] | None:
        """(position, pattern) of `text_column LIKE 'constant'` (no NOT, no ESCAPE)."""
        while isinstance(node, exp.Paren):
            node = node.this
        if not isinstance(node, exp.Like) or node.args.get("negate"):
            return None
        pos = self._text_column(node.this)
        if pos is None or node.expression.find(exp.Column) is not None:
            return None
        pattern = _constant(node.expression)
        if type(pattern) is not str or len(pattern.encode()) > LIKE_PATTERN_MAX:
            return None
        return None if _like_matcher(pattern, "") is None else (pos, pattern)

    def _text_column(self, node: exp.Expression) -> int | None:
        if not isinstance(node, exp.Column) or node.args.get("table") is not None:
            return None
        name = node.name.lower()
        return self.position.get(name) if self.types.get(name) == "TEXT" else None

    def compare(self, op: str, left: exp.Expression, right: exp.Expression) -> tuple:
        direct = self._column_vs_constant(op, left, right)
        if direct is not None:
            return direct
        return ("compare", op, self.value(left), self.value(right))

    def _column_vs_constant(
        self, op: str, left: exp.Expression, right: exp.Expression
    ) -> tuple | None:
        """`text_column op 'text'` or `integer_column op number` (either side first): one
        closure reading the row (judge.py), for most screens are made of these."""
        flipped = False
        pos, constant = self._typed_column(left), right
        if pos is None:
            pos, constant, flipped = self._typed_column(right), left, True
        if pos is None or constant.find(exp.Column) is not None:
            return None
        at, kind = pos
        c = _constant(constant)
        if kind == "TEXT" and type(c) is str:
            accepted = "str"
        elif kind == "INTEGER" and type(c) in _NUMBER:
            accepted = "int"
        else:
            return None  # NULL, MAYBE or mixed types: the general case says what
        return ("column_compare", op, at, accepted, c, flipped)

    def _typed_column(self, node: exp.Expression) -> tuple[int, str] | None:
        """(position, affinity) of an unqualified TEXT or INTEGER column."""
        while isinstance(node, exp.Paren):
            node = node.this
        if not isinstance(node, exp.Column) or node.args.get("table") is not None:
            return None
        name = node.name.lower()
        pos, kind = self.position.get(name), self.types.get(name)
        return (pos, kind) if pos is not None and kind in ("TEXT", "INTEGER") else None

    def member(self, node: exp.In) -> tuple:
        if any(node.args.get(k) for k in ("query", "unnest", "field", "is_global")):
            return _MAYBE
        values = [MAYBE if v.find(exp.Column) else _constant(v) for v in node.expressions]
        if not values or any(v is MAYBE for v in values):
            return _MAYBE
        has_null = None in values
        kinds = {type(v) for v in values if v is not None}
        if kinds == {str}:
            accepted = "str"
        elif kinds and kinds <= {int, float}:
            accepted = "num"
        else:
            return _MAYBE
        allowed = frozenset(v for v in values if v is not None)
        column = self._typed_column(node.this)
        if column is not None and (column[1], accepted) in (("TEXT", "str"), ("INTEGER", "num")):
            exact = "str" if accepted == "str" else "int"
            return ("column_member", column[0], exact, allowed, None if has_null else False)
        return ("member", self.value(node.this), accepted, allowed, has_null)

    def like(
        self, left: exp.Expression, pattern: exp.Expression, escape: exp.Expression | None
    ) -> tuple:
        if pattern.find(exp.Column) is not None or (
            escape is not None and escape.find(exp.Column) is not None
        ):
            return _MAYBE
        text = _constant(pattern)
        esc = _constant(escape) if escape is not None else ""
        if text is MAYBE or esc is MAYBE:
            return _MAYBE
        if text is None or esc is None:
            return ("verdict", None)  # a NULL pattern or escape: NULL for any row
        if type(text) is not str or type(esc) is not str:
            return _MAYBE
        if escape is not None and len(esc) != 1:
            return _MAYBE  # SQLite refuses it: the rule's own run says so
        if len(text.encode()) > LIKE_PATTERN_MAX:
            return _MAYBE
        if _like_matcher(text, esc) is None:
            return _MAYBE
        pos = self._text_column(left)
        if pos is not None:
            return ("likes", pos, ((text, esc),))
        return ("like", self.value(left), text, esc)

    # --- values ----------------------------------------------------------------------

    def value(self, node: exp.Expression) -> tuple:
        """Any SQL value: a column, a constant, or MAYBE."""
        while isinstance(node, exp.Paren):
            node = node.this
        if node.find(exp.Column) is None:
            return _const(_constant(node))
        if isinstance(node, exp.Column):
            return self.column(node)
        return _MAYBE

    def column(self, node: exp.Column) -> tuple:
        name = node.name.lower()
        pos = self.position.get(name)
        if pos is None or node.args.get("table") is not None:
            return _MAYBE
        return ("column", pos, self.types[name])


def _flatten(node: exp.Expression, kind: type[exp.Expression]) -> list[exp.Expression]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, kind):
        return _flatten(node.this, kind) + _flatten(node.expression, kind)
    return [node]


def _constant(node: exp.Expression) -> Any:
    """The value SQLite gives a column-free expression (MAYBE when it will not say)."""
    if isinstance(node, exp.Literal) and node.is_string:
        return node.this  # as SQLite reads it ('' already one quote; no other escape)
    if isinstance(node, exp.Literal) and _DIGITS.fullmatch(node.this) and len(node.this) < 18:
        return int(node.this)
    if isinstance(node, exp.Null):
        return None
    try:
        row = _constants.execute(f"SELECT {node.sql(dialect='sqlite')}").fetchone()
    except (sqlite3.Error, ValueError, OverflowError):
        return MAYBE
    value = row[0] if row else MAYBE
    return value if value is None or type(value) in (str, int, float) else MAYBE
