"""Who is on the bus: registered services, their routes and their health."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from daemoneye.bus import Topics


@dataclass
class Entry:
    service: str
    service_id: str
    pid: int = 0
    hostname: str = ""
    boot_id: str = ""
    interval_s: float = 5.0
    verbs: list[str] = field(default_factory=list)
    route: bytes | None = None  # ROUTER identity of the service's control DEALER
    started_ns: int = 0
    registered_ns: int = 0
    last_heartbeat: float | None = None  # monotonic
    last_heartbeat_ns: int = 0
    seen: float = field(default_factory=time.monotonic)  # monotonic, last sign of life
    state: str = "healthy"
    heartbeat: dict[str, Any] = field(default_factory=dict)

    @property
    def targets(self) -> tuple[str, str]:
        return Topics.control(self.service, self.service_id), Topics.control(self.service)

    def as_dict(self, now: float) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "service": self.service,
            "service_id": self.service_id,
            "pid": self.pid,
            "hostname": self.hostname,
            "boot_id": self.boot_id,
            "state": self.state,
            "service_state": hb.get("state", ""),
            "registered": self.route is not None,
            "last_heartbeat_ns": self.last_heartbeat_ns,
            "heartbeat_age_s": None if self.last_heartbeat is None else now - self.last_heartbeat,
            "heartbeat_interval_s": self.interval_s,
            "events_per_sec": hb.get("eventsPerSec", 0.0),
            "queue_depth": hb.get("queueDepth", 0),
            "rss_bytes": hb.get("rssBytes", 0),
            "cpu_percent": hb.get("cpuPercent", 0.0),
            "uptime_s": hb.get("uptimeS", 0.0),
            "notes": hb.get("notes", []),
            "metrics": {m["name"]: m["value"] for m in hb.get("metrics", [])},
            "verbs": self.verbs,
        }


@dataclass(frozen=True)
class Transition:
    entry: Entry
    action: str  # register, deregister, unhealthy, healthy, removed
    reason: str = ""


class Registry:
    def __init__(self, unhealthy_after_missed: int = 3, remove_after_missed: int = 12) -> None:
        self.unhealthy_after = unhealthy_after_missed
        self.remove_after = remove_after_missed
        self.entries: dict[str, Entry] = {}

    def register(self, params: dict[str, Any], route: bytes | None) -> Transition | None:
        """Add or refresh a service; a Transition when it is new or came back."""
        service_id = str(params["service_id"])
        entry = self.entries.get(service_id)
        is_new = entry is None or entry.boot_id != params.get("boot_id", "")
        if entry is None:
            entry = self.entries[service_id] = Entry(str(params["service"]), service_id)
        entry.service = str(params["service"])
        entry.pid = int(params.get("pid", 0))
        entry.hostname = str(params.get("hostname", ""))
        entry.boot_id = str(params.get("boot_id", ""))
        entry.interval_s = max(0.001, int(params.get("heartbeat_interval_ms", 5000)) / 1000)
        entry.verbs = [str(v) for v in params.get("verbs", [])]
        entry.started_ns = int(params.get("started_ns", 0))
        entry.route = route
        entry.seen = time.monotonic()
        if is_new or not entry.registered_ns:
            entry.registered_ns = time.time_ns()
            entry.state = "healthy"
            return Transition(entry, "register")
        return self._revive(entry)

    def deregister(self, service_id: str, reason: str = "stopped") -> Transition | None:
        entry = self.entries.pop(service_id, None)
        return Transition(entry, "deregister", reason) if entry else None

    def heartbeat(self, hb: dict[str, Any]) -> Transition | None:
        service_id = str(hb.get("serviceId", ""))
        if not service_id:
            return None
        entry = self.entries.get(service_id)
        if entry is None:
            # Heard before registered (e.g. the broker restarted); the route comes with
            # the service's next registration.
            entry = self.entries[service_id] = Entry(str(hb.get("service", "")), service_id)
            entry.pid = int(hb.get("pid", 0))
            entry.hostname = str(hb.get("hostname", ""))
        entry.heartbeat = hb
        entry.interval_s = max(0.001, int(hb.get("intervalMs", 5000)) / 1000)
        entry.last_heartbeat = entry.seen = time.monotonic()
        entry.last_heartbeat_ns = time.time_ns()
        return self._revive(entry)

    def _revive(self, entry: Entry) -> Transition | None:
        if entry.state == "unhealthy":
            entry.state = "healthy"
            return Transition(entry, "healthy", "heartbeats resumed")
        return None

    def sweep(self, now: float | None = None) -> list[Transition]:
        """Mark services that missed heartbeats unhealthy, then remove them."""
        now = time.monotonic() if now is None else now
        changes = []
        for entry in list(self.entries.values()):
            missed = (now - entry.seen) / entry.interval_s
            if missed >= self.remove_after:
                del self.entries[entry.service_id]
                changes.append(Transition(entry, "removed", f"missed {int(missed)} heartbeats"))
            elif missed >= self.unhealthy_after and entry.state == "healthy":
                entry.state = "unhealthy"
                changes.append(Transition(entry, "unhealthy", f"missed {int(missed)} heartbeats"))
        return changes

    def route_for(self, target: str) -> Entry | None:
        """`control.<service>.<id>` names one instance; `control.<service>` the newest healthy."""
        candidates = []
        for entry in self.entries.values():
            exact, by_service = entry.targets
            if target == exact:
                return entry
            if target == by_service:
                candidates.append(entry)
        # one that can be reached first (an entry heard by heartbeat has no route yet)
        candidates.sort(
            key=lambda e: (e.route is not None, e.state == "healthy", e.registered_ns),
            reverse=True,
        )
        return candidates[0] if candidates else None

    def listing(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        rows = [e.as_dict(now) for e in self.entries.values()]
        return sorted(rows, key=lambda r: (r["service"] != "broker", r["service"], r["service_id"]))
