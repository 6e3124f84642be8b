"""The dedup key of an alert: what makes two alerts "the same" to the alerter.

Default: rule id + executable path + a hash of argv, never the pid, so the same
command run five times is one alert counted five times. A rule may name its own
output columns instead (`dedup_by: [columns]`). A row with no process (an aggregate
that names none) keys on its identity, as the rule's differential results do.
"""

from __future__ import annotations

import hashlib
import json

from daemoneye.rules.engine import Firing


def argv_hash(argv: list[str]) -> str:
    return hashlib.blake2b("\0".join(argv).encode(errors="replace"), digest_size=8).hexdigest()


def dedup_key(firing: Firing) -> str:
    rule, rec = firing.rule, firing.record
    if rule.dedup_by:
        picked = {c: firing.row.get(c) for c in rule.dedup_by}
        return f"{rule.id}|" + json.dumps(picked, sort_keys=True, default=str)
    if rec is None or not (rec.get("exePath") or rec.get("cmdline")):
        return f"{rule.id}|{firing.identity}"
    return f"{rule.id}|{rec.get('exePath', '')}|{argv_hash(list(rec.get('cmdline') or ()))}"
