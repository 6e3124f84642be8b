"""A rule's screen judged in Python, row by row: for the small batches of a quiet host
(one exec at a time), where even one screening statement costs more than the rules'
whole decision should.

A screen (prefilter.py) is the conjuncts of a rule's WHERE that SQLite can judge on the
driving row alone. Here each conjunct is compiled once into a closure over a row tuple
that returns what SQLite would compute, in SQL's three-valued logic, or MAYBE where it
cannot be sure of SQLite's answer. A rule is skipped for a batch only when its screen is
FALSE or NULL for every row: exactly the rows SQLite's WHERE would drop. MAYBE never
skips anything, so what the judge does not know only costs a statement, never a match.

What is judged exactly (anything else is MAYBE):
- a column whose value has the Python type of its declared affinity (TEXT: str, INTEGER:
  int, REAL: int or float) or is NULL; a value of another type (SQLite would have
  converted it on insert) is MAYBE;
- a constant (no column in it), computed once by SQLite itself at compile time;
- AND, OR, NOT and a bare value's truth (numbers; text truth is MAYBE);
- =, <>, <, <=, >, >= and IN (constant list) between two texts or two numbers (binary
  collation: Python orders str by code point, as UTF-8 bytes compare); mixed types are
  MAYBE, as SQLite would apply an affinity first;
- LIKE with a constant pattern and ESCAPE (ASCII case folded, `%`, `_`), on text;
- REGEXP, by the very function SQLite calls (functions.regexp);
- IS NULL.
"""

from __future__ import annotations

import operator
import re
import sqlite3
import string
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from . import functions
from .sandbox import LIMITS

MAYBE: Any = type("Maybe", (), {"__repr__": lambda self: "MAYBE", "__slots__": ()})()
Judge = Callable[[tuple, dict], Any]
LIKE_PATTERN_MAX = 1000  # sandbox.LIMITS' SQLITE_LIMIT_LIKE_PATTERN_LENGTH: longer errors
_NUMBER = (int, float)
_DIGITS = re.compile("[0-9]+")
_COMPARE: dict[type[exp.Expression], Callable[[Any, Any], bool]] = {
    exp.EQ: operator.eq,
    exp.NEQ: operator.ne,
    exp.LT: operator.lt,
    exp.LTE: operator.le,
    exp.GT: operator.gt,
    exp.GTE: operator.ge,
}
CONSTANT_OPS = 1_000_000  # SQLite VM steps a constant may take to compute at rule load


def _constants_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    functions.register(conn)
    for name, value in LIMITS.items():
        if hasattr(sqlite3, name):
            conn.setlimit(getattr(sqlite3, name), value)
    conn.set_progress_handler(lambda: 1, CONSTANT_OPS)  # past that: interrupted, MAYBE
    return conn


_constants = _constants_db()


_ASCII_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(text: str) -> str:
    """SQLite's LIKE ignores case for ASCII letters only."""
    return text.lower() if text.isascii() else text.translate(_ASCII_FOLD)


def like_text(value: str) -> Any:
    """`value` as LIKE sees it: ASCII case folded; MAYBE with a NUL in it (SQLite's LIKE
    stops reading at the first NUL, Python's `in` does not)."""
    if "\x00" in value:
        return MAYBE
    return value.lower() if value.isascii() else fold(value)


def _maybe(_row: tuple, _low: dict) -> Any:
    return MAYBE


def truth(value: Any) -> Any:
    """SQLite's truth of a value: True, False, None (NULL) or MAYBE."""
    if value is None or value is MAYBE or value is True or value is False:
        return value
    if type(value) in _NUMBER:
        return value != 0
    return MAYBE  # text is converted to a number first: not judged here


def compile_screen(
    conjuncts: list[exp.Expression], position: dict[str, int], types: dict[str, str]
) -> Judge:
    """One closure for the AND of `conjuncts` (columns unqualified, named by `position`
    in a row tuple, typed by `types`): True, False, None or MAYBE for `(row, low)`, where
    `low` is the row's folded texts by position, filled as LIKEs need them (one dict per
    row, shared by every rule judged on it)."""
    fn, _cost = _Compiler(position, types).all_of(conjuncts)
    return fn


Part = tuple[Judge, int]  # a compiled predicate (True/False/None/MAYBE) and its cost


class _Compiler:
    """Compiles sqlglot nodes into closures `(row, low) -> value`. Predicates return
    True/False/None/MAYBE; `value` returns any SQL value (or MAYBE)."""

    def __init__(self, position: dict[str, int], types: dict[str, str]) -> None:
        self.position = position
        self.types = types

    # --- predicates ----------------------------------------------------------------

    def predicate(self, node: exp.Expression) -> Part:
        while isinstance(node, exp.Paren):
            node = node.this
        if node.find(exp.Column) is None:
            verdict = truth(_constant(node))
            return (lambda row, low: verdict), 0
        if isinstance(node, exp.Escape) and isinstance(node.this, exp.Like):
            negate = bool(node.this.args.get("negate"))
        else:
            negate = bool(node.args.get("negate"))
        fn, cost = self._positive(node)
        return (_not(fn), cost) if negate else (fn, cost)

    def _positive(self, node: exp.Expression) -> Part:
        if isinstance(node, exp.And):
            return self.all_of(_flatten(node, exp.And))
        if isinstance(node, exp.Or):
            return self.any_of(_flatten(node, exp.Or))
        if isinstance(node, exp.Not):
            fn, cost = self.predicate(node.this)
            return _not(fn), cost
        if type(node) in _COMPARE:
            return self.compare(_COMPARE[type(node)], node.this, node.expression), 1
        if isinstance(node, exp.In):
            return self.member(node), 1
        if isinstance(node, exp.Like):
            return self.like(node.this, node.expression, None), 2
        if isinstance(node, exp.Escape) and isinstance(node.this, exp.Like):
            return self.like(node.this.this, node.this.expression, node.expression), 2
        if isinstance(node, exp.RegexpLike) and not node.args.get("flag"):
            return self.regexp(node.this, node.expression), 30  # a call and a search
        if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
            return self.is_null(node.this), 1
        value = self.value(node)
        return (lambda row, low: truth(value(row, low))), 1  # a bare value: its truth

    def all_of(self, nodes: list[exp.Expression]) -> Part:
        # the cheap first: FALSE from any conjunct decides (AND commutes in SQL's logic)
        parts = sorted((self.predicate(n) for n in nodes), key=lambda p: p[1])
        fns = tuple(fn for fn, _ in parts)
        cost = sum(c for _, c in parts)
        return (fns[0] if len(fns) == 1 else _fold(fns, decisive=False)), cost

    def any_of(self, nodes: list[exp.Expression]) -> Part:
        # LIKEs on one text column share its folded value and one loop
        likes: dict[int, list[Callable[[str], bool]]] = {}
        rest: list[Part] = []
        for node in nodes:
            found = self._plain_like(node)
            if found is None:
                rest.append(self.predicate(node))
            else:
                likes.setdefault(found[0], []).append(found[1])
        parts = rest + [(self._likes(pos, ms), 1 + len(ms)) for pos, ms in likes.items()]
        parts.sort(key=lambda p: p[1])  # the cheap first: TRUE from any decides
        fns = tuple(fn for fn, _ in parts)
        cost = sum(c for _, c in parts)
        return (fns[0] if len(fns) == 1 else _fold(fns, decisive=True)), cost

    def _plain_like(self, node: exp.Expression) -> tuple[int, Callable[[str], bool]] | None:
        """(position, matcher) of `text_column LIKE 'constant'` (no NOT, no ESCAPE)."""
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
        matcher = _like_matcher(pattern, "")
        return None if matcher is None else (pos, matcher)

    def _text_column(self, node: exp.Expression) -> int | None:
        if not isinstance(node, exp.Column) or node.args.get("table") is not None:
            return None
        name = node.name.lower()
        return self.position.get(name) if self.types.get(name) == "TEXT" else None

    def _likes(self, pos: int, matchers: list[Callable[[str], bool]]) -> Judge:
        def likes(row: tuple, low: dict) -> Any:
            f = low.get(pos)
            if f is None:
                x = row[pos]
                if x is None:
                    return None
                if type(x) is not str:
                    return MAYBE  # a number is compared as its text: not judged here
                f = low[pos] = like_text(x)
            if f is MAYBE:
                return MAYBE
            for matcher in matchers:  # noqa: SIM110 (a loop: no generator per row)
                if matcher(f):
                    return True
            return False

        return likes

    def compare(
        self, op: Callable[[Any, Any], bool], left: exp.Expression, right: exp.Expression
    ) -> Judge:
        direct = self._column_vs_constant(op, left, right)
        if direct is not None:
            return direct
        a, b = self.value(left), self.value(right)

        def compared(row: tuple, low: dict) -> Any:
            x, y = a(row, low), b(row, low)
            if x is MAYBE or y is MAYBE:
                return MAYBE
            if x is None or y is None:
                return None
            tx, ty = type(x), type(y)
            if (tx is str and ty is str) or (tx in _NUMBER and ty in _NUMBER):
                return op(x, y)
            return MAYBE  # an affinity would convert one of them first

        return compared

    def _column_vs_constant(
        self, op: Callable[[Any, Any], bool], left: exp.Expression, right: exp.Expression
    ) -> Judge | None:
        """`text_column op 'text'` or `integer_column op number` (either side first) as
        one closure reading the row: what `compare` computes for them, without its two
        value closures and type dispatch per row (most screens are made of these)."""
        flipped = False
        pos, constant = self._typed_column(left), right
        if pos is None:
            pos, constant, flipped = self._typed_column(right), left, True
        if pos is None or constant.find(exp.Column) is not None:
            return None
        at, kind = pos
        c = _constant(constant)
        if kind == "TEXT" and type(c) is str:
            accepted: type | tuple[type, ...] = str
        elif kind == "INTEGER" and type(c) in _NUMBER:
            accepted = int
        else:
            return None  # NULL, MAYBE or mixed types: the general case says what
        if flipped:

            def constant_vs_column(row: tuple, low: dict) -> Any:
                x = row[at]
                if type(x) is accepted:
                    return op(c, x)
                return None if x is None else MAYBE

            return constant_vs_column

        def column_vs_constant(row: tuple, low: dict) -> Any:
            x = row[at]
            if type(x) is accepted:
                return op(x, c)
            return None if x is None else MAYBE

        return column_vs_constant

    def _typed_column(self, node: exp.Expression) -> tuple[int, str] | None:
        """(position, affinity) of an unqualified TEXT or INTEGER column."""
        while isinstance(node, exp.Paren):
            node = node.this
        if not isinstance(node, exp.Column) or node.args.get("table") is not None:
            return None
        name = node.name.lower()
        pos, kind = self.position.get(name), self.types.get(name)
        return (pos, kind) if pos is not None and kind in ("TEXT", "INTEGER") else None

    def member(self, node: exp.In) -> Judge:
        if any(node.args.get(k) for k in ("query", "unnest", "field", "is_global")):
            return _maybe
        values = [MAYBE if v.find(exp.Column) else _constant(v) for v in node.expressions]
        if not values or any(v is MAYBE for v in values):
            return _maybe
        has_null = None in values
        kinds = {type(v) for v in values if v is not None}
        if kinds == {str}:
            accepted: tuple[type, ...] = (str,)
        elif kinds and kinds <= {int, float}:
            accepted = _NUMBER
        else:
            return _maybe
        allowed = frozenset(v for v in values if v is not None)
        column = self._typed_column(node.this)
        if column is not None and (column[1], accepted) in (("TEXT", (str,)), ("INTEGER", _NUMBER)):
            at, exact = column[0], (str if accepted == (str,) else int)
            missing = None if has_null else False

            def column_member(row: tuple, low: dict) -> Any:
                x = row[at]
                if type(x) is exact:
                    return True if x in allowed else missing
                return None if x is None else MAYBE

            return column_member
        left = self.value(node.this)

        def member(row: tuple, low: dict) -> Any:
            x = left(row, low)
            if x is None or x is MAYBE:
                return x
            if type(x) not in accepted:
                return MAYBE
            if x in allowed:
                return True
            return None if has_null else False

        return member

    def like(
        self, left: exp.Expression, pattern: exp.Expression, escape: exp.Expression | None
    ) -> Judge:
        if pattern.find(exp.Column) is not None or (
            escape is not None and escape.find(exp.Column) is not None
        ):
            return _maybe
        text = _constant(pattern)
        esc = _constant(escape) if escape is not None else ""
        if text is MAYBE or esc is MAYBE:
            return _maybe
        if text is None or esc is None:
            return lambda row, low: None  # a NULL pattern or escape: NULL for any row
        if type(text) is not str or type(esc) is not str:
            return _maybe
        if escape is not None and len(esc) != 1:
            return _maybe  # SQLite refuses it: the rule's own run says so
        if len(text.encode()) > LIKE_PATTERN_MAX:
            return _maybe
        matcher = _like_matcher(text, esc)
        if matcher is None:
            return _maybe
        pos = self._text_column(left)
        if pos is not None:
            return self._likes(pos, [matcher])
        value = self.value(left)

        def like(row: tuple, low: dict) -> Any:
            x = value(row, low)
            if x is None or x is MAYBE:
                return x
            if type(x) is not str:
                return MAYBE  # a number is compared as its text: not judged here
            f = like_text(x)
            return MAYBE if f is MAYBE else matcher(f)

        return like

    def regexp(self, left: exp.Expression, pattern: exp.Expression) -> Judge:
        value, rx = self.value(left), self.value(pattern)

        def regexp(row: tuple, low: dict) -> Any:
            x, p = value(row, low), rx(row, low)
            if x is MAYBE or p is MAYBE:
                return MAYBE
            try:
                return truth(functions.regexp(p, x))  # what SQLite calls for `x REGEXP p`
            except (re.error, ValueError, TypeError, OverflowError, RecursionError):
                return MAYBE  # an error: the rule's own run decides

        return regexp

    def is_null(self, left: exp.Expression) -> Judge:
        value = self.value(left)

        def is_null(row: tuple, low: dict) -> Any:
            x = value(row, low)
            return x if x is MAYBE else x is None

        return is_null

    # --- values ----------------------------------------------------------------------

    def value(self, node: exp.Expression) -> Judge:
        """Any SQL value: a column, a constant, or MAYBE."""
        while isinstance(node, exp.Paren):
            node = node.this
        if node.find(exp.Column) is None:
            constant = _constant(node)
            return lambda row, low: constant
        if isinstance(node, exp.Column):
            return self.column(node)
        return _maybe

    def column(self, node: exp.Column) -> Judge:
        name = node.name.lower()
        pos = self.position.get(name)
        if pos is None or node.args.get("table") is not None:
            return _maybe
        kind = self.types[name]
        if kind == "TEXT":

            def text(row: tuple, low: dict) -> Any:
                v = row[pos]
                return v if v is None or type(v) is str else MAYBE

            return text
        if kind == "INTEGER":

            def integer(row: tuple, low: dict) -> Any:
                v = row[pos]
                return v if v is None or type(v) is int else MAYBE

            return integer

        def real(row: tuple, low: dict) -> Any:
            v = row[pos]
            if v is None or type(v) is int:
                return v
            return v if type(v) is float and v == v else MAYBE  # NaN is stored as NULL

        return real


def _not(fn: Judge) -> Judge:
    def negated(row: tuple, low: dict) -> Any:
        v = fn(row, low)
        return v if v is None or v is MAYBE else not v

    return negated


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


def _like_matcher(pattern: str, escape: str) -> Callable[[str], bool] | None:
    """A test of a folded value against a LIKE pattern (None: an escape at its end, which
    SQLite treats in its own way). Without `_`, literal pieces found left to right (the
    greedy match is right for `%` alone, and never backtracks); with `_`, a regex."""
    pieces: list[str] = [""]  # the literal texts between the %s, folded
    regex: list[str] = []
    any_char = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if escape and ch == escape:
            if i + 1 >= len(pattern):
                return None
            lit = fold(pattern[i + 1])
            regex.append(re.escape(lit))
            pieces[-1] += lit
            i += 2
            continue
        if ch == "%":
            regex.append(".*")
            pieces.append("")
        elif ch == "_":
            regex.append(".")
            any_char = True
        else:
            lit = fold(ch)
            regex.append(re.escape(lit))
            pieces[-1] += lit
        i += 1
    if any_char:
        compiled = re.compile("".join(regex), re.DOTALL)
        return lambda v: compiled.fullmatch(v) is not None
    if len(pieces) == 1:
        (whole,) = pieces
        return lambda v: v == whole
    first, *middle, last = pieces
    middle = [m for m in middle if m]
    if not middle:
        if not last:
            return lambda v: v.startswith(first)
        if not first:
            return lambda v: v.endswith(last)
        least = len(first) + len(last)
        return lambda v: len(v) >= least and v.startswith(first) and v.endswith(last)
    if len(middle) == 1 and not first and not last:
        (only,) = middle
        return lambda v: only in v

    def pieces_in_order(v: str) -> bool:
        if not v.startswith(first):
            return False
        end = len(v) - len(last)
        if end < len(first) or not v.endswith(last):
            return False
        at = len(first)
        for piece in middle:
            found = v.find(piece, at, end)
            if found < 0:
                return False
            at = found + len(piece)
        return True

    return pieces_in_order


def _fold(fns: tuple[Callable[[tuple, dict], Any], ...], decisive: bool) -> Callable:
    """AND (decisive False) or OR (decisive True) in SQL's three-valued logic, with
    MAYBE (the judge cannot tell) above NULL: the decisive value from any part decides
    at once; else MAYBE if any part is unsure, NULL if any is NULL, else the other."""
    neutral = not decisive

    def fold(row: tuple, low: dict) -> Any:
        out: Any = neutral
        for fn in fns:
            v = fn(row, low)
            if v is decisive:
                return decisive
            if v is MAYBE:
                out = MAYBE
            elif v is None and out is neutral:
                out = None
        return out

    return fold
