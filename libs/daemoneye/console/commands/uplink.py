"""`daemoneye uplink`: the broker's uplinks (CurveZMQ to a central broker, JetStream):
link state and why it is down, queued and delivered frames; pause and resume."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.markup import escape
from rich.table import Table

from ..common import add_command, call, console, settings_from

REASON_STYLE = {"up": "green", "connecting": "yellow"}


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "uplink",
        "Show the broker's uplinks (broker.uplink over CurveZMQ, broker.nats to JetStream): "
        "link up or why not (down, refused, key_mismatch, tls, no_stream), frames queued "
        "on disk, delivered, failures, the last error. Pause or resume delivery.",
        "  daemoneye uplink\n  daemoneye uplink --json | jq .uplinks\n"
        "  daemoneye uplink pause --kind curve\n  daemoneye uplink resume\n",
    )
    p.add_argument("action", nargs="?", choices=["status", "pause", "resume"], default="status")
    p.add_argument("--kind", choices=["curve", "nats"], help="pause/resume only this uplink")
    p.add_argument("--json", action="store_true", help="print the broker's answer as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"action": args.action}
    if args.kind:
        params["kind"] = args.kind
    result = call(settings_from(args), "control.broker", "uplink", params).value
    if args.json:
        print(json.dumps(result))
        return 0
    console.print(render(result.get("uplinks") or [result]))
    return 0


def render(uplinks: list[dict[str, Any]]) -> Table:
    table = Table(title="uplinks")
    table.add_column("kind", no_wrap=True)
    table.add_column("target", overflow="fold")
    table.add_column("link", no_wrap=True)
    for column in ("queued", "delivered", "failures", "dropped"):
        table.add_column(column, justify="right")
    table.add_column("last error", ratio=1, overflow="fold")
    for u in uplinks:
        reason = u.get("reason", "")
        link = "up" if u.get("link_up") else reason or "down"
        if u.get("paused"):
            link += " (paused)"
        table.add_row(
            u.get("kind", ""),
            escape(u.get("target", "")),
            f"[{REASON_STYLE.get(reason, 'red')}]{link}[/]",
            str(u.get("queued", 0)),
            str(u.get("delivered", 0)),
            str(u.get("failures", 0)),
            str(u.get("dropped_full", 0)),
            escape(u.get("last_error", "")),
        )
    return table
