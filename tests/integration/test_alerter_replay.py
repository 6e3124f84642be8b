"""Alerts published while the alerter is down, with a real broker, detector and
alerter fed synthetic process events: the detector logs every alert before sending it
and answers `replay` for its alerts.<severity> streams; the restarted alerter sees the
gap and fetches them, so every alert on the bus reaches the file sink exactly once.
A restarted detector continues its alert seqs from its log."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from daemoneye.bus import Subscriber
from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import wait_for
from tests.integration.test_detector_bus import TMP_RULE, Feeder, record
from tests.sink_lines import records_of

_pids = itertools.count(20_000)


class Bus:
    """Alerts seen on the bus: alertId -> times, and (stream, seq) -> envelope bytes."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.ids: Counter = Counter()
        self.raw: dict[tuple[str, int], bytes] = {}
        self.seqs: list[int] = []

    def pump(self) -> Counter:
        for msg in self.sub.drain(10_000):
            if msg.kind == "alert":
                self.ids[msg.body.alertId] += 1
                self.raw[(msg.topic, msg.envelope.seq)] = msg.raw
                self.seqs.append(msg.envelope.seq)
        return self.ids


def sink_ids(data_dir: Path) -> Counter:
    ids: Counter = Counter()
    for line in records_of(data_dir.glob("alerts.jsonl*")):
        ids[line["alertId"]] += 1
    return ids


def healthy(rpc: RpcClient, target: str, pid: int) -> bool:
    try:
        return rpc.call(target, "health", timeout_s=1).value.get("pid") == pid
    except RpcError:
        return False


def fire(feeder: Feeder, n: int) -> None:
    for _ in range(n):
        feeder.send("start", record(next(_pids), f"/tmp/replay-{next(_pids)}"))


@pytest.fixture
def stack(broker, start_service, run_env, rpc_client, factory, settings, subscribe, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "tmp.yml").write_text(TMP_RULE)
    env = {**run_env, "DAEMONEYE_DETECTOR__RULES_DIR": str(rules)}
    bus = Bus(subscribe("alerts."))
    procs: dict[str, Any] = {"env": env}
    for name in ("alerter", "detector"):
        procs[name] = start_service(name, env=env)
        wait_for(lambda n=name: healthy(rpc_client, f"control.{n}", procs[n].pid), 20, name)
    feeder = Feeder(factory, settings)
    data = Path(settings.data_dir)
    # subscriptions join late: fire until an alert is on our socket and in the sink
    wait_for(lambda: fire(feeder, 1) or (bus.pump() and sink_ids(data)), 20, "first alerts")
    return procs, feeder, bus, data


def test_alerts_sent_while_the_alerter_is_down_are_replayed_once(
    stack, start_service, rpc_client
) -> None:
    procs, feeder, bus, data = stack
    procs["alerter"].kill()
    before = len(bus.pump())
    fire(feeder, 25)
    wait_for(lambda: len(bus.pump()) >= before + 25, 20, "25 alerts while the alerter is down")
    alerter = start_service("alerter", env=procs["env"])
    wait_for(lambda: healthy(rpc_client, "control.alerter", alerter.pid), 20, "the alerter")
    fire(feeder, 2)  # the next alert shows the alerter the gap

    def settled() -> bool:
        return set(bus.pump()) <= set(sink_ids(data))

    wait_for(settled, 20, "every alert on the bus in the file sink")
    sink = sink_ids(data)
    assert max(bus.ids.values()) == 1
    assert not {a: n for a, n in sink.items() if n > 1}, "an alert written twice"
    assert set(sink) == set(bus.ids), "the sink holds exactly what the bus carried"
    metrics = rpc_client.call("control.alerter", "health").value["metrics"]
    assert metrics["alerts.replays"] >= 1 and metrics["alerts.replayed"] >= 25, metrics


def test_detector_replay_verb_answers_from_its_alert_log(stack, rpc_client) -> None:
    _procs, feeder, bus, _data = stack
    fire(feeder, 5)
    wait_for(lambda: len(bus.pump()) >= 6, 20, "six alerts")
    got = rpc_client.call(
        "control.detector", "replay", {"stream": "alerts.high", "from_seq": 1, "limit": 3}
    )
    assert got.value["topics"] == ["alerts.high"] * 3 and got.value["truncated"] is True
    assert got.value["first_seq"] == 1 and got.value["last_seq"] == 3
    assert got.value["wal_first_seq"] == 1 and got.value["wal_last_seq"] >= 6
    for seq, data in zip(range(1, 4), got.payloads, strict=True):
        if ("alerts.high", seq) in bus.raw:  # our subscription may have joined after seq 1
            assert data == bus.raw[("alerts.high", seq)], f"seq {seq} differs from the bus"
    for params, error in (
        ({"stream": "events.process", "from_seq": 1}, "alerts.<severity> stream"),
        ({"stream": "alerts.high.x", "from_seq": 1}, "alerts.<severity> stream"),
        ({"stream": "alerts.high", "from_seq": -1}, "from_seq must be a non-negative"),
    ):
        with pytest.raises(RpcError, match=error) as caught:
            rpc_client.call("control.detector", "replay", params)
        assert caught.value.code == "bad_request"
    empty = rpc_client.call("control.detector", "replay", {"stream": "alerts.low", "from_seq": 1})
    assert empty.value["topics"] == [] and empty.payloads == []


def test_a_restarted_detector_continues_its_alert_seqs(stack, start_service, rpc_client) -> None:
    procs, feeder, bus, data = stack
    bus.pump()
    last = max(bus.seqs)
    procs["detector"].kill()
    detector = start_service("detector", env=procs["env"])
    wait_for(lambda: healthy(rpc_client, "control.detector", detector.pid), 20, "the detector")
    count = len(bus.ids)
    wait_for(lambda: fire(feeder, 1) or len(bus.pump()) > count, 20, "an alert after restart")
    assert min(bus.seqs[-(len(bus.ids) - count) :]) > last, "a seq was used twice"
    wait_for(lambda: set(bus.pump()) <= set(sink_ids(data)), 20, "the alerter to deliver it")
    assert max(sink_ids(data).values()) == 1
