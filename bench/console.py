"""Console: what the progress bar costs `ledger verify`, and the verb's wall time.

    .venv/bin/python bench/console.py [--entries 1000000]

Budget (DESIGN.md): ledger verify of 1,000,000 entries <= 10 s; the progress callback
(every 16,384 entries) should cost nothing measurable.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from daemoneye.ledger.store import LedgerStore, LedgerWriter, open_store
from daemoneye.ledger.verify import verify_ledger

sys.path.insert(0, str(Path(__file__).parent))
from _harness import verdict


def fill(db: Path, n: int) -> None:
    ledger = LedgerStore(open_store(db))
    writer = LedgerWriter(ledger, sync=False)
    for i in range(n):
        writer.append("bench", "audit.bench", b"payload %d" % i, time_ns=i)
        if i % 5000 == 4999:
            writer.commit()
    writer.commit()
    ledger.close()


def timed_verify(db: Path, with_bar: bool) -> float:
    ledger = LedgerStore(open_store(db, read_only=True))
    try:
        started = time.perf_counter()
        if with_bar:  # a real Rich bar, drawn to a terminal-like console that discards
            sink = Console(file=open(os.devnull, "w"), force_terminal=True, width=100)  # noqa: SIM115
            bar = Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), console=sink)
            task = bar.add_task("verify", total=None)
            with bar:
                report = verify_ledger(
                    ledger, None, progress=lambda d, t: bar.update(task, completed=d, total=t)
                )
        else:
            report = verify_ledger(ledger, None)
        assert report.ok, report.problem
        return time.perf_counter() - started
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.entries
    with tempfile.TemporaryDirectory(prefix="de-bench-console-") as tmp:
        data = Path(tmp) / "data"
        db = data / "ledger" / "db"
        started = time.perf_counter()
        fill(db, n)
        print(f"built a ledger of {n:,} entries in {time.perf_counter() - started:.1f} s")
        plain = min(timed_verify(db, False) for _ in range(2))
        barred = min(timed_verify(db, True) for _ in range(2))
        print(f"verify_ledger, no callback:      {plain:.2f} s ({n / plain:,.0f} entries/s)")
        print(
            f"verify_ledger, Rich bar:         {barred:.2f} s "
            f"({(barred - plain) / plain * 100:+.1f} %)"
        )
        env = {**os.environ, "DAEMONEYE_DATA_DIR": str(data), "DAEMONEYE_RUN_DIR": tmp + "/r"}
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "daemoneye", "ledger", "verify", "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        assert out.returncode == 0, out.stderr
        print(f"`daemoneye ledger verify --json`: {wall:.2f} s wall, interpreter start included")
        scaled = wall * 1_000_000 / n
        print(
            f"ledger verify of 1,000,000 entries (CLI, scaled): {scaled:.2f} s "
            f"(budget <= 10 s) {verdict(scaled, 10, higher_is_better=False)}"
        )


if __name__ == "__main__":
    main()
