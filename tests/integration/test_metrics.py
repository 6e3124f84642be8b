"""`/metrics`: the broker serves Prometheus figures for every service; scraped over HTTP
and parsed with prometheus_client's own parser, after real processes ran."""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from daemoneye.bus import wait_for_endpoint
from daemoneye.metrics import FAMILIES
from daemoneye.rpc import RpcClient, RpcError
from tests.conftest import free_port, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "METRICS.md"
MARKER = "daemoneye-metrics-probe"
RULE = f"""\
id: metrics-probe
name: The metrics probe ran
severity: high
description: A process whose command line carries the metrics probe's marker.
sql: SELECT pid, name, path, cmdline FROM processes WHERE cmdline LIKE '%{MARKER}%'
enabled: true
"""
SPAWNED = 12

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[Samples, set[str]]:
    """Every sample of the endpoint, by (name, labels); and the family names."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples: Samples = {}
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, names


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample of `name` whose labels include `labels` (None if none)."""
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
    return found[0] if found else None


def healthy(rpc_client: RpcClient, service: str) -> bool:
    try:
        return bool(rpc_client.call(f"control.{service}", "health", timeout_s=1).value)
    except RpcError:
        return False


def test_scrape_counts_real_processes_per_stream_rule_and_sink(
    start_service: Callable[..., Any],
    run_env: dict[str, str],
    rpc_client: RpcClient,
    tmp_path: Path,
) -> None:
    port = free_port()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "probe.yaml").write_text(RULE)
    env = {
        **run_env,
        "DAEMONEYE_METRICS__LISTEN": f"127.0.0.1:{port}",
        "DAEMONEYE_DETECTOR__RULES_DIR": str(rules),
        "DAEMONEYE_COLLECTOR__SCAN_INTERVAL_S": "1",
        # one delivery per matching process (not one per incident): deliveries are counted
        "DAEMONEYE_ALERTER__INCIDENT_WINDOW_S": "0",
    }
    broker = start_service("broker", env=env)
    control = f"ipc://{env['DAEMONEYE_RUN_DIR']}/control"
    assert wait_for_endpoint(control, 15), broker.log()
    services = ("collector", "detector", "alerter", "ledger")
    for service in services:
        start_service(service, env=env)
        wait_for(lambda s=service: healthy(rpc_client, s), 30, f"the {service} to answer")

    def all_up() -> Samples | None:
        samples, _ = scrape(port)
        ups = {dict(ls)["service"]: v for (n, ls), v in samples.items() if n == "daemoneye_up"}
        return samples if ups == dict.fromkeys(("broker", *services), 1.0) else None

    before = wait_for(all_up, 30, "every service up in /metrics")
    started_before = value(before, "daemoneye_collector_events_total", kind="start") or 0
    stream_before = value(before, "daemoneye_bus_messages_total", stream="events.process") or 0

    procs = [subprocess.Popen(["sh", "-c", "sleep 2", f"{MARKER}-{i}"]) for i in range(SPAWNED)]
    for p in procs:
        p.wait()

    def counted() -> Samples | None:
        samples, _ = scrape(port)
        delivered = value(samples, "daemoneye_sink_delivered_total", sink="file") or 0
        matches = value(samples, "daemoneye_rule_matches_total", rule="metrics-probe") or 0
        return samples if delivered >= SPAWNED and matches >= SPAWNED else None

    after = wait_for(counted, 60, f"{SPAWNED} matches and deliveries in /metrics")
    samples, names = scrape(port)

    # events per stream and per kind grew by at least the processes spawned
    started = value(after, "daemoneye_collector_events_total", kind="start")
    assert started is not None and started - started_before >= SPAWNED
    stream = value(after, "daemoneye_bus_messages_total", stream="events.process")
    assert stream is not None and stream > stream_before
    # per rule: runs, matches and CPU of the probe rule
    assert value(after, "daemoneye_rule_runs_total", rule="metrics-probe") >= 1
    assert value(after, "daemoneye_rule_matches_total", rule="metrics-probe") >= SPAWNED
    assert value(after, "daemoneye_rule_cpu_seconds_total", rule="metrics-probe") > 0
    assert value(after, "daemoneye_rule_enabled", rule="metrics-probe") == 1
    # per sink: each distinct alert handed to the file sink and delivered, none dead
    assert value(after, "daemoneye_sink_alerts_total", sink="file") >= SPAWNED
    assert value(after, "daemoneye_sink_dead_letters", sink="file") == 0
    alerts_file = Path(run_env["DAEMONEYE_DATA_DIR"]) / "alerts.jsonl"
    assert alerts_file.read_text().count(MARKER) >= SPAWNED
    # per stream at the subscribers: no gaps, no drops (and the series exist at zero)
    assert (
        value(after, "daemoneye_bus_gaps_total", service="detector", stream="events.process") == 0
    )
    assert (
        value(after, "daemoneye_bus_dropped_total", service="detector", stream="events.process")
        == 0
    )
    assert value(after, "daemoneye_bus_replays_total", service="ledger", stream="alerts.high") == 0
    # the ledger: its size and how old its last checkpoint is
    assert value(after, "daemoneye_ledger_entries") > SPAWNED
    age = value(samples, "daemoneye_ledger_checkpoint_age_seconds")
    assert age is not None and 0 <= age < 60
    # every family scraped is one of ours and documented
    documented = set(re.findall(r"`(daemoneye_[a-z_]+)`", DOCS.read_text()))
    ours = {f.exposed.removesuffix("_total") for f in FAMILIES}
    assert names <= ours, names - ours
    assert {f.exposed for f in FAMILIES} <= documented


def test_off_by_default(
    start_service: Callable[..., Any], run_env: dict[str, str], rpc_client: RpcClient
) -> None:
    broker = start_service("broker", env=run_env)
    wait_for(lambda: healthy(rpc_client, "broker"), 20, "the broker")
    assert "serving /metrics" not in broker.log()


def test_a_port_in_use_is_said_and_the_broker_keeps_running(
    start_service: Callable[..., Any], run_env: dict[str, str], rpc_client: RpcClient
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**run_env, "DAEMONEYE_METRICS__LISTEN": f"127.0.0.1:{port}"}
        start_service("broker", env=env)
        wait_for(lambda: healthy(rpc_client, "broker"), 20, "the broker")
        notes = rpc_client.call("control.broker", "health").value["notes"]
    assert any(f"metrics: cannot listen on 127.0.0.1:{port}" in n for n in notes), notes
