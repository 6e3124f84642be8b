"""The webhook sink against a real HTTP(S) server on 127.0.0.1: retries on 500, the
circuit breaker while the server is down, dead letters and `retry`, TLS verification."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import wait_for
from tests.integration.test_alerter_harness import (
    Feed,
    alert_body,
    call,
    metric,
    start_alerter,
    wait_live,
)
from tests.tls import self_signed_cert


class Hook:
    """A real HTTP server that records POSTs and answers from a script of statuses."""

    def __init__(self, port: int = 0, statuses: list[int] | None = None, tls: Path | None = None):
        self.posts: list[dict] = []
        self.answers: list[int] = []
        self.statuses = list(statuses or [])
        self.default = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = hook.statuses.pop(0) if hook.statuses else hook.default
                hook.answers.append(status)
                if 200 <= status < 300:
                    hook.posts.append({"headers": dict(self.headers), "body": body})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls / "cert.pem", tls / "cert-key.pem")
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict]:
        return [json.loads(p["body"]) for p in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def webhook_toml(url: str, extra: str = "") -> str:
    return f"""
[alerter]
dedup_window_s = 0
[[alerter.sinks]]
kind = "webhook"
name = "hook"
url = "{url}"
token = "s3cret-token"
hmac_secret = "k3y"
backoff_initial_s = 0.05
backoff_max_s = 0.2
{extra}
"""


def test_webhook_retries_a_500_then_succeeds(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    hook = Hook(statuses=[500, 500])
    try:
        proc = start_alerter(
            start_service,
            run_env,
            tmp_path,
            webhook_toml(f"http://127.0.0.1:{hook.port}/in?x=1", "retries = 3"),
        )
        feed = Feed(factory, settings)
        wait_live(feed, rpc_client, proc)
        feed.alert(alert_body("r.hook", 1))
        wait_for(lambda: len(hook.posts) == 1, 15, "the webhook POST to succeed")
        assert hook.answers[:3] == [500, 500, 200]
        post = hook.posts[0]
        assert post["headers"]["Authorization"] == "Bearer s3cret-token"
        assert post["headers"]["Content-Type"] == "application/json"
        digest = hmac.new(b"k3y", post["body"], hashlib.sha256).hexdigest()
        assert post["headers"]["X-DaemonEye-Signature"] == f"sha256={digest}"
        record = json.loads(post["body"])
        assert record["ruleId"] == "r.hook" and post["headers"]["Idempotency-Key"] == str(
            record["key"]
        )
        wait_for(lambda: metric(rpc_client, "sink.hook.pending") == 0, 10, "pending to clear")
        assert metric(rpc_client, "sink.hook.delivered") == 1
    finally:
        hook.close()


def test_breaker_opens_while_down_then_pending_alerts_are_delivered(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    hook = Hook()
    port = hook.port
    hook.close()  # the endpoint is down; the port is ours to reuse below
    extra = "retries = 0\nbreaker_failures = 2\nbreaker_reset_s = 0.3\nmax_attempts = 1000"
    proc = start_alerter(
        start_service, run_env, tmp_path, webhook_toml(f"http://127.0.0.1:{port}/", extra)
    )
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    for n in range(5):
        feed.alert(alert_body("r.down", n, exe=f"/bin/d{n}"))
    wait_for(lambda: metric(rpc_client, "sink.hook.breaker_open") == 1, 15, "breaker to open")
    wait_for(lambda: metric(rpc_client, "sink.hook.pending") == 5, 10, "5 pending")
    states = [r["deliveries"]["hook"] for r in call(rpc_client, "alerts.list")["alerts"]]
    assert states == ["pending"] * 5
    status = call(rpc_client, "health")
    assert status["state"] == "degraded"
    assert any(n.startswith("sink hook: circuit") for n in status["notes"]), status["notes"]
    hook = Hook(port=port)
    try:
        wait_for(lambda: len(hook.posts) >= 5, 20, "pending alerts delivered after recovery")
        exes = sorted(b["process"]["exePath"] for b in hook.bodies())
        assert exes == [f"/bin/d{n}" for n in range(5)]  # each once, none lost
        wait_for(lambda: metric(rpc_client, "sink.hook.breaker_open") == 0, 10, "breaker closed")
        assert metric(rpc_client, "sink.hook.pending") == 0
        assert metric(rpc_client, "sink.hook.dead") == 0
        assert call(rpc_client, "health")["state"] == "running"
    finally:
        hook.close()


def test_refused_alerts_go_dead_letter_and_retry_delivers_them(
    broker,
    start_service,
    run_env,
    tmp_path,
    factory,
    settings,
    rpc_client,
    subscribe,
) -> None:
    audits = subscribe("audit.alerter")
    hook = Hook()
    hook.default = 400  # a permanent refusal: no retries, straight to dead letters
    try:
        proc = start_alerter(
            start_service, run_env, tmp_path, webhook_toml(f"http://127.0.0.1:{hook.port}/")
        )
        feed = Feed(factory, settings)
        wait_live(feed, rpc_client, proc)
        feed.alert(alert_body("r.dead", 1))
        feed.alert(alert_body("r.dead", 2, exe="/bin/other"))
        wait_for(
            lambda: len(call(rpc_client, "alerts.failed")["failed"]) == 2, 15, "2 dead letters"
        )
        failed = call(rpc_client, "alerts.failed")["failed"]
        assert {f["sink"] for f in failed} == {"hook"}
        assert all("HTTP 400" in f["error"] and f["attempts"] == 1 for f in failed)
        assert hook.answers == [400, 400]
        hook.default = 200
        assert call(rpc_client, "alerts.retry", {"sink": "hook"})["retried"] == 2
        wait_for(lambda: len(hook.posts) == 2, 15, "retried alerts delivered")
        assert call(rpc_client, "alerts.failed")["failed"] == []
        seen: dict[str, list] = {}

        def audited() -> bool:
            while (m := audits.recv(50)) is not None:
                rec = m.body
                seen.setdefault(rec.action, []).append((rec.subject, json.loads(rec.detailJson)))
            delivered = sum(d["count"] for _, d in seen.get("alert.delivered", []))
            return delivered == 2

        wait_for(audited, 10, "audit records of the deliveries")
        assert [s for s, _ in seen["alert.dead_letter"]] == ["hook", "hook"]
        assert all("HTTP 400" in d["error"] for _, d in seen["alert.delivery_failed"])
        assert seen["alert.retry"][0][1]["moved"] == 2
    finally:
        hook.close()


def test_https_verifies_certificates_by_default(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    tls = tmp_path / "tls"
    self_signed_cert(tls)
    hook = Hook(tls=tls)
    try:
        url = f"https://127.0.0.1:{hook.port}/"
        toml = (
            webhook_toml(url)
            + f"""
[[alerter.sinks]]
kind = "webhook"
name = "trusting"
url = "{url}"
ca_file = "{tls / "cert.pem"}"
"""
        )
        proc = start_alerter(start_service, run_env, tmp_path, toml)
        feed = Feed(factory, settings)
        wait_live(feed, rpc_client, proc)
        feed.alert(alert_body("r.tls", 1))
        wait_for(
            lambda: len(call(rpc_client, "alerts.failed")["failed"]) == 1,
            15,
            "the self-signed server to be refused",
        )
        failed = call(rpc_client, "alerts.failed")["failed"][0]
        assert failed["sink"] == "hook" and "certificate verify failed" in failed["error"]
        wait_for(lambda: len(hook.posts) == 1, 15, "the sink trusting the CA to deliver")
        assert hook.posts[0]["headers"].get("Authorization") is None  # no token on that sink
    finally:
        hook.close()
