"""`daemoneye alerts`: alert history from the alerter's store, dead letters, retry."""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from daemoneye.wire import SEVERITIES

from ..ancestry import chain_text
from ..common import add_command, call, console, positive, settings_from

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
STATE_STYLE = {"delivered": "green", "pending": "yellow", "failed": "red"}
SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}
FOLLOW_POLL_S = 0.5
# The table keeps one line per alert: cells are cut with an ellipsis, never wrapped (at
# 80 columns each title used to wrap over seven lines). When the wide layout leaves the
# title too little room, a narrower one: the time of day (the date is in --json), the
# count in the title, pid and executable name in one column, deliveries as sent/total.
MIN_TITLE = 24
WIDE_COLUMNS = (  # (header, max width; None: as wide as it needs)
    ("time", None),
    ("severity", None),
    ("rule", 24),
    ("title", None),
    ("count", None),
    ("pid", None),
    ("exe", 32),
    ("ancestry", 40),
    ("deliveries", 32),
)
NARROW_COLUMNS = (
    ("time", None),
    ("severity", None),
    ("rule", 12),
    ("title", None),
    ("process", 14),
    ("sent", 8),
)


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "alerts",
        "Show alerts the alerter received and where each was delivered; "
        "list dead letters (--failed) or send them again (retry).",
        "  daemoneye alerts --since 1h --severity high\n"
        "  daemoneye alerts --rule proc.tmp_exec --json\n"
        "  daemoneye alerts --follow\n"
        "  daemoneye alerts --failed\n"
        "  daemoneye alerts --incidents\n"
        "  daemoneye alerts retry --sink soc\n",
    )
    p.add_argument("action", nargs="?", choices=["list", "retry"], default="list",
                   help="list (default) or retry dead letters")  # fmt: skip
    p.add_argument("--since", type=duration, help="only newer than this (30s, 15m, 2h, 7d)")
    p.add_argument("--severity", choices=SEVERITIES, help="at least this severity")
    p.add_argument("--rule", help="only this rule id")
    p.add_argument("--limit", type=positive, default=50, help="at most N alerts (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--follow", action="store_true", help="keep printing new alerts")
    p.add_argument("--failed", action="store_true", help="list dead-lettered deliveries")
    p.add_argument("--incidents", action="store_true",
                   help="list incidents (alerts grouped by process tree), open first")  # fmt: skip
    p.add_argument("--sink", help="retry/--failed: only this sink")
    p.add_argument("--key", type=int, action="append", help="retry: only this alert key")
    p.add_argument("--from", dest="servers", action="append", metavar="nats://HOST:PORT",
                   help="a fleet's alerts from NATS JetStream (daemoneye fleet)")  # fmt: skip
    p.set_defaults(handler=run)


def duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 15m, 2h or 7d")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def run(args: argparse.Namespace) -> int:
    if args.servers:  # a fleet's alerts, read from NATS: its own code path
        from .fleet import read_alerts

        return read_alerts(args)
    settings = settings_from(args)
    if args.action == "retry":
        params = {"sink": args.sink, "keys": args.key or []}
        result = call(settings, "control.alerter", "alerts.retry", params).value
        if args.json:
            print(json.dumps(result))
        else:
            by_sink = ", ".join(f"{k}: {v}" for k, v in result["by_sink"].items()) or "none"
            console.print(f"retried {result['retried']} dead-lettered deliveries ({by_sink})")
        return 0
    if args.failed:
        rows = call(settings, "control.alerter", "alerts.failed", {"sink": args.sink}).value
        return print_failed(rows["failed"], args.json)
    if args.incidents:
        value = call(settings, "control.alerter", "alerts.incidents", {"limit": args.limit}).value
        return print_incidents(value["incidents"], args.json)
    params: dict[str, Any] = {"limit": args.limit}
    if args.since:
        params["since_ns"] = time.time_ns() - int(args.since * 1e9)
    if args.severity:
        params["severity"] = args.severity
    if args.rule:
        params["rule"] = args.rule
    result = call(settings, "control.alerter", "alerts.list", params).value
    found = result["alerts"]
    # one call reads a bounded part of the history: page on while it says where to
    while result.get("continue_from") and len(found) < args.limit:
        page = {**params, "before": result["continue_from"], "limit": args.limit - len(found)}
        result = call(settings, "control.alerter", "alerts.list", page).value
        found += result["alerts"]
    alerts = list(reversed(found))  # oldest first, like a log
    print_alerts(alerts, args.json, table=not args.follow)
    if not args.follow:
        return 0
    last = alerts[-1]["key"] if alerts else time.time_ns() - int((args.since or 0) * 1e9)
    try:
        while True:
            params["after"] = last
            result = call(settings, "control.alerter", "alerts.list", params).value
            new = result["alerts"]
            if new:
                print_alerts(new, args.json, table=False)
            last = result.get("continue_from") or (new[-1]["key"] if new else last)
            if not new and not result.get("continue_from"):
                time.sleep(FOLLOW_POLL_S)  # polling the alerter's history, nothing to block on
    except KeyboardInterrupt:
        return 130  # interrupted, as every verb reports it


def print_alerts(alerts: list[dict[str, Any]], as_json: bool, table: bool) -> None:
    if as_json:
        for alert in alerts:
            print(json.dumps(alert), flush=True)
        return
    if not table:
        for alert in alerts:
            console.print(alert_line(alert), soft_wrap=True)
        return
    # the wide layout when its title column gets MIN_TITLE at least, else the narrow one
    columns, rows = WIDE_COLUMNS, [table_row(a, narrow=False) for a in alerts]
    widths = fit(columns, rows, console.width)
    if widths is None:
        columns, rows = NARROW_COLUMNS, [table_row(a, narrow=True) for a in alerts]
        widths = fit(columns, rows, console.width) or [len(name) for name, _ in columns]
    t = Table(title=f"alerts ({len(alerts)})", box=None, pad_edge=False)
    for (column, _), width in zip(columns, widths, strict=True):
        t.add_column(
            column,
            justify="right" if column in ("count", "pid") else "left",
            no_wrap=True,
            overflow="ellipsis",
            width=width,
        )
    for row in rows:
        t.add_row(*row)
    console.print(t)


def alert_line(a: dict[str, Any]) -> str:
    proc = a.get("process") or {}
    return (
        f"[dim]{stamp(a.get('timeNs', 0))}[/dim] "
        f"[{SEVERITY_STYLE.get(a.get('severity', ''), '')}]{a.get('severity', ''):8}[/] "
        f"{escape(a.get('ruleId', ''))} [bold]{escape(a.get('title', ''))}[/bold] "
        f"x{a.get('count', 1)} pid={proc.get('pid', '')} {escape(proc.get('exePath', ''))} "
        f"{deliveries(a)}"
        + (f" [dim]via {escape(chain_text(a, argv=True))}[/dim]" if a.get("ancestry") else "")
    )


def deliveries(a: dict[str, Any]) -> str:
    parts = [f"[{STATE_STYLE.get(s, '')}]{escape(k)}:{s}[/]" for k, s in a["deliveries"].items()]
    if a.get("heldBy"):
        parts.append(f"[yellow]held:{','.join(a['heldBy'])}[/]")
    return " ".join(parts) or "-"


def table_row(a: dict[str, Any], narrow: bool) -> list[str]:
    proc = a.get("process") or {}
    severity = f"[{SEVERITY_STYLE.get(a.get('severity', ''), '')}]{a.get('severity', '')}[/]"
    if narrow:
        count = a.get("count", 1)
        exe = (proc.get("exePath") or "").rsplit("/", 1)[-1]
        return [
            stamp(a.get("timeNs", 0), "%H:%M:%S"),
            severity,
            escape(a.get("ruleId", "")),
            (f"x{count} " if count != 1 else "") + escape(a.get("title", "")),
            escape(f"{proc.get('pid', '')} {exe}".strip()),
            delivery_summary(a),
        ]
    return [
        stamp(a.get("timeNs", 0)),
        severity,
        escape(a.get("ruleId", "")),
        escape(a.get("title", "")),
        str(a.get("count", 1)),
        str(proc.get("pid", "")),
        escape(proc.get("exePath", "")),
        escape(chain_text(a)),
        deliveries(a),
    ]


def fit(
    columns: tuple[tuple[str, int | None], ...], rows: list[list[str]], total: int
) -> list[int] | None:
    """Column widths in `total`: each as wide as its widest cell up to its cap, the title
    the rest; None when that leaves the title less than MIN_TITLE."""
    widths = []
    for i, (name, cap) in enumerate(columns):
        need = max([len(name)] + [Text.from_markup(row[i]).cell_len for row in rows])
        widths.append(min(need, cap) if cap else need)
    at = [name for name, _ in columns].index("title")
    room = total - sum(widths) + widths[at] - 2 * (len(columns) - 1)  # 2 spaces between
    if room < min(MIN_TITLE, widths[at]):
        return None
    widths[at] = min(widths[at], room)
    return widths


def delivery_summary(a: dict[str, Any]) -> str:
    """`2/3` delivered of configured sinks, red when one failed, yellow while pending."""
    states = list(a["deliveries"].values())
    done = sum(1 for s in states if s == "delivered")
    style = "red" if "failed" in states else "yellow" if done < len(states) else "green"
    held = " held" if a.get("heldBy") else ""
    return f"[{style}]{done}/{len(states)}[/]{held}" if states else held.strip() or "-"


def said_plainly(rows: list[dict[str, Any]], as_json: bool, none: str) -> bool:
    """JSON lines (--json), or `none` when there are no rows: True when that said it all
    and no table is due."""
    if as_json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return True
    if not rows:
        console.print(none)
        return True
    return False


def print_failed(rows: list[dict[str, Any]], as_json: bool) -> int:
    if said_plainly(rows, as_json, "no dead-lettered deliveries"):
        return 0
    t = Table(title=f"dead letters ({len(rows)})")
    for column in ("key", "sink", "attempts", "failed at", "rule", "title", "error"):
        t.add_column(column)
    for row in rows:
        alert = row["alert"]
        t.add_row(
            str(alert.get("key", "")),
            escape(row["sink"]),
            str(row["attempts"]),
            stamp(row.get("time_ns", 0)),
            escape(alert.get("ruleId", "")),
            escape(alert.get("title", "")),
            escape(row.get("error", "")),
        )
    console.print(t)
    console.print("send them again with: daemoneye alerts retry [--sink NAME] [--key KEY]")
    return 0


def print_incidents(rows: list[dict[str, Any]], as_json: bool) -> int:
    if said_plainly(rows, as_json, "no incidents"):
        return 0
    t = Table(title=f"incidents ({len(rows)})")
    for column in ("id", "state", "severity", "first", "last", "alerts", "rules", "processes"):
        t.add_column(column, justify="right" if column == "alerts" else "left", overflow="fold")
    for i in rows:
        rules = ", ".join(f"{r['ruleId']} x{r['count']}" for r in i["rules"])
        names = ", ".join(f"{p['name']}({p['pid']})" for p in i["processes"][:6])
        more = i["processCount"] - min(6, len(i["processes"]))
        t.add_row(
            i["incidentId"],
            i["state"],
            f"[{SEVERITY_STYLE.get(i['severity'], '')}]{i['severity']}[/]",
            stamp(i["firstSeenNs"]),
            stamp(i["lastSeenNs"]),
            str(i["alerts"]),
            escape(rules),
            escape(names + (f" +{more}" if more > 0 else "")),
        )
    console.print(t)
    return 0


def stamp(time_ns: int, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return time.strftime(fmt, time.localtime(time_ns / 1e9))
