"""Sink formats end to end: one real alerter, alerts from the bus, a file sink writing
OCSF, another ECS, a syslog sink (UDP) carrying OCSF, a webhook posting ECS signed by
HMAC; every document validated against the published schemas."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys

import pytest

from daemoneye.rpc import RpcError
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


@pytest.mark.parametrize("fmt", ["ocsf", "ecs"])
def test_tap_prints_real_process_events_as_schema_documents(
    broker, start_service, run_env, rpc_client, fmt
) -> None:
    """`daemoneye tap events.process. --format ocsf|ecs` while real processes start and
    stop: every line a valid Process Activity (OCSF) or process event (ECS)."""
    start_service("collector", env={**run_env, "DAEMONEYE_COLLECTOR__SCAN_INTERVAL_S": "1"})
    wait_for(lambda: _answers(rpc_client), 30, "the collector to answer")
    tap = subprocess.Popen(
        [sys.executable, "-m", "daemoneye", "tap", "events.process.", "--format", fmt,
         "--count", "10", "--timeout", "60"],
        env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # processes until the tap has its messages (it may join after the first ones)
        wait_for(lambda: subprocess.run(["true"]).returncode == 0 and tap.poll() is not None,
                 60, "the tap to print 10 messages")  # fmt: skip
        out, err = tap.communicate(timeout=10)
    finally:
        if tap.poll() is None:
            tap.kill()
            tap.wait()
    assert tap.returncode == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) >= 10
    check = ocsf_problems if fmt == "ocsf" else ecs_problems
    for doc in docs:
        assert check(doc) == [], doc
    if fmt == "ocsf":
        assert {d["class_uid"] for d in docs} == {1007}
        assert any(d["activity_id"] == 1 and d["process"].get("name") == "true" for d in docs)
    else:
        assert any(d["event"]["type"] == ["start"] and d["process"].get("name") == "true"
                   for d in docs)  # fmt: skip


def _answers(rpc_client) -> bool:
    try:
        return bool(rpc_client.call("control.collector", "health", timeout_s=1).value)
    except RpcError:
        return False
