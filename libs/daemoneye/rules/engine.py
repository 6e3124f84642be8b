"""The rule engine: loaded rules, their plans, differential firing and disabling.

`apply(events)` updates the tables and runs the incremental rules over what changed;
`run_due()` runs the scheduled rules whose interval has passed. Both return
`Firing`s (one per new matching row). A rule that errors or exceeds its time budget
is disabled and reported through `on_disable`; the others keep running.

Per batch, an incremental rule's own statement runs only when its screen (prefilter.py)
says some changed row could match: most rules are skipped after a set lookup or one
shared SQLite pass over the batch, instead of one statement execution each.

Result rows read per run are bounded (memory), by `max_rows` for a scheduled rule and
by `max_rows` plus the batch's changed rows for an incremental one: a batch of a
backlog or a replay (up to the detector's `max_batch` events) can hold more matching
processes than `max_rows`, and each must fire. A result cut at its bound is counted
(`rows_cut`) and logged, never silent.

Validating and planning rules needs sqlglot; running them does not. With `isolate`
(the detector), both are done in a short-lived forked child (offload.py) that hands
back plain rules, plans and problems, so the long-lived process never imports sqlglot
nor keeps the heap its parse trees fragment: ~10 MB of the detector at idle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from . import offload
from .lineage import sql_functions
from .live import Batch, EventIn, LiveTables, Proc
from .model import Problem, Rule
from .prefilter import CHECK_MIN_ROWS, Screening, screening_sql
from .sandbox import BudgetExceeded, Sandbox
from .scheduling import IDENTITY, Plan
from .tables import INCREMENTAL_TABLES

if TYPE_CHECKING:
    from .validate import Checked, Validator

log = logging.getLogger("daemoneye.rules")
T = TypeVar("T")


@dataclass
class Firing:
    rule: Rule
    row: dict[str, Any]
    record: dict[str, Any] | None
    identity: str


@dataclass
class Compiled:
    """A checked rule as it runs: plain data (picklable), no parse tree."""

    rule: Rule
    plan: Plan
    tables: frozenset[str]


@dataclass
class Lane:
    """The incremental rules that follow one table, as each batch needs them."""

    rules: list[Active]
    always: list[Active]  # nothing to screen (or a screen that failed): they always run
    screening: Screening | None  # the others


@dataclass
class Active:
    rule: Rule
    plan: Plan
    tables: frozenset[str]
    disabled: str = ""  # why, when disabled at run time
    runs: int = 0
    matches: int = 0
    seconds: float = 0.0
    due: float = 0.0
    previous: set[str] = field(default_factory=set)  # scheduled: identities last matched
    screen_failed: bool = False  # its screen errored on its own: the rule always runs
    order: int = 0  # position in the rule set: rules run (and fire) in this order
    rows_cut: int = 0  # runs whose result was cut at its row bound

    def summary(self) -> dict[str, Any]:
        r = self.rule
        return {
            "id": r.id,
            "name": r.name,
            "severity": r.severity,
            "enabled": r.enabled and not self.disabled,
            "state": "disabled"
            if not r.enabled
            else (f"disabled: {self.disabled}" if self.disabled else "active"),
            "mode": self.plan.mode,
            "path": r.path,
            "tags": r.tags,
            "runs": self.runs,
            "matches": self.matches,
            "avg_ms": round(self.seconds / self.runs * 1000, 3) if self.runs else 0.0,
        }


class Engine:
    def __init__(
        self,
        *,
        window_s: float = 600.0,
        window_rows: int = 100_000,
        budget_s: float = 0.2,
        scheduled_budget_s: float = 1.0,
        default_interval_s: float = 2.0,
        max_rows: int = 1000,
        on_disable: Callable[[Rule, str], None] | None = None,
        screening: bool = True,
        isolate: bool = False,
        compile_timeout_s: float = offload.TIMEOUT_S,
    ) -> None:
        self.sandbox = Sandbox()
        self._validator: Validator | None = None
        # compile in a forked child: sqlglot stays out of this process (see the top)
        self.isolate = isolate and offload.supported()
        self.compile_timeout_s = compile_timeout_s
        self.tables = LiveTables(self.sandbox, window_s, window_rows)
        for name, fn in sql_functions(self.tables.lookup, self.tables.exits).items():
            for nargs in (1, 2):  # (pid) or (pid, depth)
                self.sandbox.conn.create_function(name, nargs, fn)
        self.budget_s = budget_s
        self.scheduled_budget_s = scheduled_budget_s
        self.default_interval_s = default_interval_s
        self.max_rows = max_rows
        self.on_disable = on_disable or (lambda rule, why: None)
        self.rules: dict[str, Active] = {}
        self._lanes: dict[str, Lane] | None = None  # rebuilt after a load or a disable
        self.screening = screening  # False: every rule runs on every batch (tests compare)
        self.screened_out = 0  # rule runs skipped because their screen held for no row
        self.rows_cut = 0  # rule runs whose result was cut at its row bound
        self._next_due = 0.0  # no scheduled rule is due before (monotonic time)
        self.tables.refresh_users()

    # --- rules -------------------------------------------------------------------

    @property
    def validator(self) -> Validator:
        """The validator (sqlglot), made on first use: an isolated engine uses it only in
        its children."""
        if self._validator is None:
            from .validate import Validator

            self._validator = Validator(self.sandbox)
        return self._validator

    def load(self, checked: Iterable[Checked]) -> dict[str, list[str]]:
        """Install a rule set; unchanged rules keep their differential state and stats."""
        return self.install(compile_checked(checked))

    def install(self, compiled: Iterable[Compiled]) -> dict[str, list[str]]:
        """Install compiled rules; unchanged rules keep their differential state and stats."""
        old, self.rules = self.rules, {}
        changes: dict[str, list[str]] = {"added": [], "changed": [], "unchanged": [], "removed": []}
        for item in compiled:
            rule = item.rule
            prev = old.get(rule.id)
            if prev is not None and prev.rule.sql == rule.sql and not prev.disabled:
                prev.rule = rule
                self.rules[rule.id] = prev
                changes["unchanged"].append(rule.id)
                continue
            self.rules[rule.id] = Active(rule, item.plan, item.tables)
            changes["changed" if prev else "added"].append(rule.id)
        changes["removed"] = sorted(set(old) - set(self.rules))
        self._next_due = 0.0  # new scheduled rules are due at once
        for order, active in enumerate(self.rules.values()):
            active.order = order
        self._lanes = None
        return changes

    def load_paths(self, paths: Iterable[Any]) -> tuple[dict[str, list[str]], list[Problem]]:
        compiled, problems = self._compiling(self._compile_paths, list(paths))
        return self.install(compiled), problems

    def _compiling(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, work that needs sqlglot: in a forked child when isolated."""
        if not self.isolate:
            return fn(*args)
        return offload.call(fn, *args, timeout_s=self.compile_timeout_s)

    def _compile_paths(self, paths: list[Any]) -> tuple[list[Compiled], list[Problem]]:
        checked, problems = self.validator.load(paths)
        return compile_checked(checked), problems

    def check(self, rule: Rule) -> Problem | None:
        """Why `rule` would be rejected (None: it would load)."""
        return self.check_rules([rule])[0]

    def check_rules(self, rules: list[Rule]) -> list[Problem | None]:
        """Why each rule would be rejected (None: it would load); one child for them all."""
        return self._compiling(self._check_rules, rules) if rules else []

    def _check_rules(self, rules: list[Rule]) -> list[Problem | None]:
        results = [self.validator.check(rule) for rule in rules]
        return [r if isinstance(r, Problem) else None for r in results]

    def check_sql(self, sql: str) -> str | None:
        """Why an ad-hoc query is refused (None: it may run)."""
        return self._compiling(self._check_sql, sql)

    def _check_sql(self, sql: str) -> str | None:
        return self.validator.check_sql(sql)

    def enabled(self, mode: str) -> list[Active]:
        return [
            a
            for a in self.rules.values()
            if a.rule.enabled and not a.disabled and a.plan.mode == mode
        ]

    def needs(self, table: str) -> bool:
        return any(table in a.tables for a in self.rules.values() if a.rule.enabled)

    # --- running -------------------------------------------------------------------

    def apply(self, events: list[EventIn]) -> tuple[list[Firing], Batch]:
        batch = self.tables.apply(events)
        try:
            return self._run_incremental(batch), batch
        finally:
            self.tables.finish(batch)

    def rebuild(self, records: list[dict[str, Any]], collector: str) -> list[Firing]:
        batch = self.tables.rebuild(records, collector)
        try:
            return self._run_incremental(batch, drivers=("processes",))
        finally:
            self.tables.finish(batch)

    def _run_incremental(self, batch: Batch, drivers: tuple[str, ...] = ()) -> list[Firing]:
        firings: list[Firing] = []
        has = {"processes": bool(batch.procs), "process_events": bool(batch.events)}
        bounds = {"processes": batch.first_rowid, "process_events": batch.first_eid}
        actives: list[Active] = []
        for driver, lane in self.lanes().items():
            if not has[driver] or (drivers and driver not in drivers):
                continue
            actives += lane.always
            if lane.screening is not None:
                actives += self._screened_in(lane.screening, batch, bounds[driver])
            self.screened_out += len(lane.rules)
        # a rule joining what a named tool did in the window: none of those tools in it
        if self.screening:
            names = self.tables.has_event_name
            actives = [a for a in actives if not a.plan.window_names or names(a.plan.window_names)]
        self.screened_out -= len(actives)
        actives.sort(key=_order)
        # every changed row may match once: the bound grows with the batch
        changed = {"processes": len(batch.procs), "process_events": len(batch.events)}
        for active in actives:
            driver = active.plan.driver
            limit = self.max_rows + changed[driver]
            result = self._run(active, self.budget_s, (bounds[driver],), limit)
            if result is None:
                continue
            columns, rows = result
            at = columns.index(IDENTITY)
            for row in rows:
                data = {c: v for c, v in zip(columns, row, strict=True) if c != IDENTITY}
                ident = row[at]
                if driver == "processes":
                    proc = batch.procs.get(ident)
                    if proc is None or active.rule.id in proc.fired or proc.fork_copy:
                        continue  # a fork copy repeats what its parent fired already
                    proc.fired.add(active.rule.id)
                    record = proc.record
                    key = f"{record['pid']}:{record['startTicks']}"
                    if record["pidNamespace"]:  # the same pid and start in two containers
                        key += f"@{record['pidNamespace']}"
                else:
                    ev, _proc = batch.events.get(ident, (None, None))
                    record = ev.record if ev else None
                    key = f"event:{ident}"
                active.matches += 1
                firings.append(Firing(active.rule, data, record, key))
        return firings

    # --- screening (prefilter.py) ---------------------------------------------------------

    def lanes(self) -> dict[str, Lane]:
        """The enabled incremental rules by the table they follow (cached)."""
        if self._lanes is None:
            lanes: dict[str, Lane] = {}
            for driver in INCREMENTAL_TABLES:
                rules = [a for a in self.enabled("incremental") if a.plan.driver == driver]
                screened = [a for a in rules if self._screens(a)]
                always = [a for a in rules if not self._screens(a)]
                screening = Screening(driver, screened) if screened else None
                lanes[driver] = Lane(rules, always, screening)
            self._lanes = lanes
        return self._lanes

    def _screens(self, active: Active) -> bool:
        return self.screening and bool(active.plan.screen) and not active.screen_failed

    def _screened_in(self, screening: Screening, batch: Batch, bound: int) -> list[Active]:
        """The screened rules that could match the batch's rows: every need met by some
        row, and the screen held for some row. The others' statements need not run.

        A small batch (a quiet host's exec or two) is judged in Python, row by row
        (judge.py): only the screens it cannot be sure of go to SQLite."""
        if screening.table == "processes":
            rows = [proc.row for proc in batch.procs.values()]
        else:
            rows = batch.event_rows
        small = len(rows) < CHECK_MIN_ROWS
        folded: list[dict] = [{} for _ in rows] if small else []  # texts folded for LIKE
        candidates = screening.candidates(rows, folded)
        passed: list[Active] = []
        if small:
            passed, candidates = screening.judge(rows, candidates, folded)
        if not candidates:
            return passed
        for sql, chunk in screening.statements(candidates):
            verdicts = self._judge(sql, bound)
            if verdicts is None:  # no verdict: judge each screen alone
                verdicts = [self._judge_alone(active, bound) for active in chunk]
            passed += [a for a, held in zip(chunk, verdicts, strict=True) if held]
        return passed

    def _judge(self, sql: str, bound: int) -> tuple | None:
        """One 0/1 (or NULL: no rows) per screen; None when the statement failed."""
        try:
            _, rows = self.sandbox.run(sql, self.budget_s, 1, (bound,))
        except (BudgetExceeded, sqlite3.Error, ValueError, OverflowError):
            return None
        return rows[0] if rows else None

    def _judge_alone(self, active: Active, bound: int) -> bool:
        """True (run the rule) unless the screen alone says no row can match; a screen
        that fails alone is dropped, and the rule's own run decides (and disables it
        if that fails too)."""
        ((sql, _),) = screening_sql(active.plan.driver, [active.plan.screen or ""])
        verdict = self._judge(sql, bound)
        if verdict is None:
            active.screen_failed = True
            self._lanes = None
            log.info("rule %s: its screen failed; it runs on every batch", active.rule.id)
            return True
        return bool(verdict[0])

    @property
    def next_due(self) -> float:
        """When run_due has a scheduled rule to run next (monotonic; inf: none)."""
        return self._next_due

    def run_due(self, now: float | None = None, force: bool = False) -> list[Firing]:
        now = time.monotonic() if now is None else now
        if not force and now < self._next_due:
            return []
        firings: list[Firing] = []
        next_due = float("inf")
        for active in self.enabled("scheduled"):
            if not force and active.due > now:
                next_due = min(next_due, active.due)
                continue
            active.due = now + (active.rule.interval or self.default_interval_s)
            next_due = min(next_due, active.due)
            if "process_open_sockets" in active.tables:
                self.tables.refresh_sockets()
            result = self._run(active, self.scheduled_budget_s)
            if result is None:
                continue
            columns, rows = result
            current: dict[str, dict[str, Any]] = {}
            for row in rows:
                data = dict(zip(columns, row, strict=True))
                current[_identity(data, active.plan.identity_columns)] = data
            for ident, data in current.items():
                if ident not in active.previous:
                    active.matches += 1
                    firings.append(Firing(active.rule, data, self.record_for(data), ident))
            active.previous = set(current)
        self._next_due = next_due
        return firings

    def _run(
        self, active: Active, budget_s: float, params: tuple = (), max_rows: int = 0
    ) -> tuple[list[str], list[tuple]] | None:
        """The rule's columns and rows (at most `max_rows`, default the engine's), or
        None when it failed (then it is disabled)."""
        limit = max_rows or self.max_rows
        started = time.perf_counter()
        try:
            # one row more than the bound tells a cut result from one that fits
            columns, rows = self.sandbox.run(active.plan.sql, budget_s, limit + 1, params)
        except BudgetExceeded as exc:
            self.disable(active, str(exc))
            return None
        except (sqlite3.Error, ValueError, OverflowError) as exc:
            self.disable(active, f"failed: {exc}")
            return None
        finally:
            active.runs += 1
            active.seconds += time.perf_counter() - started
        if len(rows) > limit:
            del rows[limit:]
            self._cut(active, limit)
        return columns, rows

    def _cut(self, active: Active, limit: int) -> None:
        active.rows_cut += 1
        self.rows_cut += 1
        if active.rows_cut == 1 or active.rows_cut % 100 == 0:  # said, not flooded
            log.warning(
                "rule %s (%s): result cut at %d rows (%d times); rows beyond did not fire",
                active.rule.id,
                active.rule.path,
                limit,
                active.rows_cut,
            )

    def disable(self, active: Active, why: str) -> None:
        active.disabled = why
        self._lanes = None
        log.error("rule %s (%s) disabled: %s", active.rule.id, active.rule.path, why)
        self.on_disable(active.rule, why)

    def record_for(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The live record a scheduled rule's row is about, found by a pid column."""
        for name in ("pid", "p0_pid", "child_pid", "parent"):
            pid = row.get(name)
            if isinstance(pid, int):
                proc: Proc | None = self.tables.find(pid)
                if proc is not None:
                    return proc.record
        return None

    # --- ad-hoc ----------------------------------------------------------------------

    def query(
        self, sql: str, budget_s: float, max_rows: int, checked: bool = False
    ) -> tuple[list[str], list[tuple]]:
        """A validated read-only query (the console's `query` and `rules test`); `checked`:
        the caller validated it already (a rule just checked, the detector's own SQL)."""
        reason = None if checked else self.check_sql(sql)
        if reason:
            raise ValueError(reason)
        if "process_open_sockets" in sql.lower():
            self.tables.refresh_sockets()
        return self.sandbox.run(sql, budget_s, max_rows)


def compile_checked(checked: Iterable[Checked]) -> list[Compiled]:
    """Checked rules (with their parse trees) as they run: plan and tables read."""
    from .scheduling import make_plan

    return [
        Compiled(
            item.rule,
            make_plan(item.tree, item.rule.sql),
            frozenset(t.name.lower() for t in _tables_of(item.tree)),
        )
        for item in checked
    ]


def _order(active: Active) -> int:
    return active.order


def _tables_of(tree: Any) -> list[Any]:
    from sqlglot import exp

    return list(tree.find_all(exp.Table))


def _identity(row: dict[str, Any], columns: list[str] | None) -> str:
    picked = row if columns is None else {c: row.get(c) for c in columns}
    text = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
