"""Crash and repair: kill -9 the collector mid-stream, restart it, `seq` continues and
a subscriber that missed messages gets them by replay; a WAL with garbage at its
tail starts cleanly and reports the cut."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemoneye import wire
from daemoneye.bus import Subscriber
from daemoneye.config import Settings
from daemoneye.rpc import RpcClient, RpcError

from .test_collector_live import Events, needs_netlink, start_collector

TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
STREAM_PREFIX = "events.process."


def spawn(n: int, stop: threading.Event | None = None) -> None:
    for _ in range(n):
        if stop is not None and stop.is_set():
            return
        subprocess.run([TRUE], check=False)


@pytest.fixture
def events(broker: Any, subscribe: Callable[..., Subscriber]) -> Events:
    return Events(subscribe("events."))


def process_seqs(seen: Events) -> list[int]:
    return [seq for topic, seq, _ in seen.headers if topic.startswith(STREAM_PREFIX)]


def wal_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "collector" / f"collector@{settings.hostname}" / "wal"


@needs_netlink
def test_kill_9_restart_continues_seq_and_replay_repairs(
    events: Events,
    start_service: Callable[..., Any],
    rpc_client: RpcClient,
    run_env: dict[str, str],
    subscribe: Callable[..., Subscriber],
) -> None:
    first = start_collector(start_service, rpc_client, run_env)
    stop = threading.Event()
    storm = threading.Thread(target=spawn, args=(2000, stop))
    storm.start()
    try:
        deadline = time.monotonic() + 20
        while len(process_seqs(events)) < 100 and time.monotonic() < deadline:
            events.pump()
        first.proc.send_signal(signal.SIGKILL)  # mid-stream: the storm is still running
        first.proc.wait()
    finally:
        stop.set()
        storm.join()
    events.pump(200)
    before = process_seqs(events)
    assert len(before) >= 100, "the collector published too little before the kill"
    boot_before = events.headers[-1][2]

    late = subscribe("events.process.")  # a subscriber that missed everything so far
    second = start_collector(start_service, rpc_client, run_env)
    child = subprocess.Popen([TRUE, "after-restart"])
    child.wait()
    after = events.wait(
        "events.process.start",
        lambda b: b["record"]["pid"] == child.pid,
        what="after the restart",
    )
    assert after
    new = [(seq, boot) for topic, seq, boot in events.headers if topic.startswith(STREAM_PREFIX)]
    restarted = [seq for seq, boot in new if boot != boot_before]
    assert restarted, "no message from the restarted collector"
    assert min(restarted) > max(before), "seq must continue after a restart, never repeat"

    # The late subscriber repairs from seq 1 by replay, in pages.
    msg = late.recv(5000)
    assert msg is not None, "the late subscriber got nothing"
    have: dict[int, bytes] = {}
    next_seq = 1
    while next_seq < msg.envelope.seq:
        res = rpc_client.call(
            "control.collector",
            "replay",
            {"from_seq": next_seq, "to_seq": msg.envelope.seq - 1, "limit": 500},
        )
        assert res.value["topics"] and len(res.value["topics"]) == len(res.payloads)
        for topic, data in zip(res.value["topics"], res.payloads, strict=True):
            env = wire.decode_envelope(data)
            assert topic.startswith(STREAM_PREFIX)
            have[env.seq] = data
        next_seq = res.value["last_seq"] + 1
    assert sorted(have) == list(range(1, msg.envelope.seq)), "replay left holes"
    # What the live subscriber saw before the kill is exactly what the WAL gives back.
    live = {
        seq: body
        for topic, seq, boot, body in events.envelopes
        if topic.startswith(STREAM_PREFIX) and boot == boot_before
    }
    for seq, body in live.items():
        assert wire.to_dict(wire.body_of(wire.decode_envelope(have[seq]))) == body
    second.stop()


def test_replay_rejects_bad_params(
    events: Events, start_service: Callable[..., Any], rpc_client: RpcClient, run_env: dict
) -> None:
    start_collector(start_service, rpc_client, run_env, netlink="false")
    with pytest.raises(RpcError, match="from_seq must be a non-negative integer"):
        rpc_client.call("control.collector", "replay", {"from_seq": "x"})
    with pytest.raises(RpcError, match="limit"):
        rpc_client.call("control.collector", "replay", {"from_seq": 1, "limit": -1})
    res = rpc_client.call("control.collector", "replay", {"from_seq": 1, "limit": 3})
    assert len(res.payloads) == 3 and res.value["truncated"]
    assert res.value["first_seq"] == 1 and res.value["last_seq"] == 3
    health = rpc_client.call("control.collector", "health").value
    assert health["state"] == "degraded"  # still up after the bad requests


def test_garbage_at_the_wal_tail_is_cut_and_reported(
    events: Events,
    start_service: Callable[..., Any],
    rpc_client: RpcClient,
    run_env: dict[str, str],
    settings: Settings,
) -> None:
    first = start_collector(start_service, rpc_client, run_env, netlink="false")
    last_before = rpc_client.call("control.collector", "health").value["metrics"]["wal.last_seq"]
    assert last_before > 0
    assert first.stop() == 0
    segments = sorted(wal_dir(settings).glob("*.wal"))
    assert segments, "no WAL segment written"
    garbage = os.urandom(777)
    with open(segments[-1], "ab") as f:
        f.write(garbage)
    start_collector(start_service, rpc_client, run_env, netlink="false")
    deadline = time.monotonic() + 10
    cut = None
    while cut is None and time.monotonic() < deadline:
        found = [b for t, b in events.seen if t.startswith("events.collector.")]
        cut = next((b for b in found if b["kind"] == "wal_cut"), None)
        if cut is None:
            rpc_client.call("control.collector", "begin_monitoring")  # asks for notices again
            events.pump(100)
    assert cut is not None, "no wal_cut notice"
    assert cut["count"] == 777
    health = rpc_client.call("control.collector", "health").value
    assert health["metrics"]["wal.cuts"] == 1
    assert health["metrics"]["wal.last_seq"] > last_before  # continued past the cut
    assert garbage not in segments[-1].read_bytes(), "the garbage must be cut off"
