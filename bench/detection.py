"""Detection benchmark: the behaviour corpus and the benign workload (tests/detection/)
run against a real `daemoneye up`, each item in a session of its own, every alert of
the file sink attributed to the item that caused it.

Prints: behaviours detected (at least one alert at severity >= medium) of those
available, overall and per ATT&CK tactic; alerts on the benign workload (>= medium,
and of any severity); alerts delivered per detected behaviour; exec -> alert in the
file sink (median, p90; aggregate rules excluded); the missed and skipped behaviours.

Needs root (the collector's netlink view of every process; the behaviours that touch
/etc, users, setuid). Run: `sudo .venv/bin/python bench/detection.py [--rules-dir DIR]
[--only PATTERN...] [--json]`. Another checkout's daemoneye: run this file with that
checkout's python (the monitor is `python -m daemoneye` of the running interpreter).

Budget (DESIGN.md, issue 14): >= 95 % detected at >= medium; <= 1 alert at >= medium on
the whole benign workload; exec -> alert median <= 1 s; <= 1.5 deliveries per behaviour.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.detection import ITEMS, Item  # noqa: E402
from tests.detection.harness import Outcome, run_corpus  # noqa: E402
from tests.detection.report import render, summarise  # noqa: E402


def select(items: list[Item], patterns: list[str]) -> list[Item]:
    """Items whose id, tactic or technique matches one of the glob patterns (all when
    none is given); `benign` selects the benign workload."""
    if not patterns:
        return items
    chosen = []
    for item in items:
        keys = [item.id, item.tactic, item.technique, "benign" if item.benign else "behaviour"]
        if any(fnmatch.fnmatch(k, p) for p in patterns for k in keys if k):
            chosen.append(item)
    return chosen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rules-dir", type=Path, default=REPO / "deploy" / "rules")
    p.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="item ids, tactics or techniques (globs: 'c2-*', 'persistence', 'T1070*', benign)",
    )
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--floor", default="medium", help="severity that counts as detected")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs of every phase)")
    p.add_argument(
        "--job-control",
        action="store_true",
        help="each pipeline its own process group (set -m), as typed in a terminal; "
        "default: one group per item, as in a script or a reverse shell without a tty",
    )
    args = p.parse_args()
    if os.geteuid() != 0:  # `make bench` runs every benchmark: say so and go on
        print("bench/detection.py: skipped, needs root (netlink, /etc, users)", file=sys.stderr)
        return 0
    if not args.rules_dir.is_dir():
        print(f"bench/detection.py: no rules directory {args.rules_dir}", file=sys.stderr)
        return 2
    items = select(ITEMS, args.only)
    if not items:
        print(f"bench/detection.py: nothing matches {args.only}", file=sys.stderr)
        return 2

    def progress(n: int, total: int, outcome: Outcome) -> None:
        run = outcome.run_phase
        if outcome.skipped:
            what = f"skipped: {outcome.skipped}"
        elif run is None:
            what = "setup failed"
        else:
            what = "timed out" if run.timed_out else f"rc {run.rc}"
            what += "" if run.complete or run.timed_out else " (script cut short)"
        print(f"[{n:>3}/{total}] {outcome.item.id:<36} {what}", file=sys.stderr, flush=True)

    result = run_corpus(
        items,
        args.rules_dir.resolve(),
        progress=progress,
        keep=args.keep,
        job_control=args.job_control,
    )
    summary = summarise(result, args.floor)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
