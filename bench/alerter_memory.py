"""Alerter memory: where its RSS goes while distinct alerts stream in, and whether it
grows after warm-up.

Live mode (the default; what the soak does to the alerter): a real broker, a real
alerter with the default file sink, and this process publishing distinct alerts (each
its own dedup key, like the soak's storm) at a steady --rate for --minutes. The
alerter runs the service's own loop, with one extra timer that samples, in the
process: RSS (smaps_rollup), glibc's heap (in use vs free, per arena), the Python
heap (gc-tracked objects by type; with --trace also tracemalloc, which itself costs
memory), RocksDB (memtables, block cache, table readers, SST files, keys) and the
alerter's own tables (dedup windows, repeats, sink queues). It prints them over
time, then RSS growth after the soak's warm-up (the first 20 % of the run) with the
growth of each part, per 1,000 alerts.

    .venv/bin/python bench/alerter_memory.py [--minutes 10] [--rate 100] [--trace]

Fill mode (--fill): the alerter's handlers called in this process (no broker) with
distinct alerts until the dedup table is full (`dedup_max_keys`), then --after more.

Budget (issue 8): RSS flat after warm-up (<= +10 %), well under 100 MB.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import psutil
import zmq
from _harness import alerts_received, bench_env

from daemoneye import memory, wire
from daemoneye.bus import Message, Publisher, SocketFactory, wait_for_endpoint
from daemoneye.config import load_settings
from daemoneye.services.alerter.service import Alerter

MB = 2**20
WARMUP = 0.2  # as bench/soak.py: the share of the run before RSS is the baseline
ROCKSDB_INT = (
    "cur-size-all-mem-tables",
    "block-cache-usage",
    "block-cache-pinned-usage",
    "estimate-table-readers-mem",
    "total-sst-files-size",
    "live-sst-files-size",
    "estimate-num-keys",
    "num-live-versions",
    *(f"num-files-at-level{n}" for n in range(7)),
)


def alert_body(i: int, tag: str) -> dict[str, Any]:
    """A detector-like alert whose dedup key (rule, exe, argv) is its own."""
    now = time.time_ns()
    exe = "/usr/bin/true"
    argv = [exe, "soak-storm", tag, str(i)]
    return {
        "alertId": f"{tag}-{i}",
        "ruleId": "bench.storm",
        "ruleName": "bench storm",
        "severity": "high",
        "title": "bench storm process",
        "description": "a storm process matched the bench rule",
        "process": {"pid": 10_000 + i % 50_000, "ppid": 4242, "name": "true", "exePath": exe,
                    "cmdline": argv, "cwd": "/tmp", "username": "bench", "uid": 1000,
                    "gid": 1000, "euid": 1000, "egid": 1000, "startTime": now / 1e9,
                    "startTicks": 123456 + i, "cgroupPath": "/user.slice/bench.scope",
                    "sha256": "ab" * 32, "state": "R", "threads": 1},
        "rowJson": json.dumps({"pid": i, "path": exe, "cmdline": " ".join(argv)}),
        "firstSeenNs": now, "lastSeenNs": now, "count": 1, "tags": ["bench", "storm"],
        "timeNs": now, "hostname": "benchhost",
    }  # fmt: skip


# --- the instrumented alerter (a child process) ------------------------------------


class ProbedAlerter(Alerter):
    """The alerter as `daemoneye run alerter` runs it, plus a sampling timer."""

    sample_path: Path
    sample_every_s: float = 10.0
    trace: bool = False

    def setup(self) -> None:
        super().setup()
        self._out = open(self.sample_path, "a")  # noqa: SIM115 - one line per sample
        self._t0 = time.monotonic()
        self.every(self.sample_every_s, self._sample)

    def _sample(self) -> None:
        self._out.write(json.dumps(sample(self, time.monotonic() - self._t0)) + "\n")
        self._out.flush()

    def teardown(self) -> None:
        self._sample()
        if self.trace:
            snap = tracemalloc.take_snapshot()
            snap.dump(str(self.sample_path.with_suffix(".end.trace")))
        super().teardown()


def pymalloc() -> tuple[int, int]:
    """(bytes in use, bytes held) by CPython's small-object allocator, whose arenas it
    mmaps itself (so glibc's figures do not count them): parsed from
    sys._debugmallocstats(), which writes to fd 2."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    used = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    held = re.search(r"(\d+) arenas \* (\d+) bytes/arena", text)
    return (
        int(used.group(1).replace(",", "")) if used else 0,
        int(held.group(1)) * int(held.group(2)) if held else 0,
    )


def sample(svc: Alerter, t: float) -> dict[str, Any]:
    rss = memory.rss_breakdown()
    heap = memory.heap_stats()
    db = svc.store.store.db if svc.store is not None else None
    rocks = {k: db.property_int_value(f"rocksdb.{k}") or 0 for k in ROCKSDB_INT} if db else {}
    py_used, py_held = pymalloc()
    by_type = collections.Counter(type(o).__name__ for o in gc.get_objects())
    out: dict[str, Any] = {
        "t": round(t, 1),
        "received": svc.received,
        "accepted": svc.accepted,
        "rss": rss.get("Rss", 0),
        "anon": rss.get("Anonymous", 0),
        "file": rss.get("Rss", 0) - rss.get("Anonymous", 0),
        "heap_in_use": heap.in_use if heap else 0,
        "heap_free": heap.free if heap else 0,
        "heap_held": heap.held if heap else 0,
        "heap_mmapped": heap.mmapped if heap else 0,
        "py_used": py_used,
        "py_held": py_held,
        "arenas": memory.arenas(),
        "gc_objects": sum(by_type.values()),
        "by_type": dict(by_type.most_common(25)),
        "rocksdb": rocks,
        "dedup_windows": len(svc.dedup.windows),
        "dedup_queue": len(svc.dedup._keys),
        "dedup_repeats": len(svc.dedup.repeats),
        "dedup_dict_bytes": sys.getsizeof(svc.dedup.windows),
        "sink_queued": sum(len(w.items) for w in svc.workers),
        "staged": len(svc._staged),
        "timers": len(svc._timers),
        "threads": len(os.listdir("/proc/self/task")),
    }
    if tracemalloc.is_tracing():
        out["traced"] = tracemalloc.get_traced_memory()[0]
    return out


def child(sample_path: str, trace: bool) -> int:
    if trace:
        tracemalloc.start(12)
    ProbedAlerter.sample_path = Path(sample_path)
    ProbedAlerter.trace = trace
    return ProbedAlerter(load_settings()).run()


# --- the driver -----------------------------------------------------------------


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.05)  # polling a condition with a deadline


def live(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="de-bench-am-"))
    run_dir = Path(f"/tmp/de-am-{os.getpid()}")
    samples = root / "samples.jsonl"
    env = dict(
        os.environ,
        DAEMONEYE_RUN_DIR=str(run_dir),
        DAEMONEYE_DATA_DIR=str(root / "data"),
        DAEMONEYE_LOG_LEVEL="warning",
        **args.env,
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAEMONEYE_")})
    settings = load_settings()
    procs: list[subprocess.Popen] = []
    me = [sys.executable, __file__]
    factory = SocketFactory(settings, zmq.Context())
    try:
        for name, cmd in (
            ("broker", [sys.executable, "-m", "daemoneye", "run", "broker"]),
            ("alerter", [*me, "--child", str(samples), *(["--trace"] if args.trace else [])]),
        ):
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            if name == "broker" and not wait_for_endpoint(settings.endpoint("control"), 15):
                raise SystemExit("bench: the broker did not start")
        pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "detector@bench")

        def received() -> float:
            return alerts_received(factory, settings)

        def subscribed() -> bool:
            pub.publish("alerts.probe", "empty")
            return received() >= 1

        wait(subscribed, 60, "the alerter to subscribe")
        total = int(args.minutes * 60 * args.rate)
        print(
            f"alerter memory, live: {total:,} distinct alerts at {args.rate:g}/s for "
            f"{args.minutes:g} min (load {os.getloadavg()[0]:.1f}); samples every "
            f"{ProbedAlerter.sample_every_s:g} s",
            flush=True,
        )
        interval, next_t = 1.0 / args.rate, time.monotonic()
        tag = f"m{os.getpid()}"
        for i in range(total):
            pub.publish("alerts.high", "alert", alert_body(i, tag))
            next_t += interval
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the sender, not synchronising
        wait(lambda: received() >= total + 1, 120, "the alerter to take every alert")
        load = os.getloadavg()[0]
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        factory.shutdown(linger_ms=0)
        shutil.rmtree(run_dir, ignore_errors=True)
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    report(rows, args, load)
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _mb(v: float) -> str:
    return f"{v / MB:6.1f}"


def report(rows: list[dict[str, Any]], args: argparse.Namespace, load: float) -> None:
    print(
        "\n     t  alerts   RSS   anon  pymalloc heap-use heap-free heap-mmap  memtab  bcache"
        "  readers  sst-MB  L0 files  windows  gc-objs" + ("  traced" if args.trace else "")
    )
    for r in rows:
        k = r["rocksdb"]
        files = sum(k.get(f"num-files-at-level{n}", 0) for n in range(7))
        print(
            f"{r['t']:6.0f} {r['accepted']:7,} {_mb(r['rss'])} {_mb(r['anon'])} "
            f"{_mb(r['py_used'])}   {_mb(r['heap_in_use'])}   {_mb(r['heap_free'])}  "
            f"{_mb(r['heap_mmapped'])}   "
            f"{_mb(k['cur-size-all-mem-tables'])}  {_mb(k['block-cache-usage'])}  "
            f"{_mb(k['estimate-table-readers-mem'])}  {_mb(k['live-sst-files-size'])}  "
            f"{k['num-files-at-level0']:2d} {files:5d}  {r['dedup_windows']:7,}  "
            f"{r['gc_objects']:7,}" + (f"  {_mb(r.get('traced', 0))}" if args.trace else "")
        )
    base, end = rows[int(len(rows) * WARMUP)], rows[-1]
    alerts_k = max(1, end["accepted"] - base["accepted"]) / 1000
    growth = (end["rss"] - base["rss"]) / base["rss"] * 100

    def part(name: str, key: Any) -> None:
        a, b = key(base), key(end)
        per_k = (b - a) / 1024 / alerts_k
        print(f"  {name:34s} {_mb(a)} -> {_mb(b)} MB  {per_k:+8.1f} KiB/1k alerts")

    print(
        f"\nfrom t={base['t']:.0f} s (end of warm-up, {base['accepted']:,} alerts) to "
        f"t={end['t']:.0f} s ({end['accepted']:,}): {alerts_k * 1000:,.0f} alerts"
    )
    part("RSS", lambda r: r["rss"])
    part("  anonymous", lambda r: r["anon"])
    part("  file-backed (code, mapped files)", lambda r: r["file"])
    part("Python objects (pymalloc, in use)", lambda r: r["py_used"])
    part("Python pymalloc arenas (held)", lambda r: r["py_held"])
    part("glibc heap in use", lambda r: r["heap_in_use"])
    part("glibc mmapped chunks", lambda r: r["heap_mmapped"])
    part("glibc heap free (held)", lambda r: r["heap_free"])
    part("RocksDB memtables", lambda r: r["rocksdb"]["cur-size-all-mem-tables"])
    part("RocksDB block cache", lambda r: r["rocksdb"]["block-cache-usage"])
    part("RocksDB table readers", lambda r: r["rocksdb"]["estimate-table-readers-mem"])
    part("dedup dict (table only)", lambda r: r["dedup_dict_bytes"])
    if args.trace:
        part("Python heap (tracemalloc)", lambda r: r.get("traced", 0))
    print(
        f"  dedup windows {base['dedup_windows']:,} -> {end['dedup_windows']:,}; "
        f"gc objects {base['gc_objects']:,} -> {end['gc_objects']:,}; "
        f"SST {base['rocksdb']['live-sst-files-size'] / MB:.1f} -> "
        f"{end['rocksdb']['live-sst-files-size'] / MB:.1f} MB"
    )
    grown = {
        t: end["by_type"].get(t, 0) - base["by_type"].get(t, 0)
        for t in set(end["by_type"]) | set(base["by_type"])
    }
    top = sorted(grown.items(), key=lambda x: -abs(x[1]))[:6]
    opened = end["dedup_windows"] - base["dedup_windows"]
    if opened > 1000 and end["py_used"]:  # (pymalloc's figures are not read under --trace)
        table = sum(end[k] - base[k] for k in ("py_used", "dedup_dict_bytes"))
        print(
            f"  dedup table: {table / opened:.0f} bytes per open window (Python objects and "
            f"dict; bounded: rate x dedup_window_s, at most dedup_max_keys)"
        )
    print("  gc objects by type, change: " + ", ".join(f"{t} {n:+,}" for t, n in top))
    print(
        f"RSS growth after warm-up: {growth:+.1f} % ({_mb(base['rss']).strip()} -> "
        f"{_mb(end['rss']).strip()} MB)  budget <= +10 %  "
        f"{'OK' if growth <= 10 else 'OVER BUDGET'}  (load at the end {load:.1f})"
    )


# --- fill mode: handlers in this process --------------------------------------------


def alert_message(i: int) -> Message:
    data = wire.encode_envelope(
        wire.Header("detector@bench", "boot", i, time.time_ns()), "alert", alert_body(i, "fill")
    )
    return Message("alerts.high", wire.decode_envelope(data), len(data), data)


def fill(args: argparse.Namespace) -> int:
    extra = {"DAEMONEYE_ALERTER__CATCH_UP_NEW_STREAMS": "false", **args.env}
    with bench_env(**extra) as (settings, _env):
        Path(settings.run_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
        memory.tune()  # as Service.run() does
        svc = Alerter(settings)
        svc.open_sockets()  # connects lazily: no broker needed to call the handlers
        svc.setup()
        proc = psutil.Process(os.getpid())
        table = settings.alerter.dedup_max_keys
        total, step = table + args.after, max(1, args.after // 4)
        full_rss = rss = 0.0
        try:
            for i in range(1, total + 1):
                svc.on_message(alert_message(i))
                if i % 100 == 0:  # about what one drain of the bus takes in
                    svc.on_drained()
                if i % 1000 == 0:  # the service's timers: ~1 s at 1,000 alerts/s
                    svc._expire_dedup()
                    svc._publish_reports()
                if i % 10_000 == 0:  # ~10 s at 1,000 alerts/s
                    memory.trim()
                if i == table or (i > table and (i - table) % step == 0):
                    svc.flush()
                    rss = proc.memory_info().rss / MB
                    print(
                        f"{i:9,} alerts: RSS {rss:6.0f} MB  dedup windows "
                        f"{len(svc.dedup.windows):,}" + ("  <- table full" if i == table else "")
                    )
                    full_rss = full_rss or rss
        finally:
            svc.teardown()
            svc.factory.shutdown(linger_ms=0)
        growth = (rss - full_rss) / full_rss * 100
        print(f"RSS growth over {args.after:,} alerts after the table filled: {growth:+.1f} %")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=100.0, help="alerts/s")
    ap.add_argument("--trace", action="store_true", help="also tracemalloc in the alerter")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (samples, logs)")
    ap.add_argument(
        "--set", dest="env", action="append", default=[], metavar="ENV=VALUE",
        help="a setting for the alerter, e.g. DAEMONEYE_ALERTER__DEDUP_WINDOW_S=60",
    )  # fmt: skip
    ap.add_argument("--fill", action="store_true", help="fill mode (in-process handlers)")
    ap.add_argument("--after", type=int, default=300_000, help="fill mode: alerts after full")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.env = dict(e.split("=", 1) for e in args.env)
    if args.child:
        return child(args.child, args.trace)
    return fill(args) if args.fill else live(args)


if __name__ == "__main__":
    sys.exit(main())
