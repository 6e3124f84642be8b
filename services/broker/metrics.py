"""`/metrics` for Prometheus, served by the broker for every service on the bus.

A scrape reads the registry (the last heartbeat of each service, with its figures)
and the broker's own live counts, and turns them into metric families through
daemoneye.metrics (the names and their meaning). Nothing is computed per event: the
figures already exist, the scrape only reads them. The HTTP server is
prometheus_client's, in its own thread; it reads dicts the broker's loop replaces or
grows, copied in one C-level step each (safe under the GIL).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from daemoneye import wire
from daemoneye.metrics import BASE_LABELS, BY_FIGURE, PREFIX, Source, figures_of

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .service import Broker

# prometheus_client is imported where it is used: /metrics is off by default, and a
# broker that does not serve it should not carry its modules (~2 MB)

log = logging.getLogger("daemoneye.broker")


HEARTBEAT_FIELDS = ("service", "serviceId", "pid", "hostname", "state", "intervalMs", "uptimeS",
                    "eventsPerSec", "queueDepth", "rssBytes", "cpuPercent")  # fmt: skip


_read_fields = wire.dict_reader(wire.Heartbeat.schema, (*HEARTBEAT_FIELDS, "notes"))
_read_figures = wire.dict_reader(wire.Heartbeat.schema, ("metrics",))


class LazyMetrics:
    """A heartbeat's figures, decoded from its bytes when first read (a scrape, a
    `registry` listing), not on the forwarding path where the broker sees the heartbeat:
    a detector with a thousand rules sends four thousand figures (~40 ms to decode)."""

    __slots__ = ("_data", "_items")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._items: list[dict[str, Any]] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        items = self._items
        if items is None:  # two threads may both decode: same result, no harm
            hb = wire.decode_envelope(self._data).body.heartbeat
            items = self._items = _read_figures(hb)["metrics"]
        return iter(items)


def heartbeat_of(hb: Any, data: bytes) -> dict[str, Any]:
    """A heartbeat (Cap'n Proto reader) as the registry keeps it: its fields and notes
    read now, its figures (`metrics`) when asked for."""
    out = _read_fields(hb)
    out["metrics"] = LazyMetrics(data)
    return out


class Exporter:
    """A prometheus_client collector over the broker's state."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> list[Metric]:
        broker = self.broker
        now = time.monotonic()
        own: Source | None = None
        sources = []
        for entry in list(broker.registry.entries.values()):
            age = None if entry.last_heartbeat is None else now - entry.last_heartbeat
            source = Source(
                entry.service,
                entry.service_id,
                entry.hostname or str(entry.heartbeat.get("hostname", "")),
                entry.state == "healthy",
                age,
                entry.heartbeat,
            )
            sources.append(source)
            if entry.service_id == broker.service_id:
                own = source
        own = own or Source("broker", broker.service_id, broker.settings.hostname, True, None)
        return collect(sources, self._live(own))

    def _live(self, own: Source) -> list[tuple[Source, str, dict[str, str], float]]:
        """The broker's counts as of now: messages per stream (from the sources'
        heartbeats), drops per reason."""
        per_stream = dict(self.broker.streams.counts)
        live = [
            (own, "broker.stream_messages", {"stream": s}, float(n)) for s, n in per_stream.items()
        ]
        live += [
            (own, "broker.dropped", {"reason": reason}, float(n))
            for reason, n in dict(self.broker.dropped).items()
        ]
        return live


def collect(
    sources: Iterable[Source], live: Iterable[tuple[Source, str, dict[str, str], float]] = ()
) -> list[Metric]:
    """Metric families from every source's heartbeat, and `live` (source, figure, labels,
    value) figures read at scrape time; figures not in FAMILIES are left out."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families: dict[str, Metric] = {}
    now_s = time.time()

    def add(source: Source, figure: str, labels: dict[str, str], value: float) -> None:
        family = BY_FIGURE.get(figure)
        if family is None:
            return
        metric = families.get(family.name)
        if metric is None:
            cls = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = families[family.name] = cls(
                PREFIX + family.name, family.help, labels=(*BASE_LABELS, *family.labels)
            )
        values = [source.service, source.service_id, source.host]
        values += [labels.get(label, "") for label in family.labels]
        metric.add_metric(values, value)

    for source in sources:
        for figure, labels, value in figures_of(source, now_s):
            add(source, figure, labels, value)
    for source, figure, labels, value in live:
        add(source, figure, labels, value)
    return list(families.values())


class MetricsServer:
    """The HTTP endpoint; `start` says why not when the address cannot be bound."""

    def __init__(self, broker: Broker, address: tuple[str, int]) -> None:
        from prometheus_client import CollectorRegistry

        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Exporter(broker))  # type: ignore[arg-type]
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        from prometheus_client import start_http_server

        host, port = self.address
        try:
            self._server, self._thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            return f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}"
        log.info("serving /metrics", extra={"address": f"{host}:{self.port}"})
        return ""

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the kernel's pick for port 0)."""
        return self._server.server_port if self._server is not None else 0

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
