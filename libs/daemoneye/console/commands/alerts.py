"""`daemoneye alerts`: alert history from the alerter's store, dead letters, retry."""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from rich.markup import escape
from rich.table import Table

from ..ancestry import chain_text
from ..common import add_command, call, console, positive, settings_from

SEVERITIES = ("info", "low", "medium", "high", "critical")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
STATE_STYLE = {"delivered": "green", "pending": "yellow", "failed": "red"}
SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}
FOLLOW_POLL_S = 0.5


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
    p.set_defaults(handler=run)


def duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 15m, 2h or 7d")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def run(args: argparse.Namespace) -> int:
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
    alerts = list(reversed(result["alerts"]))  # oldest first, like a log
    print_alerts(alerts, args.json, table=not args.follow)
    if not args.follow:
        return 0
    last = alerts[-1]["key"] if alerts else time.time_ns() - int((args.since or 0) * 1e9)
    try:
        while True:
            params["after"] = last
            new = call(settings, "control.alerter", "alerts.list", params).value["alerts"]
            if new:
                print_alerts(new, args.json, table=False)
                last = new[-1]["key"]
            else:
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
    t = Table(title=f"alerts ({len(alerts)})")
    columns = ("time", "severity", "rule", "title", "count", "pid", "exe", "ancestry", "deliveries")
    for column in columns:
        t.add_column(column, justify="right" if column in ("count", "pid") else "left")
    for a in alerts:
        proc = a.get("process") or {}
        t.add_row(
            stamp(a.get("timeNs", 0)),
            f"[{SEVERITY_STYLE.get(a.get('severity', ''), '')}]{a.get('severity', '')}[/]",
            escape(a.get("ruleId", "")),
            escape(a.get("title", "")),
            str(a.get("count", 1)),
            str(proc.get("pid", "")),
            escape(proc.get("exePath", "")),
            escape(chain_text(a)),
            deliveries(a),
        )
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


def print_failed(rows: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    if not rows:
        console.print("no dead-lettered deliveries")
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
    if as_json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    if not rows:
        console.print("no incidents")
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


def stamp(time_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time_ns / 1e9))
