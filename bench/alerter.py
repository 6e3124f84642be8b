"""Alerter benchmark: alerts/s through dedup to the file sink, and alert-on-bus to
line-in-file latency (p50/p99). Runs a real broker and alerter in a temp dir.

Budget (DESIGN.md): >= 10,000 alerts/s to the file sink; p99 <= 20 ms.

    .venv/bin/python bench/alerter.py [--alerts 20000] [--rate 2000] [--fsync batch]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import zmq
from _harness import alerts_received, config_env

from daemoneye.bus import Publisher, SocketFactory, wait_for_endpoint
from daemoneye.rpc import call_once


def alert(n: int, tag: str) -> dict:
    now = time.time_ns()
    exe = f"/opt/bench/{tag}/bin{n}"
    return {
        "alertId": f"{tag}-{n}",
        "ruleId": "bench.rule",
        "ruleName": "bench rule",
        "severity": "high",
        "title": "bench alert",
        "description": "an alert for the benchmark",
        "process": {"pid": n % 60000, "ppid": 1, "name": f"bin{n}", "exePath": exe,
                    "cmdline": [exe, "--flag", str(n)], "username": "bench", "uid": 1000},
        "rowJson": json.dumps({"pid": n, "path": exe}),
        "firstSeenNs": now, "lastSeenNs": now, "count": 1, "tags": ["bench"],
        "timeNs": now, "hostname": "benchhost",
    }  # fmt: skip


class Tail(threading.Thread):
    """Follows the alerts file, stamping each line with when it appeared."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.seen: list[tuple[int, bytes]] = []  # parsed later: keep this thread light
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.path.exists() and not self.stop.is_set():
            time.sleep(0.0005)
        with open(self.path, "rb") as fh:
            buf = b""
            while not self.stop.is_set():
                chunk = fh.read(1 << 20)
                if not chunk:
                    time.sleep(0.0005)  # a file has nothing to block on; 0.5 ms resolution
                    continue
                now = time.time_ns()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                self.seen.extend((now, line) for line in lines if line)


def wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.005)


def thread_cpu(proc: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def by_thread(proc: psutil.Process, before: dict[int, float], items: int) -> str:
    """CPU us per item of the busiest threads since `before`, by thread name."""
    now = thread_cpu(proc)
    rows = sorted(((cpu - before.get(tid, 0)) / items * 1e6, tid) for tid, cpu in now.items())
    out = []
    for us, tid in rows[::-1][:4]:
        try:
            name = Path(f"/proc/{proc.pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            name = "?"
        if us >= 1:
            out.append(f"{name} {us:.0f}")
    return ", ".join(out)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=20_000, help="alerts in the throughput burst")
    ap.add_argument("--latency-alerts", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=1000.0, help="alerts/s for the latency run")
    ap.add_argument("--fsync", choices=["batch", "interval", "never"], default="batch")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) afterwards")
    ap.add_argument("--profile", action="store_true", help="run the alerter under cProfile")
    args = ap.parse_args()
    # This process keeps every line it reads; a cyclic-GC pass over them would stall the
    # publisher and the tail and be counted as alerter latency. Refcounting still frees.
    gc.disable()

    root = Path(tempfile.mkdtemp(prefix="de-bench-alerter-"))
    run_dir = Path(f"/tmp/de-ba-{os.getpid()}")
    out = root / "alerts.jsonl"
    (root / "alerter.toml").write_text(
        f"""
[alerter]
dedup_window_s = 300
rule_rate_limit = {{ rate = 0 }}
[[alerter.sinks]]
kind = "file"
path = "{out}"
fsync = "{args.fsync}"
rotate_bytes = 0
"""
    )
    env, settings = config_env(root, run_dir)
    procs = []
    try:
        for name in ("broker", "alerter"):
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115
            prof = (
                ["-m", "cProfile", "-o", str(root / "alerter.prof")]
                if (args.profile and name == "alerter")
                else []
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, *prof, "-m", "daemoneye", "run", name],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            if name == "broker" and not wait_for_endpoint(settings.endpoint("control"), 15):
                raise SystemExit("bench: broker did not start")
        factory = SocketFactory(settings, zmq.Context())
        pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "bench@host")

        def received() -> float:
            return alerts_received(factory, settings)

        def live() -> bool:
            pub.publish("alerts.probe", "empty")
            return received() >= 1

        wait(live, 30, "the alerter to subscribe")
        tail = Tail(out)
        tail.start()

        # Throughput: a burst of distinct alerts (each passes dedup and is delivered).
        bodies = [alert(n, "burst") for n in range(args.alerts)]
        alerter_proc = psutil.Process(procs[1].pid)
        cpu0 = sum(alerter_proc.cpu_times()[:2])
        threads0 = thread_cpu(alerter_proc)
        # Encoded beforehand: the figure is the alerter's, not this process's encoder's.
        frames = [pub.encode("alerts.high", "alert", body)[1] for body in bodies]
        t0 = time.perf_counter()
        for frame in frames:
            pub.send_encoded("alerts.high", frame)
        t_sent = time.perf_counter()
        wait(lambda: len(tail.seen) >= args.alerts, 120, "the burst in the file")
        t1 = time.perf_counter()
        rate = args.alerts / (t1 - t0)
        cpu_per_alert = (sum(alerter_proc.cpu_times()[:2]) - cpu0) / args.alerts
        busiest = by_thread(alerter_proc, threads0, args.alerts)

        # Dedup path: identical alerts, delivered once; how fast they are absorbed.
        same = [pub.encode("alerts.high", "alert", alert(0, "same"))[1] for _ in range(args.alerts)]
        base = received()
        t2 = time.perf_counter()
        for frame in same:
            pub.send_encoded("alerts.high", frame)
        wait(lambda: received() >= base + args.alerts, 120, "the identical flood")
        dedup_rate = args.alerts / (time.perf_counter() - t2)

        # Latency: a paced stream, each alert stamped when published.
        start_seen = len(tail.seen)
        cpu_paced0 = sum(alerter_proc.cpu_times()[:2])
        threads_paced0 = thread_cpu(alerter_proc)
        interval = 1.0 / args.rate
        next_t = time.perf_counter()
        for n in range(args.latency_alerts):
            body = alert(n, "lat")
            body["timeNs"] = time.time_ns()
            pub.publish("alerts.high", "alert", body)
            next_t += interval
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the sender, not synchronising
        wait(lambda: len(tail.seen) >= start_seen + args.latency_alerts, 60, "latency run")
        # At a paced rate each wake-up carries few alerts: per-batch costs show here.
        cpu_paced = (sum(alerter_proc.cpu_times()[:2]) - cpu_paced0) / args.latency_alerts
        busiest_paced = by_thread(alerter_proc, threads_paced0, args.latency_alerts)
        recs = [
            (seen, rec)
            for seen, rec in ((t, json.loads(line)) for t, line in tail.seen[start_seen:])
            if rec.get("alertId", "").startswith("lat-")
        ]
        bus_part = [(r["receivedNs"] - r["timeNs"]) / 1e6 for _, r in recs]
        own_part = [(seen - r["receivedNs"]) / 1e6 for seen, r in recs]
        lat = [(seen - rec["timeNs"]) / 1e6 for seen, rec in recs]
        tail.stop.set()
        health = call_once(
            factory, settings.endpoint("control"), "control.alerter", "health", timeout_s=2
        ).value

        print(f"alerter bench ({args.fsync} fsync, {os.cpu_count()} cores)")
        print(
            f"  burst of {args.alerts} distinct alerts: published in {t_sent - t0:.2f} s, "
            f"all in file after {t1 - t0:.2f} s"
        )
        print(
            f"  alerts/s to the file sink:      {rate:10,.0f}   budget >= 10,000  "
            f"{'OK' if rate >= 10_000 else 'MISS'}"
        )
        print(
            f"  alerter CPU per alert: {cpu_per_alert * 1e6:.0f} us "
            f"(= {1 / cpu_per_alert:,.0f} alerts/s on one free core)"
        )
        print(f"    by thread (us/alert): {busiest}")
        print(f"  identical alerts/s through dedup: {dedup_rate:8,.0f}")
        print(f"  bus -> line in file, {len(lat)} alerts at {args.rate:g}/s:")
        print(f"    alerter CPU per alert at this rate: {cpu_paced * 1e6:.0f} us ({busiest_paced})")
        print(
            f"    p50 {pct(lat, 50):6.2f} ms   p99 {pct(lat, 99):6.2f} ms   "
            f"max {max(lat):6.2f} ms   budget p99 <= 20 ms  "
            f"{'OK' if pct(lat, 99) <= 20 else 'MISS'}"
        )
        print(
            f"    of which bus -> alerter p50 {pct(bus_part, 50):6.2f} p99 {pct(bus_part, 99):6.2f}"
            f" ms; alerter -> file p50 {pct(own_part, 50):6.2f} p99 {pct(own_part, 99):6.2f} ms"
        )
        print(f"  longest GC pause in the alerter: {health['metrics']['gc.max_pause_ms']:.1f} ms")
        worst = max(range(len(lat)), key=lat.__getitem__)
        print(
            f"  worst: alert #{worst} of the paced run, {lat[worst]:.1f} ms "
            f"(bus {bus_part[worst]:.1f} ms, alerter {own_part[worst]:.1f} ms)"
        )
        factory.close_all(linger_ms=0)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(15)
        shutil.rmtree(run_dir, ignore_errors=True)
        if args.keep or args.profile:
            print(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
