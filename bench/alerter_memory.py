"""Alerter memory: RSS while distinct alerts stream in, with the dedup table full.

The soak (a storm where every exec is a distinct alert) shows the alerter's RSS
growing. This feeds distinct alerts to a real Alerter in this process (its handlers
called as the service loop calls them: on_message per alert, the end-of-burst
`on_drained` per 100, its timers per 1,000, over a real store and file sink) until
the dedup table is full (`dedup_max_keys`, 100,000 by default), then N more, and
prints RSS, RocksDB's own memory and the open dedup windows along the way. With
--trace it also prints the live Python heap (tracemalloc, which itself adds to RSS)
and where it grew after the table filled.

    .venv/bin/python bench/alerter_memory.py [--after 300000] [--trace]

Budget (issue 8): RSS flat after warm-up (<= +10 %; this bench aims at <= +3 %),
and the alerter well under 100 MB with the table full.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
from pathlib import Path

import psutil
from _harness import bench_env

from daemoneye import wire
from daemoneye.bus import Message
from daemoneye.services.alerter import memory
from daemoneye.services.alerter.service import Alerter

ROCKSDB = ("cur-size-all-mem-tables", "estimate-table-readers-mem", "block-cache-usage")


def alert(i: int) -> Message:
    exe = "/usr/bin/true"
    body = {
        "ruleId": "bench",
        "severity": "high",
        "title": "bench fired",
        "timeNs": time.time_ns(),
        "process": {"pid": i, "exePath": exe, "cmdline": [exe, "bench", str(i)]},
    }
    data = wire.encode_envelope(
        wire.Header("detector@bench", "boot", i, time.time_ns()), "alert", body
    )
    return Message("alerts.high", wire.decode_envelope(data), len(data), data)


def rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--after", type=int, default=300_000, help="alerts after the table is full")
    ap.add_argument("--trace", action="store_true", help="also the live Python heap")
    args = ap.parse_args()
    with bench_env(DAEMONEYE_ALERTER__CATCH_UP_NEW_STREAMS="false") as (settings, _env):
        Path(settings.run_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
        memory.tune()  # as Alerter.run() does
        svc = Alerter(settings)
        svc.open_sockets()  # connects lazily: no broker needed to call the handlers
        svc.setup()
        proc = psutil.Process(os.getpid())
        fill = settings.alerter.dedup_max_keys
        total = fill + args.after
        step = max(1, args.after // 4)
        print(f"before any alert: RSS {rss_mb(proc):6.0f} MB")
        if args.trace:
            tracemalloc.start(8)
        full_rss, snapshot, rss = 0.0, None, 0.0
        try:
            for i in range(1, total + 1):
                svc.on_message(alert(i))
                if i % 100 == 0:  # about what one drain of the bus takes in
                    svc.on_drained()
                if i % 1000 == 0:  # the service's timers: ~1 s at 1,000 alerts/s
                    svc._expire_dedup()
                    svc._publish_reports()
                if i % 10_000 == 0:  # ~10 s at 1,000 alerts/s
                    memory.trim()
                if i == fill or (i > fill and (i - fill) % step == 0):
                    svc.flush()
                    rss = rss_mb(proc)
                    live = tracemalloc.get_traced_memory()[0] / 2**20 if args.trace else 0
                    db = svc.store.store.db
                    native = sum(db.property_int_value(f"rocksdb.{k}") or 0 for k in ROCKSDB)
                    print(
                        f"{i:9,} alerts: RSS {rss:6.0f} MB  "
                        + (f"live Python {live:6.1f} MB  " if args.trace else "")
                        + f"RocksDB {native / 2**20:5.1f} MB  "
                        f"dedup windows {len(svc.dedup.windows):,}"
                        + ("  <- table full" if i == fill else "")
                    )
                    if i == fill:
                        full_rss = rss
                        snapshot = tracemalloc.take_snapshot() if args.trace else None
            if snapshot is not None:
                grown = tracemalloc.take_snapshot().compare_to(snapshot, "traceback")
                print("live Python heap grown since the table filled (top 8):")
                for stat in grown[:8]:
                    print(f"  {stat.size_diff / 2**10:+9.0f} KiB  {stat.count_diff:+8,} blocks")
                    for line in stat.traceback.format()[-6:]:
                        print("     " + line)
        finally:
            svc.teardown()
            svc.factory.close_all(linger_ms=0)
        growth = (rss - full_rss) / full_rss * 100
        print(
            f"RSS with the table full: {full_rss:.0f} MB  budget well under 100 MB  "
            f"{'OK' if full_rss < 90 else 'OVER BUDGET'}"
        )
        print(
            f"RSS growth over {args.after:,} more alerts: {growth:+.1f} %  budget <= +3 % "
            f"(issue: <= +10 %)  {'OK' if growth <= 3 else 'OVER BUDGET'}"
        )


if __name__ == "__main__":
    main()
