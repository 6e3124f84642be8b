"""The detector: a live process table in SQLite, SQL rules run over what changes,
alerts on `alerts.<severity>`, process history in RocksDB.

Events are applied in batches: the first message of a burst waits `batch_wait_ms` on
the socket (the service loop's bus wait), then everything waiting is read and applied
as one batch (the incremental rules run once over it); a backlog is read without the
wait, and a batch is applied early when full. Aggregate rules run on their own
cadence. Rule loads, reloads and disables are audited on `audit.detector`.

No event missed silently: a gap in a collector's `events.process` stream is filled by
a `replay` RPC to that collector (its WAL answers) before the message that revealed
it is applied; the last seq taken in per collector (a cursor) is written with the
history rows, so after a restart the detector replays what it missed while down.
History rows and cursors are staged for up to `history_wait_ms` and written together
(a batch that fires an alert is written at once), so a crash replays at most that much
more, none of which had fired. Each
collector event is thus applied, judged by the rules and kept in history once. Only
what no replay can supply falls back to rebuilding the live table from a snapshot.

Alerts are written to an alert log (same RocksDB) before they are sent, and the
`replay` verb answers for them by `alerts.<severity>` stream and seq, so the alerter
can fetch what it missed.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import daemoneye
from daemoneye import wire, wireread
from daemoneye.bus import Gap, Message, Topics, stream_of
from daemoneye.metrics import rule_figures
from daemoneye.replay import Intake, ReplayRequestError, answer, parse_request
from daemoneye.rpc import RpcClient, RpcError, RpcResult
from daemoneye.rules.engine import Engine, Firing
from daemoneye.rules.live import RECORD_DEFAULTS, EventIn
from daemoneye.rules.model import Problem, Rule, parse_rules_text
from daemoneye.rules.offload import OffloadError
from daemoneye.rules.sandbox import BudgetExceeded
from daemoneye.service import Request, RpcFault, Service, rpc
from daemoneye.store import StoreError

from .alertlog import AlertLog
from .ancestry import Ancestry
from .history import History, Sweep
from .history_db import DetectorStore, open_store
from .keys import dedup_key
from .tuning import Tuning

RECORD_FIELDS = tuple(RECORD_DEFAULTS)
# The hourly retention pass over the history's pid index goes this many keys a step, a
# step every EXPIRE_STEP_S: one pass over a bench's 30,000 keys held the loop 130 ms, and
# a week's history holds far more; a step is ~4-8 ms, as long as the loop's other timers
EXPIRE_STEP_KEYS = 1500
EXPIRE_STEP_S = 0.1
EVENT_KINDS = ("processEvent", "processEventBatch")
STORE_NOTE = "history writes failing"
NEVER = float("inf")
# The longest the window table's trim rests on its own reckoning of when its oldest row
# is due (wall time, which may jump): a bound on how late a jump makes it.
TRIM_REST_MAX_S = 60.0
PS_COLUMNS = (
    "pid, parent, name, path, cmdline, username, uid, euid, state, threads, "
    "resident_size, start_time, cwd, sha256, collector"
)


def default_rules_dir() -> Path:
    """The shipped rule set: inside an installed wheel, or deploy/rules in a checkout."""
    package = Path(daemoneye.__file__).resolve().parent
    for candidate in (package / "default_rules", package.parents[1] / "deploy" / "rules"):
        if candidate.is_dir():
            return candidate
    return package.parents[1] / "deploy" / "rules"


# What the engine takes of a ProcessEvent (`previous` is not read): through pycapnp, or
# by the compiled reader from the message's bytes where it was built (wireread)
_EVENT_FIELDS = (
    "kind", "record", "timeNs", "source", "changedFields", "reason", "severity", "exitCode",
    "runtimeNs", "hostname",
)  # fmt: skip
_EVENT = wire.tuple_reader(wire.ProcessEvent.schema, _EVENT_FIELDS)
_EVENT_SHAPE = wireread.shape(wire.ProcessEvent.schema, _EVENT_FIELDS)


def event_in(body: Any, source_id: str) -> EventIn:
    """A decoded ProcessEvent reader as the engine's input (DecodeError if malformed)."""
    return event_of(_EVENT(body), source_id)


def event_of(row: tuple, source_id: str) -> EventIn:
    """The engine's input from the values of _EVENT_FIELDS, however they were read."""
    kind, record, time_ns, source, changed, reason, severity, exit_code, runtime, host = row
    return EventIn(
        kind, record, time_ns, source, source_id, changed, reason, severity, exit_code,
        runtime, host,
    )  # fmt: skip


def alert_body(firing: Firing, source_id: str, hostname: str) -> dict[str, Any]:
    rule, now = firing.rule, time.time_ns()
    rec = firing.record or {}
    what = rec.get("exePath") or rec.get("name") or firing.row.get("path") or ""
    pid = rec.get("pid", firing.row.get("pid", ""))
    body: dict[str, Any] = {
        "alertId": os.urandom(16).hex(),  # as random as uuid4().hex, a quarter the cost
        "ruleId": rule.id,
        "ruleName": rule.name,
        "severity": rule.severity,
        "title": f"{rule.name}: {what} (pid {pid})" if what else rule.name,
        "description": rule.description,
        "rowJson": json.dumps(firing.row, default=str),
        "dedupKey": dedup_key(firing),
        "firstSeenNs": now,
        "lastSeenNs": now,
        "count": 1,
        "tags": list(rule.tags),
        "timeNs": now,
        "hostname": rec.get("hostname") or hostname,
    }
    if firing.record:
        body["process"] = {k: firing.record[k] for k in RECORD_FIELDS if k in firing.record}
    return body


class Detector(Service):
    name: ClassVar[str] = "detector"
    subscriptions: ClassVar[tuple[str, ...]] = (Topics.PROCESS, Topics.LIFECYCLE)

    def __init__(self, settings: Any, service_id: str | None = None) -> None:
        super().__init__(settings, service_id)
        self.cfg = settings.detector
        self.engine: Engine | None = None
        self.store: DetectorStore | None = None
        self.history: History | None = None
        self.alert_log: AlertLog | None = None
        self.rpc_client: RpcClient | None = None
        self.intake = Intake(
            lambda stream: stream == Topics.PROCESS_STREAM,
            lambda topic, envelope, _data: self.take(topic, envelope, wire.body_kind(envelope)),
        )
        self.alerts_unlogged = 0  # sent without an alert log record (cannot be replayed)
        self.store_errors = 0
        self.pending: list[EventIn] = []
        self.alerts_sent = 0
        self.rules_problems: list[Problem] = []
        self.snapshots: dict[str, str] = {}  # collector service id -> boot id snapshotted
        self.batches = 0
        self.ancestry: Ancestry | None = None
        self.tuning = Tuning()  # rule exceptions and the allowlist, counted
        self.sweep: Sweep | None = None  # the history's retention pass under way
        # what the last trim of process_events left: next_eid then, and the oldest row
        # (rowid, monotonic time it is due to go), None when it left the table empty
        self._trimmed_eid = -1
        self._oldest_event: tuple[int, float] | None = None

    @property
    def rules_dir(self) -> Path:
        configured = self.cfg.rules_dir or os.environ.get("DAEMONEYE_RULES_DIR")
        return Path(configured).expanduser() if configured else default_rules_dir()

    # --- lifecycle -------------------------------------------------------------

    def niceness(self) -> int:
        return self.cfg.nice

    def setup(self) -> None:
        cfg = self.cfg
        self.engine = Engine(
            window_s=cfg.events_window_s,
            window_rows=cfg.events_window_rows,
            budget_s=cfg.rule_budget_ms / 1000,
            scheduled_budget_s=cfg.scheduled_budget_ms / 1000,
            default_interval_s=cfg.schedule_interval_s,
            max_rows=cfg.max_rows,
            on_disable=self._on_disable,
            isolate=True,  # rules compiled in a short-lived child: no sqlglot kept here
            compile_timeout_s=cfg.compile_timeout_s,
        )
        if cfg.persist:
            try:
                self.store = open_store(self.settings.data_dir)
            except StoreError as exc:
                self.notes.append(f"history disabled: {exc}")
                self.state = "degraded"
            else:
                self.history = History(self.store, cfg.history_max_pending)
                self.alert_log = AlertLog(self.store, cfg.alert_log_max, cfg.alert_log_days * 86400)
                self._resume()
        self.ancestry = Ancestry(self.engine.tables, self.history, cfg.ancestry_depth)
        self.load_rules("load")
        self.rpc_client = RpcClient(
            self.factory, self.settings.endpoint("control"), self.service_id, cfg.snapshot_timeout_s
        )
        self.intake.connect(self.rpc_client, self.log, cfg.replay_routing_wait_s)
        # A batch is flushed when its wait ends (on_drained) or it is full; the flush
        # timer catches what no drain scheduled and writes staged history when it is
        # due. Each timer runs only when it has work (Service.every's idle_until): the
        # scheduled rules when the next of them is due, the window's trim when a row is
        # due to go. An idle detector then wakes for its heartbeat, not 6 times a second.
        history_wait_s = min(1.0, max(0.05, cfg.history_wait_ms / 1000))
        self.every(history_wait_s, self.flush, idle_until=self._flush_idle_until)
        self.every(0.25, self.run_scheduled, idle_until=self._scheduled_idle_until)
        self.every(1.0, self._trim_events, idle_until=self._trim_events_idle_until)
        self.every(300.0, self.engine.tables.refresh_users, first_in_s=300.0)
        self.every(3600.0, self._expire, first_in_s=60.0)
        self.every(cfg.store_retry_s, self._retry_store, first_in_s=cfg.store_retry_s)
        self.request_snapshot(Topics.control("collector"), "")
        # The batch wait is the bus's: the first message of a burst leaves the socket
        # unwatched for `batch_wait_ms`, then everything waiting is drained and applied
        # at once. One wake-up per batch instead of one per message plus a flush timer
        # (at 200 exec/s the per-message wake-ups cost more than the rules).
        self.bus_batch_wait_s = cfg.batch_wait_ms / 1000
        # what exists now lives as long as the service: keep it out of GC passes, which
        # otherwise rescan it on every full collection (latency spikes under load)
        gc.collect()
        gc.freeze()
        # every event allocates a few dozen short-lived, acyclic objects (freed by reference
        # counting): at the default gen-0 threshold of 700, collections cost ~3 us an
        # event (~7% of the detector at full rate) and found nothing; cycles are rare here
        gc.set_threshold(10_000, 10, 10)

    def teardown(self) -> None:
        self.flush()
        if self.history is not None:
            self.history.commit()  # what is staged; a failure is retried just below
        if self.history is not None and self.history.pending:
            self._retry_store()  # a last try: space may be back
        if self.store is not None:
            self.store.close()

    def _resume(self) -> None:
        """Continue where the last run stopped: alert seqs go on from the alert log (a
        seq names one alert for as long as it is kept), and sequence checking of each
        collector from the history's cursors, so what was missed while down is a gap."""
        assert self.history is not None and self.alert_log is not None
        if self.publisher is not None:
            for stream, (_first, last) in self.alert_log.streams().items():
                self.publisher.continue_from(stream, last)
        resumed = self.intake.resume(self.subscriber, self.history.cursors())
        if resumed:
            self.log.info("resumed sequence checking of %d collector streams", resumed)

    def on_reload(self) -> None:
        self.load_rules("reload")

    # --- rules -----------------------------------------------------------------------

    def load_rules(self, action: str) -> dict[str, Any]:
        assert self.engine is not None
        directory = self.rules_dir
        if not directory.is_dir():
            problems = [Problem(str(directory), "", 0, "rules directory does not exist")]
            changes = self.engine.load([])
        else:
            try:
                changes, problems = self.engine.load_paths([directory])
            except OffloadError as exc:  # the compiling child failed or hung: keep the rules
                why = f"rules not compiled, the {len(self.engine.rules)} loaded kept: {exc}"
                problems, changes = [Problem(str(directory), "", 0, why)], {}
        problems += self.tuning.install(self.engine, self.cfg.allowlist, directory)
        self.rules_problems = problems
        for p in problems:
            self.log.error("rule rejected: %s", p)
        self.notes = [n for n in self.notes if not n.startswith("rules:")]
        if problems:
            self.notes.append(f"rules: {len(problems)} rejected (see `daemoneye rules list`)")
        summary = {
            "dir": str(directory),
            "loaded": len(self.engine.rules),
            "problems": [str(p) for p in problems],
            **{k: v for k, v in changes.items() if v},
        }
        self.log.info(
            "rules %s: %d loaded, %d rejected", action, len(self.engine.rules), len(problems)
        )
        self.audit(f"rules.{action}", str(directory), summary)
        return summary

    def _on_disable(self, rule: Rule, why: str) -> None:
        self.audit("rule.disable", rule.id, {"path": rule.path, "reason": why})
        self.notes = [n for n in self.notes if not n.startswith(f"rule {rule.id} ")]
        self.notes.append(f"rule {rule.id} disabled: {why}")

    # --- events --------------------------------------------------------------------

    def on_message(self, msg: Message) -> None:
        kind = msg.kind  # read while decoding: no second read of the union
        if kind in EVENT_KINDS:
            # the header as the subscriber decoded it: each read through the envelope
            # reader costs ~0.5 us, and the cursor and the events need five
            topic, source, seq = msg.topic, msg.source_id, msg.seq
            if self.cfg.catch_up_new_streams:  # joined mid-stream: its beginning first
                self.intake.catch_up_at(topic, source, seq)
            self._take(topic, msg.envelope, kind, source, msg.boot_id, seq, msg.raw)
        elif kind == "registration" and msg.topic == Topics.LIFECYCLE:
            self._on_lifecycle(msg.body)

    def take(self, topic: str, envelope: Any, kind: str) -> None:
        """Queue a collector envelope read by hand (a replayed one), its header read
        from the envelope."""
        if kind in EVENT_KINDS:
            self._take(topic, envelope, kind, envelope.sourceId, envelope.bootId, envelope.seq)

    def _take(
        self,
        topic: str,
        envelope: Any,
        kind: str,
        source: str,
        boot_id: str,
        seq: int,
        raw: bytes | None = None,
    ) -> None:
        """Queue an envelope's events for the next batch, with its cursor. `raw`: its
        bytes, for the compiled reader (wireread) where it reads them."""
        rows = None if raw is None else wireread.read_events(raw, kind, _EVENT_SHAPE)
        if rows is not None:
            self.pending.extend([event_of(row, source) for row in rows])
        elif kind == "processEvent":
            self.pending.append(event_in(wire.body_as(envelope, kind), source))
        else:
            # read whole before queued: a malformed event drops its envelope, not half of it
            batch = wire.batch_events(wire.body_as(envelope, kind))
            events = [event_in(e, source) for e in batch]
            self.pending.extend(events)
        self.intake.cursors.note_seq(topic, source, boot_id, seq)
        if len(self.pending) >= self.cfg.max_batch:
            self.flush()

    def on_drained(self) -> None:
        """Apply what arrived as one batch: its first event has waited `batch_wait_ms`
        on the socket (the service loop's bus wait), or the batch is a backlog, or full
        at `max_batch`. The rules' fixed cost per run (~250 us with 100 rules) and the
        history write are shared by every event of a trickle instead of paid per
        message."""
        self.flush()

    def flush(self) -> None:
        history = self.history
        if self.pending and self.engine is not None:
            events, self.pending = self.pending, []
            cursors = self.intake.cursors.take()
            firings, batch = self.engine.apply(events)
            self.batches += 1
            self.publish_alerts(firings)
            if history is not None:
                history.stage(batch.event_rows, cursors)
                if firings:  # at once: a crash then replays no event that fired
                    self.write_history()
                    return
        if history is not None and history.due(self.cfg.history_wait_ms / 1000, self.cfg.max_batch):
            self.write_history()

    def write_history(self) -> None:
        """Write the history rows and cursors staged by `flush` (one RocksDB write for
        the batches of `history_wait_ms`)."""
        if self.history is not None and not self.history.commit():
            self._store_failed(self.history.error)

    def _flush_idle_until(self) -> float:
        """The flush timer's work: events no drain applied, history rows once due."""
        if self.pending:
            return 0.0
        staged_at = self.history.staged_at if self.history is not None else None
        return NEVER if staged_at is None else staged_at + self.cfg.history_wait_ms / 1000

    def run_scheduled(self) -> None:
        if self.engine is not None:
            self.flush()
            self.publish_alerts(self.engine.run_due())

    def _scheduled_idle_until(self) -> float:
        # a load sets it to 0: the load is an RPC, a signal or setup, activity all
        return self.engine.next_due if self.engine is not None else NEVER

    def publish_alerts(self, firings: list[Firing]) -> None:
        """Encode, log (so the alerter can replay them), then send: a crash between the
        two leaves an alert the log holds and the bus never carried, never the reverse."""
        if not firings:
            return
        assert self.publisher is not None
        firings = self.tuning.keep(firings)
        if not firings:
            return
        if self.history is not None and self.history.pending:
            self.write_history()  # an alert's ancestry reads the history: what is staged too
        out = []
        for firing in firings:
            body = alert_body(firing, self.service_id, self.settings.hostname)
            if firing.record and self.ancestry is not None:
                body["ancestry"] = self.ancestry.of(firing.record)
            topic = Topics.alert(firing.rule.severity)
            seq, data = self.publisher.encode(topic, "alert", body)
            out.append((topic, seq, data))
        if self.alert_log is not None:
            try:
                self.alert_log.append(out)
            except StoreError as exc:  # as the collector's WAL: never hold back the live stream
                self.alerts_unlogged += len(out)
                self._store_failed(str(exc))
        for topic, _seq, data in out:
            self.publisher.send_encoded(topic, data)
        self.alerts_sent += len(out)

    # --- a failing store -----------------------------------------------------------

    def _store_failed(self, error: str) -> None:
        self.store_errors += 1
        if self.store_errors == 1 or self.store_errors % 100 == 0:
            self.log.error(
                "%s (%d times); %d rows kept pending: %s",
                STORE_NOTE,
                self.store_errors,
                self.history.pending if self.history else 0,
                error,
            )
        self.state = "degraded"
        self.notes = [n for n in self.notes if not n.startswith(STORE_NOTE)]
        self.notes.append(f"{STORE_NOTE}: {error}"[:200])

    def _retry_store(self) -> None:
        """While writes fail: reopen the store (RocksDB refuses every write after an I/O
        error until reopened) and write what is pending; once it succeeds, say so."""
        history = self.history
        if (
            self.store is None
            or history is None
            or not any(n.startswith(STORE_NOTE) for n in self.notes)
        ):
            return
        try:
            self.store.reopen_in_place()
        except StoreError as exc:
            self._store_failed(str(exc))
            return
        if not history.commit():
            self._store_failed(history.error)
            return
        self.notes = [n for n in self.notes if not n.startswith(STORE_NOTE)]
        if not any(n.startswith("history disabled") for n in self.notes):
            self.state = "running"
        self.log.info(
            "history writes resumed after %d errors (%d rows dropped meanwhile)",
            self.store_errors,
            history.dropped,
        )

    def _trim_events(self) -> None:
        """The window table's old rows (not named _trim: that is the service's heap trim)."""
        if self.engine is None:
            return
        tables = self.engine.tables
        tables.trim_events()
        self._trimmed_eid = tables.next_eid
        oldest = tables.oldest_event()
        if oldest is None:
            self._oldest_event = None
            return
        rowid, when = oldest
        now = time.monotonic()
        # trim_events drops a row of time t once int(now - window_s) > t
        due = (
            now + (math.floor(when) + 1 + tables.window_s - time.time())
            if when is not None
            else NEVER
        )
        self._oldest_event = (rowid, min(due, now + TRIM_REST_MAX_S))

    def _trim_events_idle_until(self) -> float:
        """When the window table next has a row to drop: its oldest row's time is out,
        or more rows came than `events_window_rows` allows."""
        if self.engine is None:
            return NEVER
        tables = self.engine.tables
        if self._oldest_event is None:  # empty at the last trim: rows since are new
            return 0.0 if tables.next_eid != self._trimmed_eid else NEVER
        rowid, due = self._oldest_event
        return 0.0 if rowid <= tables.next_eid - 1 - tables.window_rows else due

    def _expire(self) -> None:
        if self.history is not None and self.sweep is None:
            self.sweep = self.history.sweep(self.cfg.retention_days)
            self._sweep_step()
        if self.alert_log is not None:
            self.alert_log.trim()

    def _sweep_step(self) -> None:
        """One step of the retention pass; the next in EXPIRE_STEP_S until it is done."""
        sweep, self.sweep = self.sweep, None  # a step that raises ends the pass (logged):
        if sweep is not None and not sweep.step(EXPIRE_STEP_KEYS):  # the next hour's redoes it
            self.sweep = sweep
            self.once(EXPIRE_STEP_S, self._sweep_step)

    # --- the collector's snapshot ------------------------------------------------------

    def on_gap(self, gap: Gap) -> None:
        """Missed process events: fetched from the collector's WAL and applied in order
        before the message that revealed the gap. What it no longer holds leaves the live
        table possibly wrong: then it is resynchronised from that collector's snapshot."""
        if gap.stream != Topics.PROCESS_STREAM:
            return
        if not self.intake.repair(gap):
            self.log.warning(
                "missed process events from %s beyond replay; rebuilding from its snapshot",
                gap.source_id,
            )
            self.flush()
            self.request_snapshot(Topics.control("collector", gap.source_id), gap.source_id)

    def _on_lifecycle(self, reg: Any) -> None:
        if reg.service != "collector" or str(reg.action) != "register":
            return
        if self.snapshots.get(reg.serviceId) != reg.bootId:
            target = Topics.control("collector", reg.serviceId)
            self.request_snapshot(target, reg.serviceId, reg.bootId)

    def request_snapshot(self, target: str, collector_id: str, boot_id: str = "") -> bool:
        """Rebuild the live table from a collector's snapshot; False when none answers."""
        assert self.rpc_client is not None and self.engine is not None
        try:
            records = self.rpc_client.call(target, "snapshot", {}).value
        except RpcError as exc:
            self.log.info("no collector snapshot from %s yet: %s", target, exc)
            return False
        if not isinstance(records, list):
            self.log.warning("snapshot from %s is not a list; ignored", target)
            return False
        self.flush()
        firings = self.engine.rebuild([r for r in records if isinstance(r, dict)], collector_id)
        self.publish_alerts(firings)
        if collector_id:
            self.snapshots[collector_id] = boot_id
        else:
            self.snapshots[""] = "any"
        self.log.info("live table rebuilt from %s: %d processes", target, len(records))
        return True

    # --- status ------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        if self.engine is None:
            return {}
        rules = self.engine.rules.values()
        return {
            **rule_figures(rules),  # per rule, for /metrics (daemoneye.metrics)
            "detector.processes": len(self.engine.tables.live),
            "detector.events": self.engine.tables.events_seen,
            "detector.alerts": self.alerts_sent,
            "detector.rules": sum(1 for a in rules if a.rule.enabled and not a.disabled),
            "detector.rules_disabled": sum(1 for a in rules if a.disabled),
            "detector.batches": self.batches,
            "detector.rule_runs_screened_out": self.engine.screened_out,
            "detector.rule_results_cut": self.engine.rows_cut,
            "detector.rows_refused": self.engine.tables.rows_refused,
            **self.intake.metrics("detector"),
            "detector.history_written": self.history.written if self.history else 0,
            "detector.history_pending": self.history.pending if self.history else 0,
            "detector.history_dropped": self.history.dropped if self.history else 0,
            "detector.store_errors": self.store_errors,
            "detector.store_reopens": self.store.reopens if self.store else 0,
            "detector.alerts_logged": self.alert_log.logged if self.alert_log else 0,
            "detector.alerts_unlogged": self.alerts_unlogged,
            "detector.alerts_suppressed": self.tuning.suppressor.total,
        }

    def queue_depth(self) -> int:
        return len(self.pending)

    # --- RPC -------------------------------------------------------------------------

    def _query(self, sql: Any, limit: Any, checked: bool = False) -> dict[str, Any]:
        """Run a read-only query; `checked`: validated already (see Engine.query)."""
        assert self.engine is not None
        if not isinstance(sql, str) or not sql.strip():
            raise RpcFault("bad_request", "query needs a non-empty 'sql' string")
        limit = limit if isinstance(limit, int) and 0 < limit <= 100_000 else 1000
        self.flush()
        try:
            budget_s = self.cfg.query_budget_ms / 1000
            columns, rows = self.engine.query(sql, budget_s, limit, checked)
        except ValueError as exc:
            raise RpcFault("bad_request", f"query rejected: {exc}") from None
        except BudgetExceeded as exc:
            raise RpcFault("failed", f"query {exc}") from None
        except Exception as exc:  # sqlite errors at run time
            raise RpcFault("failed", f"query failed: {exc}") from None
        return {"columns": columns, "rows": [list(r) for r in rows]}

    @rpc("query")
    def rpc_query(self, request: Request) -> dict[str, Any]:
        return self._query(request.params.get("sql"), request.params.get("limit"))

    @rpc("ps")
    def rpc_ps(self, request: Request) -> dict[str, Any]:
        # our own SQL: no validation (a forked child with sqlglot, engine.py) needed
        return self._query(f"SELECT {PS_COLUMNS} FROM processes ORDER BY pid", 100_000, True)

    @rpc("rules_list")
    def rpc_rules_list(self, request: Request) -> dict[str, Any]:
        assert self.engine is not None
        return {
            "dir": str(self.rules_dir),
            "rules": [self.tuning.summary(a) for a in self.engine.rules.values()],
            "problems": [str(p) for p in self.rules_problems],
        }

    @rpc("rules_reload")
    def rpc_rules_reload(self, request: Request) -> dict[str, Any]:
        return self.load_rules("reload")

    @rpc("rules_test")
    def rpc_rules_test(self, request: Request) -> dict[str, Any]:
        """Run the rules of a YAML text against the live tables: what would fire now."""
        assert self.engine is not None
        text, path = request.params.get("text"), str(request.params.get("path") or "<rpc>")
        if not isinstance(text, str):
            raise RpcFault("bad_request", "rules_test needs the rule file's 'text'")
        rules, problems = parse_rules_text(text, path)
        results = []
        for rule, problem in zip(rules, self.engine.check_rules(rules), strict=True):
            if problem is not None:
                problems.append(problem)
                continue
            try:
                result = self._query(rule.sql, request.params.get("limit"), checked=True)
            except RpcFault as exc:
                problems.append(Problem(path, rule.id, rule.sql_line, str(exc)))
                continue
            results.append({"id": rule.id, "name": rule.name, "severity": rule.severity, **result})
        return {"results": results, "problems": [str(p) for p in problems]}

    @rpc("replay")
    def rpc_replay(self, request: Request) -> RpcResult:
        """Published alerts of one `alerts.<severity>` stream from the alert log."""
        try:
            req = parse_request(request.params, self.cfg.replay_max)
        except ReplayRequestError as exc:
            raise RpcFault("bad_request", str(exc)) from None
        if not req.stream.startswith(Topics.ALERTS) or stream_of(req.stream) != req.stream:
            raise RpcFault(
                "bad_request",
                f"replay: stream must be an alerts.<severity> stream, not {req.stream!r}",
            )
        if self.alert_log is None:
            raise RpcFault("failed", "replay: the alert log is disabled (detector.persist)")
        try:
            entries = self.alert_log.read(req.stream, req.from_seq, req.to_seq, req.limit + 1)
            first, last = self.alert_log.streams().get(req.stream, (0, 0))
        except Exception as exc:  # a store closed by a failed reopen (disk still full)
            raise RpcFault("failed", f"replay: alert log unreadable: {exc}") from None
        budget = self.settings.bus.max_message_bytes // 2
        return answer(entries, req.limit, budget, first, last)

    @rpc("history")
    def rpc_history(self, request: Request) -> list[dict[str, Any]]:
        if self.history is None:
            raise RpcFault("failed", "process history is disabled")
        self.flush()
        self.write_history()  # what is staged too: the answer holds every event applied
        p = request.params
        limit = p.get("limit", 100)
        if not isinstance(limit, int) or not 0 < limit <= 10_000:
            raise RpcFault("bad_request", "limit must be an integer in 1..10000")
        if p.get("pid") is not None:
            if not isinstance(p["pid"], int):
                raise RpcFault("bad_request", "pid must be an integer")
            return self.history.by_pid(p["pid"], limit)
        since = p.get("since_ns", 0)
        if not isinstance(since, int):
            raise RpcFault("bad_request", "since_ns must be an integer")
        return self.history.by_time(since, limit)


SERVICE = Detector
