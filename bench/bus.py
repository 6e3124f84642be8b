"""Bus throughput and RPC latency through a real broker on ipc:// sockets.

Prints: CPU per message of `wire.encode_envelope` on bodies as the services build them,
and of `Subscriber.accept` (decode, validation, sequence checks) on real encoded frames,
both from process CPU time and so steady on a busy machine; frames/s
forwarded by the broker; ProcessEvents/s built at a publisher, forwarded and decoded at
a subscriber (one per message and batched) with the loss count; RPC round trip p50/p99.
Budgets from DESIGN.md.

The bus runs with the services' default high-water marks, so "lost" counts what a
fast publisher overflows as the services would; --unbounded (HWM 0) measures how
fast frames move when no queue can fill, where "0 lost" holds by construction.

    .venv/bin/python bench/bus.py [--events 50000] [--unbounded] [--encode-only | --accept-only]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time

import psutil
import zmq

from daemoneye import wire
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
    cpu = time.process_time()
    record = {"pid": 1, "ppid": 1, "name": "bash", "exePath": "/usr/bin/bash",
              "cmdline": ["bash", "-c", "echo hello"], "cwd": "/root", "uid": 0,
              "username": "root", "state": "S", "startTime": 1.7e9, "startTicks": 123456}
    if mode == "raw":
        # The load generator's own CPU shares the 2 cores with the broker: two Cython
        # sends a message, not send_multipart (~3 us of Python a message).
        frame = pub.encode("events.process.start", "empty")[1]
        send, more = zmq.backend.Socket.send, int(zmq.SNDMORE)
        for _ in range(count):
            send(sock, b"events.process.start", more)
            send(sock, frame)
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
    print((time.process_time() - cpu) / count * 1e6, flush=True)  # publisher CPU us/event
    # Wait for the broker to take the backlog: the default linger (1 s) discards what a
    # fast publisher has queued beyond that, bench.done included, and counts it as lost.
    factory.shutdown(linger_ms=60_000)
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


def run_stream(
    settings, env, mode: str, count: int, batch: int = 1
) -> tuple[float, int, int, float]:
    """(per second, received, lost, publisher CPU us per event: building, encoding and
    sending) for one publisher -> broker -> subscriber run."""
    factory = SocketFactory(settings, zmq.Context())
    sock = factory.connect(zmq.SUB, settings.endpoint("events-out"))
    sub = Subscriber(sock, ["events.", "probe.", "bench."], settings.bus.max_event_bytes)
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, mode, str(count), str(batch)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
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
    publisher_cpu = float(proc.communicate(timeout=30)[0])
    if count != received:  # say where they went: the subscriber's counts tell
        print(f"  ({mode}: {count - received} lost; subscriber {sub.stats})")
    factory.close_all(linger_ms=0)
    factory.context.term()
    return received / max(elapsed, 1e-9), received, count - received, publisher_cpu


RECORD = {  # a record as the collector fills it from /proc
    "pid": 26683,
    "ppid": 26680,
    "startTicks": 2110745,
    "startTime": 1795560471.45,
    "name": "python3.11",
    "exePath": "/root/.pyenv/versions/3.11.7/bin/python3.11",
    "cmdline": ["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", "8080"],
    "cwd": "/home/user/project",
    "root": "/",
    "uid": 1000,
    "gid": 1000,
    "euid": 1000,
    "egid": 1000,
    "suid": 1000,
    "sgid": 1000,
    "loginUid": 1000,
    "username": "user",
    "state": "S",
    "threads": 4,
    "nice": 0,
    "pgroup": 26680,
    "sessionId": 25032,
    "userTimeMs": 20,
    "systemTimeMs": 3,
    "residentBytes": 13819904,
    "virtualBytes": 16846848,
    "diskReadBytes": 4096,
    "diskWriteBytes": 0,
    "sha256": "ab" * 32,
    "onDisk": 1,
    "exeDevice": 65024,
    "exeInode": 26723,
    "exeSize": 17584,
    "exeMtimeNs": 1778312132 * 10**9,
    "cgroupPath": "/user.slice/user-1000.slice/session-2.scope",
    "pidNamespace": 4026531836,
    "accessible": True,
    "tty": "pts/0",
}


FULL_RECORD = dict(RECORD, exeDeleted=False, exeChangedAfterExec=False, containerId="")


def encode_bodies() -> list[tuple[str, str, dict, int]]:
    """(label, body kind, body, events) as the services build them: the collector's
    event_body (every field, defaults included), a batch of 64 of those, and the
    detector's alert_body (a process record with every field, as record_of reads it)."""
    event = {
        "kind": "start",
        "source": "netlink",
        "timeNs": 1_795_560_471_450_000_000,
        "record": FULL_RECORD,
        "changedFields": [],
        "reason": "",
        "severity": "info",
        "runtimeNs": 0,
        "exitCode": 0,
        "hostname": "host-1",
    }
    events = [dict(event, record=dict(FULL_RECORD, pid=i)) for i in range(64)]
    alert = dict(alert_body(), process=FULL_RECORD)
    return [
        ("ProcessEvent", "processEvent", event, 1),
        ("ProcessEventBatch of 64", "processEventBatch", {"events": events}, 64),
        ("Alert", "alert", alert, 1),
    ]


def encode_cpu(kind: str, body: dict, count: int, rounds: int = 7) -> tuple[float, float, int]:
    """(best, median) CPU microseconds per `wire.encode_envelope`, and the frame size."""
    header = wire.Header("collector@bench", "boot-1", 1, 1)
    encode = wire.encode_envelope
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            data = encode(header, kind, body)
        samples.append((time.process_time() - started) / count * 1e6)
    samples.sort()
    return samples[0], samples[len(samples) // 2], len(data)


def print_encode_cpu() -> None:
    load = os.getloadavg()[0]
    print(f"wire.encode_envelope CPU per message (best / median of 7 rounds; load {load:.2f}):")
    for label, kind, body, events in encode_bodies():
        best, median, size = encode_cpu(kind, body, 4000 // events)
        per_event = f"  ({best / events:5.2f} us/event)" if events > 1 else ""
        print(f"  {label:<25} {size:6} B  {best:8.2f} / {median:8.2f} us{per_event}")


def alert_body() -> dict:
    return {
        "alertId": "a" * 32,
        "ruleId": "suspicious_shell",
        "ruleName": "Shell from web",
        "severity": "high",
        "title": "python3.11 spawned a shell",
        "description": "A web server process started an interactive shell.",
        "process": RECORD,
        "rowJson": '{"pid": 26683, "name": "python3.11"}',
        "dedupKey": "suspicious_shell:26683",
        "firstSeenNs": 1,
        "lastSeenNs": 2,
        "count": 1,
        "tags": ["attack.execution", "attack.t1059"],
        "timeNs": 3,
        "hostname": "host-1",
    }


def accept_frames(kind: str, count: int) -> tuple[bytes, list[bytes], int]:
    """(topic, `count` frames with consecutive seqs, events per frame) of one kind."""
    from daemoneye.bus import Publisher

    class Null:
        def send(self, *_: object) -> None:
            pass

    pub = Publisher(Null(), "collector@bench")  # type: ignore[arg-type]
    event = {
        "kind": "start",
        "source": "netlink",
        "timeNs": 1,
        "record": RECORD,
        "hostname": "host-1",
    }
    if kind == "event":
        topic, body_kind, body, per = "events.process.start", "processEvent", event, 1
    elif kind == "batch":
        events = [dict(event, record=dict(RECORD, pid=i)) for i in range(64)]
        topic, body_kind, body, per = (
            "events.process.batch",
            "processEventBatch",
            {"events": events},
            64,
        )
    else:
        topic, body_kind, body, per = "alerts.high", "alert", alert_body(), 1
    frames = [pub.encode(topic, body_kind, body)[1] for _ in range(count)]
    return topic.encode(), frames, per


def accept_cpu(kind: str, count: int, rounds: int = 7) -> tuple[float, float, int]:
    """(best, median) CPU microseconds per accepted frame, and the frame size. A fresh
    Subscriber each round, so every frame is new to its sequence tracker."""
    topic, frames, _ = accept_frames(kind, count)
    context = zmq.Context()
    samples = []
    for _ in range(rounds):
        sock = context.socket(zmq.SUB)
        sub = Subscriber(sock, ["events.", "alerts."], 1 << 24)
        accept = sub.accept
        started = time.process_time()
        for data in frames:
            if accept([topic, data]) is None:
                raise RuntimeError(f"frame dropped: {sub.stats.last_drop_reason}")
        samples.append((time.process_time() - started) / count * 1e6)
        sock.close(0)
    context.term()
    samples.sort()
    return samples[0], samples[len(samples) // 2], len(frames[0])


def print_accept_cpu() -> None:
    load = os.getloadavg()[0]
    print(f"Subscriber.accept CPU per frame (best / median of 7 rounds; load {load:.2f}):")
    for kind, count, label in (
        ("event", 4000, "ProcessEvent"),
        ("batch", 200, "ProcessEventBatch of 64"),
        ("alert", 4000, "Alert"),
    ):
        best, median, size = accept_cpu(kind, count)
        per_event = f"  ({best / 64:5.2f} us/event)" if kind == "batch" else ""
        print(f"  {label:<25} {size:6} B  {best:8.2f} / {median:8.2f} us{per_event}")


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
    parser.add_argument("--accept-only", action="store_true", help="only the accept() CPU")
    parser.add_argument("--encode-only", action="store_true", help="only the encode CPU")
    parser.add_argument(
        "--unbounded", action="store_true", help="high-water marks 0 (no queue can overflow)"
    )
    args = parser.parse_args()
    n = args.events
    print_encode_cpu()
    if args.encode_only:
        return
    print_accept_cpu()
    if args.accept_only:
        return
    # PUB/SUB drops at a full high-water mark by design: with the defaults, what this
    # publisher overflows is counted as lost, as it would be in the services
    hwm = {"DAEMONEYE_BUS__SEND_HWM": "0", "DAEMONEYE_BUS__RECV_HWM": "0"} if args.unbounded else {}
    with bench_env(**hwm) as (settings, env), service("broker", settings, env) as broker:
        print(f"bus benchmark, {n} messages per run, broker on {settings.endpoint('events-in')}")
        bus, bounds = settings.bus, "unbounded" if args.unbounded else "the defaults"
        print(f"high-water marks: send {bus.send_hwm}, recv {bus.recv_hwm} ({bounds})")
        print(f"load average {os.getloadavg()[0]:.2f} (2 cores: wall-clock rates below are noisy)")
        broker_cpu = psutil.Process(broker.pid).cpu_times
        before = broker_cpu()
        rate, received, lost, pub_us = run_stream(settings, env, "raw", n * 4)
        after = broker_cpu()
        cpu_us = (after.user + after.system - before.user - before.system) / received * 1e6
        share = f" ({lost / (n * 4):.2%} of a burst at full speed)" if lost else ""
        print(
            f"broker forwarding (raw frames):     {rate:10,.0f} frames/s  lost {lost}{share}"
            f"   budget >= 150,000  {verdict(rate, 150_000)}"
            f"   (broker CPU {cpu_us:.2f} us/frame, publisher {pub_us:.2f})"
        )
        rate, _, lost, pub_us = run_stream(settings, env, "event", n)
        print(
            f"ProcessEvents, one per message:     {rate:10,.0f} events/s  lost {lost}"
            f"   budget >= 25,000   {verdict(rate, 25_000) if not lost else 'LOSS'}"
            f"   (publisher CPU {pub_us:.2f} us/event)"
        )
        rate, _, lost, pub_us = run_stream(settings, env, "batch", n, 64)
        print(
            f"ProcessEvents, batches of 64:       {rate:10,.0f} events/s  lost {lost}"
            f"   budget >= 25,000   {verdict(rate, 25_000) if not lost else 'LOSS'}"
            f"   (publisher CPU {pub_us:.2f} us/event)"
        )
        p50, p99 = rpc_latency(settings, 2000)
        print(
            f"RPC round trip via broker:  p50 {p50:7.0f} us  p99 {p99:7.0f} us"
            f"   budget p99 <= 1,000 us  {verdict(p99, 1000, higher_is_better=False)}"
        )


if __name__ == "__main__":
    main()
