"""The broker's uplink to NATS JetStream: chosen bus topics (audit records, ledger
checkpoints, process events when asked) published on `<prefix>.<host>.<topic>`.

Frames wait in the uplink's disk queue (uplink.QueuedUplink) and leave it only once
JetStream acknowledged them. The bus carries Cap'n Proto; what leaves for NATS is
JSON, what the operator's other consumers read: the envelope's header (source,
boot id, seq, send time), the body's kind and the body. The message id is
`<source>:<boot id>:<topic>:<seq>`, the same on every retry, so JetStream stores a
frame once however often a lost ack makes us send it. A frame that does not decode
(the broker forwards without decoding) is dropped from the queue and counted.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from daemoneye import wire
from daemoneye.config import Settings
from daemoneye.jetstream import (
    HOST_HEADER,
    TOPIC_HEADER,
    JetStreamError,
    JetStreamLink,
    Outgoing,
    subject_of,
)

from .uplink import LINK_POLL_S, LinkDown, QueuedUplink

log = logging.getLogger("daemoneye.broker.uplink")

try:
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value, default=str)
except ImportError:  # pragma: no cover - orjson is a dependency; json does the same
    import json

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), default=str).encode()


def as_json(topic: str, data: bytes, hostname: str) -> tuple[bytes, str]:
    """(JSON of one bus frame, its message id); wire.DecodeError if it does not decode."""
    envelope = wire.decode_envelope(data)
    kind = wire.body_kind(envelope)
    body = wire.body_of(envelope)
    record = {
        "topic": topic,
        "host": hostname,
        "sourceId": envelope.sourceId,
        "bootId": envelope.bootId,
        "seq": envelope.seq,
        "sentNs": envelope.sentNs,
        "kind": kind,
        "body": wire.to_dict(body) if body is not None and hasattr(body, "to_dict") else None,
    }
    msg_id = f"{envelope.sourceId}:{envelope.bootId}:{topic}:{envelope.seq}"
    return _dumps(record), msg_id


class NatsUplink(QueuedUplink):
    kind = "nats"

    def __init__(self, settings: Settings, source_id: str) -> None:
        cfg = settings.broker.nats
        super().__init__(
            settings,
            source_id,
            target=", ".join(cfg.servers),
            topics=cfg.topics,
            queue_dir=settings.data_dir / "broker-uplink-nats",
            queue_max=cfg.queue_max,
            batch=cfg.batch,
        )
        self.cfg = cfg
        self.hostname = settings.hostname
        self.undecodable = 0
        self._back = threading.Event()
        self.link = JetStreamLink(cfg, f"daemoneye-broker@{self.hostname}", self._back.set)

    def open(self) -> None:
        self.link.start()

    def deliver(self, topics: list[bytes], payloads: list[bytes]) -> None:
        items: list[Outgoing] = []
        for raw_topic, data in zip(topics, payloads, strict=True):
            topic = raw_topic.decode(errors="replace")
            try:
                payload, msg_id = as_json(topic, data, self.hostname)
            except wire.DecodeError as exc:
                self.undecodable += 1
                log.warning("nats uplink: dropped an undecodable frame on %s: %s", topic, exc)
                continue
            headers = {HOST_HEADER: self.hostname, TOPIC_HEADER: topic}
            items.append(
                Outgoing(subject_of(self.cfg, self.hostname, topic), payload, msg_id, headers)
            )
        try:
            self.link.publish(items, self._stop)
        except JetStreamError as exc:
            self._back.clear()  # from here on, a (re)connection ends the backoff
            raise LinkDown(str(exc), exc.reason) from None

    def wait_for_link(self, timeout_s: float) -> bool:
        """The backoff, ended at once by a (re)connection since the failure."""
        waited = 0.0
        while waited < timeout_s and not self._stop.is_set():
            step = min(LINK_POLL_S, timeout_s - waited)
            if self._back.wait(step):
                return True
            waited += step
        return False

    def status(self) -> dict[str, Any]:
        return {**super().status(), "undecodable": self.undecodable, **self._link_figures()}

    def _link_figures(self) -> dict[str, Any]:
        s = self.link.stats
        return {"published": s.published, "duplicates": s.duplicates, "reconnects": s.reconnects}

    def shut(self) -> None:
        self.link.close()
