"""The alerter's `nats` sink against a real nats-server with JetStream: the server is
killed mid-run and restarted on the same port and store; every alert is stored once
(counted by alert id on a fresh consumer), delivery resumes without waiting for a
backoff, and a refused key reads differently from a server that is down."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from daemoneye.jetstream import HOST_HEADER, MSG_ID, host_token
from tests.conftest import wait_for
from tests.integration.test_alerter_harness import (
    Feed,
    alert_body,
    metric,
    start_alerter,
    wait_live,
)
from tests.nats_server import NatsServer, nkey_pair, stream_contents
from tests.schemas.check import ecs_problems, ocsf_problems
from tests.tls import self_signed_cert


def nats_toml(url: str, extra: str = "") -> str:
    return f"""
[alerter]
dedup_window_s = 0
[[alerter.sinks]]
kind = "nats"
name = "fleet"
servers = ["{url}"]
ack_timeout_s = 1.0
reconnect_wait_s = 0.2
backoff_initial_s = 0.05
backoff_max_s = 30.0
{extra}
"""


@pytest.fixture
def nats_server(tmp_path):
    root = tmp_path / "nats"
    root.mkdir()
    server = NatsServer(root).start()
    yield server
    server.stop()


def test_a_killed_server_loses_nothing_and_stores_nothing_twice(
    nats_server, broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    proc = start_alerter(start_service, run_env, tmp_path, nats_toml(nats_server.url))
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    total = 600
    sent: list[str] = []
    errors: list[BaseException] = []

    def produce() -> None:  # a steady stream that the kill cuts in the middle of
        try:
            for n in range(total):
                body = alert_body("r.fleet", n, severity=("high", "low")[n % 2])
                feed.alert(body)
                sent.append(body["alertId"])
                time.sleep(0.004)  # pacing the producer (~250/s), not synchronising
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_for(lambda: metric(rpc_client, "sink.fleet.delivered") >= 100, 30, "100 deliveries")
    nats_server.kill()  # mid-run: publishes in flight lose their acks
    killed = time.monotonic()
    # The outage lasts while 100 more alerts arrive and wait in the pending store.
    wait_for(lambda: metric(rpc_client, "sink.fleet.pending") >= 100, 30, "100 pending alerts")
    held = metric(rpc_client, "sink.fleet.pending")
    restarted = time.monotonic()
    down_for_s = restarted - killed
    nats_server.start()
    producer.join(60)
    assert not errors and len(sent) == total
    wait_for(lambda: metric(rpc_client, "sink.fleet.delivered") >= total, 60, "every delivery")
    drained_s = time.monotonic() - restarted
    assert metric(rpc_client, "sink.fleet.pending") == 0
    assert metric(rpc_client, "sink.fleet.dead") == 0

    messages = stream_contents(nats_server.url)
    per_id = Counter(m.headers[MSG_ID] for m in messages)
    assert set(per_id) == set(sent), "lost: " + str(sorted(set(sent) - set(per_id))[:5])
    twice = [i for i, n in per_id.items() if n > 1]
    assert not twice, f"stored twice: {twice[:5]}"
    assert len(messages) == total
    records = [json.loads(m.data) for m in messages]
    host = host_token(settings.hostname)
    assert {m.subject for m in messages} == {
        f"daemoneye.{host}.alerts.high",
        f"daemoneye.{host}.alerts.low",
    }
    assert all(r["alertId"] == m.headers[MSG_ID] for r, m in zip(records, messages, strict=True))
    assert all(m.headers[HOST_HEADER] == settings.hostname for m in messages)
    print(
        f"\n{total} alerts, server killed after >=100 and down {down_for_s:.1f} s with "
        f"{held:g} pending; all delivered {drained_s:.2f} s after the restart; "
        f"duplicates acked by the server: {metric(rpc_client, 'sink.fleet.nats.duplicates'):g}"
    )


def test_delivery_resumes_at_once_when_the_server_returns(
    nats_server, broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    """The sink's backoff has grown long (max 30 s); the reconnect ends it at once."""
    nats_server.kill()
    proc = start_alerter(start_service, run_env, tmp_path, nats_toml(nats_server.url))
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    feed.alert(alert_body("r.wait", 1))
    # After the 8th failure the next try is 0.05 * 2^7 = 6.4 s away (then 12.8 s, ...).
    wait_for(lambda: metric(rpc_client, "sink.fleet.failed_attempts") >= 8, 30, "a long backoff")
    restarted = time.monotonic()
    nats_server.start()
    wait_for(lambda: metric(rpc_client, "sink.fleet.delivered") == 1, 20, "the delivery")
    took = time.monotonic() - restarted
    assert took < 3.0, f"took {took:.2f} s after the server returned (the backoff: >= 6.4 s)"
    print(f"\ndelivered {took:.2f} s after the server returned")


def test_nkey_auth_over_tls_and_a_refused_key_is_told_apart(
    tmp_path, broker, start_service, run_env, factory, settings, rpc_client
) -> None:
    cert, key = self_signed_cert(tmp_path)
    seed, public = nkey_pair()
    server = NatsServer(
        tmp_path,
        f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n'
        f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n',
    ).start()
    try:
        good, bad = tmp_path / "good.nk", tmp_path / "bad.nk"
        good.write_text(seed + "\n")
        bad.write_text(nkey_pair()[0] + "\n")
        url = f"tls://127.0.0.1:{server.port}"
        toml = (
            nats_toml(url, f'nkey_seed_file = "{good}"\ntls_ca_file = "{cert}"')
            + f"""
[[alerter.sinks]]
kind = "nats"
name = "stranger"
servers = ["{url}"]
nkey_seed_file = "{bad}"
tls_ca_file = "{cert}"
backoff_initial_s = 0.05
"""
        )
        proc = start_alerter(start_service, run_env, tmp_path, toml)
        feed = Feed(factory, settings)
        wait_live(feed, rpc_client, proc)
        feed.alert(alert_body("r.tls", 1))
        wait_for(lambda: metric(rpc_client, "sink.fleet.delivered") == 1, 20, "the TLS delivery")

        def refused_note() -> str:
            h = rpc_client.call("control.alerter", "health", timeout_s=2).value
            notes = [n for n in h.get("notes", []) if n.startswith("sink stranger")]
            # the first try may find the link still connecting; then the refusal shows
            return next((n for n in notes if "refused our credentials" in n), "")

        assert wait_for(refused_note, 20, "the stranger's refusal in the sink notes")
        assert metric(rpc_client, "sink.stranger.delivered") == 0

        nc_opts = {"nkeys_seed": str(good), "tls": _client_tls(cert)}
        messages = stream_contents(url, **nc_opts)
        assert [json.loads(m.data)["ruleId"] for m in messages] == ["r.tls"]
    finally:
        server.stop()


def _client_tls(cert):
    import ssl

    return ssl.create_default_context(cafile=str(cert))


@pytest.mark.parametrize("fmt", ["ocsf", "ecs"])
def test_the_sink_publishes_ocsf_or_ecs_documents(
    fmt, nats_server, broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    """With `format`, what JetStream stores is the schema's document, valid against it,
    still one per alert (the message id is the alert's)."""
    toml = nats_toml(nats_server.url, f'format = "{fmt}"')
    proc = start_alerter(start_service, run_env, tmp_path, toml)
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    for i in range(3):
        feed.alert(alert_body(f"r.{fmt}", i))
    wait_for(lambda: metric(rpc_client, "sink.fleet.delivered") == 3, 20, "3 deliveries")
    stored = stream_contents(nats_server.url)
    assert len(stored) == 3
    assert len({m.headers[MSG_ID] for m in stored}) == 3
    problems = ocsf_problems if fmt == "ocsf" else ecs_problems
    for msg in stored:
        doc = json.loads(msg.data)
        assert not problems(doc), problems(doc)
        assert "ruleId" not in doc  # the schema's document, not our record
