"""`daemoneye rules list|validate|test|try|reload|import-sigma`: manage detection rules.

`validate`, `test` and `import-sigma` work offline on files; the others ask the detector.
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
        "  daemoneye rules test deploy/rules/\n"
        "  daemoneye rules try my-rule.yml\n"
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
    c = action(
        "test",
        "Run the rules' own test cases offline (their `tests:` lists; no service needed). "
        "Exit 1 when a case differs from what it expects or a rule does not load.",
        "  daemoneye rules test deploy/rules/\n"
        "  daemoneye rules test my-rule.yml --verbose        # every case, passed or not\n"
        "  daemoneye rules test deploy/rules/ --strict       # also: each rule has both kinds\n",
    )
    c.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="rule files or dirs")
    c.add_argument("--verbose", action="store_true", help="print the cases that passed too")
    c.add_argument(
        "--strict",
        action="store_true",
        help="fail unless every rule has at least one match and one no_match case",
    )
    c.add_argument("--json", action="store_true", help="print the result as one JSON object")
    t = action(
        "try",
        "Run a rule file's SQL against the running detector's live tables: what would fire now.",
        "  daemoneye rules try my-rule.yml\n  daemoneye rules try my-rule.yml --json --limit 10\n",
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
        "  daemoneye rules import-sigma proc_creation_lnx_whoami.yml > whoami.yml\n"
        "  daemoneye rules import-sigma sigma/ --min-level high --status stable,test --output r/\n",
    )
    s.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="Sigma files or dirs")
    s.add_argument("--output", type=Path, help="write one rule file per Sigma rule here")
    s.add_argument(
        "--min-level",
        choices=("info", "low", "medium", "high", "critical"),
        help="skip rules whose Sigma level maps below this severity",
    )
    s.add_argument(
        "--status",
        type=_statuses,
        help="keep only rules of these Sigma statuses (comma-separated: stable,test)",
    )
    rules_except.add_action(action)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return {
        "validate": validate,
        "test": test_cases,
        "try": try_live,
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


def test_cases(args: argparse.Namespace) -> int:
    from daemoneye.rules.cases import CaseRunner

    report = CaseRunner().run_paths(args.paths)
    missing = report.missing()
    failed = bool(report.failed or report.problems or (args.strict and missing))
    if args.json:
        print_json(
            {
                "ok": not failed,
                "rules": len(report.rules),
                "cases": len(report.results),
                "failed": [
                    {
                        "path": r.rule.path,
                        "line": r.line,
                        "rule_id": r.rule.id,
                        "test": r.index,
                        "name": r.name,
                        "expect": r.expect,
                        "got": r.got,
                        "error": r.error,
                        "fired": r.fired[:5],
                    }
                    for r in report.failed
                ],
                "problems": [str(p) for p in report.problems],
                "missing": [{"rule_id": r.id, "path": r.path, "lacks": k} for r, k in missing],
            }
        )
        return 1 if failed else 0
    for result in report.results:
        if args.verbose or not result.ok:
            print(result)
    for problem in report.problems:
        print(problem)
    for rule, lacking in missing:
        print(f"{rule.path}:{rule.sql_line}: rule {rule.id}: no {lacking} case")
    passed = len(report.results) - len(report.failed)
    err_console.print(
        f"{len(report.rules)} rule(s), {len(report.results)} case(s): {passed} passed, "
        f"{len(report.failed)} failed; {len(report.problems)} rule problem(s); "
        f"{len(missing)} rule(s) without both kinds of case"
    )
    return 1 if failed else 0


def try_live(args: argparse.Namespace) -> int:
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


def _statuses(text: str) -> tuple[str, ...]:
    from daemoneye.rules.sigma import STATUSES

    wanted = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    unknown = [s for s in wanted if s not in STATUSES]
    if not wanted or unknown:
        shown = unknown[0] if unknown else text
        raise argparse.ArgumentTypeError(f"{shown!r} is not a Sigma status ({', '.join(STATUSES)})")
    return wanted


def import_sigma(args: argparse.Namespace) -> int:
    from daemoneye.rules.sigma import SigmaImporter, rule_yaml, write_rules

    importer = SigmaImporter(min_level=args.min_level, statuses=args.status)
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
        print("\n---\n".join(rule_yaml(c.rule, c.source, c.author) for c in converted), end="")
    for problem in problems:
        print(problem, file=sys.stderr)
    skipped = (
        f", {len(importer.skipped)} skipped by --min-level/--status" if importer.skipped else ""
    )
    err_console.print(
        f"{len(converted)} converted, {len(problems)} could not be converted{skipped}"
    )
    return 1 if problems else 0
