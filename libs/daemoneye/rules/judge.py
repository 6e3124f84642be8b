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

Compiling is two steps: judge_compile.py reads the sqlglot tree into a plain tree of
tuples (`Screen`: every decision the SQL allows made, constants computed), and `link`
here turns that into the closures. The first runs where the rules are validated (the
detector does it in a short-lived child: sqlglot is never imported into the detector);
this module, all the detector keeps, imports no sqlglot.
"""

from __future__ import annotations

import operator
import re
import string
from collections.abc import Callable
from typing import Any

from . import functions

MAYBE: Any = type("Maybe", (), {"__repr__": lambda self: "MAYBE", "__slots__": ()})()
Judge = Callable[[tuple, dict], Any]
# A compiled screen as plain data (picklable): nested tuples, tag first (see `link`)
Screen = tuple
LIKE_PATTERN_MAX = 1000  # sandbox.LIMITS' SQLITE_LIMIT_LIKE_PATTERN_LENGTH: longer errors
_NUMBER = (int, float)
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}
_EXACT: dict[str, type] = {"str": str, "int": int}  # a column's values, by affinity
_ACCEPTED: dict[str, tuple[type, ...]] = {"str": (str,), "num": _NUMBER}  # IN lists' values


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


def compile_screen(conjuncts: list, position: dict[str, int], types: dict[str, str]) -> Judge:
    """One closure for the AND of `conjuncts` (sqlglot nodes, columns unqualified, named by
    `position` in a row tuple, typed by `types`): True, False, None or MAYBE for
    `(row, low)`, where `low` is the row's folded texts by position, filled as LIKEs need
    them (one dict per row, shared by every rule judged on it)."""
    from .judge_compile import screen_of  # sqlglot: only where rules are compiled

    return link(screen_of(conjuncts, position, types))


def link(screen: Screen) -> Judge:
    """The closure a plain screen (judge_compile.py) stands for."""
    tag = screen[0]
    if tag == "verdict":  # a constant: True, False or None
        verdict = screen[1]
        return lambda row, low: verdict
    if tag == "maybe":
        return _maybe
    if tag in ("all", "any"):
        fns = tuple(link(part) for part in screen[1])
        return fns[0] if len(fns) == 1 else _fold(fns, decisive=tag == "any")
    if tag == "not":
        return _not(link(screen[1]))
    if tag == "likes":
        return _likes(screen[1], _matchers(screen[2]))
    if tag == "compare":
        return _compare(OPS[screen[1]], _value(screen[2]), _value(screen[3]))
    if tag == "column_compare":
        _, op, at, kind, c, flipped = screen
        return _column_vs_constant(OPS[op], at, _EXACT[kind], c, flipped)
    if tag == "column_member":
        _, at, kind, allowed, missing = screen
        return _column_member(at, _EXACT[kind], allowed, missing)
    if tag == "member":
        _, value, kind, allowed, has_null = screen
        return _member(_value(value), _ACCEPTED[kind], allowed, has_null)
    if tag == "like":
        return _like(_value(screen[1]), _matcher(screen[2], screen[3]))
    if tag == "regexp":
        return _regexp(_value(screen[1]), _value(screen[2]))
    if tag == "is_null":
        return _is_null(_value(screen[1]))
    if tag == "truth":
        value = _value(screen[1])
        return lambda row, low: truth(value(row, low))  # a bare value: its truth
    raise ValueError(f"unknown screen part {tag!r}")


def _matcher(pattern: str, escape: str) -> Callable[[str], bool]:
    matcher = _like_matcher(pattern, escape)
    if matcher is None:  # judge_compile.py leaves such patterns out
        raise ValueError(f"LIKE pattern {pattern!r} has no matcher")
    return matcher


def _matchers(patterns: list[tuple[str, str]]) -> list[Callable[[str], bool]]:
    """The tests of OR'ed LIKE patterns on one column: the `%text%` ones (most, on
    cmdline) as one regex search for any of their texts, the others one by one."""
    within = [(p, e, _contained(p, e)) for p, e in patterns]
    texts = [t for _, _, t in within if t]
    if len(texts) < 2:
        return [_matcher(p, e) for p, e in patterns]
    search = re.compile("|".join(map(re.escape, texts))).search
    return [
        lambda v: search(v) is not None,
        *(_matcher(p, e) for p, e, t in within if not t),
    ]


def _likes(pos: int, matchers: list[Callable[[str], bool]]) -> Judge:
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


def _compare(op: Callable[[Any, Any], bool], a: Judge, b: Judge) -> Judge:
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
    op: Callable[[Any, Any], bool], at: int, accepted: type, c: Any, flipped: bool
) -> Judge:
    """`text_column op 'text'` or `integer_column op number` (either side first) as one
    closure reading the row: what `_compare` computes for them, without its two value
    closures and type dispatch per row (most screens are made of these). `c op x` is
    `x op' c` with the operator mirrored (a < b is b > a), so one closure serves both."""
    if flipped:
        op = _MIRRORED[op]

    def column_vs_constant(row: tuple, low: dict) -> Any:
        x = row[at]
        if type(x) is accepted:
            return op(x, c)
        return None if x is None else MAYBE

    return column_vs_constant


_MIRRORED: dict[Callable[[Any, Any], bool], Callable[[Any, Any], bool]] = {
    operator.eq: operator.eq,
    operator.ne: operator.ne,
    operator.lt: operator.gt,
    operator.le: operator.ge,
    operator.gt: operator.lt,
    operator.ge: operator.le,
}


def _column_member(at: int, exact: type, allowed: frozenset, missing: Any) -> Judge:
    def column_member(row: tuple, low: dict) -> Any:
        x = row[at]
        if type(x) is exact:
            return True if x in allowed else missing
        return None if x is None else MAYBE

    return column_member


def _member(left: Judge, accepted: Any, allowed: frozenset, has_null: bool) -> Judge:
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


def _like(value: Judge, matcher: Callable[[str], bool]) -> Judge:
    def like(row: tuple, low: dict) -> Any:
        x = value(row, low)
        if x is None or x is MAYBE:
            return x
        if type(x) is not str:
            return MAYBE  # a number is compared as its text: not judged here
        f = like_text(x)
        return MAYBE if f is MAYBE else matcher(f)

    return like


def _regexp(value: Judge, rx: Judge) -> Judge:
    def regexp(row: tuple, low: dict) -> Any:
        x, p = value(row, low), rx(row, low)
        if x is MAYBE or p is MAYBE:
            return MAYBE
        try:
            return truth(functions.regexp(p, x))  # what SQLite calls for `x REGEXP p`
        except (re.error, ValueError, TypeError, OverflowError, RecursionError):
            return MAYBE  # an error: the rule's own run decides

    return regexp


def _is_null(value: Judge) -> Judge:
    def is_null(row: tuple, low: dict) -> Any:
        x = value(row, low)
        return x if x is MAYBE else x is None

    return is_null


# --- values: ("const", value), ("column", position, affinity) or ("maybe",) -----------


def _value(value: Screen) -> Judge:
    tag = value[0]
    if tag == "const":
        constant = value[1]
        return lambda row, low: constant
    if tag == "maybe":
        return _maybe
    _, pos, kind = value
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


def _contained(pattern: str, escape: str) -> str | None:
    """The folded text of a `%text%` pattern (no `_`, no other `%`), else None."""
    parts = _like_parts(pattern, escape)
    if parts is None:
        return None
    pieces, _, any_char = parts
    if any_char or len(pieces) != 3 or pieces[0] or pieces[2]:
        return None
    return pieces[1] or None


def _like_parts(pattern: str, escape: str) -> tuple[list[str], list[str], bool] | None:
    """A LIKE pattern read: its literal texts between the `%`s (folded), the regex it
    stands for, and whether it has a `_`; None for an escape at its end."""
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
    return pieces, regex, any_char


def _like_matcher(pattern: str, escape: str) -> Callable[[str], bool] | None:
    """A test of a folded value against a LIKE pattern (None: an escape at its end, which
    SQLite treats in its own way). Without `_`, literal pieces found left to right (the
    greedy match is right for `%` alone, and never backtracks); with `_`, a regex."""
    parts = _like_parts(pattern, escape)
    if parts is None:
        return None
    pieces, regex, any_char = parts
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
