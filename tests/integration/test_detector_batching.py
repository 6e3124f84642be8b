"""Collector batching (`collector.publish_batch_max` > 1) end to end: consecutive events
of one kind travel as one processEventBatch on their usual topic, with one seq and one
WAL entry per envelope (replay gives back exactly the envelopes published), and the
detector applies every event of every batch."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from daemoneye import wire
from daemoneye.bus import Subscriber
from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import wait_for

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")


def healthy(rpc: RpcClient, target: str, key: str | None = None) -> bool:
    try:
        health = rpc.call(target, "health", timeout_s=1).value
    except RpcError:
        return False
    return bool(health.get(key) if key else health)


def test_batched_collector_one_seq_and_wal_entry_per_envelope_detector_applies_all(
    broker: Any,
    start_service: Callable[..., Any],
    run_env: dict[str, str],
    rpc_client: RpcClient,
    subscribe: Callable[..., Subscriber],
) -> None:
    env = {
        **run_env,
        "DAEMONEYE_COLLECTOR__PUBLISH_BATCH_MAX": "50",
        "DAEMONEYE_COLLECTOR__SCAN_INTERVAL_S": "1",
        "DAEMONEYE_LOG_LEVEL": "info",
    }
    events = subscribe("events.process.")
    start_service("detector", env=env)
    wait_for(lambda: healthy(rpc_client, "control.detector"), 30, "the detector")
    start_service("collector", "--id", "collector-batch", env=env)
    target = "control.collector.collector-batch"
    wait_for(lambda: healthy(rpc_client, target, "monitoring"), 40, "the collector")

    # the initial snapshot: hundreds of starts, published 50 to an envelope
    seen: dict[int, tuple[str, int]] = {}  # seq -> (body kind, events in it)
    proc = subprocess.Popen([SLEEP, "30"])
    try:

        def pump() -> bool:
            for msg in events.drain(10_000):
                kind = msg.kind
                body = msg.body
                inside = list(body.events) if kind == "processEventBatch" else [body]
                n = len(inside)
                # on its usual topic: a batch holds events of the topic's one kind
                assert msg.topic.startswith("events.process.") and msg.topic.count(".") == 2
                assert {f"events.process.{e.kind}" for e in inside} == {msg.topic}
                seen[msg.envelope.seq] = (kind, n)
            return bool(seen) and any(k == "processEventBatch" for k, _ in seen.values())

        wait_for(pump, 30, "a processEventBatch envelope")
        assert max(n for _, n in seen.values()) <= 50
        # the sleeper's start reaches the detector whichever envelope carried it
        sql = {"sql": f"SELECT count(*) FROM processes WHERE pid = {proc.pid}"}
        wait_for(
            lambda: rpc_client.call("control.detector", "query", sql).value["rows"][0][0] == 1,
            30,
            "the detector to apply the sleeper's start",
        )
    finally:
        proc.kill()
        proc.wait()
    pump()
    assert events.stats.gaps == 0 and events.stats.dropped_malformed == 0

    # one seq per envelope, and the WAL holds exactly those envelopes
    last = max(seen)
    res = rpc_client.call(target, "replay", {"from_seq": 1, "to_seq": last, "limit": 10_000})
    replayed = {}
    for topic, data in zip(res.value["topics"], res.payloads, strict=True):
        env_ = wire.decode_envelope(data)
        kind = wire.body_kind(env_)
        body = wire.body_of(env_)
        replayed[env_.seq] = (kind, len(body.events) if kind == "processEventBatch" else 1)
        assert topic.startswith("events.process.")
    assert sorted(replayed) == list(range(1, last + 1))
    for seq, item in seen.items():
        assert replayed[seq] == item, f"seq {seq}: published {item}, WAL has {replayed[seq]}"
    # every event published was applied: the detector counts events, not envelopes
    published = sum(n for _, n in replayed.values())
    wait_for(
        lambda: (
            rpc_client.call("control.detector", "health").value["metrics"]["detector.events"]
            >= published
        ),
        20,
        f"the detector to apply all {published} events",
    )
