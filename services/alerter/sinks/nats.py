"""NATS sink: each alert published to JetStream on `<prefix>.<host>.alerts.<severity>`,
counted delivered only once JetStream acknowledged it.

The client runs on the link's own event-loop thread (daemoneye.jetstream); this
sink's worker thread waits for the acks of its batch, the alerter's loop never does.
The message id (`Nats-Msg-Id`) is the alert's id, the same on every retry, so an
alert sent again after a lost ack is stored once. When the link comes back the
worker is woken at once rather than at its next backoff.
"""

from __future__ import annotations

from daemoneye.jetstream import (
    HOST_HEADER,
    JetStreamError,
    JetStreamLink,
    Outgoing,
    subject_of,
)

from .base import Delivery, Sink, SinkError


class NatsSink(Sink):
    kind = "nats"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        # A missing creds, seed or certificate file raises ConfigError: the alerter does
        # not start, and says which file.
        self.link = JetStreamLink(
            self.config, f"daemoneye-alerter-{self.name}@{self.hostname}", self._link_up
        )
        self.link.start()

    def _link_up(self) -> None:
        """Called on the link's thread when a connection is made or remade."""
        if self.on_link_up is not None:
            self.on_link_up()

    def outgoing(self, item: Delivery) -> Outgoing:
        record = item.record
        severity = record.get("severity") or "info"
        msg_id = item.alert_id or record.get("alertId") or f"{self.hostname}-{item.key}"
        return Outgoing(
            subject_of(self.config, self.hostname, f"alerts.{severity}"),
            self.body(item),  # our JSON, or OCSF / ECS (`format`)
            str(msg_id),
            {HOST_HEADER: self.hostname},
        )

    def send(self, batch: list[Delivery]) -> None:
        try:
            self.link.publish([self.outgoing(d) for d in batch], self.stop)
        except JetStreamError as exc:
            raise SinkError(f"NATS: {exc}", retryable=exc.retryable, done=exc.done) from None

    def close(self) -> None:
        self.link.close()

    def metrics(self) -> dict[str, float]:
        s = self.link.stats
        return {
            "published": s.published,
            "duplicates": s.duplicates,
            "failures": s.failures,
            "reconnects": s.reconnects,
            "link_up": float(s.link_up),
        }
