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
    if not alert.ruleId:
        raise BadAlert("alert has no ruleId")
    if str(alert.severity) not in SEVERITY_ORDER:
        raise BadAlert(f"alert has unknown severity {alert.severity!r}")


class Converter:
    """Reader -> dict for one struct schema, about 7x faster than pycapnp's `to_dict`
    (which dispatches dynamically on every field). The field plan is worked out once
    and compiled into one function that reads each field by its schema object and
    builds the dict in a single expression: no per-field loop or type dispatch at run
    time. At 10,000 alerts/s this conversion is the largest cost the alerter controls.
    Unlike `to_dict`, unset text fields appear as "" so every record has every key.
    Readers without pycapnp's `_get_by_field` (an internal) take the slow, public
    `to_dict` path."""

    def __init__(self, schema: Any) -> None:
        self.names: list[str] = []
        scope: dict[str, Any] = {"_to_dict": wire.to_dict}
        items: list[str] = []
        for i, (name, field) in enumerate(schema.fields.items()):
            kind = str(field.proto.slot.type.which())
            scope[f"f{i}"] = field
            read = f"get(f{i})"
            if kind == "enum":
                read = f"str({read})"
            elif kind == "list":
                element = str(field.proto.slot.type.list.elementType.which())
                complex_list = element in ("list", "data")
                if element == "struct":  # e.g. an alert's ancestry
                    scope[f"c{i}"] = Converter(field.schema.elementType)
                    read = f"[c{i}(x) for x in {read}]"
                else:
                    read = f"_to_dict(reader).get({name!r})" if complex_list else f"list({read})"
            elif kind == "data":
                read = f"bytes({read}).hex()"
            elif kind == "struct":
                scope[f"c{i}"] = Converter(field.schema)
                read = f"c{i}({read})"
            items.append(f"{name!r}: {read}")
            self.names.append(name)
        # Generated code, like dataclasses and namedtuple do: names are the schema's own
        # field names (repr-quoted) and calls of the objects bound in `scope`.
        source = "def convert(reader, get):\n    return {" + ", ".join(items) + "}\n"
        exec(compile(source, f"<converter {schema.node.displayName}>", "exec"), scope)
        self._convert = scope["convert"]

    def __call__(self, reader: Any) -> dict[str, Any]:
        get = getattr(reader, "_get_by_field", None)
        if get is None:
            return wire.to_dict(reader)
        return self._convert(reader, get)


def dedup_key(alert: Any) -> int:
    """A 64-bit digest of the rule id plus the rule's own dedup fields, else of the exe
    path and a hash of the cmdline (see `key_digest`).

    Keys outlive the process (open windows are stored, so a restart does not deliver
    a repeat again), so they are stable hashes (BLAKE2b), not Python's per-process one;
    and a digest, not the parts, because up to `dedup_max_keys` of them stay in memory.
    This runs on every alert, repeats included, so fields are read by their schema
    objects."""
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
        return key_digest((rule, own))
    digest = hashlib.blake2b("\0".join(argv).encode(errors="replace"), digest_size=8)
    return key_digest((rule, exe, digest.hexdigest()))


def key_digest(parts: tuple[str, ...]) -> int:
    """The dedup key of its parts: (rule, own key) or (rule, exe, cmdline hash). Two
    keys open at once collide with odds of about n^2 / 2^65 (1e-10 at 100,000)."""
    data = "\0".join(parts).encode(errors="surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


_ALERT = wire.Envelope.schema.fields["body"].schema.fields["alert"].schema
_alert_to_dict = Converter(_ALERT)
_RULE_ID, _DEDUP_KEY, _PROCESS = (_ALERT.fields[n] for n in ("ruleId", "dedupKey", "process"))
_EXE_PATH, _CMDLINE = (_PROCESS.schema.fields[n] for n in ("exePath", "cmdline"))


def record_of(alert: Any, source_id: str, key: int, carried: int = 0) -> dict[str, Any]:
    record: dict[str, Any] = _alert_to_dict(alert)
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
