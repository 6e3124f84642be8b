"""Rich renderables for the dashboard; fits 80x24 and grows with the terminal."""

from __future__ import annotations

import time
from collections.abc import Iterable

from rich.console import Group
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..ancestry import chain_text
from .model import State

SPARKS = "▁▂▃▄▅▆▇█"
SEVERITY_STYLE = {
    "info": "dim",
    "low": "cyan",
    "medium": "yellow",
    "high": "bold red",
    "critical": "bold white on red",
}
STATE_STYLE = {"healthy": "green", "unhealthy": "bold red", "unknown": "yellow"}


def sparkline(values: Iterable[float], width: int = 16) -> str:
    points = list(values)[-width:]
    if not points:
        return ""
    top = max(points) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1)))] for v in points)


def human_bytes(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}"
        n /= 1024
    return f"{n:.0f}T"


def services_table(state: State) -> Table:
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
    table.add_column("service")
    table.add_column("id", overflow="ellipsis", no_wrap=True)
    table.add_column("state")
    table.add_column("hb", justify="right")
    table.add_column("ev/s", justify="right")
    for row in state.services:
        age = row.get("heartbeat_age_s")
        health = row.get("state", "?")
        if row.get("service_state") == "degraded":
            health += " (degraded)"
        table.add_row(
            row["service"],
            row["service_id"],
            Text(health, style=STATE_STYLE.get(row.get("state", ""), "yellow")),
            "-" if age is None else f"{age:.0f}s",
            f"{row.get('events_per_sec', 0):.0f}",
        )
    return table


def rates_table(state: State) -> Table:
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
    table.add_column("stream", no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("msg/s", justify="right", min_width=5, no_wrap=True)
    table.add_column("history", no_wrap=True, overflow="crop")
    for stream in sorted(state.rates):
        history = state.rates[stream]
        table.add_row(stream, f"{history[-1]:.0f}" if history else "0", sparkline(history))
    return table


def alerts_table(state: State, limit: int) -> Table:
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
    # Fixed columns keep their width; the rule text takes what is left.
    table.add_column("time", min_width=8, no_wrap=True)
    table.add_column("severity", min_width=8, no_wrap=True)
    table.add_column("rule", no_wrap=True, overflow="ellipsis", ratio=3)
    table.add_column("process", no_wrap=True, overflow="ellipsis", min_width=12, ratio=1)
    shown = list(state.alerts)[:limit]
    ancestry = any(alert.get("ancestry") for alert in shown)
    if ancestry:  # the parents, when the alerts carry them
        table.add_column("ancestry", no_wrap=True, overflow="ellipsis", ratio=2)
    for alert in shown:
        when = time.strftime("%H:%M:%S", time.localtime(alert.get("timeNs", 0) / 1e9))
        severity = str(alert.get("severity", ""))
        process = alert.get("process") or {}
        cells = [
            when,
            Text(severity, style=SEVERITY_STYLE.get(severity, "")),
            f"{alert.get('ruleId', '')} {alert.get('title') or alert.get('ruleName', '')}",
            f"{process.get('name', '')}[{process.get('pid', '')}]",
        ]
        table.add_row(*cells, *([chain_text(alert)] if ancestry else []))
    if not state.alerts:
        table.add_row("", "", Text("no alerts yet", style="dim"), "")
    return table


def processes_table(state: State, limit: int) -> Table:
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
    table.add_column("pid", justify="right")
    table.add_column("name", no_wrap=True, overflow="ellipsis")
    table.add_column("cpu%", justify="right", min_width=4)
    table.add_column("rss", justify="right", min_width=5)
    for row in state.processes[:limit]:
        table.add_row(str(row["pid"]), row["name"], f"{row['cpu']:.0f}", human_bytes(row["rss"]))
    if not state.processes:
        table.add_row("", Text(state.process_note, style="dim"), "", "")
    return table


def counters_text(state: State) -> Group:
    c = state.counters
    line = Text()
    for label, key in (
        ("gaps", "bus.gaps"),
        ("missing", "bus.missing"),
        ("replays", "wal.replays"),
        ("drops", "bus.dropped"),
        ("broker drops", "broker.dropped"),
    ):
        value = c.get(key, 0)
        line.append(f"{label} ", style="dim")
        line.append(f"{value:.0f}  ", style="bold red" if value and key != "wal.replays" else "")
    lines = [line]
    for warning in state.warnings[:3]:
        lines.append(Text(f"! {warning}", style="yellow", overflow="ellipsis", no_wrap=True))
    return Group(*lines)


def render(state: State, height: int) -> Layout:
    # Heights from the content: every service row shows, alerts and processes share
    # the rest (a panel costs 3 lines of border and header).
    top = min(max(len(state.services), 2), 10) + 3
    rest = max(8, height - 1 - top)
    alerts_size = rest // 2
    rows_alerts = max(1, alerts_size - 3)
    rows_processes = max(1, rest - alerts_size - 3)
    header = Text.assemble(
        ("DaemonEye", "bold"),
        f"  {time.strftime('%H:%M:%S', time.localtime(state.updated or time.time()))}",
        ("   q quits", "dim"),
    )
    if state.broker_error:
        header.append(f"   {state.broker_error}", style="bold red")
    layout = Layout()
    layout.split_column(
        Layout(header, name="header", size=1),
        Layout(name="top", size=top),
        Layout(
            Panel(alerts_table(state, rows_alerts), title="latest alerts"),
            name="alerts",
            size=alerts_size,
        ),
        Layout(name="bottom", ratio=1),
    )
    layout["top"].split_row(
        Layout(Panel(services_table(state), title="services"), ratio=3),
        Layout(Panel(rates_table(state), title="event rates"), ratio=2),
    )
    layout["bottom"].split_row(
        Layout(Panel(processes_table(state, rows_processes), title="top processes"), ratio=1),
        Layout(Panel(counters_text(state), title="bus"), ratio=1),
    )
    return layout
