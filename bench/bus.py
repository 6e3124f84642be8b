"""Bus throughput and RPC latency through a real broker on ipc:// sockets.

Prints: frames/s forwarded by the broker; ProcessEvents/s built at a publisher,
forwarded and decoded at a subscriber (one per message and batched) with the loss
count; RPC round trip p50/p99. Budgets from DESIGN.md.

    .venv/bin/python bench/bus.py [--events 50000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time

import zmq

from daemoneye.bus import SocketFactory, Subscriber
from daemoneye.rpc import RpcClient

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _harness import bench_env, percentile, service, verdict

PUBLISHER = textwrap.dedent(
    """
    import select, sys, time, zmq
    from daemoneye.bus import Publisher, SocketFactory
    from daemoneye.config import load_settings
    mode, count, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    settings = load_settings()
    factory = SocketFactory(settings)
    sock = factory.connect(zmq.PUB, settings.endpoint("events-in"))
    pub = Publisher(sock, "bench-pub")
    while not select.select([sys.stdin], [], [], 0.02)[0]:
        pub.publish("probe.ready", "empty")
    sys.stdin.readline()
    record = {"pid": 1, "ppid": 1, "name": "bash", "exePath": "/usr/bin/bash",
              "cmdline": ["bash", "-c", "echo hello"], "cwd": "/root", "uid": 0,
              "username": "root", "state": "S", "startTime": 1.7e9, "startTicks": 123456}
    if mode == "raw":
        frame = pub.encode("events.process.start", "empty")[1]
        for _ in range(count):
            sock.send_multipart([b"events.process.start", frame])
    elif mode == "event":
        for i in range(count):
            record["pid"] = i
            body = {"kind": "start", "timeNs": time.time_ns(), "record": record}
            pub.publish("events.process.start", "processEvent", body)
    else:
        for start in range(0, count, batch):
            events = []
            for i in range(start, min(count, start + batch)):
                events.append({"kind": "start", "source": "netlink", "timeNs": time.time_ns(),
                               "record": dict(record, pid=i)})
            pub.publish("events.process.start", "processEventBatch", {"events": events})
    pub.publish("bench.done", "empty")
    factory.close_all()
    """
)


def _drain_raw(sock: zmq.Socket) -> tuple[bool, int]:
    """(saw bench.done, event frames read) until the socket is empty."""
    recv, noblock = sock.recv, int(zmq.NOBLOCK)
    received = 0
    while True:
        try:
            topic = recv(noblock)
        except zmq.Again:
            return False, received
        recv()  # the envelope frame: a multipart message arrives whole
        if topic == b"events.process.start":
            received += 1
        elif topic == b"bench.done":
            return True, received


def run_stream(settings, env, mode: str, count: int, batch: int = 1) -> tuple[float, int, int]:
    """(per second, received, lost) for one publisher -> broker -> subscriber run."""
    factory = SocketFactory(settings, zmq.Context())
    sock = factory.connect(zmq.SUB, settings.endpoint("events-out"))
    sub = Subscriber(sock, ["events.", "probe.", "bench."], settings.bus.max_event_bytes)
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, mode, str(count), str(batch)],
        env=env,
        stdin=subprocess.PIPE,
        text=True,
    )
    while (m := sub.recv(10_000)) is None or m.topic != "probe.ready":
        pass
    proc.stdin.write("go\n")
    proc.stdin.flush()
    received = 0
    started = None
    last = time.perf_counter()
    while True:
        if mode == "raw":
            # Drain without a poll per frame, so the receiver is not what is measured.
            if not sock.poll(10_000):
                break
            done, received_now = _drain_raw(sock)
            if received_now:
                last = time.perf_counter()
                started = started or last
                received += received_now
            if done:
                break
            continue
        msg = sub.recv(10_000)
        if msg is None or msg.topic == "bench.done":
            break
        if msg.topic != "events.process.start":
            continue
        last = time.perf_counter()
        started = started or last
        if msg.kind == "processEventBatch":
            for event in msg.body.events:
                _ = (event.record.pid, event.record.name, event.record.cmdline[0])
                received += 1
        else:
            record = msg.body.record
            _ = (record.pid, record.name, record.cmdline[0])
            received += 1
    elapsed = last - (started or last)
    proc.wait(30)
    factory.close_all(linger_ms=0)
    factory.context.term()
    return received / max(elapsed, 1e-9), received, count - received


def rpc_latency(settings, calls: int) -> tuple[float, float]:
    factory = SocketFactory(settings, zmq.Context())
    client = RpcClient(factory, settings.endpoint("control"), "bench", 2.0)
    for _ in range(100):
        client.call("control.broker", "ping")
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        client.call("control.broker", "ping")
        samples.append((time.perf_counter() - t) * 1e6)
    factory.close_all(linger_ms=0)
    factory.context.term()
    return percentile(samples, 50), percentile(samples, 99)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    n = args.events
    # Unbounded queues for the measurement: PUB/SUB drops at a full HWM by design, and
    # here we measure how fast frames move, not how a burst overflows a queue.
    unbounded = {"DAEMONEYE_BUS__SEND_HWM": "0", "DAEMONEYE_BUS__RECV_HWM": "0"}
    with bench_env(**unbounded) as (settings, env), service("broker", settings, env):
        print(f"bus benchmark, {n} messages per run, broker on {settings.endpoint('events-in')}")
        rate, _, lost = run_stream(settings, env, "raw", n * 4)
        print(
            f"broker forwarding (raw frames):     {rate:10,.0f} frames/s  lost {lost}"
            f"   budget >= 150,000  {verdict(rate, 150_000)}"
        )
        rate, _, lost = run_stream(settings, env, "event", n)
        print(
            f"ProcessEvents, one per message:     {rate:10,.0f} events/s  lost {lost}"
            f"   budget >= 25,000   {verdict(rate, 25_000) if not lost else 'LOSS'}"
        )
        rate, _, lost = run_stream(settings, env, "batch", n, 64)
        print(
            f"ProcessEvents, batches of 64:       {rate:10,.0f} events/s  lost {lost}"
            f"   budget >= 25,000   {verdict(rate, 25_000) if not lost else 'LOSS'}"
        )
        p50, p99 = rpc_latency(settings, 2000)
        print(
            f"RPC round trip via broker:  p50 {p50:7.0f} us  p99 {p99:7.0f} us"
            f"   budget p99 <= 1,000 us  {verdict(p99, 1000, higher_is_better=False)}"
        )


if __name__ == "__main__":
    main()
