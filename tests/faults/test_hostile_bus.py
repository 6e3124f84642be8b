"""Hostile traffic on the real bus: a flood from a source that never registered (with
garbage mixed in), a replay request for a huge range, replies that would exceed the
frame limit, and envelopes of another schema version. Nothing crashes or hangs;
every rejection is counted exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections import Counter

import pytest
import zmq

from daemoneye import wire
from daemoneye.bus import Publisher, SocketFactory, Subscriber, Topics
from daemoneye.config import Settings
from daemoneye.ledger import entry as entries
from daemoneye.ledger.store import LedgerStore, open_store
from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import wait_for
from tests.faults.harness import realtime_reason

INTRUDER = "intruder@nowhere"
BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")


def ledger_actors(settings: Settings) -> Counter:
    """Entries per actor in the ledger (read-only: it may be running)."""
    store = LedgerStore(open_store(settings.ledger.db_path(settings.data_dir), read_only=True))
    try:
        return Counter(entries.parse_record(v).actor for _, v in store.entries())
    finally:
        store.close()


def healthy(rpc: RpcClient, target: str) -> dict:
    return rpc.call(target, "health", timeout_s=2).value


def joined_publisher(factory: SocketFactory, settings: Settings, rpc: RpcClient) -> Publisher:
    """A raw PUB the bus is known to carry (probes until a subscriber hears one)."""
    pub = Publisher(factory.connect(zmq.PUB, settings.endpoint("events-in")), INTRUDER)
    sub = Subscriber(factory.connect(zmq.SUB, settings.endpoint("events-out")), ["probe."], 1 << 20)

    def heard() -> bool:
        pub.publish("probe.join", "heartbeat", {"service": "probe"})
        return sub.recv(50) is not None

    wait_for(heard, 15, "the broker to carry the intruder's PUB")
    return pub


def test_flood_from_an_unregistered_source(
    broker, start_service, rpc_client, factory, settings
) -> None:
    ledger = start_service("ledger")
    detector = start_service("detector")
    for name, proc in (("ledger", ledger), ("detector", detector)):
        wait_for(lambda n=name: _answers(rpc_client, n), 20, f"{name} up\n{proc.log()}")
    pub = joined_publisher(factory, settings, rpc_client)
    before = {t: healthy(rpc_client, t)["metrics"] for t in ("control.ledger", "control.detector")}
    n_events, n_garbage = 20_000, 500
    record = {"pid": 4242, "name": "evil", "cmdline": ["evil", "--flood"], "exePath": "/x/evil"}
    body = {"kind": "start", "source": "netlink", "record": record}
    for i in range(n_events):
        pub.publish(Topics.PROCESS_START, "processEvent", body)
        if i % 40 == 0:  # garbage: not a Cap'n Proto message at all
            pub.sock.send_multipart([b"events.process.start", b"\xff" * (8 + i % 64)])
    assert n_events // 40 == n_garbage

    # every subscriber took all of it, dropped and counted every bad frame, and answers
    wait_for(lambda: ledger_actors(settings)[INTRUDER] == n_events, 60, "the ledger to record")
    wait_for(
        lambda: (
            healthy(rpc_client, "control.detector")["metrics"]["bus.received"]
            - before["control.detector"]["bus.received"]
            >= n_events
        ),
        60,
        "the detector to take the flood",
    )
    for target, seen in before.items():
        now = healthy(rpc_client, target)["metrics"]
        assert now["bus.dropped"] - seen["bus.dropped"] == n_garbage, target
    for target in ("control.broker", "control.ledger", "control.detector"):
        assert healthy(rpc_client, target)["state"] == "running", target
    det = healthy(rpc_client, "control.detector")["metrics"]
    assert det["bus.gaps"] == 0, det
    assert ledger.proc.poll() is None and detector.proc.poll() is None


def _answers(rpc: RpcClient, name: str) -> bool:
    try:
        healthy(rpc, f"control.{name}")
        return True
    except RpcError:
        return False


def test_wrong_schema_version_is_dropped_and_counted(
    broker, start_service, rpc_client, factory, settings
) -> None:
    ledger = start_service("ledger")
    wait_for(lambda: _answers(rpc_client, "ledger"), 20, f"ledger up\n{ledger.log()}")
    pub = joined_publisher(factory, settings, rpc_client)
    with pytest.MonkeyPatch.context() as mp:  # a peer built against the next schema
        mp.setattr(wire, "SCHEMA_VERSION", wire.SCHEMA_VERSION + 1)
        wrong = wire.encode_envelope(
            wire.Header(INTRUDER, "boot", 1, 1), "auditRecord", {"action": "x", "actor": "y"}
        )
    with pytest.raises(wire.DecodeError, match="schema version"):
        wire.decode_envelope(wrong)
    before = healthy(rpc_client, "control.ledger")["metrics"]["bus.dropped"]
    n = 50
    for _ in range(n):
        pub.sock.send_multipart([b"audit.intruder", wrong])
    pub.publish("audit.intruder", "auditRecord", {"action": "after", "actor": INTRUDER})

    wait_for(lambda: ledger_actors(settings)[INTRUDER] >= 1, 20, "the good record after them")
    after = healthy(rpc_client, "control.ledger")["metrics"]
    assert after["bus.dropped"] - before == n
    assert ledger_actors(settings)[INTRUDER] == 1


@pytest.fixture
def big_collector(run_env, start_service, rpc_client):
    """A collector whose WAL holds events of ~300 KB (processes with huge argv), on a bus
    whose frames may be at most 4 MB."""
    run_env["DAEMONEYE_BUS__MAX_MESSAGE_BYTES"] = str(4 << 20)
    broker = start_service("broker")
    wait_for(lambda: _answers_broker(rpc_client), 20, f"broker up\n{broker.log()}")
    collector = start_service("collector")
    wait_for(lambda: _answers(rpc_client, "collector"), 30, f"collector up\n{collector.log()}")
    marker = uuid.uuid4().hex
    big = ["x" * 100_000] * 3
    procs = [subprocess.Popen([BASH, "-c", "sleep 30; :", marker, *big]) for _ in range(20)]
    try:

        def logged() -> bool:
            return healthy(rpc_client, "control.collector")["metrics"]["wal.bytes"] > 6_000_000

        wait_for(logged, 30, "the big events in the WAL")
        yield collector
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _answers_broker(rpc: RpcClient) -> bool:
    try:
        healthy(rpc, "control.broker")
        return True
    except RpcError:
        return False


@pytest.mark.root
@pytest.mark.skipif(bool(realtime_reason()), reason=realtime_reason() or "-")
def test_replay_of_a_huge_range_is_bounded(big_collector, rpc_client, settings) -> None:
    last = int(healthy(rpc_client, "control.collector")["metrics"]["wal.last_seq"])
    t = time.monotonic()
    first = rpc_client.call(
        "control.collector", "replay", {"from_seq": 0, "to_seq": 2**63, "limit": 10**9}, 10
    )
    assert time.monotonic() - t < 10
    value = first.value
    assert value["truncated"] is True, "an answer of the whole WAL must say it is partial"
    assert sum(len(p) for p in first.payloads) <= settings.bus.max_message_bytes // 2
    assert value["wal_last_seq"] >= last
    # paging through with the answers' own bounds gets everything, in order, once
    seqs, from_seq = [], 0
    while True:
        res = rpc_client.call("control.collector", "replay", {"from_seq": from_seq}, 10)
        seqs += [wire.decode_envelope(p).seq for p in res.payloads]
        if not res.value["truncated"]:
            break
        from_seq = res.value["last_seq"] + 1
    assert seqs == sorted(set(seqs)) and seqs[-1] >= last
    for bad, why in (
        ({"from_seq": -1}, "from_seq must be a non-negative integer"),
        ({"from_seq": "all"}, "from_seq must be a non-negative integer"),
        ({"from_seq": 0, "limit": -5}, "limit must be a non-negative integer"),
    ):
        with pytest.raises(RpcError, match=why):
            rpc_client.call("control.collector", "replay", bad)
    beyond = rpc_client.call("control.collector", "replay", {"from_seq": 2**64 - 1})
    assert beyond.payloads == [] and beyond.value["truncated"] is False
    assert healthy(rpc_client, "control.collector")["state"] in ("running", "degraded")
