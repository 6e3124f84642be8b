"""`daemoneye rules list|validate|test|reload|import-sigma`: manage detection rules.

`validate` and `import-sigma` work offline on files; the others ask the detector.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from .. import rules_except
from ..common import (
    CommandError,
    add_command,
    add_subcommand,
    call,
    common_options,
    console,
    err_console,
    positive,
    print_json,
    progress_bar,
    settings_from,
)
from .query import print_rows


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        parent,
        "rules",
        "Validate, test, list, reload and import detection rules.",
        "  daemoneye rules validate deploy/rules/ my-rule.yml\n"
        "  daemoneye rules test my-rule.yml\n"
        "  daemoneye rules list\n"
        "  daemoneye rules reload\n"
        "  daemoneye rules import-sigma sigma/rules/linux/process_creation/ --output rules/\n",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    again = common_options(repeatable=True)

    def action(name: str, summary: str, examples: str) -> argparse.ArgumentParser:
        return add_subcommand(actions, again, name, summary, examples)

    v = action(
        "validate",
        "Check rule files offline, as the detector would (exit 1 on any problem).",
        "  daemoneye rules validate deploy/rules/\n"
        "  daemoneye rules validate my-rule.yml --quiet   # problems only (CI)\n"
        "  daemoneye rules validate rules/ --json | jq '.problems[].reason'\n",
    )
    v.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="rule files or dirs")
    v.add_argument("--quiet", action="store_true", help="print problems only")
    v.add_argument("--json", action="store_true", help="print the result as one JSON object")
    t = action(
        "test",
        "Run a rule file's SQL against the detector's live tables: what would fire now.",
        "  daemoneye rules test my-rule.yml\n"
        "  daemoneye rules test my-rule.yml --json --limit 10\n",
    )
    t.add_argument("path", type=Path, metavar="RULE_FILE")
    t.add_argument("--json", action="store_true", help="print the results as one JSON object")
    t.add_argument("--limit", type=positive, default=100, help="at most this many rows per rule")
    lst = action(
        "list",
        "The detector's loaded rules, their state and statistics.",
        "  daemoneye rules list\n  daemoneye rules list --json | jq '.rules[].id'\n",
    )
    lst.add_argument("--json", action="store_true", help="print the listing as one JSON object")
    action(
        "reload",
        "Make the detector reload its rules directory (exit 1 if a rule is rejected).",
        "  daemoneye rules reload\n",
    )
    s = action(
        "import-sigma",
        "Convert Sigma process_creation rules into DaemonEye rules (exit 1 if any could "
        "not be converted; the others are still written).",
        "  daemoneye rules import-sigma sigma/rules/linux/process_creation/ --output rules/\n"
        "  daemoneye rules import-sigma proc_creation_lnx_whoami.yml > whoami.yml\n",
    )
    s.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="Sigma files or dirs")
    s.add_argument("--output", type=Path, help="write one rule file per Sigma rule here")
    rules_except.add_action(action)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return {
        "validate": validate,
        "test": test,
        "list": list_rules,
        "reload": reload,
        "import-sigma": import_sigma,
        "except": rules_except.run,
    }[args.action](args)


def validate(args: argparse.Namespace) -> int:
    from daemoneye.rules.validate import Validator

    checked, problems = Validator().load(args.paths)
    problems += allowlist_problems(args.paths)
    if args.json:
        print_json(
            {
                "ok": not problems,
                "valid": [{"id": c.rule.id, "path": c.rule.path} for c in checked],
                "problems": [
                    {"path": p.path, "rule_id": p.rule_id, "line": p.line, "reason": p.reason}
                    for p in problems
                ],
            }
        )
        return 1 if problems else 0
    for problem in problems:
        print(problem)
    if not args.quiet:
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        err_console.print(f"{len(checked)} valid rule(s), {status}")
    return 1 if problems else 0


def allowlist_problems(paths: list[Path]) -> list[Any]:
    """The problems of the allowlist the detector would take beside each directory."""
    from daemoneye.rules.exceptions import allowlist_path, load_allowlist
    from daemoneye.rules.validate import ALL_COLUMNS

    found = {allowlist_path(None, p) for p in paths if p.is_dir()} - {None}
    return [problem for f in sorted(found) for problem in load_allowlist(f, set(ALL_COLUMNS))[1]]


def test(args: argparse.Namespace) -> int:
    try:
        text = args.path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {args.path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CommandError(f"cannot read {args.path}: not UTF-8 text ({exc.reason})") from None
    settings = settings_from(args)
    params = {"text": text, "path": str(args.path), "limit": args.limit}
    value = call(settings, "control.detector", "rules_test", params).value
    if args.json:
        print(json.dumps(value, default=str))
    else:
        for result in value["results"]:
            title = f"{result['id']} ({result['severity']}): {len(result['rows'])} would fire"
            print_rows(result["columns"], result["rows"], False, title)
    for problem in value["problems"]:
        print(problem, file=sys.stderr)
    return 1 if value["problems"] else 0


def list_rules(args: argparse.Namespace) -> int:
    value = call(settings_from(args), "control.detector", "rules_list").value
    if args.json:
        print(json.dumps(value, default=str))
        return 0
    table = Table(title=f"rules in {escape(value['dir'])}")
    for column in ("id", "severity", "mode", "state", "runs", "matches", "suppressed", "avg ms"):
        justify = "right" if column in ("runs", "matches", "suppressed") else "left"
        table.add_column(column, justify=justify, overflow="fold")
    for r in value["rules"]:
        style = "green" if r["state"] == "active" else "red"
        table.add_row(
            escape(r["id"]),
            r["severity"],
            r["mode"],
            f"[{style}]{escape(r['state'])}[/]",
            str(r["runs"]),
            str(r["matches"]),
            suppressed_text(r),
            f"{r['avg_ms']:.3f}",
        )
    console.print(table)
    for problem in value["problems"]:
        err_console.print(f"[red]rejected:[/] {escape(problem)}")
    return 0


def suppressed_text(rule: dict[str, Any]) -> str:
    """Matches the rule's exceptions suppressed: the total, then each by name."""
    counted = [e for e in rule.get("exceptions") or [] if e.get("suppressed")]
    detail = ", ".join(f"{escape(e['name'])}: {e['suppressed']}" for e in counted)
    total = rule.get("suppressed", 0)
    return f"{total} ({detail})" if detail else str(total)


def reload(args: argparse.Namespace) -> int:
    value = call(settings_from(args), "control.detector", "rules_reload").value
    changes = ", ".join(
        f"{k}: {len(value[k])}" for k in ("added", "changed", "removed") if k in value
    )
    console.print(
        f"reloaded {value['loaded']} rule(s) from {escape(value['dir'])}; {changes or 'no changes'}"
    )
    for problem in value["problems"]:
        err_console.print(f"[red]rejected:[/] {escape(problem)}")
    return 1 if value["problems"] else 0


def import_sigma(args: argparse.Namespace) -> int:
    from daemoneye.rules.sigma import SigmaImporter, rule_yaml, write_rules

    importer = SigmaImporter()
    files: list[Path] = []
    for path in args.paths:
        files += (
            sorted(path.rglob("*.yml")) + sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
        )
    converted, problems = [], []
    with progress_bar("converting Sigma rules", enabled=len(files) > 1) as progress:
        for n, path in enumerate(files, 1):
            done, found = importer.convert_file(path)
            converted += done
            problems += found
            if progress:
                progress(n, len(files))
    if args.output:
        written = write_rules(converted, args.output)
        err_console.print(f"wrote {len(written)} rule file(s) to {args.output}")
    else:
        print("\n---\n".join(rule_yaml(c.rule, c.source) for c in converted), end="")
    for problem in problems:
        print(problem, file=sys.stderr)
    err_console.print(f"{len(converted)} converted, {len(problems)} could not be converted")
    return 1 if problems else 0
