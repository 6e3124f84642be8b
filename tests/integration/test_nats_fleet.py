"""`daemoneye fleet alerts` / `daemoneye alerts --from nats://...` against a real
nats-server holding two hosts' alerts, published as the `nats` sink publishes them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from daemoneye.jetstream import HOST_HEADER, JetStreamLink, Outgoing, subject_of
from daemoneye.settings.nats import NatsConnection
from tests.conftest import free_port, wait_for
from tests.integration.test_console_json import documented
from tests.nats_server import NatsServer


def daemoneye(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemoneye", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def record(host: str, n: int, severity: str) -> dict:
    return {
        "alertId": f"{host}-{n}",
        "ruleId": f"r.{severity}",
        "severity": severity,
        "title": f"alert {n} on {host}",
        "count": 1,
        "timeNs": time.time_ns(),
        "process": {"pid": 100 + n, "exePath": "/usr/bin/x"},
    }


@pytest.fixture
def fleet(tmp_path, run_env):
    server = NatsServer(tmp_path).start()
    cfg = NatsConnection(servers=[server.url])
    link = JetStreamLink(cfg, "publisher")
    link.start()
    wait_for(lambda: link.stats.link_up, 10, "the publisher's link")

    def publish(host: str, first: int, count: int) -> None:
        items = []
        for n in range(first, first + count):
            r = record(host, n, ("low", "high")[n % 2])
            subject = subject_of(cfg, host, f"alerts.{r['severity']}")
            items.append(
                Outgoing(subject, json.dumps(r).encode(), r["alertId"], {HOST_HEADER: host})
            )
        link.publish(items)

    publish("web1.example.com", 0, 6)
    publish("db1", 0, 4)
    env = {k: v for k, v in run_env.items() if not k.startswith("DAEMONEYE_CONFIG")}
    yield server, publish, env
    link.close()
    server.stop()


def lines(done: subprocess.CompletedProcess[str]) -> list[dict]:
    assert done.returncode == 0, done.stderr
    return [json.loads(x) for x in done.stdout.splitlines() if x.strip()]


def test_reads_every_host_and_filters(fleet) -> None:
    server, _publish, env = fleet
    rows = lines(daemoneye("fleet", "alerts", "--from", server.url, "--json", env=env))
    assert len(rows) == 10
    assert {r["host"] for r in rows} == {"web1.example.com", "db1"}
    assert [r["streamSeq"] for r in rows] == sorted(r["streamSeq"] for r in rows)  # oldest first
    assert all(isinstance(r["host"], str) and isinstance(r["streamSeq"], int) for r in rows)
    documented("daemoneye fleet", {"host": str, "streamSeq": int})

    web1 = lines(daemoneye("fleet", "alerts", "--from", server.url, "--host", "web1.example.com",
                           "--json", env=env))  # fmt: skip
    assert [r["alertId"] for r in web1] == [f"web1.example.com-{n}" for n in range(6)]
    high = lines(daemoneye("alerts", "--from", server.url, "--severity", "high", "--json", env=env))
    assert len(high) == 5 and {r["severity"] for r in high} == {"high"}
    newest = lines(daemoneye("alerts", "--from", server.url, "--limit", "3", "--json", env=env))
    assert [r["alertId"] for r in newest] == ["db1-1", "db1-2", "db1-3"]

    table = daemoneye("alerts", "--from", server.url, env=dict(env, COLUMNS="120"))
    assert table.returncode == 0, table.stderr
    assert "host" in table.stdout and "web1.example.com" in table.stdout
    assert "alert 3 on db1" in table.stdout


def test_a_durable_reader_sees_each_alert_once(fleet) -> None:
    server, publish, env = fleet
    first = lines(daemoneye("fleet", "alerts", "--from", server.url, "--durable", "soc",
                            "--limit", "7", "--json", env=env))  # fmt: skip
    assert len(first) == 7
    rest = lines(daemoneye("fleet", "alerts", "--from", server.url, "--durable", "soc",
                           "--json", env=env))  # fmt: skip
    assert len(rest) == 3
    publish("db1", 4, 2)
    new = lines(daemoneye("fleet", "alerts", "--from", server.url, "--durable", "soc",
                          "--json", env=env))  # fmt: skip
    assert [r["alertId"] for r in new] == ["db1-4", "db1-5"]
    seen = [r["alertId"] for r in first + rest + new]
    assert len(seen) == len(set(seen)) == 12


def test_an_unreachable_server_is_a_clear_error(run_env) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    env = dict(os.environ, **{k: v for k, v in run_env.items() if k.startswith("DAEMONEYE_")})
    done = daemoneye("fleet", "alerts", "--from", url, env=env)
    assert done.returncode == 1
    assert "cannot reach NATS" in done.stderr and url in done.stderr
    bad = daemoneye("fleet", "alerts", "--from", "http://x", env=env)
    assert bad.returncode == 2 and "nats://HOST:PORT" in bad.stderr


def test_follow_prints_alerts_as_they_arrive(fleet) -> None:
    server, publish, env = fleet
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemoneye", "fleet", "alerts", "--from", server.url,
         "--follow", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rows: list[dict] = []

    def read() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            rows.append(json.loads(text))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(rows) >= 10, 30, "the catch-up")
        publish("web2", 0, 3)
        wait_for(lambda: len(rows) >= 13, 30, "the new alerts, followed")
        assert [r["host"] for r in rows[10:]] == ["web2"] * 3
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130, proc.stderr.read() if proc.stderr else ""
