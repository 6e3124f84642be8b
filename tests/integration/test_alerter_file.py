"""The file sink end to end: alerts from the bus become JSON lines; the file rotates."""

from __future__ import annotations

from tests.conftest import wait_for
from tests.integration.test_alerter_harness import (
    Feed,
    alert_body,
    call,
    file_lines,
    metric,
    start_alerter,
    wait_live,
)


def test_default_file_sink_writes_json_lines(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    proc = start_alerter(start_service, run_env, tmp_path, "[alerter]\n")
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    for n in range(5):
        feed.alert(alert_body("r.file", n, exe=f"/bin/x{n}"))
    path = settings.data_dir / "alerts.jsonl"
    wait_for(lambda: len(file_lines(path)) == 5, 15, "5 lines in alerts.jsonl")
    lines = file_lines(path)
    assert [r["process"]["exePath"] for r in lines] == [f"/bin/x{n}" for n in range(5)]
    assert all(r["ruleId"] == "r.file" and r["type"] == "alert" for r in lines)
    # the line is written before the delivery is confirmed in the store
    wait_for(lambda: metric(rpc_client, "sink.file.pending") == 0, 10, "confirmations")
    history = call(rpc_client, "alerts.list", {"rule": "r.file"})["alerts"]
    assert len(history) == 5
    assert all(r["deliveries"] == {"file": "delivered"} for r in history)


def test_file_sink_rotates_by_size(
    broker, start_service, run_env, tmp_path, factory, settings, rpc_client
) -> None:
    out = tmp_path / "rot" / "alerts.jsonl"
    toml = f"""
[alerter]
dedup_window_s = 0
[[alerter.sinks]]
kind = "file"
path = "{out}"
rotate_bytes = 4000
keep = 3
batch_size = 1
"""
    proc = start_alerter(start_service, run_env, tmp_path, toml)
    feed = Feed(factory, settings)
    wait_live(feed, rpc_client, proc)
    for n in range(20):
        feed.alert(alert_body("r.rot", n))

    def all_lines():
        files = [*(out.with_name(f"alerts.jsonl.{i}") for i in (3, 2, 1)), out]  # oldest first
        return [r for f in files for r in file_lines(f)]

    wait_for(lambda: metric(rpc_client, "sink.file.delivered") == 20, 15, "20 deliveries")
    kept = [r["process"]["pid"] - 1000 for r in all_lines()]
    assert kept == list(range(20 - len(kept), 20)) and len(kept) >= 8  # the newest, in order
    assert out.with_name("alerts.jsonl.1").exists()
    assert not out.with_name("alerts.jsonl.4").exists()  # keep = 3
    for f in [out, *(out.with_name(f"alerts.jsonl.{i}") for i in (1, 2, 3))]:
        if f.exists():
            assert f.stat().st_size <= 4000
    assert call(rpc_client, "health")["metrics"]["sink.file.file.rotations"] >= 2
