"""Elastic Common Schema 9.4: alerts as `event.kind: alert` documents, process events as
`event.kind: event`, with `process.*`, `rule.*`, `host.*`, `user.*`, `threat.*` (from
`attack.tNNNN` tags), `@timestamp` and `ecs.version`. What ECS has no field for goes
in `labels` (keyword values).
"""

from __future__ import annotations

from typing import Any

import daemoneye

from .common import argv, basename, iso, techniques

VERSION = "9.4.0"
# event.severity is the source's own number; event.risk_score 0-100 as Elastic's rules use
SEVERITY = {"info": (0, 0.0), "low": (1, 21.0), "medium": (2, 47.0), "high": (3, 73.0),
            "critical": (4, 99.0)}  # fmt: skip
EVENT_TYPE = {"start": ["start"], "stop": ["end"], "modify": ["change"], "suspicious": ["info"]}


def alert(record: dict[str, Any]) -> dict[str, Any]:
    """An alert record (as the alerter stores it) as an ECS alert document."""
    severity, risk = SEVERITY.get(record.get("severity", "info"), SEVERITY["info"])
    time_ns = int(record.get("timeNs") or record.get("receivedNs") or 0)
    title = record.get("title") or record.get("ruleName") or "alert"
    event: dict[str, Any] = {
        "kind": "alert",
        "category": ["process", "intrusion_detection"],
        "type": ["info"],
        "id": str(record.get("alertId", "")),
        "severity": severity,
        "risk_score": risk,
        "module": "daemoneye",
        "dataset": "daemoneye.alerts",
        "provider": str(record.get("sourceId", "")),
        "action": str(record.get("type", "alert")),
    }
    if record.get("key") is not None:
        event["sequence"] = int(record["key"])  # the alerter's store key: one per delivery
    if record.get("receivedNs"):
        event["created"] = iso(record["receivedNs"])
    if record.get("firstSeenNs"):
        event["start"] = iso(record["firstSeenNs"])
    if record.get("lastSeenNs"):
        event["end"] = iso(record["lastSeenNs"])
    if record.get("description"):
        event["reason"] = str(record["description"]).strip()
    rule = {
        "id": str(record.get("ruleId", "")),
        "name": str(record.get("ruleName") or record.get("ruleId", "")),
        "ruleset": "daemoneye",
    }
    if record.get("description"):
        rule["description"] = str(record["description"]).strip()
    doc: dict[str, Any] = {
        "@timestamp": iso(time_ns),
        "ecs": {"version": VERSION},
        "message": title,
        "event": event,
        "rule": rule,
        "host": _host(record.get("hostname", "")),
        "observer": {
            "vendor": "DaemonEye",
            "product": "DaemonEye",
            "type": "host-based",
            "version": daemoneye.__version__,
        },
        "labels": _labels(
            record, {"dedupKey": "dedup_key", "incidentId": "incident_id", "count": "count"}
        ),
    }
    if record.get("tags"):
        doc["tags"] = [str(t) for t in record["tags"]]
    threat = _threat(record.get("tags"))
    if threat:
        doc["threat"] = threat
    proc = record.get("process") or {}
    if proc:
        doc["process"] = process(proc, record.get("ancestors"))
        if proc.get("username") or proc.get("uid") is not None:
            doc["user"] = _user(proc)
    return doc


def process_event(event: dict[str, Any]) -> dict[str, Any]:
    """A process event (`ProcessEvent` as a dict) as an ECS event document."""
    kind = str(event.get("kind", "start"))
    proc = event.get("record") or {}
    ev: dict[str, Any] = {
        "kind": "alert" if kind == "suspicious" else "event",
        "category": ["process"],
        "type": EVENT_TYPE.get(kind, ["info"]),
        "module": "daemoneye",
        "dataset": "daemoneye.process",
        "action": kind,
        "created": iso(event.get("timeNs") or 0),
    }
    if kind == "suspicious":
        ev["reason"] = str(event.get("reason", ""))
    doc: dict[str, Any] = {
        "@timestamp": iso(event.get("timeNs") or 0),
        "ecs": {"version": VERSION},
        "event": ev,
        "host": _host(event.get("hostname", "")),
        "process": process(proc),
    }
    if kind == "stop" and event.get("exitCode") is not None:
        doc["process"]["exit_code"] = int(event["exitCode"])
    if proc.get("username") or proc.get("uid") is not None:
        doc["user"] = _user(proc)
    return doc


def process(proc: dict[str, Any], ancestors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """ECS `process.*` of a process record; `process.parent.*` from the nearest ancestor
    when the alert carries them (ECS nests one parent), else the parent's pid."""
    out = _process_fields(proc)
    chain = list(ancestors or [])
    if chain:
        out["parent"] = _process_fields(chain[0])
    elif proc.get("ppid") is not None:
        out["parent"] = {"pid": int(proc["ppid"])}
    return out


def _process_fields(proc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"pid": int(proc.get("pid", 0))}
    if proc.get("name"):
        out["name"] = str(proc["name"])
    exe = str(proc.get("exePath") or "")
    if exe:
        out["executable"] = exe
        out.setdefault("name", basename(exe))
    args = argv(proc)
    if args:
        out["args"] = args
        out["args_count"] = len(args)
        out["command_line"] = " ".join(args)
    if proc.get("cwd"):
        out["working_directory"] = str(proc["cwd"])
    if proc.get("startTime"):
        out["start"] = iso(float(proc["startTime"]) * 1e9)
    if proc.get("sha256"):
        out["hash"] = {"sha256": str(proc["sha256"])}
    if proc.get("uid") is not None:
        out["user"] = {"id": str(proc["uid"])}
        if proc.get("username"):
            out["user"]["name"] = str(proc["username"])
    if proc.get("gid") is not None:
        out["group"] = {"id": str(proc["gid"])}
    return out


def _user(proc: dict[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = {"id": str(proc.get("uid", ""))}
    if proc.get("username"):
        user["name"] = str(proc["username"])
    return user


def _host(hostname: str) -> dict[str, Any]:
    return {"hostname": str(hostname), "name": str(hostname)}


def _threat(tags: list[str] | None) -> dict[str, Any]:
    found = techniques(tags)
    if not found:
        return {}
    threat: dict[str, Any] = {
        "framework": "MITRE ATT&CK",
        "technique": {"id": sorted({t for t, _ in found})},
    }
    subs = sorted({s for _, s in found if s})
    if subs:
        threat["technique"]["subtechnique"] = {"id": subs}
    return threat


def _labels(record: dict[str, Any], names: dict[str, str]) -> dict[str, str]:
    """ECS labels are keyword values: our fields without an ECS home, as strings."""
    return {label: str(record[n]) for n, label in names.items() if record.get(n) not in (None, "")}
