"""At-least-once delivery across kill -9, dedup and rate limits under floods, malformed
frames, a failing sink beside a working one, and the `daemoneye alerts` verb."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

from tests.conftest import DAEMONEYE, wait_for
from tests.integration.test_alerter_harness import (
    Feed,
    alert_body,
    call,
    file_lines,
    metric,
    start_alerter,
    wait_live,
)
from tests.integration.test_alerter_webhook import Hook


def test_kill_9_with_pending_redelivers_and_never_resends_confirmed(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    hook = Hook()
    port = hook.port
    hook.close()  # the webhook is down: its deliveries stay pending
    out = tmp_path / "alerts.jsonl"
    toml = f"""
[alerter]
dedup_window_s = 0
[[alerter.sinks]]
kind = "file"
path = "{out}"
[[alerter.sinks]]
kind = "webhook"
name = "hook"
url = "http://127.0.0.1:{port}/"
retries = 0
backoff_initial_s = 0.05
backoff_max_s = 0.2
breaker_reset_s = 0.2
max_attempts = 1000
"""
    proc = start_alerter(start_service, run_env, tmp_path, toml)
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    for n in range(20):
        feed.alert(alert_body("r.crash", n, exe=f"/bin/c{n}"))
    wait_for(lambda: len(file_lines(out)) == 20, 30, "the file sink to confirm 20")
    wait_for(lambda: metric(rpc_client, "sink.hook.pending") == 20, 30, "20 pending webhooks")
    proc.kill()  # SIGKILL: no teardown, no flush

    hook = Hook(port=port)
    try:
        start_alerter(start_service, run_env, tmp_path, toml, name="again.toml")
        wait_for(lambda: len(hook.posts) >= 20, 30, "pending webhooks delivered after restart")
        exes = sorted(b["process"]["exePath"] for b in hook.bodies())
        assert exes == sorted(f"/bin/c{n}" for n in range(20))  # each exactly once
        wait_for(lambda: metric(rpc_client, "sink.hook.pending") == 0, 10, "nothing pending")
        lines = file_lines(out)
        assert len(lines) == 20  # the file had confirmed them: not one written again
        assert len({r["key"] for r in lines}) == 20
    finally:
        hook.close()


def test_identical_flood_is_one_delivery_plus_counted_repeats(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    out = tmp_path / "alerts.jsonl"
    toml = f"""
[alerter]
dedup_window_s = 3
[[alerter.sinks]]
kind = "file"
path = "{out}"
"""
    proc = start_alerter(start_service, run_env, tmp_path, toml)
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    body = alert_body("r.flood", 7)
    for _ in range(10_000):
        feed.alert(body)
    wait_for(lambda: metric(rpc_client, "alerts.deduplicated") == 9_999, 60, "9,999 repeats")
    wait_for(
        lambda: any(r["type"] == "repeat_summary" for r in file_lines(out)),
        15,
        "the summary at the end of the window",
    )
    lines = file_lines(out)
    alerts = [r for r in lines if r["type"] == "alert"]
    summaries = [r for r in lines if r["type"] == "repeat_summary"]
    assert len(alerts) == 1 and alerts[0]["count"] == 1
    assert len(summaries) == 1 and summaries[0]["count"] == 9_999
    assert summaries[0]["ruleId"] == "r.flood" and "repeated 9999 times" in summaries[0]["title"]


def test_distinct_flood_is_rate_limited_with_a_summary(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    out = tmp_path / "alerts.jsonl"
    toml = f"""
[alerter]
summary_interval_s = 0.5
rule_rate_limit = {{ rate = 5, burst = 20 }}
[[alerter.sinks]]
kind = "file"
path = "{out}"
"""
    proc = start_alerter(start_service, run_env, tmp_path, toml)
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    for n in range(500):
        feed.alert(alert_body("r.many", n, exe=f"/bin/m{n}"))

    def accounted() -> bool:
        lines = file_lines(out)
        delivered = sum(1 for r in lines if r["type"] == "alert")
        held = sum(r["count"] for r in lines if r["type"] == "rate_limit_summary")
        return delivered + held == 500

    wait_for(accounted, 30, "every alert delivered or counted in a summary")
    lines = file_lines(out)
    delivered = [r for r in lines if r["type"] == "alert"]
    assert 20 <= len(delivered) < 100  # the burst, plus a few tokens refilled meanwhile
    summary = next(r for r in lines if r["type"] == "rate_limit_summary")
    assert summary["heldByRule"]["r.many"] >= 1 and "rule rate limit" in summary["title"]
    assert metric(rpc_client, "alerts.rule_limited") == 500 - len(delivered)
    held = call(rpc_client, "alerts.list", {"rule": "r.many", "limit": 1000})["alerts"]
    assert sum(1 for r in held if r.get("heldBy") == ["rule"]) == 500 - len(delivered)


def test_a_trickle_is_read_and_written_in_windows(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    """Alerts arriving one at a time: the first goes at once, the rest are read and
    written a coalescing window at a time (the bus left to fill meanwhile), all of them
    delivered once."""
    out = tmp_path / "alerts.jsonl"
    toml = f"""
[alerter]
coalesce_s = 0.05
[[alerter.sinks]]
kind = "file"
path = "{out}"
"""
    proc = start_alerter(start_service, run_env, tmp_path, toml)
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    before = metric(rpc_client, "alerts.read_windows")
    count = 60
    for n in range(count):
        feed.alert(alert_body("r.trickle", n, exe=f"/bin/t{n}"))
        time.sleep(0.002)  # pacing the sender into a trickle, not synchronising
    wait_for(lambda: len(file_lines(out)) >= count, 30, "the trickle in the file")
    lines = file_lines(out)
    assert sorted(r["process"]["exePath"] for r in lines) == sorted(
        f"/bin/t{n}" for n in range(count)
    )
    windows = metric(rpc_client, "alerts.read_windows") - before
    assert 1 <= windows < count // 2, f"{windows} windows for {count} alerts"


def test_malformed_frames_are_dropped_and_counted(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    out = tmp_path / "alerts.jsonl"
    proc = start_alerter(
        start_service,
        run_env,
        tmp_path,
        f'[alerter]\n[[alerter.sinks]]\nkind = "file"\npath = "{out}"\n',
    )
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    # wait_live's probes are rejected too, and the last ones may still be on their way:
    # once an alert sent after them is in the file, they are all counted
    feed.alert(alert_body("r.first", 1))
    wait_for(lambda: len(file_lines(out)) == 1, 15, "an alert after the probes")
    rejected = metric(rpc_client, "alerts.rejected")
    # A coherent segment table around a garbage root pointer: the broker forwards it
    # (it checks shape only), the alerter's decoder refuses it.
    garbage = b"\x00\x00\x00\x00\x02\x00\x00\x00" + b"\xff" * 16
    feed.sock.send_multipart([b"alerts.high", garbage])
    feed.publisher.publish("alerts.high", "heartbeat", {"service": "not-an-alert"})
    bad = alert_body("r.bad", 1)
    bad["ruleId"] = ""
    feed.alert(bad)
    feed.alert(alert_body("r.good", 1))
    wait_for(lambda: len(file_lines(out)) == 2, 15, "the good alert after the bad ones")
    assert file_lines(out)[1]["ruleId"] == "r.good"
    wait_for(lambda: metric(rpc_client, "bus.dropped") >= 1, 5, "the undecodable frame counted")
    assert metric(rpc_client, "alerts.rejected") == rejected + 2
    assert proc.proc.poll() is None


def test_a_failing_sink_does_not_stop_the_others(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    good = tmp_path / "good.jsonl"
    blocked = tmp_path / "a-directory"
    blocked.mkdir()
    toml = f"""
[alerter]
dedup_window_s = 0
[[alerter.sinks]]
kind = "file"
name = "broken"
path = "{blocked}"
backoff_initial_s = 0.05
[[alerter.sinks]]
kind = "file"
name = "good"
path = "{good}"
"""
    proc = start_alerter(start_service, run_env, tmp_path, toml)
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    for n in range(10):
        feed.alert(alert_body("r.two", n, exe=f"/bin/t{n}"))
    wait_for(lambda: len(file_lines(good)) == 10, 15, "the good sink to get all 10")
    wait_for(lambda: metric(rpc_client, "sink.broken.failed_attempts") >= 1, 10, "failures")
    assert metric(rpc_client, "sink.broken.pending") == 10
    # a line is in the file (written, flushed) a moment before it is confirmed
    wait_for(lambda: metric(rpc_client, "sink.good.pending") == 0, 10, "good confirmed")


def test_console_alerts_verb(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client, cli
) -> None:
    proc = start_alerter(start_service, run_env, tmp_path, "[alerter]\ndedup_window_s = 0\n")
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    feed.alert(alert_body("r.low", 1, severity="low"))
    feed.alert(alert_body("r.crit", 2, severity="critical"))
    wait_for(lambda: metric(rpc_client, "sink.file.delivered") == 2, 15, "2 delivered")

    def alerts(*args: str) -> subprocess.CompletedProcess:
        return cli("alerts", *args, COLUMNS="250")

    result = alerts("--json", "--severity", "high", "--since", "10m")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["ruleId"] for r in rows] == ["r.crit"]
    assert rows[0]["deliveries"] == {"file": "delivered"}
    table = alerts()
    assert table.returncode == 0 and "r.low" in table.stdout and "r.crit" in table.stdout
    assert "file:delivered" in table.stdout
    failed = alerts("--failed")
    assert failed.returncode == 0 and "no dead-lettered deliveries" in failed.stdout
    retry = alerts("retry", "--json")
    assert retry.returncode == 0 and json.loads(retry.stdout)["retried"] == 0
    bad = alerts("retry", "--sink", "nope")
    assert bad.returncode == 1 and "no sink 'nope'" in bad.stderr
    assert alerts("--since", "yesterday").returncode == 2


def test_console_without_alerter_is_a_clear_error(broker, cli) -> None:
    result = cli("alerts")
    assert result.returncode == 1
    assert "control.alerter" in result.stderr


def test_console_follow_streams_new_alerts(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    proc = start_alerter(start_service, run_env, tmp_path, "[alerter]\ndedup_window_s = 0\n")
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    feed.alert(alert_body("r.before", 1))
    wait_for(lambda: metric(rpc_client, "sink.file.delivered") == 1, 15, "the first alert")
    follow = subprocess.Popen(
        [*DAEMONEYE, "alerts", "--follow", "--json"],
        env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    got: list[dict] = []
    reader = threading.Thread(
        target=lambda: [got.append(json.loads(line)) for line in follow.stdout], daemon=True
    )
    reader.start()
    try:
        wait_for(lambda: len(got) == 1, 20, "the history line")
        feed.alert(alert_body("r.after", 2))
        feed.alert(alert_body("r.after", 3, exe="/bin/z"))
        wait_for(lambda: len(got) == 3, 20, "the followed alerts")
        assert [r["ruleId"] for r in got] == ["r.before", "r.after", "r.after"]
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(15) == 130  # interrupted, as every verb reports Ctrl-C
