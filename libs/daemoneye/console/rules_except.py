"""`daemoneye rules except RULE --from-alert KEY`: propose an exception from an alert.

Prints YAML to paste under the rule's `exceptions:` (deploy/rules/README.md): the
alert's values of the rule's stable output columns (the executable, the command
line, the parent, the user; never a pid or a time), each as `equals`. Review it
before use: narrower is safer, and a `prefix` or `glob` may fit better."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from .common import CommandError, call, err_console, settings_from

# Output columns worth matching on, most telling first; others (pids, times,
# counts) change from one run of the same thing to the next.
STABLE = (
    "path", "cmdline", "name", "parent_path", "parent_name", "parent_cmdline", "username",
    "cwd", "sha256", "uid", "euid", "container_id", "reason", "remote_address", "remote_port",
)  # fmt: skip


def add_action(action: Any) -> None:
    e = action(
        "except",
        "Propose an exception for RULE from one of its alerts (prints YAML to review and "
        "paste under the rule's `exceptions:`).",
        "  daemoneye rules except de-reverse-shell --from-alert 1765000000123456789\n"
        "  daemoneye alerts --rule de-reverse-shell --json | jq .key   # find a key\n",
    )
    e.add_argument("rule", metavar="RULE", help="the rule id")
    e.add_argument("--from-alert", required=True, metavar="KEY",
                   help="the alert's key (`daemoneye alerts --json`) or its alertId")  # fmt: skip
    e.add_argument("--name", help="the exception's name (default: from the alert)")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    alert = call(settings, "control.alerter", "alerts.get", {"key": args.from_alert}).value
    if alert.get("ruleId") != args.rule:
        raise CommandError(
            f"alert {args.from_alert} is from rule {alert.get('ruleId')!r}, not {args.rule!r}"
        )
    print(proposal(alert, args.name), end="")
    err_console.print("review it, then add it under the rule's `exceptions:` and reload")
    return 0


def proposal(alert: dict[str, Any], name: str | None = None) -> str:
    """The YAML of one exception matching the alert's row on its stable columns."""
    try:
        row = json.loads(alert.get("rowJson") or "{}")
    except ValueError:
        row = {}
    if not isinstance(row, dict):
        row = {}
    match = {c: row[c] for c in match_of(row)[:4]}
    if not match:
        raise CommandError(
            "the alert's row has no stable column to match on (path, cmdline, name, ...): "
            "write the exception by hand"
        )
    proc = alert.get("process") or {}
    what = proc.get("exePath") or proc.get("name") or alert.get("ruleId", "")
    exception = {
        "name": name or f"{what.rpartition('/')[2] or 'known'} (alert {alert.get('key', '')})",
        "reason": "known good: say why",
        "match": match,
    }
    head = f"# exception for rule {alert.get('ruleId')}, from alert {alert.get('key', '')}\n"
    return head + yaml.safe_dump({"exceptions": [exception]}, sort_keys=False, width=1000)


def match_of(row: dict[str, Any]) -> list[str]:
    """The stable columns the row has (at most the first four are used)."""
    return [c for c in STABLE if c in row and row[c] not in (None, "")]
