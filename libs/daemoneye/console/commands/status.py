"""`daemoneye status`: the broker's registry of services."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.table import Table

from ..common import CommandError, add_command, call, console, settings_from

STATE_STYLE = {"healthy": "green", "unhealthy": "red"}


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "status",
        "Show the services registered with the broker, their health and rates.",
        "  daemoneye status\n  daemoneye status --json | jq '.[].state'\n"
        "  daemoneye status --check collector   # exit 0 only if a collector is healthy\n",
    )
    p.add_argument("--json", action="store_true", help="print the registry as a JSON list")
    p.add_argument(
        "--check",
        metavar="SERVICE",
        help="exit 1 unless a healthy service of this name or id is registered (healthchecks)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    rows = call(settings, "control.broker", "registry").value
    if args.check:
        healthy = [
            r
            for r in rows
            if args.check in (r["service"], r["service_id"]) and r["state"] == "healthy"
        ]
        if not healthy:
            raise CommandError(f"no healthy service {args.check!r} is registered")
        if not args.json:
            console.print(f"{args.check}: healthy ({len(healthy)})")
            return 0
    if args.json:
        console.print_json(json.dumps(rows)) if console.is_terminal else print(json.dumps(rows))
        return 0
    console.print(render(rows))
    return 0


def render(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"DaemonEye services ({time.strftime('%H:%M:%S')})")
    for column in ("service", "id", "pid", "state", "last heartbeat", "events/s", "notes"):
        table.add_column(column, justify="right" if column in ("pid", "events/s") else "left")
    for row in rows:
        age = row.get("heartbeat_age_s")
        state = row["state"]
        if row.get("service_state") and row["service_state"] != "running":
            state = f"{state} ({row['service_state']})"
        table.add_row(
            row["service"],
            row["service_id"],
            str(row["pid"] or ""),
            f"[{STATE_STYLE.get(row['state'], 'yellow')}]{state}[/]",
            "never" if age is None else f"{age:.1f} s ago",
            f"{row['events_per_sec']:.1f}",
            "; ".join(row.get("notes") or []),
        )
    return table
