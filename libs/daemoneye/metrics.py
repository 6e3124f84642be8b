"""Prometheus names for the figures services already put in their heartbeats.

The design: the broker serves `/metrics` for every service on the bus (`metrics.listen`).
It reads every heartbeat anyway (to track health), and each heartbeat carries its
service's figures (the `metrics` list), so exporting costs nothing per event: a scrape
turns the latest heartbeat of each registered service into metric families, plus the
broker's own per-stream counts read live. One address per host (and, on a central
broker, one for every edge whose heartbeats its uplink brings, told apart by `host`);
figures are as of each service's last heartbeat (`heartbeat_interval_s`, 5 s).

A heartbeat figure carries labels in its name, `rule.runs{rule=exec-from-tmp}` (see
`labelled`); two older shapes put the label in a dotted position and are read by
pattern: `sink.<name>.<figure>` (the alerter) and `published.<kind>` (the collector).
Only the families in FAMILIES are exported, each documented in docs/METRICS.md (a
test keeps the two in step); other heartbeat figures stay in `daemoneye status`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

PREFIX = "daemoneye_"
BASE_LABELS = ("service", "service_id", "host")
_SAFE = "-_.:/@"  # label values keep these as they are; the rest is %-escaped
_LABELLED = re.compile(r"^([^{}]+)\{(.*)\}$")
_LEGACY = (
    re.compile(
        r"^sink\.(?P<sink>[A-Za-z0-9_.\-]+)\."
        r"(?P<figure>pending|queued|delivered|failed_attempts|dead|overflows|breaker_open|alerts)$"
    ),
    re.compile(r"^(?P<figure>published)\.(?P<kind>[a-z]+)$"),
)


def labelled(figure: str, **labels: str) -> str:
    """A heartbeat figure's name with labels: `figure{key=value,...}`."""
    inner = ",".join(f"{k}={quote(str(v), safe=_SAFE)}" for k, v in labels.items())
    return f"{figure}{{{inner}}}"


def parse(name: str) -> tuple[str, dict[str, str]]:
    """(figure, labels) of a heartbeat figure's name."""
    m = _LABELLED.match(name)
    if m:
        labels = {}
        for part in m.group(2).split(","):
            key, sep, value = part.partition("=")
            if sep:
                labels[key] = unquote(value)
        return m.group(1), labels
    for pattern in _LEGACY:
        m = pattern.match(name)
        if m:
            labels = m.groupdict()
            figure = labels.pop("figure")
            return (f"sink.{figure}" if "sink" in labels else figure), labels
    return name, {}


@dataclass(frozen=True)
class Family:
    name: str  # without the prefix, and for a counter without `_total`
    kind: str  # counter or gauge
    help: str
    figure: str  # the heartbeat figure it is read from
    labels: tuple[str, ...] = ()  # beyond service, service_id and host

    @property
    def exposed(self) -> str:
        """The name as scraped (a counter's samples end in `_total`)."""
        return PREFIX + self.name + ("_total" if self.kind == "counter" else "")


def _c(name: str, figure: str, help: str, *labels: str) -> Family:
    return Family(name, "counter", help, figure, labels)


def _g(name: str, figure: str, help: str, *labels: str) -> Family:
    return Family(name, "gauge", help, figure, labels)


# Heartbeat fields every service sends (figures named `hb.<field>`).
SERVICE_FAMILIES = (
    _g("up", "hb.up", "1 while the broker counts the service healthy, 0 when it missed heartbeats"),
    _g("heartbeat_age_seconds", "hb.age", "seconds since the service's last heartbeat"),
    _g("uptime_seconds", "hb.uptimeS", "seconds since the service started"),
    _g("resident_memory_bytes", "hb.rssBytes", "resident set size of the service's process"),
    _g("cpu_percent", "hb.cpuPercent", "CPU use of the service over its last heartbeat interval"),
    _g("queue_depth", "hb.queueDepth", "work waiting inside the service"),
)

FAMILIES: tuple[Family, ...] = (
    *SERVICE_FAMILIES,
    # the broker, live
    _c("bus_messages", "broker.stream_messages",
       "bus messages published per stream (a topic's first two labels), from heartbeats",
       "stream"),
    _c("broker_dropped_frames", "broker.dropped",
       "frames the broker dropped, by reason (malformed, rpc)", "reason"),
    _c("rpc_routed", "rpc.routed", "RPC requests the broker routed to a service"),
    _c("rpc_unroutable", "rpc.unroutable", "RPC requests with no live target"),
    _c("auth_refused", "auth.refused", "CurveZMQ clients the broker refused"),
    # every subscriber (detector, alerter, ledger), per stream
    _c("bus_received", "bus.received", "bus messages a service accepted"),
    _c("bus_dropped", "bus.stream.dropped",
       "messages a service dropped as malformed or oversize, per stream", "stream"),
    _c("bus_gaps", "bus.stream.gaps", "sequence gaps a service detected, per stream", "stream"),
    _c("bus_missing", "bus.stream.missing",
       "messages the gaps held (seqs missed), per stream", "stream"),
    _c("bus_replays", "bus.stream.replays", "gaps a service asked the source to replay, per stream",
       "stream"),
    _c("bus_replayed", "bus.stream.replayed", "messages delivered by replays, per stream",
       "stream"),
    _c("bus_replay_missing", "bus.stream.replay_missing",
       "missed messages no replay could supply (lost), per stream", "stream"),
    # the collector
    _c("collector_events", "published", "process events the collector published, by kind",
       "kind"),
    _c("collector_lost", "collector.lost",
       "process events lost, each counted once by its kernel number (overruns and spool "
       "drops alike)"),
    _c("collector_lost_events", "lost_events",
       "netlink socket overruns (ENOBUFS) the kernel reported; one overrun can lose many "
       "events"),
    _c("collector_spool_dropped_frames", "spool.dropped_frames",
       "frames the netlink reader's spool dropped (oldest first) while no main read it"),
    _c("collector_argv_lost", "argv.lost",
       "execs whose process had exited before the reader read its argv, by why: "
       "late_wake (it came while the reader slept: the kernel, or the host's vCPU, ran "
       "the reader too late), busy (the reader was at work on earlier events)", "why"),
    _g("collector_processes", "processes", "processes the collector tracks"),
    _c("collector_scans", "scans", "/proc rescans done"),
    _g("collector_wal_bytes", "wal.bytes", "bytes in the collector's write-ahead log"),
    _c("collector_wal_cuts", "wal.cuts", "torn or corrupt WAL tails cut at start"),
    _c("collector_wal_write_errors", "wal.write_errors", "failed WAL appends"),
    _c("collector_netlink_messages", "netlink.received", "netlink process-connector messages read"),
    # the detector, per rule
    _c("detector_events", "detector.events", "process events applied to the live tables"),
    _c("detector_alerts", "detector.alerts", "alerts the detector published"),
    _g("detector_rules", "detector.rules", "rules enabled and running"),
    _g("detector_rules_disabled", "detector.rules_disabled", "rules disabled at run time"),
    _c("rule_runs", "rule.runs", "times a rule's SQL ran", "rule"),
    _c("rule_matches", "rule.matches", "new matching rows of a rule (each fires once)", "rule"),
    _c("rule_cpu_seconds", "rule.seconds", "time a rule's SQL took to run, summed", "rule"),
    _g("rule_enabled", "rule.enabled", "1 while a rule runs, 0 when disabled", "rule"),
    # the alerter, per rule and per sink
    _c("alerts_received", "alerts.received", "alerts the alerter read from the bus"),
    _c("alerts_accepted", "alerts.accepted", "alerts past dedup (stored for delivery)"),
    _c("rule_suppressed", "rule.suppressed",
       "alerts of a rule held back: a repeat within the dedup window (reason dedup) or over "
       "the rule's rate limit (reason rate_limit)", "rule", "reason"),
    _c("sink_alerts", "sink.alerts", "alerts handed to a sink for delivery", "sink"),
    _c("sink_delivered", "sink.delivered", "alerts a sink confirmed delivered", "sink"),
    _c("sink_failed_attempts", "sink.failed_attempts", "delivery attempts that failed", "sink"),
    _c("sink_rate_limited", "sink.rate_limited", "alerts held back by a sink's rate limit",
       "sink"),
    _c("sink_overflows", "sink.overflows", "alerts left in the store when a sink's queue was full",
       "sink"),
    _g("sink_pending", "sink.pending", "alerts stored pending for a sink", "sink"),
    _g("sink_queued", "sink.queued", "alerts in a sink's in-memory queue", "sink"),
    _g("sink_dead_letters", "sink.dead", "dead-lettered deliveries of a sink", "sink"),
    _g("sink_circuit_open", "sink.breaker_open", "1 while a sink's circuit breaker is open",
       "sink"),
    # the ledger
    _g("ledger_entries", "ledger.size", "entries in the ledger"),
    _g("ledger_durable_entries", "ledger.durable", "entries written durably"),
    _c("ledger_appended", "ledger.appended", "entries this run appended"),
    _c("ledger_checkpoints", "ledger.checkpoints", "checkpoints this run signed"),
    _c("ledger_write_errors", "ledger.write_errors", "failed ledger writes"),
    _g("ledger_checkpoint_entries", "ledger.checkpoint_size", "tree size of the last checkpoint"),
    _g("ledger_checkpoint_timestamp_seconds", "ledger.checkpoint_time",
       "when the last checkpoint was signed (Unix time)"),
    _g("ledger_checkpoint_age_seconds", "ledger.checkpoint_age",
       "seconds since the last checkpoint was signed, as of the scrape"),
)  # fmt: skip

BY_FIGURE: dict[str, Family] = {f.figure: f for f in FAMILIES}


@dataclass
class Source:
    """One service as the broker's registry knows it."""

    service: str
    service_id: str
    host: str
    healthy: bool
    heartbeat_age_s: float | None
    heartbeat: Mapping[str, Any] = field(default_factory=dict)


def figures_of(source: Source, now_s: float) -> Iterator[tuple[str, dict[str, str], float]]:
    """(figure, labels, value) of one service: its heartbeat's fields and figures."""
    hb = source.heartbeat
    yield "hb.up", {}, 1.0 if source.healthy else 0.0
    if source.heartbeat_age_s is not None:
        yield "hb.age", {}, source.heartbeat_age_s
    for name in ("uptimeS", "rssBytes", "cpuPercent", "queueDepth"):
        if name in hb:
            yield f"hb.{name}", {}, float(hb[name])
    for metric in hb.get("metrics", []):
        figure, labels = parse(str(metric.get("name", "")))
        value = float(metric.get("value", 0.0))
        yield figure, labels, value
        if figure == "ledger.checkpoint_time" and value > 0:
            yield "ledger.checkpoint_age", {}, max(0.0, now_s - value)


# --- what services add to their heartbeats -------------------------------------------


def stream_figures(subscriber: Any, replayer: Any = None) -> dict[str, float]:
    """Per-stream drops, gaps and replays of a service's Subscriber (and Replayer): every
    stream it checks, at zero until something happens."""
    stats = subscriber.stats
    streams = set(subscriber.tracker.streams()) | set(stats.dropped_by_stream)
    by_stream = replayer.by_stream if replayer is not None else {}
    streams |= set(by_stream)
    out: dict[str, float] = {}
    for stream in sorted(streams):
        replays, replayed, lost = by_stream.get(stream, (0, 0, 0))
        for figure, value in (
            ("bus.stream.dropped", stats.dropped_by_stream.get(stream, 0)),
            ("bus.stream.gaps", stats.gaps_by_stream.get(stream, 0)),
            ("bus.stream.missing", stats.missing_by_stream.get(stream, 0)),
            ("bus.stream.replays", replays),
            ("bus.stream.replayed", replayed),
            ("bus.stream.replay_missing", lost),
        ):
            out[labelled(figure, stream=stream)] = value
    return out


def rule_figures(actives: Iterable[Any]) -> dict[str, float]:
    """Runs, matches, CPU time and state per rule (the engine's `Active` records), for
    each rule that has run or was disabled: a rule the pre-filter always skips adds
    nothing to every heartbeat (each figure costs ~70 bytes in it and ~10 us to check
    at every subscriber)."""
    out: dict[str, float] = {}
    for active in actives:
        if not active.runs and not active.disabled:
            continue
        rule = active.rule.id
        out[labelled("rule.runs", rule=rule)] = active.runs
        out[labelled("rule.matches", rule=rule)] = active.matches
        out[labelled("rule.seconds", rule=rule)] = active.seconds
        out[labelled("rule.enabled", rule=rule)] = float(
            active.rule.enabled and not active.disabled
        )
    return out
