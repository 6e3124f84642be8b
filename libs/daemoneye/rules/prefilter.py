"""Screening: which incremental rules could match a batch, judged without running them.

Running every incremental rule's own statement on every batch costs a statement
execution per rule (~10 us each, with its Python round trip) however few rows
changed, and almost every run finds nothing. Instead, each rule has a *screen*: the
conjuncts of its WHERE that can be judged on the driving row alone. Two judges, the
cheap one first:

1. needs, in Python, from the batch's distinct values per column: `col = 'text'` and
   `col IN (...)` on a TEXT column need one of those values in some row (a set lookup
   per distinct value finds every rule that wants it); LIKE needs each literal piece of
   its pattern in the column's values (ASCII case folded, as SQLite folds); AND and OR
   of those combine. A rule whose needs no row meets is skipped.
2. the screen itself, by SQLite, for every remaining rule at once in one statement:

    SELECT max(CASE WHEN (screen 1) THEN 1 ELSE 0 END), ... FROM processes WHERE rowid >= ?

A rule's own statement runs only when its screen held for some row. The screen is the
rule's own expression, judged by SQLite with the same column affinities and
truthiness, and a need is a consequence of it, so skipping a rule never hides a
match: a rule returns rows only for driving rows where every conjunct of its WHERE
holds. Dropping a conjunct we cannot judge alone (a subquery, another table's column,
'now', random()) only weakens the screen; a rule with nothing to screen always runs.

A screen that errors (or overruns the budget) gives no verdict: the engine judges
each screen of that statement alone, drops those that fail, and their rules' own
statements decide exactly as before (disabling a rule that fails). One difference
remains, by design: a rule's run-time error (say an overflow in `abs()`) is seen only
on batches where the rule runs, so a rule failing only on rows it could never match
is no longer disabled for them.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .judge import MAYBE, fold, like_text
from .tables import TABLES

if TYPE_CHECKING:  # sqlglot is imported only where rules are compiled, not where they run
    from sqlglot import exp

ROWID_NAMES = frozenset({"rowid", "oid", "_rowid_"})
# calls whose value may differ between two statements (judged on the generated SQL: a
# false alarm in a string literal only weakens a screen)
_UNSTABLE = re.compile(
    r"\b(date|time|datetime|julianday|unixepoch|strftime|timediff|random|randomblob|"
    r"changes|total_changes)\s*\(|\bcurrent_(date|time|timestamp)\b|'now'",
    re.IGNORECASE,
)
CHUNK_RULES = 200  # rules per screening statement: short SQL, narrow result rows
CHUNK_SQL = 64 * 1024  # and well inside SQLITE_LIMIT_SQL_LENGTH
# Below this many rows (a quiet host's exec or two), the rules are found by the texts a
# row must hold and judged row by row in Python (judge.py), ~1 us a rule and row; from it
# on, needs are checked on the batch's distinct values and one screening statement judges
# the rest (a fixed ~3 us a rule, then ~0.05 us a rule and row)
CHECK_MIN_ROWS = 32
FINDER_MIN_PIECES = 8  # pieces of one column from which a regex finds them (PieceFinder)


def _conjuncts(node: exp.Expression) -> list[exp.Expression]:
    from sqlglot import exp

    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _stable(node: exp.Expression) -> bool:
    """Judged the same in any statement: no subquery, parameter, aggregate or window, and
    no 'now' (SQLite's date and time functions default to it) or random()."""
    from sqlglot import exp

    unstable = (exp.Subquery, exp.Select, exp.Exists, exp.Placeholder, exp.Parameter)
    if node.find(*unstable, exp.AggFunc, exp.Window) is not None:
        return False
    return _UNSTABLE.search(node.sql(dialect="sqlite")) is None


# A need: what some row of a batch must hold for a conjunct to be true on any row.
#   ("in", column, frozenset of str)    the column holds one of these texts (= or IN)
#   ("like", column, tuple of str)      every literal piece of a LIKE pattern occurs in the
#                                       column (pieces and values folded as SQLite folds)
#   ("any", "", tuple of needs)         one of them (OR)
#   ("all", "", tuple of needs)         each of them (AND; maybe on different rows: weaker)
Need = tuple[str, str, Any]


def screen_of(tree: exp.Select, table: str, alias: str) -> tuple[str | None, tuple[Need, ...]]:
    """The screen of an incremental rule over `table` (its FROM, known as `alias`): SQL over
    the bare table with unqualified columns (None when nothing can be screened), and the
    needs of its conjuncts, which the engine checks against the batch's distinct values
    before any SQL runs."""
    conjuncts, needs = screen_parts(tree, table, alias)
    return screen_sql(conjuncts), needs


def screen_sql(conjuncts: list[exp.Expression]) -> str | None:
    kept = [f"({c.sql(dialect='sqlite')})" for c in conjuncts]
    return " AND ".join(kept) if kept else None


def screen_parts(
    tree: exp.Select, table: str, alias: str
) -> tuple[list[exp.Expression], tuple[Need, ...]]:
    """The conjuncts of the screen, copied with unqualified columns, and their needs."""
    from sqlglot import exp

    where = tree.args.get("where")
    if where is None:
        return [], ()
    columns = set(TABLES[table].column_names) | ROWID_NAMES
    text = {c.name for c in TABLES[table].columns if c.type == "TEXT"}
    single = not tree.args.get("joins")
    own = {alias.lower(), table} if single else {alias.lower()}
    kept: list[exp.Expression] = []
    needs: list[Need] = []
    for conjunct in _conjuncts(where.this):
        if not _stable(conjunct):
            continue
        refs = list(conjunct.find_all(exp.Column))
        # unqualified names are unambiguous only with a single table; a name that is not
        # a column may be SQLite's double-quoted string literal: leave those to the rule
        if not all(_own_column(col, own, single, columns) for col in refs):
            continue
        need = _need(conjunct, text)
        if need is not None:
            needs.append(need)
        bare = conjunct.copy()
        for col in bare.find_all(exp.Column):
            col.set("table", None)
        kept.append(bare)
    return kept, tuple(needs)


def window_names(tree: exp.Select) -> frozenset[str] | None:
    """Names one of which some row of `process_events` must have for the rule to return a
    row, when it joins that table (inner) under a condition on the joined row's name
    (`d.name IN ('curl', 'wget')`): a rule looking for what a named tool did in the
    window need not run while no such tool is in it. None when there is no such need."""
    from sqlglot import exp

    if not isinstance(tree, exp.Select):
        return None
    where = tree.args.get("where")
    text = {c.name for c in TABLES["process_events"].columns if c.type == "TEXT"}
    found: list[frozenset[str]] = []
    for join in tree.args.get("joins") or []:
        table = join.this
        if (
            not isinstance(table, exp.Table)
            or table.name.lower() != "process_events"
            or table.args.get("db")
            or join.args.get("side")
            or join.args.get("kind")
            or join.args.get("using")
        ):
            continue
        alias = (table.alias or table.name).lower()
        terms = _conjuncts(join.args["on"]) if join.args.get("on") is not None else []
        terms += _conjuncts(where.this) if where is not None else []
        for term in terms:
            refs = list(term.find_all(exp.Column))
            if not refs or any(c.table.lower() != alias for c in refs):
                continue
            need = _need(term, text)
            if need is not None and need[0] == "in" and need[1] == "name" and _stable(term):
                found.append(need[2])
    return min(found, key=len) if found else None


def _need(node: exp.Expression, text_columns: set[str]) -> Need | None:
    """The need of a condition whose columns are all the driving row's; None when there is
    nothing to check (anything else: NOT, <, IS, GLOB, functions...). Exact reasoning:
    TEXT columns hold text as given (NULL matches nothing), `=` and IN compare with binary
    collation, and a LIKE that matches contains each literal piece of its pattern."""
    from sqlglot import exp

    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And | exp.Or):
        parts = [_need(node.this, text_columns), _need(node.expression, text_columns)]
        if isinstance(node, exp.Or):
            return None if None in parts else ("any", "", tuple(parts))
        known = tuple(p for p in parts if p is not None)
        return ("all", "", known) if len(known) > 1 else (known[0] if known else None)
    if any(node.args.get(k) for k in ("negate", "query", "unnest", "field", "is_global")):
        return None
    if isinstance(node, exp.Like):
        col, pattern = node.this, node.expression
        if not _text_column(col, text_columns) or not _is_text(pattern):
            return None
        pieces = tuple(fold(p) for p in re.split("[%_]", pattern.this) if p)
        return ("like", col.name.lower(), pieces) if pieces else None
    if isinstance(node, exp.EQ):
        col, lit = node.this, node.expression
        if isinstance(lit, exp.Column):
            col, lit = lit, col
        literals = [lit]
    elif isinstance(node, exp.In):
        col, literals = node.this, node.expressions
    else:
        return None
    if not _text_column(col, text_columns) or not literals:
        return None
    if not all(_is_text(v) for v in literals):
        return None
    return "in", col.name.lower(), frozenset(v.this for v in literals)


def _text_column(node: exp.Expression, text_columns: set[str]) -> bool:
    from sqlglot import exp

    return isinstance(node, exp.Column) and node.name.lower() in text_columns


def _is_text(node: exp.Expression) -> bool:
    from sqlglot import exp

    return isinstance(node, exp.Literal) and node.is_string


def _own_column(col: exp.Column, own: set[str], single: bool, columns: set[str]) -> bool:
    qualifier = col.table.lower()
    mine = qualifier in own if qualifier else single
    return mine and col.name.lower() in columns


def screening_sql(table: str, screens: list[str]) -> list[tuple[str, int]]:
    """Statements judging `screens` over the rows of `table` from a rowid on: one result
    row of 0/1 per screen, in order. Returns (sql, how many screens it judges)."""
    out: list[tuple[str, int]] = []
    chunk: list[str] = []
    size = 0
    for screen in screens:
        term = f"max(CASE WHEN {screen} THEN 1 ELSE 0 END)"
        if chunk and (len(chunk) >= CHUNK_RULES or size + len(term) > CHUNK_SQL):
            out.append((_statement(table, chunk), len(chunk)))
            chunk, size = [], 0
        chunk.append(term)
        size += len(term) + 2
    if chunk:
        out.append((_statement(table, chunk), len(chunk)))
    return out


def _statement(table: str, terms: list[str]) -> str:
    return f"SELECT {', '.join(terms)} FROM {table} WHERE rowid >= ?"


def row_layout(table: str) -> tuple[dict[str, int], dict[str, str]]:
    """Where each column of `table` sits in the engine's row tuples, and its type. An event
    row starts with its eid, which is its rowid."""
    columns = TABLES[table].columns
    offset = 1 if table == "process_events" else 0
    position = {c.name: i + offset for i, c in enumerate(columns)}
    types = {c.name: c.type for c in columns}
    if offset:
        for name in ROWID_NAMES:
            position[name], types[name] = 0, "INTEGER"
    return position, types


class Screening:
    """The screens of the incremental rules that follow one table, indexed by their needs
    (by the values of one column a rule needs, see `_key`).

    `rules` are the engine's Active objects (anything with .rule.id, .order and .plan, all
    of them with a screen)."""

    def __init__(self, table: str, rules: list[Any]) -> None:
        self.table = table
        self.position = {n: i for n, i in row_layout(table)[0].items() if n not in ROWID_NAMES}
        # a rule with an `in` need is indexed under its smallest: a set lookup per distinct
        # value of the batch finds it; its other needs are checked after
        self.index: dict[int, dict[str, list[Any]]] = {}
        self.rest: dict[str, list[Need]] = {}
        self.checked: list[tuple[Any, list[Need]]] = []  # rules with needs but no `in`
        self.free: list[Any] = []  # rules without needs: their screen decides
        for active in rules:
            needs = [self._at(n) for n in active.plan.needs]
            # values every row may hold (an empty tty) make a poor key: such a rule is
            # better indexed by its pieces, below
            keyed = [(key, n) for n in needs if (key := _key(n)) is not None and "" not in key[1]]
            if keyed:
                (pos, values), need = min(keyed, key=lambda k: _rank(k[0][1]))
                by_value = self.index.setdefault(pos, {})
                for value in values:
                    by_value.setdefault(value, []).append(active)
                # a plain `in` is met exactly by its key; any other need is only implied
                rest = [n for n in needs if n is not need] if need[0] == "in" else needs
                self.rest[active.rule.id] = rest
            elif needs:
                self.checked.append((active, needs))
            else:
                self.free.append(active)
        # for a small batch, the other rules with needs are indexed under texts one of
        # which a row must hold (`_pieces`): a value, or a piece of a LIKE pattern; a set
        # lookup per value and a substring test per piece and row find them
        self.by_piece: dict[int, dict[str, list[Any]]] = {}
        self.by_exact: dict[int, dict[str, list[Any]]] = {}
        self.unpieced: list[Any] = []
        for active, needs in self.checked:
            keys = [k for k in map(_pieces, needs) if k is not None]
            if not keys:
                self.unpieced.append(active)
                continue
            for exact, pos, text in min(keys, key=_piece_rank):
                index = self.by_exact if exact else self.by_piece
                index.setdefault(pos, {}).setdefault(text, []).append(active)
        # where a column has many pieces (a hundred and more for cmdline), one regex
        # finds those a text holds instead of a substring test per piece
        self.finders = {
            pos: PieceFinder(by_piece)
            for pos, by_piece in self.by_piece.items()
            if len(by_piece) >= FINDER_MIN_PIECES and "" not in by_piece
        }
        self._statements: dict[tuple[int, ...], list[tuple[str, list[Any]]]] = {}

    def _at(self, need: Need) -> Need:
        """The need with its column name replaced by the column's position in a row."""
        kind, column, arg = need
        if kind in ("any", "all"):
            return kind, -1, tuple(self._at(n) for n in arg)
        return kind, self.position[column], arg

    def candidates(self, rows: list[tuple], folded: list[dict] | None = None) -> list[Any]:
        """The rules that `rows` could match by their needs: those without needs, and
        those with needs some row meets (on a small batch, the `in` needs only: the judge
        or the statement does the rest)."""
        batch = _BatchValues(rows)
        met: dict[str, Any] = {}
        for pos, by_value in self.index.items():
            seen = batch.values(pos)
            if seen is None:
                met.update((a.rule.id, a) for group in by_value.values() for a in group)
                continue
            for value in seen:
                group = by_value.get(value)
                if group is not None:
                    met.update((a.rule.id, a) for a in group)
        if len(rows) < CHECK_MIN_ROWS:
            pieced = self._pieces_met(rows, folded or [{} for _ in rows])
            return [*self.free, *met.values(), *pieced, *self.unpieced]
        holds = batch.holds
        out = [a for rule_id, a in met.items() if all(map(holds, self.rest[rule_id]))]
        out += [a for a, needs in self.checked if all(map(holds, needs))]
        return [*self.free, *out]

    def _pieces_met(self, rows: list[tuple], folded: list[dict]) -> list[Any]:
        """The rules indexed by texts that some row holds one of (or where a value is not
        text, so it cannot be told). `folded`: each row's folded texts by position, shared
        with the judge."""
        met: dict[str, Any] = {}
        for pos, by_exact in self.by_exact.items():
            for row in rows:
                value = row[pos]
                if value is None:
                    continue  # NULL equals nothing
                if type(value) is not str:
                    met.update((a.rule.id, a) for group in by_exact.values() for a in group)
                    break
                group = by_exact.get(value)
                if group is not None:
                    met.update((a.rule.id, a) for a in group)
        for pos, by_piece in self.by_piece.items():
            finder = self.finders.get(pos)
            for row, low in zip(rows, folded, strict=True):
                value = row[pos]
                if value is None:
                    continue  # NULL is LIKE nothing
                if type(value) is not str:
                    met.update((a.rule.id, a) for group in by_piece.values() for a in group)
                    break
                text = low.get(pos)
                if text is None:
                    text = low[pos] = like_text(value)
                if text is MAYBE:  # cannot be told
                    met.update((a.rule.id, a) for group in by_piece.values() for a in group)
                    continue
                if finder is not None:
                    for group in finder.groups_in(text):
                        met.update((a.rule.id, a) for a in group)
                    continue
                for piece, group in by_piece.items():
                    if piece in text:
                        met.update((a.rule.id, a) for a in group)
        return list(met.values())

    @staticmethod
    def judge(
        rows: list[tuple], rules: list[Any], folded: list[dict] | None = None
    ) -> tuple[list[Any], list[Any]]:
        """The rules whose screen (judged in Python, judge.py) holds for some row, and those
        it cannot rule out (MAYBE); the others cannot match any row. `folded`: each row's
        texts folded for LIKE by position, filled as needed (one dict per row)."""
        sure: list[Any] = []
        unsure: list[Any] = []
        if folded is None:
            folded = [{} for _ in rows]
        for active in rules:
            judged = active.plan.judge
            if judged is None:
                unsure.append(active)
                continue
            verdict: Any = False
            for row, low in zip(rows, folded, strict=True):
                try:
                    v = judged(row, low)
                except Exception:  # a judge's own failure is no verdict: never a skip
                    v = MAYBE
                if v is True:
                    verdict = True
                    break
                if v is MAYBE:
                    verdict = MAYBE
            if verdict is True:
                sure.append(active)
            elif verdict is MAYBE:
                unsure.append(active)
        return sure, unsure

    def statements(self, rules: list[Any]) -> list[tuple[str, list[Any]]]:
        """The screening statements judging `rules` (cached by the subset)."""
        key = tuple(sorted(a.order for a in rules))
        cached = self._statements.get(key)
        if cached is None:
            if len(self._statements) >= 256:  # a bounded cache of the subsets seen
                self._statements.clear()
            judged = sorted(rules, key=lambda a: a.order)
            cached, at = [], 0
            for sql, count in screening_sql(self.table, [a.plan.screen for a in judged]):
                cached.append((sql, judged[at : at + count]))
                at += count
            self._statements[key] = cached
        return cached


def _rank(texts: Collection[str], short: bool = False) -> tuple[bool, bool, int]:
    """How a set of texts ranks as what a rule is indexed under (lower: fewer batches
    look like candidates): one of which every row holds, such as the empty tty of every
    daemon, last; then one with a one-character piece to look for (`short`); then fewer
    texts first. Any need's set is a sound index (every need must be met): this only
    changes what the index costs."""
    return "" in texts, short, len(texts)


def _piece_rank(pieces: set[tuple[bool, int, str]]) -> tuple[bool, bool, int]:
    short = any(not exact and len(text) < 2 for exact, _, text in pieces)
    return _rank([text for _, _, text in pieces], short)


def _key(need: Need) -> tuple[int, frozenset[str]] | None:
    """Values one column must hold in some row for `need` to be met, when there are such:
    an `in` gives its own; `all` the smallest of its parts'; `any` the union of its
    branches', when every branch gives one on the same column (`(name = 'touch' AND ...)
    OR name IN ('at', 'batch')` needs a name among touch, at, batch). A rule is indexed
    under them: a set lookup per distinct value of a batch finds it."""
    kind, pos, arg = need
    if kind == "in":
        return pos, arg
    if kind == "all":
        keys = [k for k in map(_key, arg) if k is not None]
        return min(keys, key=lambda k: _rank(k[1])) if keys else None
    if kind == "any":
        keys = [_key(n) for n in arg]
        if not keys or any(k is None for k in keys) or len({k[0] for k in keys}) != 1:
            return None
        return keys[0][0], frozenset().union(*(k[1] for k in keys))
    return None


class PieceFinder:
    """The groups of the pieces (non-empty texts) that a text holds, found by one regex
    of them all: a search from each position past the last start finds the next position
    where some piece starts, and there the longest piece that starts there. Every other
    piece starting there is a prefix of that one, so the groups of every piece within it
    (kept with it) are met too. The same set as a substring test per piece, in a few
    searches of C instead of one test per piece.

    The regex is the pieces' trie (`_trie_pattern`): at each position the engine follows
    one path of characters, where an alternation of the pieces themselves (longest first)
    tried each of them in turn: 3-5 times less for a cmdline against the shipped rules'
    ~160 pieces (~10 us a row). Both find the longest piece at the leftmost position."""

    def __init__(self, by_piece: dict[str, list[Any]]) -> None:
        pieces = sorted(by_piece, key=len, reverse=True)
        try:
            self._search = re.compile(_trie_pattern(pieces)).search
        except (RecursionError, re.error, OverflowError):  # pieces nested beyond the stack
            self._search = re.compile("|".join(map(re.escape, pieces))).search
        self._within = {p: [by_piece[q] for q in pieces if q in p] for p in pieces}

    def groups_in(self, text: str) -> list[list[Any]]:
        groups: list[list[Any]] = []
        found = self._search(text)
        while found is not None:
            groups += self._within[found.group()]
            found = self._search(text, found.start() + 1)
        return groups


def _trie_pattern(pieces: Collection[str]) -> str:
    """A regex matching any of `pieces` (non-empty), the longest where several start at
    one position: their trie, a branch per next character (only one can match, so the
    engine follows one path), and where a piece ends within a longer one, the rest as a
    greedy optional (the longer is tried first, the shorter kept when it fails)."""
    root: dict[str, dict] = {}
    for piece in pieces:
        node = root
        for ch in piece:
            node = node.setdefault(ch, {})
        node[""] = {}  # a piece ends here
    return _trie_node(root)


def _trie_node(node: dict[str, dict]) -> str:
    branches = []
    for ch, child in sorted(node.items()):
        if not ch:
            continue
        text = re.escape(ch)
        while len(child) == 1 and "" not in child:  # a run of single characters: no group
            ((ch, child),) = child.items()
            text += re.escape(ch)
        branches.append(text + _trie_node(child))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if "" in node else body


def _pieces(need: Need) -> set[tuple[bool, int, str]] | None:
    """Texts one of which some row must hold for `need` to be met, when there are such, as
    (exact, position, text): a value of an `in` (exact), a LIKE's longest piece (folded,
    contained); for `all`, its smallest set; for `any`, the union of its branches' when
    each has one."""
    kind, pos, arg = need
    if kind == "in":
        return {(True, pos, value) for value in arg}
    if kind == "like":
        return {(False, pos, max(arg, key=len))}
    if kind == "all":
        keys = [k for k in map(_pieces, arg) if k is not None]
        return min(keys, key=_piece_rank) if keys else None
    if kind == "any":
        keys = [_pieces(n) for n in arg]
        if not keys or any(k is None for k in keys):
            return None
        return set().union(*keys)  # type: ignore[arg-type]
    return None


class _BatchValues:
    """A batch's distinct values per column, computed when first asked for."""

    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows
        self._values: dict[int, set[Any] | None] = {}
        self._text: dict[int, str | None] = {}

    def values(self, pos: int) -> set[str] | None:
        """The distinct non-NULL values at `pos` (NULL equals and is LIKE nothing); None
        when one is not text (SQLite would compare it after a conversion: no verdict)."""
        if pos not in self._values:
            seen = {row[pos] for row in self.rows}
            seen.discard(None)
            self._values[pos] = seen if all(type(v) is str for v in seen) else None
        return self._values[pos]

    def text(self, pos: int) -> str | None:
        """All the values at `pos` as one folded text, for LIKE pieces to be looked for in
        (a piece found across two values is a false alarm: harmless)."""
        if pos not in self._text:
            seen = self.values(pos)
            self._text[pos] = None if seen is None else fold("\n".join(seen))
        return self._text[pos]

    def holds(self, need: Need) -> bool:
        """False only when no row can meet `need`."""
        kind, pos, arg = need
        if kind == "in":
            seen = self.values(pos)
            return seen is None or not seen.isdisjoint(arg)
        if kind == "like":
            text = self.text(pos)
            return text is None or all(piece in text for piece in arg)
        if kind == "any":
            return any(map(self.holds, arg))
        return all(map(self.holds, arg))
