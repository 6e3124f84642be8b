"""Ledger throughput: in-process append (hash chain + Merkle tree + durable batch),
proof generation, offline verification of 1,000,000 entries, and a real ledger
service keeping up with process events from the bus.

    .venv/bin/python bench/ledger.py [--entries 300000] [--verify-entries 1000000]
                                     [--bus-rate 20000] [--bus-seconds 5]

Budgets (DESIGN.md, issue 6): >= 100,000 entries/s appended; a proof <= 1 ms;
verify of 1M entries <= 10 s; keeping up with 20,000 events/s from the bus.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import psutil
import zmq

from daemoneye import wire
from daemoneye.bus import Publisher, SocketFactory
from daemoneye.ledger.store import LedgerStore, LedgerWriter, open_store
from daemoneye.ledger.verify import verify_ledger
from daemoneye.rpc import RpcClient, RpcError

sys.path.insert(0, str(Path(__file__).parent))
from _harness import bench_env, percentile, service, verdict

RECORD = {
    "pid": 4242,
    "ppid": 1,
    "name": "bash",
    "exePath": "/usr/bin/bash",
    "cmdline": ["bash", "-c", "echo hello"],
    "cwd": "/root",
    "uid": 0,
    "username": "root",
    "state": "S",
    "startTime": 1.7e9,
    "startTicks": 123456,
}


def sample_payload() -> bytes:
    header = wire.Header("collector@bench", "boot", 1, time.time_ns())
    return wire.encode_envelope(header, "processEvent", {"kind": "start", "record": RECORD})


def fill(path: Path, n: int, batch: int, sync: bool) -> tuple[LedgerStore, float]:
    ledger = LedgerStore(open_store(path))
    writer = LedgerWriter(ledger, sync=sync)
    payload = sample_payload()
    append, commit = writer.append, writer.commit
    t0 = time.perf_counter()
    for _ in range(n):
        append("collector@bench", "events.process.start", payload)
        if writer.pending >= batch:
            commit()
    commit()
    return ledger, time.perf_counter() - t0


def bench_append(tmp: Path, n: int) -> None:
    payload = sample_payload()
    print(f"payload: a ProcessEvent envelope of {len(payload)} bytes")
    for batch in (1000, 5000):
        ledger, elapsed = fill(tmp / f"append-{batch}", n, batch, sync=True)
        rate = n / elapsed
        print(
            f"append, fsync every {batch:>5} entries: {rate:>10,.0f} entries/s "
            f"({elapsed * 1e6 / n:.2f} µs each)  budget >= 100,000  {verdict(rate, 100_000)}"
        )
        ledger.close()


def bench_proofs_and_verify(tmp: Path, n: int) -> None:
    t_build = time.perf_counter()
    ledger, elapsed = fill(tmp / "verify", n, 5000, sync=False)
    print(f"built a {n:,}-entry ledger in {time.perf_counter() - t_build:.1f} s")
    rng = random.Random(1)
    times = []
    for _ in range(2000):
        index = rng.randrange(n)
        t0 = time.perf_counter()
        ledger.inclusion_proof(index, n)
        times.append(time.perf_counter() - t0)
    p50, p99 = percentile(times, 50) * 1e6, percentile(times, 99) * 1e6
    print(
        f"inclusion proof (n={n:,}): p50 {p50:.0f} µs, p99 {p99:.0f} µs  "
        f"budget <= 1000 µs  {verdict(p99, 1000, higher_is_better=False)}"
    )
    times = []
    for _ in range(1000):
        old = rng.randrange(1, n)
        t0 = time.perf_counter()
        ledger.consistency_proof(old, n)
        times.append(time.perf_counter() - t0)
    p50, p99 = percentile(times, 50) * 1e6, percentile(times, 99) * 1e6
    print(f"consistency proof: p50 {p50:.0f} µs, p99 {p99:.0f} µs")
    t0 = time.perf_counter()
    report = verify_ledger(ledger, None)
    elapsed = time.perf_counter() - t0
    scaled = elapsed * 1_000_000 / n
    print(
        f"verify {n:,} entries: {elapsed:.2f} s ({'intact' if report.ok else report.problem}); "
        f"per 1M: {scaled:.2f} s  budget <= 10 s  {verdict(scaled, 10, higher_is_better=False)}"
    )
    ledger.close()


def bench_bus(rate: int, seconds: float, budget: bool = True) -> None:
    count = int(rate * seconds)
    with (
        bench_env(DAEMONEYE_HEARTBEAT_INTERVAL_S="1") as (settings, env),
        service("broker", settings, env),
        service("ledger", settings, env) as ledger_proc,
    ):
        ledger_ps = psutil.Process(ledger_proc.pid)
        factory = SocketFactory(settings)
        sock = factory.connect(zmq.PUB, settings.endpoint("events-in"))
        pub = Publisher(sock, "collector@bench")
        client = RpcClient(factory, settings.endpoint("control"), "bench", 2.0)

        def head() -> int:
            try:
                return client.call("control.ledger", "head", timeout_s=1).value["size"]
            except RpcError:
                return -1

        deadline = time.monotonic() + 30
        while head() < 1 and time.monotonic() < deadline:  # probe until the path is open
            pub.publish("audit.bench", "auditRecord", {"actor": "b", "action": "probe"})
            time.sleep(0.05)
        start = head()
        frames = []
        for i in range(count):
            body = {"kind": "start", "timeNs": time.time_ns(), "record": dict(RECORD, pid=i)}
            frames.append(pub.encode("events.process.start", "processEvent", body)[1])
        topic = b"events.process.start"
        cpu0 = sum(ledger_ps.cpu_times()[:2])
        t0 = time.perf_counter()
        for i, frame in enumerate(frames):  # paced: `rate` frames per second
            ahead = t0 + i / rate - time.perf_counter()
            if ahead > 0.002:
                time.sleep(ahead)
            sock.send_multipart([topic, frame])
        sent_s = time.perf_counter() - t0
        target = start + count
        deadline = time.monotonic() + 60
        while (size := head()) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        done_s = time.perf_counter() - t0
        cpu_s = sum(ledger_ps.cpu_times()[:2]) - cpu0
        metrics = client.call("control.ledger", "health").value["metrics"]
        factory.close_all(linger_ms=0)
    recorded = size - start
    achieved = recorded / done_s
    lag = done_s - sent_s
    cost = (
        f"; the ledger's CPU {cpu_s / done_s * 100:.0f} % of a core, "
        f"{cpu_s / max(recorded, 1) * 1e6:.0f} µs an entry"
    )
    if not budget:  # a trickle, as in the soak: what it costs, against no budget
        print(f"bus -> ledger service at {rate:,}/s: recorded {recorded:,} of {count:,}{cost}")
        return
    print(
        f"bus -> ledger service: sent {count:,} at {count / sent_s:,.0f}/s, recorded "
        f"{recorded:,} durable in {done_s:.2f} s ({achieved:,.0f}/s, {lag * 1000:.0f} ms behind "
        f"at the end; gaps {metrics.get('bus.missing', 0):.0f}{cost})  budget keep up with "
        f"20,000/s  {verdict(1 if recorded == count and lag < 1.0 else 0, 1)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--verify-entries", type=int, default=1_000_000)
    parser.add_argument("--bus-rate", type=int, default=20_000)
    parser.add_argument("--bus-seconds", type=float, default=5.0)
    parser.add_argument(
        "--trickle-rate", type=int, default=2000, help="the soak's rate (0 skips it)"
    )
    parser.add_argument("--only-bus", action="store_true", help="skip append/proof/verify")
    args = parser.parse_args()
    if not args.only_bus:
        with tempfile.TemporaryDirectory(prefix="de-ledger-bench-") as tmp:
            bench_append(Path(tmp), args.entries)
            bench_proofs_and_verify(Path(tmp), args.verify_entries)
    bench_bus(args.bus_rate, args.bus_seconds)
    if args.trickle_rate:
        bench_bus(args.trickle_rate, 10.0, budget=False)


if __name__ == "__main__":
    main()
