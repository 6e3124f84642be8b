"""Incidents: alerts whose processes share a process tree, told once and then updated.

Two alerts belong to one incident when, within `window_s` of the incident's last
alert, their processes share a session (the same `sessionId` on the same host and
pid namespace; sessions 0 and 1 are too broad to mean anything) or a common ancestor
below their session leader (an ancestor in the process's own session, not its leader
nor init: what a daemon's session 1 or an unknown session still ties together).
Each alert brings its tree keys (see `tree_keys`); an alert with a key an open
incident holds joins it, and its keys join too, so the incident follows the tree.

What sinks receive:
- The first alert of a new incident at once, never held back (with `incidentId`).
- A later alert of the incident at once too when it raises the incident's severity
  (a sink may not have been told of a lower one at all); otherwise it is held
  (`heldBy: ["incident"]`, kept in the history) and the incident is updated.
- Updates, rate-limited: at most one `incident_update` record per `update_s`, listing
  every incident that changed since it was last told (new rules, new processes,
  counts, dedup repeats included). An analyst gets one line per attacker behaviour,
  and a digest now and then, rather than one alert per command.

Memory: open incidents (bounded by `max_open`, the oldest closed first) and the last
`max_closed` closed ones, for `daemoneye alerts --incidents`. A restart forgets them
(each stored alert still names its incident).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from daemoneye.settings.alerter import SEVERITY_ORDER

from .model import new_id

MAX_PROCESSES = 50  # processes listed per incident (all are counted)
MAX_KEYS = 500  # tree keys one incident holds at most (a huge tree stops growing)


def _rank(severity: str) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else 0


def tree_keys(record: dict[str, Any]) -> set[str]:
    """What ties an alert's process to others: its session, itself, and each ancestor
    below its session leader. Empty when the alert names no process."""
    proc = record.get("process") or {}
    pid = proc.get("pid") or 0
    if pid <= 1:  # none, or init: everything descends from it
        return set()
    host = record.get("hostname") or ""
    ns = proc.get("pidNamespace") or 0
    sid = proc.get("sessionId") or 0
    ancestry = record.get("ancestry") or ()
    if sid <= 1 and not ancestry:
        return set()  # nothing known of its tree: it stands alone, as before incidents
    keys = {f"p|{host}|{ns}|{pid}|{proc.get('startTicks') or 0}"}
    if sid > 1:
        keys.add(f"s|{host}|{ns}|{sid}")
    for anc in ancestry:
        apid = anc.get("pid") or 0
        if apid <= 1 or anc.get("source") == "unknown" or apid == sid:
            break  # init, the end of what is known, or the session leader
        if (anc.get("sessionId") or 0) != sid:
            break  # above the session's leader (it called setsid): another tree
        keys.add(f"p|{host}|{ns}|{apid}|{anc.get('startTicks') or 0}")
    return keys


@dataclass
class Incident:
    id: str
    hostname: str
    title: str
    severity: str
    first_ns: int
    last_ns: int
    last_seen: float  # monotonic: the window runs from the last alert
    session_id: int = 0
    keys: set[str] = field(default_factory=set)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule id -> summary
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    process_count: int = 0
    alerts: int = 0  # alerts taken in, dedup repeats included
    delivered: int = 0  # alerts that went to the sinks on their own
    held: int = 0  # alerts told only through updates
    alert_keys: list[int] = field(default_factory=list)  # store keys (history), bounded
    changed: bool = False  # since it was last told
    updates: int = 0
    closed: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The incident as sinks, `alerts --incidents` and the RPC show it (docs/CLI.md)."""
        return {
            "incidentId": self.id,
            "state": "closed" if self.closed else "open",
            "severity": self.severity,
            "title": self.title,
            "hostname": self.hostname,
            "sessionId": self.session_id,
            "firstSeenNs": self.first_ns,
            "lastSeenNs": self.last_ns,
            "alerts": self.alerts,
            "delivered": self.delivered,
            "held": self.held,
            "updates": self.updates,
            "rules": list(self.rules.values()),
            "processes": list(self.processes.values()),
            "processCount": self.process_count,
            "alertKeys": list(self.alert_keys),
        }


class Incidents:
    def __init__(
        self,
        window_s: float = 60.0,
        update_s: float = 30.0,
        max_open: int = 10_000,
        max_closed: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.update_s = update_s
        self.max_open = max_open
        self.clock = clock
        self.open: dict[str, Incident] = {}  # id -> incident, oldest first
        self.closed: deque[Incident] = deque(maxlen=max_closed)
        self._by_key: dict[str, str] = {}  # tree key -> open incident id
        self._by_dedup: dict[Hashable, str] = {}  # open dedup window -> incident id
        self._told_repeats: dict[Hashable, int] = {}  # repeats told through an incident
        self._last_update = clock()
        self.opened = 0
        self.updates_sent = 0

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    # --- alerts in ------------------------------------------------------------

    def assign(self, record: dict[str, Any], dedup_key: Hashable, now: float) -> bool:
        """Put a delivered-or-held alert record into its incident (sets `incidentId`);
        True when it is to be held (the incident's sinks were told already)."""
        if not self.enabled:
            return False
        keys = tree_keys(record)
        if not keys:
            return False
        incident = None
        for key in keys:
            found = self._by_key.get(key)
            incident = self.open.get(found) if found is not None else None
            if incident is not None:
                if incident.last_seen > now - self.window_s:
                    break
                self._close(incident)  # its window passed; the sweep had not seen it yet
                incident = None
        severity = str(record.get("severity") or "info")
        time_ns = int(record.get("timeNs") or time.time_ns())
        held = False
        if incident is None:
            incident = self._new(record, severity, time_ns, now)
        else:
            held = _rank(severity) <= _rank(incident.severity)
            incident.severity = max(incident.severity, severity, key=_rank)
            incident.changed = True
        incident.last_seen = now
        incident.last_ns = max(incident.last_ns, time_ns)
        incident.alerts += max(1, int(record.get("count") or 1))
        if held:
            incident.held += 1
        else:
            incident.delivered += 1
        if len(incident.alert_keys) < MAX_PROCESSES:
            incident.alert_keys.append(record.get("key", 0))
        self._note_rule(incident, record, max(1, int(record.get("count") or 1)))
        self._note_process(incident, record)
        for key in keys:
            if len(incident.keys) >= MAX_KEYS:
                break
            if key not in incident.keys:
                incident.keys.add(key)
                self._by_key[key] = incident.id
        self._by_dedup[dedup_key] = incident.id
        record["incidentId"] = incident.id
        return held

    def restore(self, records: Iterable[dict[str, Any]], wall_ns: int, now: float) -> int:
        """After a restart: the alerts stored within the last window, oldest first,
        make their incidents again (same ids). One that held alerts is due an update,
        as the crash may have come before it was told (at least once: maybe twice)."""
        restored = 0
        for record in records:
            if record.get("type") != "alert" or not record.get("incidentId"):
                continue
            seen_at = now - max(0, wall_ns - int(record.get("receivedNs") or wall_ns)) / 1e9
            if seen_at <= now - self.window_s:
                continue
            self.assign(record, ("restored", record.get("key")), seen_at)
            incident = self.open.get(record["incidentId"])
            if incident is not None:
                incident.changed = incident.changed and bool(incident.held)
                restored += 1
        return restored

    def _new(self, record: dict[str, Any], severity: str, time_ns: int, now: float) -> Incident:
        while len(self.open) >= self.max_open:
            self._close(next(iter(self.open.values())))
        proc = record.get("process") or {}
        incident = Incident(
            id=record.get("incidentId") or new_id(),
            hostname=record.get("hostname") or "",
            title=record.get("title") or record.get("ruleName") or "",
            severity=severity,
            first_ns=time_ns,
            last_ns=time_ns,
            last_seen=now,
            session_id=proc.get("sessionId") or 0,
        )
        self.open[incident.id] = incident
        self.opened += 1
        return incident

    def _note_rule(self, incident: Incident, record: dict[str, Any], count: int) -> None:
        rule = record.get("ruleId") or ""
        seen = incident.rules.get(rule)
        if seen is None:
            incident.rules[rule] = {
                "ruleId": rule,
                "ruleName": record.get("ruleName") or "",
                "severity": record.get("severity") or "info",
                "count": count,
            }
        else:
            seen["count"] += count

    def _note_process(self, incident: Incident, record: dict[str, Any]) -> None:
        proc = record.get("process") or {}
        ident = f"{proc.get('pid', 0)}:{proc.get('startTicks', 0)}"
        if ident in incident.processes or not proc.get("pid"):
            return
        incident.process_count += 1
        if len(incident.processes) < MAX_PROCESSES:
            incident.processes[ident] = {
                "pid": proc.get("pid", 0),
                "startTicks": proc.get("startTicks", 0),
                "name": proc.get("name", ""),
                "exePath": proc.get("exePath", ""),
                "cmdline": list(proc.get("cmdline") or ()),
                "username": proc.get("username", ""),
            }

    def repeat(self, dedup_key: Hashable, time_ns: int, rule_id: str) -> bool:
        """A dedup repeat: counted in its window's incident while that is open (then
        the update tells it, not a repeat summary). False when no open incident has it."""
        ident = self._by_dedup.get(dedup_key)
        incident = self.open.get(ident) if ident is not None else None
        if incident is None:
            return False
        incident.alerts += 1
        incident.last_ns = max(incident.last_ns, time_ns)
        incident.last_seen = self.clock()
        incident.changed = True
        seen = incident.rules.get(rule_id)
        if seen is not None:
            seen["count"] += 1
        self._told_repeats[dedup_key] = self._told_repeats.get(dedup_key, 0) + 1
        return True

    def window_closed(self, dedup_key: Hashable) -> int:
        """A dedup window ended: how many of its repeats incidents told already."""
        self._by_dedup.pop(dedup_key, None)
        return self._told_repeats.pop(dedup_key, 0)

    # --- time -------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Close the incidents whose window passed with no new alert."""
        cutoff = now - self.window_s
        for incident in [i for i in self.open.values() if i.last_seen <= cutoff]:
            self._close(incident)

    def _close(self, incident: Incident) -> None:
        incident.closed = True
        self.open.pop(incident.id, None)
        for key in incident.keys:
            if self._by_key.get(key) == incident.id:
                del self._by_key[key]
        incident.keys = set()
        self.closed.append(incident)

    def next_work_at(self) -> float:
        """When `expire` or `due` next have work, on this clock (inf: not before another
        alert): the oldest open incident's window end, the next update of a changed one."""
        at = float("inf")
        if self.open:
            at = min(i.last_seen for i in self.open.values()) + self.window_s
        if any(i.changed for i in self.open.values()) or any(i.changed for i in self.closed):
            at = min(at, self._last_update + self.update_s)
        return at

    def due(self, now: float, force: bool = False) -> list[dict[str, Any]]:
        """The incidents changed since last told, once `update_s` passed since the last
        update (or `force`); each is marked told."""
        if not force and now - self._last_update < self.update_s:
            return []
        changed = [i for i in self.open.values() if i.changed]
        changed += [i for i in self.closed if i.changed]
        if not changed:
            return []
        self._last_update = now
        out = []
        for incident in changed:
            incident.changed = False
            incident.updates += 1
            out.append(incident.as_dict())
        self.updates_sent += 1
        return out

    def listing(self, limit: int = 100) -> list[dict[str, Any]]:
        """Open incidents, then closed ones, newest first."""
        rows = sorted(self.open.values(), key=lambda i: i.last_ns, reverse=True)
        rows += sorted(self.closed, key=lambda i: i.last_ns, reverse=True)
        return [i.as_dict() for i in rows[:limit]]


def update_record(incidents: list[dict[str, Any]], key: int) -> dict[str, Any]:
    """One `incident_update` record: the incidents that changed, for every sink."""
    now = time.time_ns()
    worst = max((i["severity"] for i in incidents), key=_rank)
    alerts = sum(i["alerts"] for i in incidents)
    names = "; ".join(
        f"{i['incidentId']} {i['severity']}: {i['alerts']} alerts, "
        f"{len(i['rules'])} rules, {i['processCount']} processes"
        for i in incidents[:10]
    )
    return {
        "key": key,
        "type": "incident_update",
        "alertId": new_id(),
        "ruleId": "daemoneye.incident",
        "ruleName": "incident update",
        "severity": worst,
        "title": f"{len(incidents)} incident(s) updated: {alerts} alerts",
        "description": names,
        "process": {},
        "count": alerts,
        "repeats": 0,
        "incidents": incidents,
        "firstSeenNs": min(i["firstSeenNs"] for i in incidents),
        "lastSeenNs": max(i["lastSeenNs"] for i in incidents),
        "timeNs": now,
        "receivedNs": now,
        "sourceId": "",
        "hostname": incidents[0]["hostname"] if len(incidents) == 1 else "",
        "tags": ["daemoneye", "incident"],
    }
