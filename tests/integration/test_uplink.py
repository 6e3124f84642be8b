"""Multi-host: an edge broker forwards chosen topics to a central broker over tcp://
with CurveZMQ, queueing on disk while the link is down, losing nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from daemoneye.bus import Publisher, SocketFactory, Subscriber, wait_for_endpoint
from daemoneye.rpc import RpcClient
from daemoneye.security import generate_keypair
from tests.conftest import broker_with_clients, free_port, settings_of, wait_for


def listening(endpoint: str) -> bool:
    port = int(endpoint.rsplit(":", 1)[1])
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def hosts(run_env, tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    generate_keypair(keys, "broker")
    generate_keypair(keys, "edge")
    (keys / "authorized").mkdir()
    (keys / "authorized" / "edge.key").write_bytes((keys / "edge.key").read_bytes())
    central = dict(
        run_env,
        DAEMONEYE_RUN_DIR=f"{run_env['DAEMONEYE_RUN_DIR']}-central",
        DAEMONEYE_DATA_DIR=str(tmp_path / "central-data"),
        DAEMONEYE_BUS__KEYS_DIR=str(keys),
        DAEMONEYE_BUS__CLIENT_KEY="edge",
    )
    for name in ("EVENTS_IN", "EVENTS_OUT", "CONTROL"):
        central[f"DAEMONEYE_BUS__{name}"] = f"tcp://127.0.0.1:{free_port()}"
    edge = dict(
        run_env,
        DAEMONEYE_BROKER__UPLINK=central["DAEMONEYE_BUS__CONTROL"],
        DAEMONEYE_BROKER__UPLINK_TIMEOUT_S="1",
        DAEMONEYE_HOSTNAME="edge1",  # another host: its services are broker@edge1, ...
        DAEMONEYE_BUS__KEYS_DIR=str(keys),
        DAEMONEYE_BUS__CLIENT_KEY="edge",
    )
    return central, edge


def test_link_cut_and_restore_loses_nothing(start_service, hosts, monkeypatch) -> None:
    central_env, edge_env = hosts
    central = start_service("broker", env=central_env)
    edge = start_service("broker", env=edge_env)
    cs = settings_of(central_env, monkeypatch)
    es = settings_of(edge_env, monkeypatch)
    wait_for(lambda: listening(cs.endpoint("control")), 20, "the central broker")
    assert wait_for_endpoint(es.endpoint("control"), 20), edge.log()

    central_factory = SocketFactory(cs, zmq.Context())
    edge_factory = SocketFactory(es, zmq.Context())
    try:
        central_sub = Subscriber(
            central_factory.connect(zmq.SUB, cs.endpoint("events-out")), ["alerts."], 1 << 20
        )
        central_pub = Publisher(central_factory.connect(zmq.PUB, cs.endpoint("events-in")), "p")
        edge_pub = Publisher(edge_factory.connect(zmq.PUB, es.endpoint("events-in")), "det-e")
        edge_rpc = RpcClient(edge_factory, es.endpoint("control"), "test", 3.0)

        def probe_through(pub: Publisher) -> bool:
            pub.publish("alerts.probe", "empty")
            msg = central_sub.recv(100)
            return msg is not None and msg.topic == "alerts.probe"

        wait_for(lambda: probe_through(edge_pub), 20, "a probe through the uplink")
        seqs: list[int] = []

        def receive(until: int) -> None:
            while len(seqs) < until:
                msg = central_sub.recv(15_000)
                assert msg is not None, f"only {len(seqs)} of {until} alerts reached the center"
                if msg.topic == "alerts.high":
                    seqs.append(msg.envelope.seq)

        for i in range(200):
            edge_pub.publish("alerts.high", "alert", {"ruleId": f"r{i}", "severity": "high"})
        receive(200)
        # The edge's heartbeats travel too: its broker is listed in the center's status.
        center_rpc = RpcClient(central_factory, cs.endpoint("control"), "test-c", 3.0)
        wait_for(
            lambda: any(
                r["service_id"] == "broker@edge1"
                for r in center_rpc.call("control.broker", "registry").value
            ),
            15,
            "the edge broker in the center's registry",
        )

        central.stop()  # the link is cut
        for i in range(200, 500):
            edge_pub.publish("alerts.high", "alert", {"ruleId": f"r{i}", "severity": "high"})

        def queued_while_down():
            status = edge_rpc.call("control.broker", "uplink").value
            return status if status["queued"] >= 300 and not status["link_up"] else None

        status = wait_for(queued_while_down, 30, "the edge to queue while the link is down")
        assert status["failures"] >= 1

        # Hold delivery until our own subscriber is back on the restarted center (it is a
        # late joiner there); the uplink itself needs no help.
        edge_rpc.call("control.broker", "uplink", {"action": "pause"})
        start_service("broker", env=central_env)
        wait_for(lambda: probe_through(central_pub), 20, "the restarted center")
        edge_rpc.call("control.broker", "uplink", {"action": "resume"})
        receive(500)
        assert sorted(set(seqs)) == list(range(seqs[0], seqs[0] + 500))
        status = edge_rpc.call("control.broker", "uplink").value
        wait_for(
            lambda: edge_rpc.call("control.broker", "uplink").value["queued"] == 0,
            10,
            "the queue to drain",
        )
        assert status["dropped_full"] == 0
    finally:
        central_factory.close_all(linger_ms=0)
        edge_factory.close_all(linger_ms=0)


def test_the_queue_survives_an_edge_restart(start_service, hosts, monkeypatch) -> None:
    """Frames queued while the center is unreachable are still delivered after the edge
    broker itself restarts: the queue is on disk."""
    central_env, edge_env = hosts
    with broker_with_clients(start_service, edge_env, monkeypatch, "det-e") as edge_broker:
        edge, es, pub, rpc, factory = (
            edge_broker.proc,
            edge_broker.settings,
            edge_broker.pub,
            edge_broker.rpc,
            edge_broker.factory,
        )

        def queued() -> int:
            pub.publish("alerts.low", "alert", {"ruleId": "x", "severity": "low"})
            return rpc.call("control.broker", "uplink").value["queued"] >= 50

        wait_for(queued, 30, "50 queued frames")
        before = rpc.call("control.broker", "uplink").value["queued"]
        edge.stop()
        edge = start_service("broker", env=edge_env)
        assert wait_for_endpoint(es.endpoint("control"), 20), edge.log()
        rpc = RpcClient(factory, es.endpoint("control"), "test2", 3.0)
        after = wait_for(lambda: rpc.call("control.broker", "uplink").value, 10, "status")
        assert after["queued"] >= before

        central = start_service("broker", env=central_env)
        cs = settings_of(central_env, monkeypatch)
        wait_for(lambda: listening(cs.endpoint("control")), 20, "the central broker")
        wait_for(
            lambda: rpc.call("control.broker", "uplink").value["queued"] == 0,
            30,
            "the queue to drain into the center",
        )
        assert central.proc.poll() is None


def test_ingest_rejects_a_malformed_batch(broker, rpc_client) -> None:
    result = rpc_client.call(
        "control.broker",
        "ingest",
        {"topics": ["alerts.x", "alerts.y"]},
        payloads=[b"garbage!", b"\x00" * 16],
    )
    assert result.value == {"accepted": 0, "dropped": 2}
    with pytest.raises(Exception, match="one topic per payload"):
        rpc_client.call("control.broker", "ingest", {"topics": []}, payloads=[b"x"])


def test_no_uplink_configured_is_a_clear_error(broker, rpc_client, run_env) -> None:
    with pytest.raises(Exception, match="no uplink is configured"):
        rpc_client.call("control.broker", "uplink")
    done = cli(run_env, "uplink")
    assert done.returncode == 1 and "no uplink is configured" in done.stderr


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemoneye", *args],
        env=dict(env, COLUMNS="200"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_refused_key_is_told_apart_from_a_center_that_is_down(
    start_service, hosts, tmp_path, monkeypatch
) -> None:
    """The edge's status says `refused` (and why) when the center refuses its key,
    `down` when no center answers; the center counts the refusal."""
    central_env, edge_env = hosts
    stranger_keys = tmp_path / "stranger-keys"
    generate_keypair(stranger_keys, "stranger")  # a pair the center never admitted
    (stranger_keys / "broker.key").write_bytes(
        (Path(central_env["DAEMONEYE_BUS__KEYS_DIR"]) / "broker.key").read_bytes()
    )
    edge_env = dict(
        edge_env,
        DAEMONEYE_BUS__KEYS_DIR=str(stranger_keys),
        DAEMONEYE_BUS__CLIENT_KEY="stranger",
    )
    with broker_with_clients(start_service, edge_env, monkeypatch, "det-e") as edge_broker:
        pub, rpc = edge_broker.pub, edge_broker.rpc

        def state() -> dict:
            pub.publish("alerts.low", "alert", {"ruleId": "x", "severity": "low"})
            return rpc.call("control.broker", "uplink").value

        down = wait_for(lambda: (s := state())["failures"] and s, 30, "a failure, center down")
        assert down["reason"] == "down" and "does not answer" in down["last_error"], down

        central = start_service("broker", env=central_env)
        cs = settings_of(central_env, monkeypatch)
        wait_for(lambda: listening(cs.endpoint("control")), 20, "the central broker")
        refused = wait_for(
            lambda: (s := state())["reason"] == "refused" and s, 30, "the refusal to be told"
        )
        assert "stranger.key is not in the center's authorized dir" in refused["last_error"]
        assert refused["delivered"] == 0 and not refused["link_up"]
        # What an operator on the edge reads: `daemoneye uplink`, `status` notes.
        shown = cli(edge_env, "uplink")
        assert shown.returncode == 0, shown.stderr
        assert "refused" in shown.stdout and "stranger.key" in shown.stdout, shown.stdout
        wait_for(
            lambda: "curve uplink refused" in cli(edge_env, "status").stdout,
            10,
            "the refusal in the broker's status notes",
        )
        center_rpc = RpcClient(SocketFactory(cs, zmq.Context()), cs.endpoint("control"), "c", 3)
        assert center_rpc.call("control.broker", "stats").value["auth_refused"] >= 1
        assert central.proc.poll() is None


def test_delivery_resumes_as_soon_as_the_center_returns(start_service, hosts, monkeypatch) -> None:
    """After failures the backoff is long (0.5 s doubling to 30 s); a successful
    handshake with the returning center ends it at once."""
    central_env, edge_env = hosts
    edge_env = dict(edge_env, DAEMONEYE_BUS__RECONNECT_IVL_MAX_MS="200")
    with broker_with_clients(start_service, edge_env, monkeypatch, "det-e") as edge_broker:
        pub, rpc = edge_broker.pub, edge_broker.rpc

        def failures() -> int:
            pub.publish("alerts.low", "alert", {"ruleId": "x", "severity": "low"})
            return rpc.call("control.broker", "uplink").value["failures"]

        # After the 6th failure the next try is 0.5 * 2^5 = 16 s away.
        wait_for(lambda: failures() >= 6, 60, "six failed deliveries")
        central = start_service("broker", env=central_env)
        cs = settings_of(central_env, monkeypatch)
        wait_for(lambda: listening(cs.endpoint("control")), 20, "the central broker")
        back = time.monotonic()
        wait_for(
            lambda: rpc.call("control.broker", "uplink").value["queued"] == 0,
            30,
            "the queue to drain",
        )
        took = time.monotonic() - back
        assert took < 4.0, f"drained {took:.1f} s after the center returned (backoff: 16 s)"
        assert central.proc.poll() is None
        print(f"\nqueue drained {took:.2f} s after the center listened")
