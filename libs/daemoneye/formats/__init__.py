"""Alerts and process events in the schemas SIEMs and data lakes ingest, beside our JSON:
OCSF (`ocsf.py`: Detection Finding for alerts, Process Activity for events) and the
Elastic Common Schema (`ecs.py`). Pure functions of the records the alerter stores and
the events the collector publishes (as dicts); sinks pick one with their `format`.

Tests check the output against the published schemas (tests/schemas/: OCSF 1.8.0 and
ECS 9.4.0, vendored with their licences).
"""

from __future__ import annotations

import json
from typing import Any

from . import ecs, ocsf

SCHEMAS = {"ocsf": ocsf.alert, "ecs": ecs.alert}


def encode_alert(fmt: str, record: dict[str, Any]) -> bytes:
    """An alert record as one compact JSON document in `fmt` (ocsf or ecs)."""
    return json.dumps(SCHEMAS[fmt](record), separators=(",", ":"), default=str).encode()


def key_of(doc: dict[str, Any]) -> int | None:
    """The alerter's store key of a written document of any format (our JSON, OCSF or
    ECS), so a file sink can tell what an earlier run already wrote."""
    key = doc.get("key")
    if key is None:
        key = (doc.get("metadata") or {}).get("uid") or (doc.get("event") or {}).get("sequence")
    try:
        return int(key) if key is not None else None
    except (TypeError, ValueError):
        return None
