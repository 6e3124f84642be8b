"""Alerter memory: RSS against Python's live allocations while distinct alerts stream in.

The soak shows the alerter's RSS growing well past +10 %. This feeds N distinct
alerts to a real Alerter in this process (its handlers called as the service loop
calls them: on_message per alert, flush per 100, its timers per 1,000, over a real
store and file sink) and prints, every N/4 alerts: RSS, RocksDB's own memory, the
open dedup windows and, with --trace, the Python heap that is live (tracemalloc,
which itself adds to RSS). RSS far above the live Python heap means the growth is
fragmentation or native memory, not objects kept.

    .venv/bin/python bench/alerter_memory.py [--alerts 200000] [--trace]

Budget (issue 8): RSS flat, no growth beyond 10 % after warm-up.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alerts", type=int, default=200_000)
    ap.add_argument("--trace", action="store_true", help="also the live Python heap")
    args = ap.parse_args()
    with bench_env(DAEMONEYE_ALERTER__CATCH_UP_NEW_STREAMS="false") as (settings, _env):
        Path(settings.run_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
        svc = Alerter(settings)
        svc.open_sockets()  # connects lazily: no broker needed to call the handlers
        svc.setup()
        proc = psutil.Process(os.getpid())
        if args.trace:
            tracemalloc.start()
        step = max(1, args.alerts // 4)
        first_rss = 0.0
        try:
            for i in range(1, args.alerts + 1):
                svc.on_message(alert(i))
                if i % 100 == 0:  # about what one drain of the bus takes in
                    svc.flush()
                if i % 1000 == 0:  # the service's timers: ~1 s at 1,000 alerts/s
                    svc._expire_dedup()
                    svc._publish_reports()
                if i % step == 0:
                    rss = proc.memory_info().rss / 2**20
                    first_rss = first_rss or rss
                    live = tracemalloc.get_traced_memory()[0] / 2**20 if args.trace else 0
                    db = svc.store.store.db
                    native = sum(db.property_int_value(f"rocksdb.{k}") or 0 for k in ROCKSDB)
                    print(
                        f"{i:9,} alerts: RSS {rss:6.0f} MB  "
                        + (f"live Python {live:6.1f} MB  " if args.trace else "")
                        + f"RocksDB {native / 2**20:5.1f} MB  "
                        f"dedup windows {len(svc.dedup.windows):,}"
                    )
        finally:
            svc.teardown()
            svc.factory.close_all(linger_ms=0)
        growth = (rss - first_rss) / first_rss * 100
        verdict = "OK" if growth <= 10 else "OVER BUDGET"
        print(f"RSS growth after the first quarter: {growth:+.1f} %  budget <= +10 %  {verdict}")


if __name__ == "__main__":
    main()
