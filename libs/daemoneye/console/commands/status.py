"""`daemoneye status`: the broker's registry of services."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Group
from rich.markup import escape
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


def short_id(row: dict[str, Any]) -> str:
    """The id without `@<host>` when the host column says it (the full id in --json)."""
    service_id, host = row["service_id"], row.get("hostname") or ""
    return service_id.removesuffix(f"@{host}") if host else service_id


def common_domain(hosts: set[str]) -> str:
    """The dotted suffix every host name shares, leaving each at least one label:
    {web1.example.com, db1.example.com} -> "example.com"."""
    split = [h.split(".") for h in hosts if h]
    if len(split) < 2:
        return ""
    shared: list[str] = []
    for labels in zip(*(reversed(s[1:]) for s in split), strict=False):
        if len(set(labels)) != 1:
            break
        shared.append(labels[0])
    return ".".join(reversed(shared))


def render(rows: list[dict[str, Any]]) -> Group:
    """One row per service, its host in a column (a center lists several hosts) and
    its id never cut; notes below the table, one line each, where they have room."""
    domain = common_domain({r.get("hostname") or "" for r in rows})
    title = f"DaemonEye services ({time.strftime('%H:%M:%S')})"
    if domain:
        title += f", hosts in {domain}"
    table = Table(title=title)
    table.add_column("host", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("heartbeat", no_wrap=True)
    table.add_column("events/s", justify="right", no_wrap=True)
    notes: list[str] = []
    for row in rows:
        age = row.get("heartbeat_age_s")
        state = row["state"]
        if state == "healthy" and row.get("service_state") not in (None, "", "running"):
            state = row["service_state"]  # alive but degraded, starting, stopping
        host = row.get("hostname") or ""
        table.add_row(
            escape(host.removesuffix(f".{domain}") if domain else host),
            escape(short_id(row)),
            str(row["pid"] or ""),
            f"[{STATE_STYLE.get(state, 'yellow')}]{state}[/]",
            "never" if age is None else f"{age:.1f} s ago",
            f"{row['events_per_sec']:.1f}",
        )
        notes += [f"{escape(row['service_id'])}: {escape(n)}" for n in row.get("notes") or []]
    return Group(table, *notes)
