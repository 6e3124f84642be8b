"""What the dashboard shows, gathered from the broker (registry, traffic counts),
the bus (alerts) and the collector (process snapshot). Every source may be down:
the model records that and keeps the last good figures."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from daemoneye import wire
from daemoneye.bus import SocketFactory, Subscriber, Topics, stream_of
from daemoneye.config import Settings
from daemoneye.rpc import RpcClient, RpcError

HISTORY = 30  # samples per sparkline
RPC_TIMEOUT_S = 0.5
PROCESS_POLL_S = 2.0
BUS_COUNTERS = ("bus.gaps", "bus.missing", "bus.dropped", "bus.restarts", "wal.replays")


@dataclass
class State:
    services: list[dict[str, Any]] = field(default_factory=list)
    broker_error: str = ""
    rates: dict[str, deque[float]] = field(default_factory=dict)
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))
    processes: list[dict[str, Any]] = field(default_factory=list)
    process_note: str = "waiting for a collector"
    counters: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    updated: float = 0.0


class DashboardModel:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.factory = SocketFactory(settings, zmq.Context())
        self.rpc = RpcClient(self.factory, settings.endpoint("control"), "dashboard", RPC_TIMEOUT_S)
        sock = self.factory.connect(zmq.SUB, settings.endpoint("events-out"))
        self.alert_feed = Subscriber(sock, [Topics.ALERTS], settings.bus.max_event_bytes)
        self.state = State()
        self._last_counts: dict[str, int] = {}
        self._last_counts_at = 0.0
        self._cpu_ms: dict[tuple[int, int], tuple[float, int]] = {}
        self._next_process_poll = 0.0

    def close(self) -> None:
        self.factory.close_all(linger_ms=0)
        self.factory.context.term()

    def poll(self) -> State:
        self._poll_alerts()
        self._poll_broker()
        if time.monotonic() >= self._next_process_poll:
            self._next_process_poll = time.monotonic() + PROCESS_POLL_S
            self._poll_processes()
        self.state.updated = time.time()
        return self.state

    # --- sources --------------------------------------------------------------

    def _call(self, target: str, verb: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return self.rpc.call(target, verb, params, timeout_s=RPC_TIMEOUT_S).value
        except RpcError as exc:
            # A timed-out DEALER may hold a stale reply; a fresh socket keeps replies in step.
            self.rpc.close()
            self.rpc = RpcClient(
                self.factory, self.settings.endpoint("control"), "dashboard", RPC_TIMEOUT_S
            )
            raise exc

    def _poll_broker(self) -> None:
        s = self.state
        try:
            s.services = self._call("control.broker", "registry")
            stats = self._call("control.broker", "stats")
            s.broker_error = ""
        except RpcError as exc:
            s.broker_error = f"broker unreachable: {exc}"
            for row in s.services:
                row["state"] = "unknown"
            return
        self._update_rates(stats.get("topics", {}))
        counters = {name: 0.0 for name in BUS_COUNTERS}
        counters["broker.dropped"] = float(sum(stats.get("dropped", {}).values()))
        warnings = []
        for row in s.services:
            for name in BUS_COUNTERS:
                counters[name] += float(row.get("metrics", {}).get(name, 0.0))
            if row.get("service_state") == "degraded" or row.get("state") != "healthy":
                why = "; ".join(row.get("notes") or []) or row.get("state", "")
                warnings.append(f"{row['service_id']}: {row.get('service_state') or ''} {why}")
        s.counters = counters
        s.warnings = warnings

    def _update_rates(self, topics: dict[str, int]) -> None:
        now = time.monotonic()
        per_stream: dict[str, int] = {}
        for topic, count in topics.items():
            stream = stream_of(topic)
            per_stream[stream] = per_stream.get(stream, 0) + count
        elapsed = now - self._last_counts_at
        if self._last_counts_at and elapsed > 0:
            for stream, count in per_stream.items():
                rate = max(0, count - self._last_counts.get(stream, 0)) / elapsed
                self.state.rates.setdefault(stream, deque(maxlen=HISTORY)).append(rate)
        self._last_counts, self._last_counts_at = per_stream, now

    def _poll_alerts(self) -> None:
        for msg in self.alert_feed.drain(500):
            if msg.kind != "alert":
                continue
            try:
                alert = wire.to_dict(msg.envelope)["body"]["alert"]
            except wire.DecodeError:
                continue
            self.state.alerts.appendleft(alert)

    def _poll_processes(self) -> None:
        s = self.state
        try:
            # fresh: the collector rescans first, so CPU times are current (cheap: one
            # /proc/<pid>/stat read per process).
            records = self._call("control.collector", "snapshot", {"fresh": True})
        except RpcError as exc:
            s.process_note = "no collector registered" if exc.code == "unknown_target" else str(exc)
            return
        if isinstance(records, dict):  # tolerate {"processes": [...]}
            records = records.get("processes", [])
        now = time.monotonic()
        cpu: dict[tuple[int, int], tuple[float, int]] = {}
        rows = []
        for rec in records:
            key = (int(rec.get("pid", 0)), int(rec.get("startTicks", 0)))
            used = int(rec.get("userTimeMs", 0)) + int(rec.get("systemTimeMs", 0))
            cpu[key] = (now, used)
            before = self._cpu_ms.get(key)
            percent = 0.0
            if before and now > before[0]:
                percent = 100.0 * (used - before[1]) / ((now - before[0]) * 1000)
            rows.append(
                {
                    "pid": key[0],
                    "name": rec.get("name", ""),
                    "user": rec.get("username", ""),
                    "cpu": max(0.0, percent),
                    "rss": int(rec.get("residentBytes", 0)),
                }
            )
        self._cpu_ms = cpu
        rows.sort(key=lambda r: (r["cpu"], r["rss"]), reverse=True)
        s.processes = rows
        s.process_note = f"{len(rows)} processes"
