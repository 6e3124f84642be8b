"""Detector benchmark: events/s through the detector with 100 rules (the shipped ones plus
generated ones), and exec-to-alert latency end to end on the bus.

Figures:
  1. engine alone (no bus): events/s through Engine.apply with 100 rules
  2. through the bus: pre-encoded ProcessEvents published into a real broker, consumed
     by a real detector; events/s until the detector has applied them all
  3. event-to-alert: a matching ProcessEvent stamped at send time -> alert received
  4. exec-to-alert (root with netlink): a real process spawned -> alert received,
     through the real collector

Budget (DESIGN.md): >= 20,000 events/s with 100 rules; exec-to-alert p99 <= 50 ms.
"""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import bench_env, percentile, service, verdict

from daemoneye.bus import Publisher, SocketFactory, Subscriber
from daemoneye.rpc import RpcClient, RpcError
from daemoneye.rules.engine import Engine
from daemoneye.rules.live import EventIn

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "rules"
N_EVENTS = 60_000


def generated_rules(count: int) -> str:
    shapes = [
        "SELECT pid, path FROM processes WHERE path LIKE '%/gen{i}%'",
        "SELECT pid, name FROM processes WHERE name = 'gen{i}' AND uid = 0",
        "SELECT pid, cmdline FROM processes WHERE cmdline LIKE '%--gen{i}=%'",
        "SELECT p.pid, pp.name FROM processes p JOIN processes pp ON p.parent = pp.pid "
        "WHERE pp.name = 'gen{i}' AND p.name IN ('sh', 'bash')",
        "SELECT pid, path FROM process_events WHERE event = 'stop' AND path = '/opt/gen{i}'",
        "SELECT pid FROM processes WHERE cwd LIKE '/srv/gen{i}/%' AND euid = 0",
    ]
    docs = []
    for i in range(count):
        sql = shapes[i % len(shapes)].format(i=i)
        docs.append(f'id: gen-{i}\nname: generated {i}\nseverity: low\nsql: "{sql}"\n')
    return "---\n".join(docs)


def rules_dir(tmp: Path) -> Path:
    d = tmp / "rules"
    shutil.copytree(SHIPPED, d)
    shipped = sum(1 for f in d.glob("*.yml") for doc in f.read_text().split("\n---\n") if doc)
    (d / "generated.yml").write_text(generated_rules(100 - shipped))
    return d


PATHS = ["/usr/bin/ls", "/usr/bin/cat", "/usr/bin/python3", "/bin/bash", "/usr/sbin/nginx"]
PATHS += ["/usr/bin/grep", "/usr/lib/systemd/systemd", "/usr/bin/git", "/opt/app/server"]


def workload(n: int) -> list[tuple[str, dict[str, Any]]]:
    """A mix of starts, modifies and stops over a pool of live processes."""
    rnd = random.Random(7)
    ticks = itertools.count(10_000)
    live: list[dict[str, Any]] = []
    out: list[tuple[str, dict[str, Any]]] = []
    pid = 1000
    for _ in range(n):
        roll = rnd.random()
        if roll < 0.4 or len(live) < 50:
            pid = pid + 1 if pid < 4_000_000 else 1000
            path = rnd.choice(PATHS)
            rec = {
                "pid": pid,
                "ppid": live[rnd.randrange(len(live))]["pid"] if live else 1,
                "startTicks": next(ticks),
                "startTime": time.time(),
                "name": path.rsplit("/", 1)[-1],
                "exePath": path,
                "cmdline": [path, "--verbose", f"/home/user/file{rnd.randrange(1000)}"],
                "cwd": "/home/user",
                "uid": 1000,
                "euid": 1000,
                "username": "user",
                "sha256": f"{hash(path) & (2**64 - 1):064x}",
                "state": "S",
                "threads": 1,
                "onDisk": 1,
            }
            live.append(rec)
            out.append(("start", rec))
        elif roll < 0.6:
            rec = live[rnd.randrange(len(live))]
            rec = {**rec, "threads": rec["threads"] + 1, "residentBytes": rnd.randrange(1 << 30)}
            out.append(("modify", rec))
        else:
            rec = live.pop(rnd.randrange(len(live)))
            out.append(("stop", rec))
    return out


def bench_engine(rules: Path, events: list[tuple[str, dict[str, Any]]]) -> float:
    engine = Engine()
    _, problems = engine.load_paths([rules])
    assert not problems, problems
    assert len(engine.rules) == 100, len(engine.rules)
    batch = 500
    started = time.perf_counter()
    for i in range(0, len(events), batch):
        engine.apply([EventIn(k, r, time_ns=time.time_ns()) for k, r in events[i : i + batch]])
        engine.run_due()
    return len(events) / (time.perf_counter() - started)


def detector_events(rpc: RpcClient) -> int:
    health = rpc.call("control.detector", "health", timeout_s=5).value
    return int(health["metrics"].get("detector.events", 0))


def wait_ready(rpc: RpcClient, target: str, key: str | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = rpc.call(target, "health", timeout_s=1).value
            if key is None or health.get(key):
                return
        except RpcError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{target} did not become ready")


def encode_all(pub: Publisher, events, batch: int) -> list[tuple[str, bytes, int]]:
    """(topic, envelope, events in it): single ProcessEvents, or batches of `batch`."""
    out = []
    if batch <= 1:
        for kind, rec in events:
            body = {"kind": kind, "source": "netlink", "timeNs": time.time_ns(), "record": rec}
            topic = f"events.process.{kind}"
            out.append((topic, pub.encode(topic, "processEvent", body)[1], 1))
        return out
    for i in range(0, len(events), batch):
        chunk = [
            {"kind": k, "source": "netlink", "timeNs": time.time_ns(), "record": r}
            for k, r in events[i : i + batch]
        ]
        topic = "events.process.batch"
        out.append(
            (topic, pub.encode(topic, "processEventBatch", {"events": chunk})[1], len(chunk))
        )
    return out


def decode_cost(events) -> tuple[float, float]:
    """Microseconds per event spent in wire.decode_envelope and in reading its fields."""
    from daemoneye import wire
    from daemoneye.services.detector.service import event_in

    class Null:
        def send_multipart(self, *_: Any) -> None:
            pass

    pub = Publisher(Null(), "collector@bench")  # type: ignore[arg-type]
    frames = [data for _, data, _ in encode_all(pub, events, 1)]
    started = time.perf_counter()
    decoded = [wire.decode_envelope(f) for f in frames]
    decode = (time.perf_counter() - started) / len(frames) * 1e6
    started = time.perf_counter()
    for env in decoded:
        event_in(wire.body_of(env), "collector@bench")
    read = (time.perf_counter() - started) / len(frames) * 1e6
    return decode, read


def bench_bus(
    settings, env, events, batch: int = 1, latency: bool = True
) -> tuple[float, list[float]]:
    factory = SocketFactory(settings, zmq.Context())
    rpc = RpcClient(factory, settings.endpoint("control"), "bench", 5)
    with service("broker", settings, env), service("detector", settings, env):
        wait_ready(rpc, "control.detector")
        pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), "collector@bench")
        alerts = Subscriber(
            factory.connect(zmq.SUB, settings.endpoint("events-out")), ["alerts."], 1 << 20
        )
        # join: send single events until the detector counts them
        warm = {"pid": 2, "startTicks": 1, "exePath": "/usr/bin/warm", "name": "warm"}
        while detector_events(rpc) == 0:
            pub.publish("events.process.start", "processEvent", {"kind": "start", "record": warm})
            time.sleep(0.05)
        base = detector_events(rpc)
        encoded = encode_all(pub, events, batch)
        started = time.perf_counter()
        sent = 0
        for i, (topic, data, n) in enumerate(encoded):
            pub.send_encoded(topic, data)
            sent += n
            if i % 500 == 499:  # stay well inside the high-water marks
                while detector_events(rpc) - base < sent - 40_000:
                    time.sleep(0.05)
        while detector_events(rpc) - base < sent:
            if time.perf_counter() - started > 120:
                print(f"  stalled at {detector_events(rpc) - base} of {sent}")
                break
            time.sleep(0.05)  # each poll is a health RPC the detector must answer
        rate = (detector_events(rpc) - base) / (time.perf_counter() - started)
        alerts.drain(100_000)

        # event-to-alert: one matching event at a time, stamped when sent
        latencies = []
        for i in range(300 if latency else 0):
            rec = {
                "pid": 5_000_000 + i,
                "startTicks": 9_000_000 + i,
                "exePath": f"/tmp/lat{i}",
                "name": "lat",
            }
            sent = time.time_ns()
            pub.publish(
                "events.process.start",
                "processEvent",
                {"kind": "start", "timeNs": sent, "record": rec},
            )
            while True:
                msg = alerts.recv(2000)
                if msg is None:
                    break
                if msg.body.process.pid == rec["pid"]:
                    latencies.append((time.time_ns() - sent) / 1e6)
                    break
            time.sleep(0.005)
    factory.close_all(linger_ms=0)
    return rate, latencies


def bench_exec(settings, env) -> list[float]:
    """Real processes: spawn -> collector (netlink) -> broker -> detector -> alert."""
    factory = SocketFactory(settings, zmq.Context())
    rpc = RpcClient(factory, settings.endpoint("control"), "bench", 5)
    latencies: list[float] = []
    with (
        service("broker", settings, env),
        service("collector", settings, env),
        service("detector", settings, env),
        tempfile.TemporaryDirectory(prefix="de-bench-exec-") as tmp,
    ):
        wait_ready(rpc, "control.collector", "monitoring")
        wait_ready(rpc, "control.detector")
        health = rpc.call("control.collector", "health").value
        if health.get("state") != "running":
            print(f"  collector is {health.get('state')}: {health.get('notes')}")
        alerts = Subscriber(
            factory.connect(zmq.SUB, settings.endpoint("events-out")), ["alerts."], 1 << 20
        )
        exe = Path(tmp) / "dropper"
        shutil.copy(shutil.which("true") or "/bin/true", exe)
        time.sleep(1.0)  # let the subscription propagate before the first spawn
        for _ in range(60):
            t0 = time.time_ns()
            proc = subprocess.Popen([str(exe)])
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                msg = alerts.recv(500)
                if msg is not None and msg.body.process.pid == proc.pid:
                    latencies.append((time.time_ns() - t0) / 1e6)
                    break
            proc.wait()
            time.sleep(0.02)
    factory.close_all(linger_ms=0)
    return latencies


def main() -> None:
    events = workload(N_EVENTS)
    with tempfile.TemporaryDirectory(prefix="de-bench-rules-") as tmp:
        rules = rules_dir(Path(tmp))
        engine_rate = bench_engine(rules, events)
        print(f"engine alone, 100 rules:         {engine_rate:>10,.0f} events/s  (budget 20,000)")
        with bench_env(DAEMONEYE_DETECTOR__RULES_DIR=str(rules)) as (settings, env):
            rate, lat = bench_bus(settings, env, events)
        print(
            f"through the bus, 100 rules:      {rate:>10,.0f} events/s  (budget 20,000) "
            f"{verdict(rate, 20_000)}  [one ProcessEvent per envelope, as the collector sends]"
        )
        with bench_env(DAEMONEYE_DETECTOR__RULES_DIR=str(rules)) as (settings, env):
            batch_rate, _ = bench_bus(settings, env, events, batch=100, latency=False)
        print(
            f"through the bus, 100 rules:      {batch_rate:>10,.0f} events/s  (budget 20,000) "
            f"{verdict(batch_rate, 20_000)}  [ProcessEventBatch of 100 per envelope]"
        )
        decode, read = decode_cost(events[:5000])
        print(
            f"per event, before the engine:    decode+validate {decode:.1f} us, "
            f"read fields {read:.1f} us  (one ProcessEvent per envelope)"
        )
        if lat:
            p50, p99 = percentile(lat, 50), percentile(lat, 99)
            print(
                f"event -> alert on the bus:       p50 {p50:.2f} ms, p99 {p99:.2f} ms "
                f"(n={len(lat)}; budget p99 <= 50 ms) {verdict(p99, 50, False)}"
            )
        with bench_env(DAEMONEYE_DETECTOR__RULES_DIR=str(rules)) as (settings, env):
            exec_lat = bench_exec(settings, env)
        if exec_lat:
            p50, p99 = percentile(exec_lat, 50), percentile(exec_lat, 99)
            print(
                f"exec -> alert (real collector):  p50 {p50:.2f} ms, p99 {p99:.2f} ms "
                f"(n={len(exec_lat)} of 60; budget p99 <= 50 ms) {verdict(p99, 50, False)}"
            )
        else:
            print("exec -> alert (real collector):  no alerts (collector without netlink?)")


if __name__ == "__main__":
    main()
