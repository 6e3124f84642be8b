"""`daemoneye fleet alerts`: a fleet's alerts, read back from NATS JetStream.

Where to connect and how to authenticate come from the settings (`[broker.nats]`
when enabled, else the first `nats` sink of the alerter), each overridable by a flag.
`daemoneye alerts --from nats://HOST:PORT` is the same reading with the settings'
credentials.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from daemoneye.config import Settings, describe_validation_error
from daemoneye.fleet import FleetAlert, Query, run
from daemoneye.jetstream import JetStreamError
from daemoneye.settings.nats import NatsConnection

from ..common import CommandError, UsageError, add_command, console, positive, settings_from
from .alerts import SEVERITIES, SEVERITY_STYLE, duration, stamp


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "fleet",
        "Read a fleet's alerts from NATS JetStream (what every host's `nats` sink published).",
        "  daemoneye fleet alerts --from nats://nats.example:4222 --since 1h\n"
        "  daemoneye fleet alerts --host web1 --severity high --json\n"
        "  daemoneye fleet alerts --durable soc --follow      # only what is new, then live\n"
        "  daemoneye fleet alerts --from tls://nats.example:4222 --creds ~/soc.creds\n",
    )
    p.add_argument("action", choices=["alerts"], help="what to read (alerts)")
    add_reading_options(p)
    p.add_argument("--creds", type=Path, help="a NATS credentials file (JWT + NKEY seed)")
    p.add_argument("--nkey-seed", type=Path, help="a file holding an NKEY user seed")
    p.add_argument("--tls-ca", type=Path, help="CA bundle of the server's certificate")
    p.add_argument("--stream", help="the JetStream stream (default DAEMONEYE)")
    p.set_defaults(handler=run_command)


def add_reading_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="servers", action="append", metavar="nats://HOST:PORT",
                   help="a NATS server (repeat: a cluster; default: the settings')")  # fmt: skip
    p.add_argument("--host", help="only this host's alerts")
    p.add_argument("--since", type=duration, help="only newer than this (30s, 15m, 2h, 7d)")
    p.add_argument("--severity", choices=SEVERITIES, help="at least this severity")
    p.add_argument("--rule", help="only this rule id")
    p.add_argument("--limit", type=positive, default=50, help="at most N alerts (default 50)")
    p.add_argument("--durable", metavar="NAME",
                   help="a durable consumer: each run prints what is new for NAME")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--follow", action="store_true", help="keep printing new alerts")


def connection(settings: Settings, args: argparse.Namespace) -> NatsConnection:
    """The settings' NATS connection with the flags' overrides."""
    base: Any = settings.broker.nats if settings.broker.nats.enabled else None
    if base is None:
        base = next((s for s in settings.alerter.sinks if s.kind == "nats"), NatsConnection())
    fields = {k: getattr(base, k) for k in NatsConnection.model_fields}
    overrides = {
        "servers": getattr(args, "servers", None),
        "creds_file": getattr(args, "creds", None),
        "nkey_seed_file": getattr(args, "nkey_seed", None),
        "tls_ca_file": getattr(args, "tls_ca", None),
        "stream": getattr(args, "stream", None),
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields.get("creds_file") and overrides["nkey_seed_file"]:
        fields["creds_file"] = None
    if fields.get("nkey_seed_file") and overrides["creds_file"]:
        fields["nkey_seed_file"] = None
    try:
        return NatsConnection(**fields)
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from None


def run_command(args: argparse.Namespace) -> int:
    return read_alerts(args)


def read_alerts(args: argparse.Namespace) -> int:
    """Shared with `daemoneye alerts --from` (which has no --host or --durable)."""
    cfg = connection(settings_from(args), args)
    query = Query(
        host=getattr(args, "host", None) or "",
        since_ns=time.time_ns() - int(args.since * 1e9) if args.since else 0,
        severity=args.severity or "info",
        rule=args.rule or "",
        limit=args.limit,
        durable=getattr(args, "durable", None) or "",
        follow=args.follow,
    )
    shown: list[int] = []

    def emit(alerts: list[FleetAlert]) -> None:
        if args.json:
            for alert in alerts:
                print(json.dumps(alert.as_dict()), flush=True)
        elif not shown and not args.follow:
            console.print(table(alerts, console.width))
        else:
            for alert in alerts:
                console.print(line(alert), soft_wrap=True)
        shown.append(len(alerts))

    try:
        run(cfg, query, emit)
    except JetStreamError as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        return 130
    if not shown and not args.json:
        console.print(f"no alerts in {cfg.stream} on {', '.join(cfg.servers)}")
    return 0


def table(alerts: list[FleetAlert], width: int = 80) -> Table:
    """Fits `width` columns: time, host, severity and rule keep their widths (host and
    rule fold past 16 characters), the title (with xN when it counts repeats) takes
    what is left, on one line, cut with an ellipsis (--json has it whole)."""

    def widest(values: list[str], cap: int) -> int:
        return min(cap, max((len(v) for v in values), default=1))

    host_w = widest([a.host for a in alerts] + ["host"], 16)
    rule_w = widest([str(a.record.get("ruleId", "")) for a in alerts] + ["rule"], 16)
    borders = 6 + 2 * 5  # 5 columns: 6 rules and one space either side of each cell
    title_w = max(10, width - (11 + host_w + 8 + rule_w + borders))
    t = Table(title=f"fleet alerts ({len(alerts)})")
    t.add_column("time", no_wrap=True, width=11)
    t.add_column("host", overflow="fold", width=host_w)
    t.add_column("severity", no_wrap=True, width=8)
    t.add_column("rule", overflow="fold", width=rule_w)
    t.add_column("title", overflow="ellipsis", no_wrap=True, max_width=title_w)
    for a in alerts:
        r = a.record
        count = int(r.get("count", 1) or 1)
        t.add_row(
            short_stamp(r.get("timeNs", 0)),
            escape(a.host),
            f"[{SEVERITY_STYLE.get(r.get('severity', ''), '')}]{r.get('severity', '')}[/]",
            escape(r.get("ruleId", "")),
            escape(r.get("title", "")) + (f" x{count}" if count > 1 else ""),
        )
    return t


def short_stamp(time_ns: int) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(time_ns / 1e9))


def line(a: FleetAlert) -> str:
    r = a.record
    proc = r.get("process") or {}
    return (
        f"[dim]{stamp(r.get('timeNs', 0))}[/dim] {escape(a.host)} "
        f"[{SEVERITY_STYLE.get(r.get('severity', ''), '')}]{r.get('severity', ''):8}[/] "
        f"{escape(r.get('ruleId', ''))} [bold]{escape(r.get('title', ''))}[/bold] "
        f"x{r.get('count', 1)} pid={proc.get('pid', '')} {escape(proc.get('exePath', ''))}"
    )
