"""Alert records: what the alerter stores and delivers, built from wire alerts.

A record is the wire Alert (camelCase, as in schemas/daemoneye.capnp) plus what
the alerter adds: `key` (its store key), `type` (alert, repeat_summary,
rate_limit_summary), `repeats` (dedup repeats carried), `sourceId`, `receivedNs`.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import Any

from daemoneye import wire
from daemoneye.settings.alerter import SEVERITY_ORDER

try:  # optional: a JSON encoder ~5x faster than json's, for the 10,000 alerts/s path
    import orjson
except ImportError:  # pragma: no cover - the standard library does the same, slower
    orjson = None  # type: ignore[assignment]


# Ids for alerts that come without one, and for summaries: unique, not secret. A
# generator seeded once from the OS, because a getrandom() call per alert costs tens of
# microseconds on some kernels and sandboxes.
_ids = random.Random()


def new_id() -> str:
    return f"{_ids.getrandbits(64):016x}"


class BadAlert(ValueError):
    """An alert frame that decoded but cannot be used: says which field and why."""


def check(alert: Any) -> None:
    """BadAlert for an alert without a rule id, of an unknown severity, or with either
    field malformed."""
    try:
        rule, severity = _RULE_AND_SEVERITY(alert)
    except wire.DecodeError as exc:
        raise BadAlert(str(exc)) from None
    check_key_fields(rule, severity)


def check_key_fields(rule: str, severity: str) -> None:
    """check() of the two fields it reads (the compiled reader reads them too:
    wireread.alert_key_shape)."""
    if not rule:
        raise BadAlert("alert has no ruleId")
    if severity not in SEVERITY_ORDER:
        raise BadAlert(f"alert has unknown severity {severity!r}")


def dedup_key(alert: Any) -> int:
    """A 64-bit digest of the rule id plus the rule's own dedup fields, else of the exe
    path and a hash of the cmdline (see `key_digest`).

    Keys outlive the process (open windows are stored, so a restart does not deliver
    a repeat again), so they are stable hashes (BLAKE2b), not Python's per-process one;
    and a digest, not the parts, because up to `dedup_max_keys` of them stay in memory.
    This runs on every alert, repeats included, so fields are read by their schema
    objects (wire.tuple_reader)."""
    rule, own = _RULE_AND_KEY(alert)
    if own:
        return key_digest((rule, own))
    exe, argv = _EXE_AND_ARGV(*_PROCESS(alert))
    try:
        argv = list(argv)  # its texts are decoded here: one may not be UTF-8
    except Exception as exc:  # pycapnp's UnicodeDecodeError or KjException
        raise wire.DecodeError(f"malformed field: process.cmdline: {exc}", 0) from None
    return _process_digest(rule, exe, argv)


def dedup_key_of(rule: str, own: str, process: dict[str, Any]) -> int:
    """dedup_key() of the fields the compiled reader read (wireread.alert_key_shape):
    the same key."""
    if own:
        return key_digest((rule, own))
    return _process_digest(rule, process["exePath"], process["cmdline"])


def _process_digest(rule: str, exe: str, argv: Any) -> int:
    digest = hashlib.blake2b("\0".join(argv).encode(errors="replace"), digest_size=8)
    return key_digest((rule, exe, digest.hexdigest()))


def key_digest(parts: tuple[str, ...]) -> int:
    """The dedup key of its parts: (rule, own key) or (rule, exe, cmdline hash). Two
    keys open at once collide with odds of about n^2 / 2^65 (1e-10 at 100,000)."""
    data = "\0".join(parts).encode(errors="surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


_alert_to_dict = wire.dict_reader(wire.Alert.schema)
_RULE_AND_SEVERITY = wire.tuple_reader(wire.Alert.schema, ("ruleId", "severity"))
_RULE_AND_KEY = wire.tuple_reader(wire.Alert.schema, ("ruleId", "dedupKey"), raw=True)
_PROCESS = wire.tuple_reader(wire.Alert.schema, ("process",), raw=True)
_EXE_AND_ARGV = wire.tuple_reader(wire.ProcessRecord.schema, ("exePath", "cmdline"), raw=True)


def record_of(alert: Any, source_id: str, key: int, carried: int = 0) -> dict[str, Any]:
    return record_from(_alert_to_dict(alert), source_id, key, carried)


def record_from(
    record: dict[str, Any], source_id: str, key: int, carried: int = 0
) -> dict[str, Any]:
    """record_of() of an alert read whole into `record` (which it completes)."""
    record["key"] = key
    record["type"] = "alert"
    record["alertId"] = record.get("alertId") or new_id()
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
        "alertId": new_id(),
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
        "alertId": new_id(),
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
