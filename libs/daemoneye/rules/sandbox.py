"""The in-memory SQLite database rules run in: the schema, an authorizer that lets rule
SQL only read our tables and call allowed functions, a progress-handler budget of
CPU time per run, and connection limits.

The detector's own writes run "trusted" (the authorizer is consulted only when a
statement is prepared, so this costs nothing per row).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import functions
from .tables import TABLES, schema_statements

READABLE = frozenset(TABLES)
# VM instructions between budget checks (tens of microseconds): each check is a call into
# Python and a clock read, ~1 us, so checking more often costs rules several percent
PROGRESS_OPS = 10_000

LIMITS = {
    "SQLITE_LIMIT_LENGTH": 1_000_000,
    "SQLITE_LIMIT_SQL_LENGTH": 128 * 1024,
    "SQLITE_LIMIT_EXPR_DEPTH": 200,
    "SQLITE_LIMIT_COMPOUND_SELECT": 64,
    "SQLITE_LIMIT_FUNCTION_ARG": 32,
    "SQLITE_LIMIT_ATTACHED": 0,
    "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": 1000,
    "SQLITE_LIMIT_VARIABLE_NUMBER": 999,
    "SQLITE_LIMIT_TRIGGER_DEPTH": 1,
}


def _nothing() -> None:
    pass


class BudgetExceeded(Exception):
    """A rule or query ran longer than its time budget and was interrupted."""


class Sandbox:
    def __init__(self) -> None:
        self.conn = sqlite3.connect(
            ":memory:", isolation_level=None, check_same_thread=False, cached_statements=1024
        )
        self._trusted = True
        self._deadline: float | None = float("inf")
        self._budget = 0.0
        self._interrupted = False
        # called before each statement `run`: the live tables make their pending writes
        self.before_run: Callable[[], None] = _nothing
        # no rollback journal: the tables are rebuilt from the bus, never recovered
        self.conn.execute("PRAGMA journal_mode = OFF")
        # process_events rows are wide (70 columns): 16 KiB pages make appending them ~10%
        # cheaper than the default 4 KiB (set before the first table exists)
        self.conn.execute("PRAGMA page_size = 16384")
        for stmt in schema_statements():
            self.conn.execute(stmt)
        functions.register(self.conn)
        for name, value in LIMITS.items():
            if hasattr(sqlite3, name):
                self.conn.setlimit(getattr(sqlite3, name), value)
        self.conn.set_authorizer(self._authorize)
        # the progress handler is installed only while untrusted SQL runs (`run`): the
        # detector's own inserts would otherwise call it every few rows
        self._trusted = False

    # --- guards ----------------------------------------------------------------

    def _authorize(self, action: int, arg1: Any, arg2: Any, db: Any, trigger: Any) -> int:
        if self._trusted:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_SELECT:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            ok = db in (None, "main") and str(arg1).lower() in READABLE
            return sqlite3.SQLITE_OK if ok else sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            ok = str(arg2).lower() in functions.ALLOWED_FUNCTIONS
            return sqlite3.SQLITE_OK if ok else sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_DENY  # writes, DDL, PRAGMA, ATTACH, transactions, recursion

    def _progress(self) -> int:
        now = time.thread_time()
        if self._deadline is None:  # the first check starts the clock (see `run`)
            self._deadline = now + self._budget
            return 0
        if now > self._deadline:
            self._interrupted = True
            return 1
        return 0

    def trust(self, trusted: bool) -> None:
        """The hot path's cheaper form of `trusted()`."""
        self._trusted = trusted

    @contextlib.contextmanager
    def trusted(self) -> Iterator[sqlite3.Connection]:
        """The detector's own statements: table maintenance, no budget."""
        self._trusted = True
        try:
            yield self.conn
        finally:
            self._trusted = False

    # --- running untrusted SQL -----------------------------------------------------

    def run(
        self, sql: str, budget_s: float, max_rows: int, params: tuple = ()
    ) -> tuple[list[str], list[tuple]]:
        """Run a validated SELECT under the authorizer and a time budget.

        `params` are only ever the engine's own (an incremental rule's rowid bound)."""
        self.before_run()
        self._interrupted = False
        # CPU time of this thread, not wall time: a busy host that descheduled us must
        # not make a healthy rule look like a runaway one
        # The clock starts at the first progress check, PROGRESS_OPS instructions in: most
        # runs (a rule over a few changed rows) end before it and never read the clock,
        # which costs ~1 us, and far more on a loaded host; the budget grows by those
        # first instructions' time, microseconds
        self._deadline = None
        self._budget = budget_s
        self.conn.set_progress_handler(self._progress, PROGRESS_OPS)
        try:
            cur = self.conn.execute(sql, params)
            rows = cur.fetchmany(max_rows)
            columns = [d[0] for d in cur.description or ()]
            cur.close()
        except sqlite3.OperationalError:
            if self._interrupted:
                raise BudgetExceeded(
                    f"exceeded its CPU time budget of {budget_s * 1000:g} ms"
                ) from None
            raise
        finally:
            self.conn.set_progress_handler(None, 0)
            self._deadline = float("inf")
        return columns, rows

    def compile_error(self, sql: str) -> str | None:
        """None when `sql` compiles under the authorizer, else SQLite's reason."""
        try:
            self.conn.execute("EXPLAIN " + sql).fetchmany(1)
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return None
