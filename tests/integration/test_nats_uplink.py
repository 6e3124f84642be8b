"""The broker's JetStream uplink against a real nats-server: audit records and
checkpoints leave as JSON on daemoneye.<host>.<topic>; the server is killed mid-run
and restarted on the same port and store; every frame is stored once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from daemoneye.config import ConfigError, load_settings
from daemoneye.jetstream import MSG_ID, TOPIC_HEADER, host_token
from tests.conftest import broker_with_clients, wait_for
from tests.integration.test_console_json import documented, shape
from tests.nats_server import NatsServer, stream_contents


@pytest.fixture
def nats_server(tmp_path):
    root = tmp_path / "nats"
    root.mkdir()
    server = NatsServer(root).start()
    yield server
    server.stop()


def test_audit_records_cross_a_killed_server_once_each(
    nats_server, start_service, run_env, monkeypatch
) -> None:
    env = dict(
        run_env,
        DAEMONEYE_BROKER__NATS__ENABLED="true",
        DAEMONEYE_BROKER__NATS__SERVERS=json.dumps([nats_server.url]),
        DAEMONEYE_BROKER__NATS__ACK_TIMEOUT_S="1",
        DAEMONEYE_BROKER__NATS__RECONNECT_WAIT_S="0.2",
        DAEMONEYE_BROKER__NATS__BATCH="50",
    )
    with broker_with_clients(start_service, env, monkeypatch, "ledger@edge") as edge_broker:
        settings, pub, rpc = edge_broker.settings, edge_broker.pub, edge_broker.rpc

        def uplink() -> dict:
            return rpc.call("control.broker", "uplink").value

        def probe() -> bool:  # the PUB joins late: publish until one frame is queued
            pub.publish("audit.probe", "auditRecord", {"actor": "t", "action": "probe"})
            return uplink()["delivered"] >= 1

        wait_for(probe, 20, "a probe through the NATS uplink")
        total = 400
        sent = threading.Event()

        def produce() -> None:
            for n in range(total):
                pub.publish(
                    "audit.ledger", "auditRecord",
                    {"actor": "ledger@edge", "action": "test.step", "subject": str(n)},
                )  # fmt: skip
                time.sleep(0.003)  # pacing the producer, not synchronising
            sent.set()

        producer = threading.Thread(target=produce)
        producer.start()
        wait_for(lambda: uplink()["delivered"] >= 100, 30, "100 frames delivered")
        nats_server.kill()
        status = wait_for(
            lambda: (s := uplink())["queued"] >= 50 and not s["link_up"] and s, 30, "a queue"
        )
        assert status["kind"] == "nats" and status["reason"] in ("down", "timeout"), status
        nats_server.start()
        producer.join(60)
        assert sent.is_set()
        wait_for(lambda: uplink()["queued"] == 0, 60, "the queue to drain")
        final = uplink()
        fields = {
            "kind": str, "target": str, "link_up": bool, "reason": str, "last_error": str,
            "queued": int, "delivered": int, "failures": int, "dropped_full": int,
            "paused": bool, "undecodable": int, "published": int, "duplicates": int,
            "reconnects": int,
        }  # fmt: skip
        shape(final["uplinks"][0], fields)
        documented("daemoneye uplink", fields)
        assert final["link_up"] and final["dropped_full"] == 0 and final["undecodable"] == 0

        messages = [m for m in stream_contents(nats_server.url) if "probe" not in m.subject]
        per_id = Counter(m.headers[MSG_ID] for m in messages)
        assert max(per_id.values()) == 1, [i for i, n in per_id.items() if n > 1][:5]
        subjects = {json.loads(m.data)["body"]["subject"] for m in messages}
        assert subjects == {str(n) for n in range(total)}, "lost: " + str(
            sorted({str(n) for n in range(total)} - subjects, key=int)[:10]
        )
        first = json.loads(messages[0].data)
        assert first["kind"] == "auditRecord" and first["sourceId"] == "ledger@edge"
        assert messages[0].subject == f"daemoneye.{host_token(settings.hostname)}.audit.ledger"
        assert messages[0].headers[TOPIC_HEADER] == "audit.ledger"
        print(
            f"\n{total} audit records, server killed after >=100 with {status['queued']} "
            f"queued; {len(messages)} stored, none twice; duplicates acked: "
            f"{final['duplicates']}"
        )


def test_alerts_are_refused_on_the_uplink_with_the_reason(monkeypatch) -> None:
    monkeypatch.setenv("DAEMONEYE_BROKER__NATS__TOPICS", '["audit.", "alerts."]')
    with pytest.raises(ConfigError, match="alerter's nats sink"):
        load_settings()
