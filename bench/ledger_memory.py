"""Ledger memory: the ledger service's RSS while process events stream in at a paced rate.

The soak showed the ledger's RSS growing well past +10 %. This runs a real broker
and a real ledger service (subprocesses) and publishes process events to them at
--rate entries/s in bursts of 1-10 (as a collector at ~1,000 exec/s sends them),
so the ledger commits small fsynced batches and signs a checkpoint every 10,000
entries, as in the soak. Every --every seconds it prints the ledger's RSS, the
anonymous part of it, its entries and how far it lags behind what was published
(a backlog queued in ZeroMQ is memory too), then the growth after warm-up.

    .venv/bin/python bench/ledger_memory.py [--seconds 600] [--rate 2000]
        [--malloc as-is|tuned]

--malloc as-is runs `daemoneye run ledger` as it is; tuned runs the same service
class with daemoneye.memory applied the way a service should wire it: tune() before
anything starts, trim() every memory.TRIM_INTERVAL_S on the service's own timer.

Budget (issue 8): RSS flat, no growth beyond 10 % after warm-up (the first 20 %).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import zmq

from daemoneye import memory
from daemoneye.bus import Publisher, SocketFactory
from daemoneye.rpc import RpcClient, RpcError

sys.path.insert(0, str(Path(__file__).parent))
from _harness import bench_env, service, verdict

WARMUP = 0.2


def serve_tuned() -> int:
    """The ledger service with daemoneye.memory wired in (what --malloc tuned runs)."""
    memory.tune()  # before ZeroMQ's and RocksDB's threads exist
    from daemoneye.config import load_settings
    from daemoneye.services import service_class

    svc = service_class("ledger")(load_settings())
    svc.every(memory.TRIM_INTERVAL_S, memory.trim)
    return svc.run()


def event(rng: random.Random, n: int) -> tuple[str, dict]:
    argv = ["/usr/bin/bench", *(f"a{j}" * rng.randint(1, 8) for j in range(rng.randint(1, 30)))]
    kind = "start" if n % 2 == 0 else "stop"
    record = {"pid": 1000 + n % 60000, "ppid": 1, "name": "bench", "exePath": argv[0]}
    record["cmdline"] = argv
    return f"events.process.{kind}", {"kind": kind, "timeNs": time.time_ns(), "record": record}


def ledger_size(client: RpcClient) -> int:
    try:
        return client.call("control.ledger", "head", timeout_s=2).value["size"]
    except RpcError:
        return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="entries/s published")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--malloc", choices=("as-is", "tuned"), default="as-is")
    ap.add_argument("--serve-tuned", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_tuned:
        sys.exit(serve_tuned())
    with (
        bench_env(DAEMONEYE_HEARTBEAT_INTERVAL_S="1") as (settings, env),
        service("broker", settings, env),
    ):
        cmd = [sys.executable, "-m", "daemoneye", "run", "ledger"]
        if args.malloc == "tuned":
            cmd = [sys.executable, __file__, "--serve-tuned"]
        ledger = subprocess.Popen(cmd, env=env)
        try:
            run(args, settings, ledger.pid)
        finally:
            ledger.send_signal(signal.SIGTERM)
            ledger.wait(60)


def run(args: argparse.Namespace, settings, pid: int) -> None:
    factory = SocketFactory(settings)
    pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "collector@bench")
    client = RpcClient(factory, settings.endpoint("control"), "bench", 2.0)
    deadline = time.monotonic() + 30
    while ledger_size(client) < 1 and time.monotonic() < deadline:  # until the path is open
        pub.publish("audit.bench", "auditRecord", {"actor": "bench", "action": "probe"})
        time.sleep(0.1)
    proc = psutil.Process(pid)
    rng = random.Random(8)
    base_size = ledger_size(client)
    cpu0 = sum(proc.cpu_times()[:2])
    rss: list[float] = []
    lags: list[int] = []
    print(f"ledger pid {pid}, malloc {args.malloc}, {args.rate:,.0f} entries/s")
    print(f"{'s':>5} {'published':>10} {'recorded':>10} {'lag':>7}  {'RSS MB':>7} {'anon MB':>7}")
    t0 = time.monotonic()
    n = 0
    next_sample = t0 + args.every
    while True:
        now = time.monotonic()
        if now >= next_sample:
            size = ledger_size(client)  # -1: no answer in time (a busy ledger)
            recorded, lag = "?", "?"
            if size >= 0:
                lags.append(n - (size - base_size))
                recorded, lag = f"{size - base_size:,}", f"{lags[-1]:,}"
            smaps = memory.rss_breakdown(pid)
            rss.append(smaps.get("Rss", 0) / 2**20)
            print(
                f"{now - t0:5.0f} {n:10,} {recorded:>10} {lag:>7}  {rss[-1]:7.1f} "
                f"{smaps.get('Anonymous', 0) / 2**20:7.1f}",
                flush=True,
            )
            next_sample += args.every
        if now - t0 >= args.seconds:
            break
        for _ in range(rng.randint(1, 10)):
            topic, body = event(rng, n)
            pub.publish(topic, "processEvent", body)
            n += 1
        ahead = n / args.rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    factory.close_all(linger_ms=0)
    base = rss[int(len(rss) * WARMUP)]
    growth = (rss[-1] - base) / base * 100
    ok = verdict(growth, 10, higher_is_better=False)
    print(
        f"{n:,} published in {args.seconds:.0f} s; ledger CPU {cpu * 1e6 / max(n, 1):.0f} µs "
        f"per entry; max lag {max(lags, default=0):,}; load {os.getloadavg()[0]:.1f}"
    )
    post = rss[int(len(rss) * WARMUP) :]
    print(
        f"RSS {base:.1f} MB after warm-up -> {rss[-1]:.1f} MB (peak {max(post):.1f}): "
        f"{growth:+.1f} %  budget <= +10 %  {ok}"
    )
    # Memtables (1-16 MB) and trims make RSS swing by several MB between two samples;
    # medians of the first and last fifth after warm-up show the trend without them.
    k = max(1, len(post) // 5)
    first, last = statistics.median(post[:k]), statistics.median(post[-k:])
    trend = (last - first) / first * 100
    print(
        f"trend: median of the first fifth after warm-up {first:.1f} MB, of the last "
        f"{last:.1f} MB: {trend:+.1f} %  {verdict(trend, 10, higher_is_better=False)}"
    )


if __name__ == "__main__":
    main()
