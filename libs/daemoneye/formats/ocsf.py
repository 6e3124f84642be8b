"""OCSF 1.8.0: alerts as Detection Findings [2004], process events as Process Activity
[1007], both with the `host` profile (the device they happened on), `container` when
the process ran in one. `metadata.version` states the OCSF version; what OCSF has no
place for goes in `unmapped`.
"""

from __future__ import annotations

from typing import Any

import daemoneye

from .common import argv, basename, ms, techniques

VERSION = "1.8.0"
PRODUCT = {"name": "DaemonEye", "vendor_name": "DaemonEye", "version": daemoneye.__version__}

DETECTION_FINDING = 2004  # category 2, Findings
PROCESS_ACTIVITY = 1007  # category 1, System Activity
SEVERITY = {"info": (1, "Informational"), "low": (2, "Low"), "medium": (3, "Medium"),
            "high": (4, "High"), "critical": (5, "Critical")}  # fmt: skip
# record type -> (activity_id, activity_name, status_id, status)
FINDING_ACTIVITY = {
    "alert": (1, "Create", 1, "New"),
    "repeat_summary": (2, "Update", 1, "New"),  # repeats of an alert, counted
    "rate_limit_summary": (99, "Rate limit summary", 3, "Suppressed"),  # what was held back
}
# event kind -> (activity_id, activity_name)
PROCESS_ACTIVITY_IDS = {"start": (1, "Launch"), "stop": (2, "Terminate"),
                        "modify": (99, "Modify"), "suspicious": (99, "Suspicious")}  # fmt: skip
SET_USER_ID = (5, "Set User ID")
UID_FIELDS = {"uid", "euid", "suid"}


def alert(record: dict[str, Any]) -> dict[str, Any]:
    """An alert record (as the alerter stores it) as a Detection Finding."""
    kind = record.get("type", "alert")
    activity_id, activity, status_id, status = FINDING_ACTIVITY.get(kind, FINDING_ACTIVITY["alert"])
    severity_id, severity = SEVERITY.get(record.get("severity", "info"), SEVERITY["info"])
    time_ns = int(record.get("timeNs") or record.get("receivedNs") or 0)
    title = record.get("title") or record.get("ruleName") or "alert"
    proc = record.get("process") or {}
    info: dict[str, Any] = {
        "uid": str(record.get("alertId", "")),
        "title": title,
        "types": [kind],
        "analytic": {
            "uid": str(record.get("ruleId", "")),
            "name": str(record.get("ruleName") or record.get("ruleId", "")),
            "type_id": 1,
            "type": "Rule",
        },
    }
    if record.get("description"):
        info["desc"] = str(record["description"]).strip()
    if record.get("firstSeenNs"):
        info["first_seen_time"] = ms(record["firstSeenNs"])
    if record.get("lastSeenNs"):
        info["last_seen_time"] = ms(record["lastSeenNs"])
    attacks = _attacks(record.get("tags"))
    if attacks:
        info["attacks"] = attacks
    finding: dict[str, Any] = {
        "class_uid": DETECTION_FINDING,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": DETECTION_FINDING * 100 + activity_id,
        "type_name": f"Detection Finding: {_type_caption(activity_id, activity)}",
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "time": ms(time_ns),
        "message": title,
        "count": int(record.get("count", 1) or 1),
        "finding_info": info,
        "metadata": _metadata(record, proc, record.get("receivedNs"), "alerts"),
        "device": _device(record.get("hostname", "")),
        "unmapped": _unmapped(record, ("dedupKey", "sourceId", "repeats", "rowJson", "tags")),
    }
    if record.get("firstSeenNs"):
        finding["start_time"] = ms(record["firstSeenNs"])
    if record.get("lastSeenNs"):
        finding["end_time"] = ms(record["lastSeenNs"])
    if proc.get("pid") is not None and proc:
        finding["evidences"] = [{"process": process(proc, record.get("ancestors"))}]
    return finding


def process_activity(event: dict[str, Any]) -> dict[str, Any]:
    """A process event (`ProcessEvent` as a dict) as Process Activity."""
    kind = str(event.get("kind", "start"))
    activity_id, activity = PROCESS_ACTIVITY_IDS.get(kind, (99, kind.capitalize()))
    if kind == "modify" and UID_FIELDS & set(event.get("changedFields") or []):
        activity_id, activity = SET_USER_ID
    proc = event.get("record") or {}
    severity_id, severity = (1, "Informational")
    if kind == "suspicious":
        severity_id, severity = SEVERITY.get(
            str(event.get("severity", "medium")), SEVERITY["medium"]
        )
    this = process(proc)
    # the actor: the parent that launched it; for every other activity the process itself
    actor = {"pid": int(proc.get("ppid", 0))} if kind == "start" else dict(this)
    out: dict[str, Any] = {
        "class_uid": PROCESS_ACTIVITY,
        "class_name": "Process Activity",
        "category_uid": 1,
        "category_name": "System Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": PROCESS_ACTIVITY * 100 + activity_id,
        "type_name": f"Process Activity: {_type_caption(activity_id, activity)}",
        "severity_id": severity_id,
        "severity": severity,
        "time": ms(event.get("timeNs") or 0),
        "process": this,
        "actor": {"process": actor},
        "device": _device(event.get("hostname", "")),
        "metadata": _metadata(event, proc, None, "events"),
        "unmapped": _unmapped(event, ("source", "changedFields", "reason", "runtimeNs")),
    }
    if kind == "stop" and event.get("exitCode") is not None:
        out["exit_code"] = int(event["exitCode"])
    if kind == "suspicious" and event.get("reason"):
        out["message"] = str(event["reason"])
    return out


def process(proc: dict[str, Any], ancestors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """OCSF `process` of a DaemonEye process record; the parent chain from `ancestors`
    (nearest first) when the alert carries them, else the parent's pid."""
    out: dict[str, Any] = {"pid": int(proc.get("pid", 0))}
    if proc.get("name"):
        out["name"] = str(proc["name"])
    args = argv(proc)
    if args:
        out["cmd_line"] = " ".join(args)
    if proc.get("startTime"):
        out["created_time"] = int(float(proc["startTime"]) * 1000)
    if proc.get("cwd"):
        out["working_directory"] = str(proc["cwd"])
    exe = str(proc.get("exePath") or "")
    if exe:
        file: dict[str, Any] = {
            "name": basename(exe),
            "path": exe,
            "type_id": 1,
            "type": "Regular File",
        }
        if proc.get("sha256"):
            file["hashes"] = [{"algorithm_id": 3, "algorithm": "SHA-256", "value": proc["sha256"]}]
        out["file"] = file
    if proc.get("username") or proc.get("uid") is not None:
        user: dict[str, Any] = {"uid": str(proc.get("uid", ""))}
        if proc.get("username"):
            user["name"] = str(proc["username"])
        out["user"] = user
    if proc.get("containerId"):
        out["container"] = {"uid": str(proc["containerId"])}
    chain = list(ancestors or [])
    if chain:
        out["parent_process"] = process(chain[0], chain[1:])
    elif proc.get("ppid") is not None:
        out["parent_process"] = {"pid": int(proc["ppid"])}
    return out


def _type_caption(activity_id: int, activity: str) -> str:
    """type_name follows type_uid's caption: for activity 99 that is Other (activity_name
    says which other)."""
    return "Other" if activity_id == 99 else activity


def _attacks(tags: list[str] | None) -> list[dict[str, Any]]:
    out = []
    for technique, sub in techniques(tags):
        attack: dict[str, Any] = {"technique": {"uid": technique}}
        if sub:
            attack["sub_technique"] = {"uid": sub}
        out.append(attack)
    return out


def _metadata(
    record: dict[str, Any], proc: dict[str, Any], logged_ns: Any, log_name: str
) -> dict[str, Any]:
    profiles = ["host"]
    if _has_container(proc, record):
        profiles.append("container")
    meta: dict[str, Any] = {
        "version": VERSION,
        "product": dict(PRODUCT),
        "profiles": profiles,
        "log_name": log_name,
    }
    if record.get("key") is not None:
        meta["uid"] = str(record["key"])  # the alerter's store key (its sinks' idempotency key)
    if record.get("incidentId"):
        meta["correlation_uid"] = str(record["incidentId"])
    if logged_ns:
        meta["logged_time"] = ms(logged_ns)
    return meta


def _has_container(proc: dict[str, Any], record: dict[str, Any]) -> bool:
    chain = [proc, *(record.get("ancestors") or [])]
    return any(p.get("containerId") for p in chain)


def _device(hostname: str) -> dict[str, Any]:
    return {"hostname": str(hostname), "name": str(hostname), "type_id": 0, "type": "Unknown"}


def _unmapped(record: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {"daemoneye": {n: record[n] for n in names if record.get(n) not in (None, "", [])}}
