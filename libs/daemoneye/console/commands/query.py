"""`daemoneye query SQL`: a validated, read-only query against the detector's live tables."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.markup import escape
from rich.table import Table

from ..common import add_command, call, console, positive, settings_from


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "query",
        "Run one read-only SQL query against the detector's live tables.",
        '  daemoneye query "SELECT pid, name, path FROM processes WHERE uid = 0"\n'
        '  daemoneye query "SELECT parent, count(*) FROM process_events GROUP BY parent" --json\n'
        "tables: processes, process_events, users, hash, file, process_open_sockets\n"
        "(deploy/rules/TABLES.md documents every column)\n",
    )
    p.add_argument("sql", help="one SELECT (SQLite dialect)")
    p.add_argument("--json", action="store_true", help="print rows as a JSON list of objects")
    p.add_argument("--limit", type=positive, default=1000, help="at most this many rows (1000)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    result = call(settings, "control.detector", "query", {"sql": args.sql, "limit": args.limit})
    print_rows(result.value["columns"], result.value["rows"], args.json)
    return 0


def print_rows(columns: list[str], rows: list[list[Any]], as_json: bool, title: str = "") -> None:
    if as_json:
        print(json.dumps([dict(zip(columns, r, strict=False)) for r in rows], default=str))
        return
    table = Table(title=title or f"{len(rows)} row{'s' if len(rows) != 1 else ''}")
    for column in columns:
        table.add_column(escape(column), overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else escape(str(v)) for v in row))
    console.print(table)
