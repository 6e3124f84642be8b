"""`daemoneye ps`: the detector's live process table, flat or as a tree."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.markup import escape
from rich.tree import Tree

from ..common import add_command, call, console, settings_from
from .query import print_rows


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "ps",
        "List the processes in the detector's live table.",
        "  daemoneye ps\n  daemoneye ps --tree\n  daemoneye ps --json | jq '.[].path'\n",
    )
    p.add_argument("--tree", action="store_true", help="show parent/child relationships")
    p.add_argument("--json", action="store_true", help="print a JSON list of processes")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    value = call(settings, "control.detector", "ps").value
    columns, rows = value["columns"], value["rows"]
    if args.json:
        print(json.dumps([dict(zip(columns, r, strict=False)) for r in rows], default=str))
    elif args.tree:
        console.print(tree(columns, rows))
    else:
        shown = ("pid", "parent", "username", "name", "cmdline")
        idx = [columns.index(c) for c in shown]
        print_rows(
            list(shown), [[r[i] for i in idx] for r in rows], False, f"{len(rows)} processes"
        )
    return 0


def tree(columns: list[str], rows: list[list[Any]]) -> Tree:
    """Processes under their parents; those whose parent is unknown hang off the root."""
    procs = {r[columns.index("pid")]: dict(zip(columns, r, strict=False)) for r in rows}
    children: dict[int, list[int]] = {}
    roots = []
    for pid, p in sorted(procs.items()):
        parent = p["parent"]
        if parent in procs and parent != pid:
            children.setdefault(parent, []).append(pid)
        else:
            roots.append(pid)
    top = Tree(f"[bold]{len(procs)} processes[/]")

    def add(node: Tree, pid: int, depth: int) -> None:
        p = procs[pid]
        label = f"{pid} [cyan]{escape(p['name'] or '')}[/] {escape((p['cmdline'] or '')[:100])}"
        branch = node.add(label)
        if depth < 64:
            for child in children.get(pid, []):
                add(branch, child, depth + 1)

    for pid in roots:
        add(top, pid, 0)
    return top
