"""One thread per sink: a bounded line of deliveries in, batches out, retries with
backoff, a circuit breaker, dead letters. A slow or failing sink only ever blocks
its own thread.

The store is the truth: every item was written pending before it was queued, so
when the line is full the item is simply left in the store and the worker reloads
it once it catches up (and, at start, whatever an earlier run left pending). An
item can then be both queued and reloaded; before sending anything at or below
the highest reloaded key the worker checks it is still pending, so it goes out once.
What an earlier run left pending is first shown to the sink: a crash between a send
and its confirmation leaves the last batch pending though sent, and a sink that can
tell (a file) confirms those instead of receiving them twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Protocol

from .breaker import CircuitBreaker
from .delivery_db import DeliveryStore
from .sinks import Delivery, Sink, SinkError

IDLE_WAIT_S = 0.5  # the longest wait while items wait (a backoff, a breaker)
log = logging.getLogger("daemoneye.alerter")


class Report(Protocol):
    """Called from worker threads: (action, sink, detail)."""

    def __call__(self, action: str, sink: str, detail: dict[str, Any]) -> None: ...


class SinkWorker(threading.Thread):
    def __init__(
        self, sink: Sink, store: DeliveryStore, report: Report, stop: threading.Event
    ) -> None:
        super().__init__(name=f"sink-{sink.name}", daemon=True)
        self.sink = sink
        self.config = sink.config
        self.store = store
        self.report = report
        self.halt = stop
        self.cond = threading.Condition()
        self.items: deque[Delivery] = deque()  # guarded by cond
        self.reload_needed = True  # the first pass picks up what an earlier run left pending
        self._reload_after = 0
        self._reload_asks = 0  # bumped by each request to reread the store
        self._dupe_horizon = 0  # keys at or below this may be queued twice
        self._crash_checked = False  # the first reload asks the sink what it already holds
        self.breaker: CircuitBreaker | None = None
        if self.config.kind == "webhook":
            self.breaker = CircuitBreaker(self.config.breaker_failures, self.config.breaker_reset_s)
        self.next_try = 0.0  # monotonic: after a failure, when to try again
        self.consecutive_failures = 0
        self.pending = store.count(b"p/", sink.name)  # guarded by cond
        self.submitted = 0  # alerts handed to this sink
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0
        self.overflows = 0
        self.last_error = ""
        sink.on_link_up = self.link_returned

    # --- called from the main thread -----------------------------------------

    def submit(self, items: list[Delivery]) -> None:
        """Queue items already stored as pending; what does not fit stays in the store."""
        with self.cond:
            self.pending += len(items)
            self.submitted += len(items)
            room = self.config.queue_size - len(self.items)
            if room < len(items):
                self.overflows += len(items) - max(0, room)
                self.reload_needed = True
                self._reload_asks += 1
                items = items[: max(0, room)]
            self.items.extend(items)
            self.cond.notify()

    def retried(self, count: int) -> None:
        """Dead letters moved back to pending (`alerts retry`): reread the store."""
        with self.cond:
            self.pending += count
            self.reload_needed = True
            self._reload_asks += 1
            self._reload_after = 0
            self.cond.notify()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def link_returned(self) -> None:
        """The sink's endpoint is reachable again (any thread): end the backoff now."""
        with self.cond:
            self.next_try = 0.0
            self.cond.notify()

    def depth(self) -> int:
        return len(self.items)

    def metrics(self) -> dict[str, float]:
        prefix = f"sink.{self.sink.name}."
        figures = {
            "alerts": self.submitted,
            "pending": self.pending,
            "queued": len(self.items),
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
            "dead": self.dead,
            "overflows": self.overflows,
            "breaker_open": float(self.breaker is not None and self.breaker.state == "open"),
            **{f"{self.sink.kind}.{k}": v for k, v in self.sink.metrics().items()},
        }
        return {prefix + k: v for k, v in figures.items()}

    # --- the thread -------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                batch = self._next_batch()
                if batch:
                    self._send(batch)
        except Exception:
            log.exception("sink %s worker died", self.sink.name)
            self.last_error = "worker died; see the log"
        finally:
            self.sink.close()

    def _next_batch(self) -> list[Delivery]:
        if self.reload_needed and not self.items:
            self._reload()
        with self.cond:
            ready = bool(self.items) and self._ready()
            if ready:
                half_open = self.breaker is not None and self.breaker.state == "half_open"
                take = min(len(self.items), 1 if half_open else self.config.batch_size)
                batch = [self.items.popleft() for _ in range(take)]
        if not ready:
            if not self.items:
                self.sink.flush()  # outside the lock: an fsync must not block submit()
            with self.cond:
                if not (self.items and self._ready()):  # nothing arrived meanwhile
                    self.cond.wait(self._wait_s())
            return []
        horizon, name = self._dupe_horizon, self.sink.name
        return [d for d in batch if d.key > horizon or self.store.is_pending(name, d.key)]

    def _wait_s(self) -> float | None:
        """How long to sleep before looking again; None: until notified (submit,
        retried, wake: with nothing queued, only the sink's pending flush is timed)."""
        if not self.items:
            flush_in = self.sink.flush_in_s()
            if flush_in is None:
                return None
            # 0 right after flush(): its fsync failed; try again as often as before
            return flush_in if flush_in > 0 else IDLE_WAIT_S
        due = self.next_try
        if self.breaker is not None and self.breaker.state == "open":
            due = max(due, self.breaker.retry_at())
        return max(0.001, min(IDLE_WAIT_S, due - time.monotonic()))

    def _ready(self) -> bool:
        now = time.monotonic()
        if now < self.next_try:
            return False
        return self.breaker is None or self.breaker.allow(now)

    def _reload(self) -> None:
        """Load pending items from the store, oldest first, up to the queue size."""
        with self.cond:
            asks = self._reload_asks
        loaded: list[Delivery] = []
        last = self._reload_after
        gone: list[int] = []
        for key, meta in self.store.pending(self.sink.name, after=self._reload_after):
            if len(loaded) >= self.config.queue_size:
                break
            last = key
            data = self.store.record(key)
            if data is None:  # its record was pruned: nothing left to send
                gone.append(key)
                continue
            loaded.append(Delivery(key, data, None, int(meta.get("attempts", 0))))
        if not self._crash_checked:
            self._crash_checked = True
            held = self._held_by_sink(loaded)
            if held:
                loaded = [d for d in loaded if d.key not in held]
                gone.extend(held)
        if gone:
            self.store.delivered(self.sink.name, gone)
        full = len(loaded) >= self.config.queue_size
        with self.cond:
            self.pending -= len(gone)
            # An overflow or retry during the scan may have added keys it did not see.
            self.reload_needed = full or self._reload_asks != asks
            self._reload_after = last if full and self._reload_asks == asks else 0
            self._dupe_horizon = max(self._dupe_horizon, last)
            self.items.extendleft(reversed(loaded))  # older than anything queued meanwhile

    def _held_by_sink(self, loaded: list[Delivery]) -> set[int]:
        try:
            held = self.sink.already_sent(loaded)
        except Exception:  # a sink bug must not stop the worker: then they go again
            log.exception("sink %s could not tell what it already holds", self.sink.name)
            return set()
        if held:
            log.info(
                "sink %s already holds %d pending alerts (sent before a crash): confirmed",
                self.sink.name,
                len(held),
            )
        return held

    def _send(self, batch: list[Delivery]) -> None:
        try:
            self.sink.send(batch)
        except SinkError as exc:
            self._delivered(batch[: exc.done])
            self._failed(batch[exc.done :], str(exc), exc.retryable)
        except Exception as exc:  # a sink bug must not stop the worker or the others
            log.exception("sink %s raised", self.sink.name)
            self._failed(batch, f"{type(exc).__name__}: {exc}", True)
        else:
            self._delivered(batch)

    def _delivered(self, items: list[Delivery]) -> None:
        if not items:
            return
        self.store.delivered(self.sink.name, [d.key for d in items])
        with self.cond:
            self.pending -= len(items)
        self.delivered += len(items)
        self.consecutive_failures = 0
        self.next_try = 0.0
        if self.breaker is not None and self.breaker.success():
            self.report("sink.breaker_closed", self.sink.name, {})
        self.report(
            "alert.delivered",
            self.sink.name,
            {"keys": [d.key for d in items], "alert_ids": [d.alert_id for d in items]},
        )

    def _failed(self, items: list[Delivery], error: str, retryable: bool) -> None:
        """The first item failed: count the attempt, dead-letter it if it is used up,
        put the rest back in front, and back off (exponentially) before the next try."""
        if not items:
            return
        now = time.monotonic()
        self.failed_attempts += 1
        self.last_error = error
        first = items[0]
        first.attempts += 1
        self.report(
            "alert.delivery_failed",
            self.sink.name,
            {"key": first.key, "attempts": first.attempts, "error": error, "retry": retryable},
        )
        if not retryable or first.attempts >= self.config.max_attempts:
            self.store.dead(self.sink.name, first.key, first.attempts, error)
            self.dead += 1
            self.report(
                "alert.dead_letter",
                self.sink.name,
                {"key": first.key, "attempts": first.attempts, "error": error},
            )
            items = items[1:]
            with self.cond:
                self.pending -= 1
                self.items.extendleft(reversed(items))
            if not retryable:  # the endpoint answered and refused this one: go on at once
                return
        else:
            self.store.attempt_failed(self.sink.name, first.key, first.attempts, error)
            with self.cond:
                self.items.extendleft(reversed(items))  # the rest keep their place in line
        self.consecutive_failures += 1
        self.next_try = now + min(
            self.config.backoff_max_s,
            self.config.backoff_initial_s * 2 ** (self.consecutive_failures - 1),
        )
        if self.breaker is not None and self.breaker.failure(now):
            self.report("sink.breaker_open", self.sink.name, {"error": error})
