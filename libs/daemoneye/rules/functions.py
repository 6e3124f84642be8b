"""The SQL functions rules may call: SQLite's own (an allow-list) and osquery's extras
(`regex_match`, `regex_split`, `split`, `concat`, `concat_ws`, `regexp`, math) registered
on every connection the detector opens."""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable
from functools import lru_cache
from typing import Any

MAX_PATTERN = 1000  # a rule's regular expression longer than this is refused

ALLOWED_FUNCTIONS = frozenset(
    """
    abs avg char coalesce count date datetime glob group_concat hex ifnull iif instr
    julianday length like likelihood likely lower ltrim max min nullif printf format quote
    replace round rtrim sign substr substring sum time total trim typeof unicode unixepoch
    unlikely upper strftime random
    acos asin atan atan2 ceil ceiling cos exp floor ln log log10 log2 mod pi pow power
    sin sqrt tan
    json json_extract json_array json_object json_type json_valid json_array_length
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value
    nth_value
    regex_match regex_split split concat concat_ws regexp
    ancestor_names ancestor_paths ancestor_cmdlines
    """.split()
)
# Named so that a rejection says "forbidden" rather than merely "unknown".
FORBIDDEN_FUNCTIONS = frozenset(
    """load_extension readfile writefile edit fts3_tokenizer randomblob zeroblob
    sqlite_compileoption_get sqlite_compileoption_used sqlite_offset sqlite_source_id
    sqlite_version changes total_changes last_insert_rowid""".split()
)


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"regular expression longer than {MAX_PATTERN} characters")
    return re.compile(pattern)


def regex_match(value: Any, pattern: Any, index: Any) -> str | None:
    """osquery: group `index` of the first match of `pattern` in `value`, else NULL."""
    if value is None or pattern is None:
        return None
    m = _compiled(str(pattern)).search(str(value))
    if m is None:
        return None
    try:
        return m.group(int(index))
    except (IndexError, ValueError, TypeError):
        return None


def regex_split(value: Any, pattern: Any, index: Any) -> str | None:
    if value is None or pattern is None:
        return None
    parts = [p for p in _compiled(str(pattern)).split(str(value)) if p]
    return _pick(parts, index)


def split(value: Any, tokens: Any, index: Any) -> str | None:
    """osquery: split `value` on any character of `tokens`, non-empty part `index`."""
    if value is None or tokens is None:
        return None
    chars = str(tokens)
    if not chars:
        return None
    parts = [p for p in re.split("[" + re.escape(chars) + "]", str(value)) if p]
    return _pick(parts, index)


def _pick(parts: list[str], index: Any) -> str | None:
    try:
        i = int(index)
    except (TypeError, ValueError):
        return None
    return parts[i] if 0 <= i < len(parts) else None


def concat(*args: Any) -> str:
    return "".join("" if a is None else str(a) for a in args)


def concat_ws(sep: Any, *args: Any) -> str:
    return ("" if sep is None else str(sep)).join(str(a) for a in args if a is not None)


def regexp(pattern: Any, value: Any) -> int | None:
    if pattern is None or value is None:
        return None
    return int(_compiled(str(pattern)).search(str(value)) is not None)


def _math(fn: Callable[..., float]) -> Callable[..., float | None]:
    def safe(*args: Any) -> float | None:
        try:
            return fn(*(float(a) for a in args))
        except (TypeError, ValueError, OverflowError, ZeroDivisionError):
            return None

    return safe


_EXTRA: dict[str, tuple[int, Callable[..., Any]]] = {
    "regex_match": (3, regex_match),
    "regex_split": (3, regex_split),
    "split": (3, split),
    "concat": (-1, concat),
    "concat_ws": (-1, concat_ws),
    "regexp": (2, regexp),
}
_MATH: dict[str, tuple[int, Callable[..., float]]] = {
    "sqrt": (1, math.sqrt),
    "log": (1, math.log),
    "log10": (1, math.log10),
    "log2": (1, math.log2),
    "ln": (1, math.log),
    "exp": (1, math.exp),
    "pow": (2, math.pow),
    "power": (2, math.pow),
    "floor": (1, math.floor),
    "ceil": (1, math.ceil),
    "ceiling": (1, math.ceil),
    "sin": (1, math.sin),
    "cos": (1, math.cos),
    "tan": (1, math.tan),
    "asin": (1, math.asin),
    "acos": (1, math.acos),
    "atan": (1, math.atan),
    "atan2": (2, math.atan2),
    "pi": (0, lambda: math.pi),
    "mod": (2, math.fmod),
}


def register(conn: sqlite3.Connection) -> None:
    for name, (nargs, fn) in _EXTRA.items():
        conn.create_function(name, nargs, fn, deterministic=True)
    for name in ("ancestor_names", "ancestor_paths", "ancestor_cmdlines"):
        # no live table here (offline validation): an engine registers the real ones
        for nargs in (1, 2):
            conn.create_function(name, nargs, _no_ancestry)
    have_math = _has_function(conn, "sqrt(4)")
    for name, (nargs, fn) in _MATH.items():
        if not have_math:
            conn.create_function(name, nargs, _math(fn), deterministic=True)


def _no_ancestry(*_args: Any) -> None:
    return None


def _has_function(conn: sqlite3.Connection, call: str) -> bool:
    try:
        conn.execute(f"SELECT {call}").fetchone()
        return True
    except sqlite3.OperationalError:
        return False
