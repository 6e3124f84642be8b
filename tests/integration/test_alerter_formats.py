"""Sink formats end to end: one real alerter, alerts from the bus, a file sink writing
OCSF, another ECS, a syslog sink (UDP) carrying OCSF, a webhook posting ECS signed by
HMAC; every document validated against the published schemas."""

from __future__ import annotations

import hashlib
import hmac
import json

from tests.conftest import wait_for
from tests.integration.test_alerter_harness import (
    Feed,
    alert_body,
    file_lines,
    metric,
    start_alerter,
    wait_live,
)
from tests.integration.test_alerter_syslog import Listener, parse
from tests.integration.test_alerter_webhook import Hook
from tests.schemas.check import ecs_problems, ocsf_problems

N = 5
BOM = "\ufeff"


def test_ocsf_and_ecs_from_file_syslog_and_webhook_sinks(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    listener = Listener("udp")
    hook = Hook()
    ocsf_path, ecs_path = tmp_path / "alerts.ocsf.jsonl", tmp_path / "alerts.ecs.jsonl"
    toml = f"""
[alerter]
dedup_window_s = 0
[[alerter.sinks]]
kind = "file"
name = "lake"
path = "{ocsf_path}"
format = "ocsf"
[[alerter.sinks]]
kind = "file"
name = "elastic"
path = "{ecs_path}"
format = "ecs"
[[alerter.sinks]]
kind = "syslog"
name = "siem"
transport = "udp"
address = "{listener.address}"
format = "ocsf"
max_message_bytes = 65000
[[alerter.sinks]]
kind = "webhook"
name = "soc"
url = "http://127.0.0.1:{hook.port}/hook"
format = "ecs"
hmac_secret = "s3cret"
"""
    try:
        proc = start_alerter(start_service, run_env, tmp_path, toml)
        feed = Feed(factory, settings)
        wait_live(feed, rpc_client, proc)
        sent = [alert_body("r.formats", n, exe=f"/usr/bin/tool{n}") for n in range(N)]
        for body in sent:
            feed.alert(body)
        wait_for(lambda: len(file_lines(ocsf_path)) == N, 20, f"{N} OCSF lines")
        wait_for(lambda: len(file_lines(ecs_path)) == N, 20, f"{N} ECS lines")
        wait_for(lambda: len(listener.messages) >= N, 20, f"{N} syslog messages")
        wait_for(lambda: len(hook.posts) >= N, 20, f"{N} webhook posts")
        wait_for(lambda: metric(rpc_client, "sink.lake.pending") == 0, 10, "confirmations")

        findings = file_lines(ocsf_path)
        for doc in findings:
            assert ocsf_problems(doc) == [], doc
        assert [d["evidences"][0]["process"]["file"]["path"] for d in findings] == [
            f"/usr/bin/tool{n}" for n in range(N)
        ]
        assert {d["finding_info"]["uid"] for d in findings} == {b["alertId"] for b in sent}
        for doc in file_lines(ecs_path):
            assert ecs_problems(doc) == [], doc
            assert doc["rule"]["id"] == "r.formats" and doc["event"]["kind"] == "alert"
        for message in listener.messages[:N]:
            msg = parse(message)["msg"]
            assert msg.startswith(BOM)
            doc = json.loads(msg[len(BOM) :])
            assert ocsf_problems(doc) == [], doc
        for post in hook.posts[:N]:
            doc = json.loads(post["body"])
            assert ecs_problems(doc) == [], doc
            digest = hmac.new(b"s3cret", post["body"], hashlib.sha256).hexdigest()
            assert post["headers"]["X-DaemonEye-Signature"] == f"sha256={digest}"
    finally:
        listener.close()
        hook.close()
