"""The alerter service: alerts in from the bus, through dedup and rate limits, stored
pending per sink, handed to one worker thread per sink, confirmed when delivered.

Per alert, on the main thread: validate, dedup, the per-rule limit, the per-sink
limits, then staging. At the end of each burst read from the bus, one atomic
store write records every staged alert with a pending key per sink, and only then
are the alerts queued to the sinks. Workers report deliveries and failures back
through a queue that the main thread turns into `audit.alerter` records (the bus
sockets are not shared with threads).

Nothing published is lost to the alerter: each write also records the last seq
taken in per detector `alerts.<severity>` stream (a cursor). A gap in a stream (the
bus dropped frames, or the alerter was down: after a restart the cursors seed
sequence checking) is filled by a `replay` RPC to the detector, whose alert log
answers, before the alert that revealed it. An alert read but not yet written when
the process dies is not covered by a cursor, so it is replayed too.

Exactly once at a sink that confirmed: an alert is taken in once (the cursor goes in
the same write as its record), and dedup windows opened by delivered alerts are
stored with them, so a repeat after a restart is still a repeat. (Repeat counts of
open windows live in memory: a crash loses those counts, never an alert.)
"""

from __future__ import annotations

import gc
import queue
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, ClassVar

import zmq

from daemoneye import wire, wireread
from daemoneye.bus import Gap, Message, Topics
from daemoneye.replay import Intake
from daemoneye.rpc import RpcClient
from daemoneye.service import Request, RpcFault, Service, rpc
from daemoneye.settings.alerter import SEVERITY_ORDER

from . import metrics, model
from .dedup import Deduper, Repeats
from .delivery_db import PENDING, DeliveryStore
from .incidents import Incidents, update_record
from .ratelimit import Limiter
from .sinks import Delivery, build_sink
from .worker import SinkWorker

REPORT_EVERY_S = 0.25
NEVER = float("inf")
STAGE_MAX = 500  # alerts staged before a store write, within one burst
# Alerts read in one burst from which the burst is written at once and the bus stays
# watched (see on_drained): the detector sends an alert storm in batches of ~5-30 a
# batch wait, so a coalescing window there saves no write or wake-up, only delays
BATCHED_BURST = 4
BATCHED_HOLD_S = 1.0  # since the last batched burst: a storm's batches still come
PIECE_WAIT_S = 0.002  # a detector sends a batch's alerts back to back: ~0.5 ms for 30
MAX_KEYS_IN_AUDIT = 1000
MAX_LIST = 10_000
MAX_SCAN = 200_000  # history records one list request may read
RESTORE_MAX = 10_000  # stored alerts read back at start to restore open incidents
JOIN_TIMEOUT_S = 5.0
# An alert read by the compiled reader, where it was built (wireread): what every alert
# needs (check, dedup), and the whole of one delivered
_ALERT_KEY_SHAPE = wireread.alert_key_shape()
_ALERT_SHAPE = wireread.alert_shape()
SWITCH_INTERVAL_S = 0.001


class Alerter(Service):
    name: ClassVar[str] = "alerter"
    subscriptions: ClassVar[tuple[str, ...]] = (Topics.ALERTS,)
    trim_interval_s: ClassVar[float] = 2.0  # as the ledger's: its RocksDB churns the heap

    def __init__(self, settings: Any, service_id: str | None = None) -> None:
        super().__init__(settings, service_id)
        cfg = settings.alerter
        self.cfg = cfg
        self.dedup = Deduper(cfg.dedup_window_s, cfg.dedup_max_keys)
        self.rule_limiter = Limiter(cfg.rule_rate_limit.rate, cfg.rule_rate_limit.capacity)
        self.deduped_by_rule: dict[str, int] = {}
        self.sink_limiters: dict[str, Limiter] = {}
        self.workers: list[SinkWorker] = []
        self.store: DeliveryStore | None = None
        self.halt = threading.Event()
        self.reports: queue.SimpleQueue[tuple[str, str, dict[str, Any]]] = queue.SimpleQueue()
        self.received = 0
        self._read_before = 0  # `received` when the last burst ended (on_drained)
        self.rejected = 0
        self.accepted = 0
        self.summaries = 0
        self._reject_logged_at = 0.0
        self.gc_max_pause_ms = 0.0
        self.read_windows = 0  # coalescing windows the bus was left to fill (see on_drained)
        self._gc_started = 0.0
        self.clock = time.monotonic  # dedup windows and buckets run on this (tests set it)
        # (store key, JSON, sinks, alert id): the record dict itself is not kept
        self._staged: list[tuple[int, bytes, list[SinkWorker], str]] = []
        self.intake = Intake(
            lambda stream: stream.startswith(Topics.ALERTS),
            lambda topic, envelope, _data: self.take(topic, envelope),
            lambda gap, first, last: self.log.warning(
                "alerts %d-%d of %s %s are lost: no replay holds them",
                first,
                last,
                gap.source_id,
                gap.stream,
            ),
        )
        self._windows_opened: dict[int, tuple[int, int]] = {}  # to store with the next write
        self._windows_closed: set[int] = set()
        self._flushed_at = 0.0  # monotonic: the last store write (see on_drained)
        self._received_at_flush = 0  # `received` at the last store write
        self._batched_at = float("-inf")  # monotonic: the last batched burst
        self._piece_read = False  # the bus is read early, for the rest of a batch
        self._reports_told = False  # a worker woke the loop for reports not yet published
        self._incidents_touched = False  # an alert went to incidents since their timer ran
        self._incidents_next = NEVER  # when they next have work, as their timer last saw
        self.incidents = Incidents(
            cfg.incident_window_s, cfg.incident_update_s, cfg.incident_max_open,
            clock=lambda: self.clock(),
        )  # fmt: skip

    # --- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        """Tune the process for latency, then run as every service does."""
        # Sink threads share the GIL with the bus loop: a shorter switch interval lets a
        # woken sink write within a millisecond rather than 5 during a burst.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # Everything loaded so far (modules, schemas, settings) lives as long as the
        # process: keep it out of the cyclic GC's full passes, which otherwise stall the
        # loop for milliseconds at a time (visible as delivery-latency spikes).
        gc.freeze()
        gc.callbacks.append(self._gc_timer)
        try:
            return super().run()
        finally:
            gc.callbacks.remove(self._gc_timer)

    def niceness(self) -> int:
        return self.cfg.nice

    def setup(self) -> None:
        self.store = DeliveryStore(self.settings.data_dir, sync=self.cfg.store_sync)
        self._resume()
        client = RpcClient(
            self.factory, self.settings.endpoint("control"), self.service_id,
            self.cfg.replay_timeout_s,
        )  # fmt: skip
        self.intake.connect(client, self.log, self.cfg.replay_routing_wait_s)
        for cfg in self.cfg.sinks:
            if not cfg.enabled:
                continue
            sink = build_sink(cfg, self.halt, self.settings.data_dir, self.settings.hostname)
            worker = SinkWorker(sink, self.store, self._report, self.halt)
            self.workers.append(worker)
            self.sink_limiters[cfg.name] = Limiter(cfg.rate_limit.rate, cfg.rate_limit.capacity)
        configured = {w.sink.name for w in self.workers}
        orphans = self._orphaned_sinks(configured)
        if orphans:
            self.notes.append(f"pending deliveries for unconfigured sinks: {', '.join(orphans)}")
        for worker in self.workers:
            worker.start()
        # Each timer runs only when it has work (Service.every's idle_until): an idle
        # alerter wakes for its heartbeat, not 6 times a second.
        self.every(REPORT_EVERY_S, self._publish_reports, idle_until=self._reports_idle_until)
        self.every(
            min(1.0, max(0.05, self.cfg.dedup_window_s / 4)),
            self._expire_dedup,
            idle_until=self._dedup_idle_until,
        )
        self.every(self.cfg.summary_interval_s, self._summarise_held, self.cfg.summary_interval_s)
        if self.incidents.enabled:
            self.every(
                min(1.0, self.cfg.incident_update_s),
                self._incident_updates,
                idle_until=self._incidents_idle_until,
            )
        self.every(3600.0, self._prune)
        self.log.info(
            "sinks ready",
            extra={"sinks": ",".join(f"{w.sink.name}:{w.sink.kind}" for w in self.workers)},
        )

    def _resume(self) -> None:
        """Cursors seed sequence checking (what was published while down is a gap);
        stored dedup windows that have not ended yet are open again."""
        assert self.store is not None
        resumed = self.intake.resume(self.subscriber, self.store.cursors())
        wall, now = time.time_ns(), self.clock()
        restored = 0
        for dkey, ends_ns, _record_key in self.store.windows():
            if ends_ns <= wall:
                self._windows_closed.add(dkey)  # ended while down
                continue
            self.dedup.restore(dkey, now + (ends_ns - wall) / 1e9)
            restored += 1
        if resumed or restored:
            self.log.info(
                "resumed sequence checking of %d alert streams, %d dedup windows",
                resumed,
                restored,
            )
        if self.incidents.enabled:  # the incidents of the last window, ids kept
            since = wall - int(self.incidents.window_s * 1e9)
            newest = []
            for _key, data in self.store.history(after=since):
                newest.append(data)
                if len(newest) >= RESTORE_MAX:
                    break
            self.incidents.restore((model.json_load(d) for d in reversed(newest)), wall, now)

    def _orphaned_sinks(self, configured: set[str]) -> list[str]:
        assert self.store is not None
        names = set()
        for k, _ in self.store.store.scan(PENDING):
            names.add(k[len(PENDING) :].partition(b"\0")[0].decode())
        return sorted(names - configured)

    def _gc_timer(self, phase: str, info: dict[str, Any]) -> None:
        """Track the longest cyclic-GC pause (a metric: it shows up as latency)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            pause_ms = (time.perf_counter() - self._gc_started) * 1000
            self.gc_max_pause_ms = max(self.gc_max_pause_ms, pause_ms)

    def on_reload(self) -> None:
        self.log.warning("SIGHUP: sink settings are read at start; restart the alerter to apply")

    def teardown(self) -> None:
        if self.incidents.enabled and self.store is not None:
            self._incident_updates(force=True)  # what changed since the last update
        self.flush()
        self.halt.set()
        for worker in self.workers:
            worker.wake()
        for worker in self.workers:
            worker.join(JOIN_TIMEOUT_S)
        self._publish_reports()
        if self.store is not None:
            self.store.close()

    # --- alerts in --------------------------------------------------------------

    def on_drained(self) -> None:
        """Write what the burst staged: one store write per burst, not per alert, is what
        keeps up with 10,000/s. At low rates a burst is one alert, and each write, sink
        wake-up and fsync costs as much as the alert itself: so within `coalesce_s` of
        the last write the burst waits to go with the next ones. Nor is the bus read
        alert by alert meanwhile: it is left until the window ends and what queued is
        read then, in one wake-up with its write (the first alert after a quiet spell
        still goes at once: a socket read dry with nothing staged stays watched). A burst
        of BATCHED_BURST alerts or more (a detector's batch in an alert storm) is a batch
        already: it is written at once and the bus stays watched, as a window would only
        delay it and the next one. Within BATCHED_HOLD_S of such a burst a small one may
        be the first piece of a batch still arriving (it is read as it comes): the bus
        is read again PIECE_WAIT_S later, not a whole window, and the pieces are written
        together once BATCHED_BURST are unwritten. One such early read a window (from one
        write to the next): a steady stream is still read a few times a window, not
        alert by alert."""
        burst, self._read_before = self.received - self._read_before, self.received
        if not (self._staged or self.intake.cursors.pending):
            return
        now = time.monotonic()
        if burst >= BATCHED_BURST:
            self._batched_at = now
        storm = now - self._batched_at < BATCHED_HOLD_S
        unwritten = self.received - self._received_at_flush
        batched = burst >= BATCHED_BURST or (storm and unwritten >= BATCHED_BURST)
        coalesce = self.cfg.coalesce_s
        since = now - self._flushed_at
        if since >= coalesce or batched:
            self.flush()
            # the window counts from the write's start, not its end: what came during a
            # long write has waited that long already
            since = time.monotonic() - self._flushed_at
        if coalesce <= 0 or batched:
            return
        sub = self.subscriber
        if sub is not None and not sub.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self.unwatch(sub.sock)  # read dry: the bus queues the window's alerts
            self.read_windows += 1
            wait = coalesce - since
            if storm and not self._piece_read:  # the rest of a batch is ms behind
                wait = min(wait, PIECE_WAIT_S)
            self._piece_read = wait < coalesce - since
            self.once(wait, self._read_window)
        elif self._staged or self.intake.cursors.pending:  # `once` does not schedule twice
            self.once(coalesce - since, self.flush)

    def _read_window(self) -> None:
        """The coalescing window ended: read what the bus queued meanwhile (on_drained
        then writes it with what was staged, and leaves the bus again if it read any)."""
        if self.subscriber is None:
            return
        self.watch(self.subscriber.sock, self._on_bus)
        self._on_bus()

    def on_message(self, msg: Message) -> None:
        # the header as the subscriber decoded it: each read through the envelope reader
        # costs ~0.5 us, and the cursor and the record need four
        topic, source, seq = msg.topic, msg.source_id, msg.seq
        if self.cfg.catch_up_new_streams:  # joined mid-stream: its beginning first
            self.intake.catch_up_at(topic, source, seq)
        self._take(topic, msg.envelope, msg.kind, (source, msg.boot_id, seq), msg.raw)

    def take(self, topic: str, envelope: Any, kind: str = "", raw: bytes | None = None) -> None:
        """One alert envelope read by hand (a replayed one), its header read from it.
        `kind`: its body kind when already read; `raw`: its bytes, for the compiled
        reader (wireread) where it reads them."""
        header = (envelope.sourceId, envelope.bootId, envelope.seq)
        self._take(topic, envelope, kind, header, raw)

    def _take(
        self, topic: str, envelope: Any, kind: str, header: tuple[str, str, int], raw: bytes | None
    ) -> None:
        """One alert envelope from the bus or a replay: its cursor, then the alert.
        `header`: its (sourceId, bootId, seq)."""
        self.received += 1
        source, boot_id, seq = header
        self.intake.cursors.note_seq(topic, source, boot_id, seq)
        kind = kind or wire.body_kind(envelope)  # after the cursor: a bad union moves it on
        if kind != "alert":
            self._reject(topic, f"body is {kind}, not alert")
            return
        key_fields = None if raw is None else wireread.read_alert(raw, _ALERT_KEY_SHAPE)
        if key_fields is not None:
            rule, severity, own, time_ns, process = key_fields
            try:
                model.check_key_fields(rule, severity)
            except model.BadAlert as exc:
                self._reject(topic, str(exc))
                return
            self._ingest(
                model.dedup_key_of(rule, own, process),
                time_ns,
                rule,
                lambda key, carried: self._record_read_whole(envelope, source, raw, key, carried),
            )
            return
        alert = wire.body_as(envelope, kind)  # a pointer of another kind: DecodeError
        try:
            model.check(alert)
        except model.BadAlert as exc:
            self._reject(topic, str(exc))
            return
        self.ingest(alert, source)

    def on_gap(self, gap: Gap) -> None:
        """Missed alerts: fetched from their source's alert log, in order, before the
        alert that revealed the gap."""
        if gap.stream.startswith(Topics.ALERTS):
            self.intake.repair(gap)

    def ingest(self, alert: Any, source_id: str) -> int | None:
        """Dedup, limit and stage one alert (a reader); its store key, or None if a
        repeat. Only what dedup needs is read of a repeat."""
        return self._ingest(
            model.dedup_key(alert),
            alert.timeNs,
            alert.ruleId,
            lambda key, carried: model.record_of(alert, source_id, key, carried),
        )

    def _record_read_whole(
        self, envelope: Any, source: str, raw: bytes, key: int, carried: int
    ) -> dict:
        """The record of a delivered alert whose key fields the compiled reader read: the
        whole alert read by it too, or through pycapnp where it leaves the message."""
        fields = wireread.read_alert(raw, _ALERT_SHAPE)
        if fields is None:
            alert = wire.body_as(envelope, "alert")
            return model.record_of(alert, source, key, carried)
        return model.record_from(fields, source, key, carried)

    def _ingest(
        self,
        dkey: int,
        time_ns: int,
        rule: str,
        record_of: Callable[[int, int], dict[str, Any]],
    ) -> int | None:
        assert self.store is not None
        now = self.clock()
        self._incidents_touched = True
        deliver, carried = self.dedup.check(dkey, now, time_ns)
        if not deliver:
            self.deduped_by_rule[rule] = self.deduped_by_rule.get(rule, 0) + 1  # /metrics
            self.incidents.repeat(dkey, time_ns, rule)
            return None
        self.accepted += 1
        key = self.store.next_key()
        if self.dedup.window_s > 0:  # the key is wall-clock ns: the window ends from it
            self._windows_opened[dkey] = (key + int(self.dedup.window_s * 1e9), key)
            self._windows_closed.discard(dkey)
        record = record_of(key, carried)
        if self.incidents.assign(record, dkey, now):  # its incident was told already
            record["heldBy"] = ["incident"]
            self.fan_out(record, now, only=self._sinks(incidents=False))
            return key
        rule_ok = self.rule_limiter.allow(
            record["ruleId"], now, record["timeNs"], record["severity"], record["ruleId"]
        )
        if not rule_ok:
            record["heldBy"] = ["rule"]  # kept in history, counted in the next summary
            self.fan_out(record, now, only=())
            return key
        self.fan_out(record, now)
        return key

    def fan_out(
        self,
        record: dict[str, Any],
        now: float,
        limits: bool = True,
        only: tuple[str, ...] | None = None,
    ) -> None:
        """Stage the record pending for every sink that takes it (or just `only`)."""
        rank = SEVERITY_ORDER.index(record.get("severity", "info"))
        targets: list[SinkWorker] = []
        held: list[str] = []
        for worker in self.workers:
            cfg = worker.config
            if only is not None and cfg.name not in only:
                continue
            if rank < SEVERITY_ORDER.index(cfg.min_severity):
                continue
            limiter = self.sink_limiters[cfg.name]
            if limits and not limiter.allow(
                cfg.name, now, record["timeNs"], record["severity"], record["ruleId"]
            ):
                held.append(cfg.name)
                continue
            targets.append(worker)
        if held:
            record["heldBy"] = held
        record["sinks"] = [w.sink.name for w in targets]
        self._staged.append((record["key"], model.encode(record), targets, record["alertId"]))
        if len(self._staged) >= STAGE_MAX:
            self.flush()

    def flush(self) -> None:
        """Write staged records (one atomic batch, pending per sink, with the cursors
        and dedup windows), then queue them. Batching a burst into one store write is
        what keeps up with 10,000 alerts/s."""
        if self.store is None:
            return
        if not (self._staged or self.intake.cursors.pending or self._windows_closed):
            return
        self._flushed_at = time.monotonic()
        self._received_at_flush = self.received
        self._piece_read = False  # a new window: its first small read may be a piece
        staged, self._staged = self._staged, []
        cursors = self.intake.cursors.take()
        opened, self._windows_opened = self._windows_opened, {}
        closed, self._windows_closed = self._windows_closed, set()
        try:
            self.store.add(
                [(key, data, [w.sink.name for w in targets]) for key, data, targets, _ in staged],
                cursors,
                opened,
                closed,
            )
        except Exception:
            # kept for the next write: nothing read is lost while the store refuses
            self._staged = staged + self._staged
            self.intake.cursors.restore(cursors)
            self._windows_opened = {**opened, **self._windows_opened}
            self._windows_closed |= closed
            raise
        per_worker: dict[SinkWorker, list[Delivery]] = defaultdict(list)
        for key, data, targets, alert_id in staged:
            for worker in targets:
                per_worker[worker].append(Delivery(key, data, alert_id=alert_id))
        for worker, items in per_worker.items():
            worker.submit(items)

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        now = self.clock()
        if now - self._reject_logged_at > 1.0:  # at most a line a second; the count is exact
            self._reject_logged_at = now
            self.log.warning(
                "dropped alert frame on %s: %s", topic, reason, extra={"rejected": self.rejected}
            )

    # --- timers -----------------------------------------------------------------

    def _expire_dedup(self) -> None:
        assert self.store is not None
        self.flush()  # a window's opening record is in the store before its summary
        now = self.clock()
        for dkey, repeats in self.dedup.expire(now):
            told = self.incidents.window_closed(dkey)  # repeats an incident update told
            if repeats is not None and repeats.count > told:
                repeats.count -= told
                self._repeat_summary(dkey, repeats, now)
            self._windows_opened.pop(dkey, None)
            self._windows_closed.add(dkey)
        self.flush()

    def _unflushed(self) -> bool:
        return bool(self._staged or self.intake.cursors.pending or self._windows_closed)

    def _dedup_idle_until(self) -> float:
        """When the oldest open dedup window ends (inf: none is open)."""
        if self._unflushed() or self.dedup.over_limit():
            return 0.0
        ends = self.dedup.next_end()
        if ends is None:
            return NEVER
        # the loop runs on the monotonic clock; a test's own clock: every interval
        return ends if self.clock is time.monotonic else 0.0

    def _repeat_summary(self, dkey: int, repeats: Repeats, now: float) -> None:
        """Told with the fields of the alert that opened the window (read back from the
        store: memory holds only the window's key and end)."""
        assert self.store is not None
        stored = self._windows_opened.get(dkey) or self.store.window(dkey)
        data = self.store.record(stored[1]) if stored else None
        first = model.json_load(data) if data else {"ruleId": "unknown", "process": {}}
        key = self.store.next_key()
        summary = model.repeat_summary(
            first, key, repeats.count, repeats.first_ns, repeats.last_ns, self.dedup.window_s
        )
        self.summaries += 1
        self.fan_out(summary, now, limits=False)

    def _sinks(self, incidents: bool) -> tuple[str, ...]:
        return tuple(w.sink.name for w in self.workers if w.config.incidents == incidents)

    def _incident_updates(self, force: bool = False) -> None:
        """Close quiet incidents; tell what changed in one record (rate-limited)."""
        assert self.store is not None
        now = self.clock()
        self.incidents.expire(now)
        changed = self.incidents.due(now, force)
        if changed:
            record = update_record(changed, self.store.next_key())
            self.summaries += 1
            self.fan_out(record, now, limits=False, only=self._sinks(incidents=True))
            self.flush()
        self._incidents_touched = False
        self._incidents_next = self.incidents.next_work_at()

    def _incidents_idle_until(self) -> float:
        """Incidents close at their window's end and tell changes every update_s: the
        timer runs then, and after alerts (which open and change them), not every
        second while one is open."""
        if self._incidents_touched or self.clock is not time.monotonic:  # a test's clock
            return 0.0
        return self._incidents_next

    def _summarise_held(self) -> None:
        """Report what the rate limits held back since the last summary."""
        now = self.clock()
        for _name, held in self.rule_limiter.take_held().items():
            self._summary("rule", held, now, only=None)
        for name, limiter in self.sink_limiters.items():
            for _n, held in limiter.take_held().items():
                self._summary(f"sink {name}", held, now, only=(name,))
        self.flush()

    def _summary(self, scope: str, held: Any, now: float, only: tuple[str, ...] | None) -> None:
        assert self.store is not None
        key = self.store.next_key()
        record = model.rate_limit_summary(
            scope, key, held.count, held.severity, held.rules, (held.first_ns, held.last_ns)
        )
        self.summaries += 1
        self.fan_out(record, now, limits=False, only=only)

    def _report(self, action: str, sink: str, detail: dict[str, Any]) -> None:
        """Called from worker threads: the loop is woken (once until it publishes), as
        the report timer rests while there is nothing to report."""
        self.reports.put((action, sink, detail))
        if not self._reports_told:
            self._reports_told = True
            self._wake()

    def _reports_idle_until(self) -> float:
        """The report timer's work: worker reports, and (its safety net) staged alerts."""
        return 0.0 if not self.reports.empty() or self._unflushed() else NEVER

    def _publish_reports(self) -> None:
        """Turn worker reports into audit records; deliveries merge into one per sink."""
        self.flush()  # a safety net: bursts flush themselves when the socket runs dry
        delivered: dict[str, list[Any]] = defaultdict(list)
        ids: dict[str, list[Any]] = defaultdict(list)
        while True:
            try:
                action, sink, detail = self.reports.get_nowait()
            except queue.Empty:
                break
            if action == "alert.delivered":
                delivered[sink].extend(detail["keys"])
                ids[sink].extend(detail["alert_ids"])
                continue
            level = self.log.info if action == "sink.breaker_closed" else self.log.warning
            level("%s %s %s", action, sink, detail.get("error", ""))
            self.audit(action, sink, detail)
        # read dry: a report from now on wakes the loop again (one that came since the
        # last read finds the timer due: its idle_until is asked after this run)
        self._reports_told = False
        for sink, keys in delivered.items():
            self.audit(
                "alert.delivered",
                sink,
                {
                    "count": len(keys),
                    "keys": keys[:MAX_KEYS_IN_AUDIT],
                    "alert_ids": ids[sink][:MAX_KEYS_IN_AUDIT],
                    "truncated": len(keys) > MAX_KEYS_IN_AUDIT,
                },
            )

    def _prune(self) -> None:
        assert self.store is not None
        cutoff = time.time_ns() - int(self.cfg.history_retention_days * 86400e9)
        removed = self.store.prune(cutoff)
        if removed:
            self.log.info("pruned %d alert records past retention", removed)

    # --- figures ----------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        figures: dict[str, float] = {
            "alerts.received": self.received,
            "alerts.rejected": self.rejected,
            "alerts.accepted": self.accepted,
            "alerts.deduplicated": self.dedup.suppressed,
            "alerts.rule_limited": self.rule_limiter.total_held,
            "alerts.sink_limited": sum(lim.total_held for lim in self.sink_limiters.values()),
            "alerts.summaries": self.summaries,
            "incidents.open": len(self.incidents.open),
            "incidents.opened": self.incidents.opened,
            "incidents.updates": self.incidents.updates_sent,
            "dedup.keys": len(self.dedup.windows),
            **self.intake.metrics("alerts"),
            "gc.max_pause_ms": self.gc_max_pause_ms,
            "alerts.read_windows": self.read_windows,
        }
        for worker in self.workers:
            figures.update(worker.metrics())
        figures.update(metrics.figures(self.deduped_by_rule, self.rule_limiter, self.sink_limiters))
        return figures

    def refresh_status(self) -> None:
        """Sink trouble, for `daemoneye status` (heartbeats carry the notes)."""
        notes = [n for n in self.notes if n.startswith("pending deliveries for unconfigured")]
        for w in self.workers:
            if w.breaker is not None and w.breaker.state != "closed":
                notes.append(f"sink {w.sink.name}: circuit {w.breaker.state}: {w.last_error}")
            elif w.consecutive_failures:
                notes.append(f"sink {w.sink.name}: failing: {w.last_error}")
            if w.dead:
                notes.append(
                    f"sink {w.sink.name}: {w.dead} dead letters (daemoneye alerts --failed)"
                )
        self.notes[:] = notes
        if not self.stopping:
            self.state = "degraded" if any(n.startswith("sink ") for n in notes) else "running"

    def queue_depth(self) -> int:
        return sum(w.depth() for w in self.workers)

    # --- RPC --------------------------------------------------------------------

    def _sink_names(self) -> list[str]:
        return [w.sink.name for w in self.workers]

    @rpc("alerts.list")
    def rpc_list(self, request: Request) -> dict[str, Any]:
        """History, newest first (from `before`, a key, when given); `after` (a key) lists
        oldest first from there (--follow). One call reads at most MAX_SCAN records (it
        runs on the service loop): a scan cut there answers `continue_from`, the key to
        pass as `before` (or `after`) to read on; 0 when the scan was not cut."""
        assert self.store is not None
        p = request.params
        try:
            since_ns = int(p.get("since_ns") or 0)
            after = int(p.get("after") or 0)
            before = int(p.get("before") or 0)
            limit = min(MAX_LIST, int(p.get("limit") or 100))
        except (TypeError, ValueError) as exc:
            raise RpcFault(
                "bad_request", f"since_ns, after, before and limit must be integers: {exc}"
            ) from None
        severity = p.get("severity") or "info"
        if severity not in SEVERITY_ORDER:
            raise RpcFault("bad_request", f"severity {severity!r} is not one of {SEVERITY_ORDER}")
        floor, rule = SEVERITY_ORDER.index(severity), p.get("rule") or ""
        rows: list[dict[str, Any]] = []
        follow = "after" in p
        scanned, continue_from = 0, 0
        for key, data in self.store.history(
            after=max(after, since_ns - 1), before=before, newest_first=not follow
        ):
            if scanned >= MAX_SCAN:
                break
            scanned += 1
            continue_from = key
            record = model.json_load(data)
            if SEVERITY_ORDER.index(record.get("severity", "info")) < floor:
                continue
            if rule and record.get("ruleId") != rule:
                continue
            record["deliveries"] = self.store.status(key, record.get("sinks", []))
            rows.append(record)
            if len(rows) >= limit:
                continue_from = 0  # the limit, not the scan budget, ended it
                break
        else:
            continue_from = 0  # the end of the history
        return {"alerts": rows, "sinks": self._sink_names(), "continue_from": continue_from}

    @rpc("alerts.get")
    def rpc_get(self, request: Request) -> dict[str, Any]:
        """One stored alert by its key, or by its alertId (newest MAX_SCAN searched)."""
        assert self.store is not None
        wanted = str(request.params.get("key") or "").strip()
        if not wanted:
            raise RpcFault("bad_request", "alerts.get needs a 'key' (a key or an alertId)")
        data = self.store.record(int(wanted)) if wanted.isdigit() else None
        if data is None:
            for n, (_key, stored) in enumerate(self.store.history()):
                if n >= MAX_SCAN:
                    break
                if wanted.encode() in stored and model.json_load(stored).get("alertId") == wanted:
                    data = stored
                    break
        if data is None:
            raise RpcFault("bad_request", f"no alert with key or alertId {wanted!r}")
        return model.json_load(data)

    @rpc("alerts.incidents")
    def rpc_incidents(self, request: Request) -> dict[str, Any]:
        """Open incidents, then recently closed ones, newest first."""
        try:
            limit = min(MAX_LIST, int(request.params.get("limit") or 100))
        except (TypeError, ValueError) as exc:
            raise RpcFault("bad_request", f"limit must be an integer: {exc}") from None
        self.incidents.expire(self.clock())
        return {"incidents": self.incidents.listing(limit), "window_s": self.incidents.window_s}

    @rpc("alerts.failed")
    def rpc_failed(self, request: Request) -> dict[str, Any]:
        assert self.store is not None
        rows = []
        for sink, key, meta in self.store.failed(request.params.get("sink") or None):
            data = self.store.record(key)
            record = model.json_load(data) if data else {"key": key}
            rows.append({"sink": sink, **meta, "alert": record})
            if len(rows) >= MAX_LIST:
                break
        return {"failed": rows}

    @rpc("alerts.retry")
    def rpc_retry(self, request: Request) -> dict[str, Any]:
        """Move dead letters (all, one sink's, or given keys) back to pending."""
        assert self.store is not None
        sink = request.params.get("sink") or None
        if sink and sink not in self._sink_names():
            raise RpcFault("bad_request", f"no sink {sink!r} (sinks: {self._sink_names()})")
        try:
            keys = {int(k) for k in request.params.get("keys") or []} or None
        except (TypeError, ValueError) as exc:
            raise RpcFault("bad_request", f"keys must be integers: {exc}") from None
        moved = self.store.retry(sink, keys)
        per_sink: dict[str, int] = defaultdict(int)
        for name, _ in moved:
            per_sink[name] += 1
        for worker in self.workers:
            if per_sink.get(worker.sink.name):
                worker.retried(per_sink[worker.sink.name])
        self.audit("alert.retry", sink or "*", {"moved": len(moved), "by": request.source_id})
        return {"retried": len(moved), "by_sink": dict(per_sink)}


SERVICE = Alerter
