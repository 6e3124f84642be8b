"""The Prometheus names (daemoneye.metrics) and their export by the broker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemoneye.bus import SequenceTracker
from daemoneye.metrics import FAMILIES, Source, labelled, parse, stream_figures
from daemoneye.services.broker.metrics import collect


def test_labelled_names_round_trip_with_awkward_values() -> None:
    name = labelled("rule.runs", rule="a,b}c=d%e{f", reason="dedup")
    assert parse(name) == ("rule.runs", {"rule": "a,b}c=d%e{f", "reason": "dedup"})
    assert parse(labelled("bus.stream.gaps", stream="events.process")) == (
        "bus.stream.gaps",
        {"stream": "events.process"},
    )


def test_older_dotted_names_are_read_by_pattern() -> None:
    assert parse("sink.soc.v2.delivered") == ("sink.delivered", {"sink": "soc.v2"})
    assert parse("sink.file.file.rotations") == ("sink.file.file.rotations", {})  # not exported
    assert parse("published.start") == ("published", {"kind": "start"})
    assert parse("bus.received") == ("bus.received", {})


def test_names_are_unique_and_valid() -> None:
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    assert len({f.figure for f in FAMILIES}) == len(FAMILIES)
    assert all(f.kind in ("counter", "gauge") for f in FAMILIES)


class _Sub:
    def __init__(self, tracker: SequenceTracker) -> None:
        self.tracker = tracker
        self.stats = tracker.stats


def test_a_gap_is_counted_on_its_stream_only() -> None:
    tracker = SequenceTracker(["events.process.", "alerts."])
    for seq in (1, 2, 5):  # 3 and 4 missed
        tracker.check("events.process.start", "collector@h", "boot", seq)
    tracker.check("alerts.high", "detector@h", "boot", 1)
    figures = stream_figures(_Sub(tracker))
    assert figures[labelled("bus.stream.gaps", stream="events.process")] == 1
    assert figures[labelled("bus.stream.missing", stream="events.process")] == 2
    assert figures[labelled("bus.stream.gaps", stream="alerts.high")] == 0


def test_export_parses_with_prometheus_own_parser() -> None:
    hb = {
        "rssBytes": 1000,
        "metrics": [
            {"name": "published.start", "value": 7.0},
            {"name": labelled("rule.matches", rule="r1"), "value": 3.0},
            {"name": "sink.file.delivered", "value": 2.0},
            {"name": "ledger.checkpoint_time", "value": 1.0},
            {"name": "not.exported", "value": 9.0},
        ],
    }
    source = Source("detector", "detector@h", "h", True, 0.5, hb)

    class Once:
        def collect(self):
            return collect([source])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Once())
    text = generate_latest(registry).decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    base = (("host", "h"), ("service", "detector"), ("service_id", "detector@h"))
    assert got[("daemoneye_collector_events_total", tuple(sorted((*base, ("kind", "start")))))] == 7
    assert got[("daemoneye_rule_matches_total", tuple(sorted((*base, ("rule", "r1")))))] == 3
    assert got[("daemoneye_sink_delivered_total", tuple(sorted((*base, ("sink", "file")))))] == 2
    assert (
        got[("daemoneye_up", base)] == 1 and got[("daemoneye_resident_memory_bytes", base)] == 1000
    )
    assert got[("daemoneye_ledger_checkpoint_age_seconds", base)] > 1e9  # signed in 1970
    assert not any("not_exported" in name for name, _ in got)


def test_the_grafana_dashboard_uses_only_exported_names() -> None:
    import json
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "daemoneye.json"
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\b(daemoneye_[a-z_]+)", e)}
    exported = {f.exposed for f in FAMILIES}
    assert used and used <= exported, used - exported
    # the per-stream, per-rule and per-sink families the issue names all have a panel
    wanted = (
        "bus_messages_total",
        "bus_gaps_total",
        "rule_cpu_seconds_total",
        "rule_suppressed_total",
        "sink_delivered_total",
        "ledger_checkpoint_age_seconds",
    )
    for name in wanted:
        assert f"daemoneye_{name}" in used


def test_the_broker_reads_a_heartbeat_as_before_its_figures_decoded_on_demand() -> None:
    import zmq

    from daemoneye import wire
    from daemoneye.bus import Publisher
    from daemoneye.services.broker.metrics import heartbeat_of

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    try:
        body = {
            "service": "detector",
            "serviceId": "detector@h",
            "hostname": "h",
            "pid": 7,
            "state": "running",
            "intervalMs": 5000,
            "cpuPercent": 1.5,
            "notes": ["a note"],
            "metrics": [{"name": labelled("rule.runs", rule="r"), "value": 3.0}],
        }
        _, data = Publisher(sock, "detector@h").encode("control.health.x", "heartbeat", body)
        hb = wire.decode_envelope(data).body.heartbeat
        full, lazy = hb.to_dict(), heartbeat_of(hb, data)
        assert {k: lazy[k] for k in full if k not in ("metrics", "streams")} == {
            k: v for k, v in full.items() if k not in ("metrics", "streams")
        }
        assert list(lazy["metrics"]) == full["metrics"] == list(lazy["metrics"])
    finally:
        sock.close(0)
        ctx.term()
