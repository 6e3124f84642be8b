"""Alert records: what the alerter stores and delivers, built from wire alerts.

A record is the wire Alert (camelCase, as in schemas/daemoneye.capnp) plus what
the alerter adds: `key` (its store key), `type` (alert, repeat_summary,
rate_limit_summary), `repeats` (dedup repeats carried), `sourceId`, `receivedNs`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from daemoneye import wire
from daemoneye.sections.alerter import SEVERITY_ORDER

try:  # optional: a JSON encoder ~5x faster than json's, for the 10,000 alerts/s path
    import orjson
except ImportError:  # pragma: no cover - the standard library does the same, slower
    orjson = None  # type: ignore[assignment]


class BadAlert(ValueError):
    """An alert frame that decoded but cannot be used: says which field and why."""


def check(alert: Any) -> None:
    if not alert.ruleId:
        raise BadAlert("alert has no ruleId")
    if str(alert.severity) not in SEVERITY_ORDER:
        raise BadAlert(f"alert has unknown severity {alert.severity!r}")


class Converter:
    """Reader -> dict for one struct schema, about 3x faster than pycapnp's `to_dict`
    (which dispatches dynamically on every field): the field plan is worked out once,
    fields are read by their schema objects. At 10,000 alerts/s this conversion is the
    largest cost the alerter controls. Unlike `to_dict`, unset text fields appear as
    "" so every record has every key. Readers without pycapnp's `_get_by_field` (an
    internal) take the slow, public `to_dict` path."""

    def __init__(self, schema: Any) -> None:
        self.fields: list[tuple[str, Any, str, Converter | None]] = []
        for name, field in schema.fields.items():
            kind = str(field.proto.slot.type.which())
            nested = None
            if kind == "struct":
                nested = Converter(field.schema)
            elif kind == "list" and str(field.proto.slot.type.list.elementType.which()) in (
                "struct",
                "list",
                "data",
            ):
                kind = "other"
            self.fields.append((name, field, kind, nested))

    def __call__(self, reader: Any) -> dict[str, Any]:
        get = getattr(reader, "_get_by_field", None)
        if get is None:
            return wire.to_dict(reader)
        out: dict[str, Any] = {}
        for name, field, kind, nested in self.fields:
            value = get(field)
            if kind == "enum":
                value = str(value)
            elif kind == "list":
                value = list(value)
            elif kind == "data":
                value = bytes(value).hex()
            elif nested is not None:
                value = nested(value)
            elif kind == "other":
                value = wire.to_dict(reader).get(name)
            out[name] = value
        return out


def dedup_key(alert: Any) -> tuple[str, ...]:
    """Rule id plus the rule's own dedup fields, else exe path and a hash of the cmdline.

    Keys outlive the process (open windows are stored, so a restart does not deliver
    a repeat again), so the cmdline is digested with a stable hash (BLAKE2b, 64 bits),
    not Python's per-process one. This runs on every alert, repeats included, so
    fields are read by their schema objects."""
    get = getattr(alert, "_get_by_field", None)
    if get is None:
        process = alert.process
        own, exe, argv = alert.dedupKey, process.exePath, process.cmdline
        rule = alert.ruleId
    else:
        rule, own = get(_RULE_ID), get(_DEDUP_KEY)
        if not own:
            pget = get(_PROCESS)._get_by_field
            exe, argv = pget(_EXE_PATH), pget(_CMDLINE)
    if own:
        return (rule, own)
    digest = hashlib.blake2b("\0".join(argv).encode(errors="replace"), digest_size=8)
    return (rule, exe, digest.hexdigest())


_ALERT = wire.Envelope.schema.fields["body"].schema.fields["alert"].schema
_alert_to_dict = Converter(_ALERT)
_RULE_ID, _DEDUP_KEY, _PROCESS = (_ALERT.fields[n] for n in ("ruleId", "dedupKey", "process"))
_EXE_PATH, _CMDLINE = (_PROCESS.schema.fields[n] for n in ("exePath", "cmdline"))


def record_of(alert: Any, source_id: str, key: int, carried: int = 0) -> dict[str, Any]:
    record: dict[str, Any] = _alert_to_dict(alert)
    record["key"] = key
    record["type"] = "alert"
    record["alertId"] = record.get("alertId") or secrets.token_hex(8)
    record["count"] = max(1, int(record.get("count", 1) or 1)) + carried
    record["repeats"] = carried
    record["sourceId"] = source_id
    record["receivedNs"] = time.time_ns()
    record["timeNs"] = record.get("timeNs") or record["receivedNs"]
    return record


def encode(record: dict[str, Any]) -> bytes:
    """The record as compact JSON (orjson when installed: ~5x faster than json)."""
    if orjson is not None:
        return orjson.dumps(record, default=str)
    return json.dumps(record, separators=(",", ":"), default=str).encode()


def repeat_summary(
    last: dict[str, Any], key: int, repeats: int, first_ns: int, last_ns: int, window_s: float
) -> dict[str, Any]:
    """The end of a dedup window: how many repeats of an alert were held back, told
    with the fields of the alert that opened the window."""
    now = time.time_ns()
    last = {k: v for k, v in last.items() if k not in ("sinks", "heldBy", "deliveries")}
    return {
        **last,
        "key": key,
        "type": "repeat_summary",
        "alertId": secrets.token_hex(8),
        "title": f"{last.get('title') or last.get('ruleName')} "
        f"(repeated {repeats} times in {window_s:g} s)",
        "count": repeats,
        "repeats": repeats,
        "firstSeenNs": first_ns,
        "lastSeenNs": last_ns,
        "timeNs": now,
        "receivedNs": now,
    }


def rate_limit_summary(
    scope: str, key: int, count: int, severity: str, rules: dict[str, int], span: tuple[int, int]
) -> dict[str, Any]:
    """What a rate limit held back since the last summary, by rule."""
    now = time.time_ns()
    top = ", ".join(f"{r} ({n})" for r, n in sorted(rules.items(), key=lambda x: -x[1])[:10])
    return {
        "key": key,
        "type": "rate_limit_summary",
        "alertId": secrets.token_hex(8),
        "ruleId": "daemoneye.rate_limit",
        "ruleName": "rate limit summary",
        "severity": severity,
        "title": f"{count} alerts held back by the {scope} rate limit",
        "description": f"held back by rule: {top}",
        "process": {},
        "count": count,
        "repeats": 0,
        "heldByRule": rules,
        "scope": scope,
        "firstSeenNs": span[0],
        "lastSeenNs": span[1],
        "timeNs": now,
        "receivedNs": now,
        "sourceId": "",
        "hostname": "",
        "tags": ["daemoneye", "rate-limit"],
    }


def json_load(data: bytes) -> dict[str, Any]:
    return orjson.loads(data) if orjson is not None else json.loads(data)
