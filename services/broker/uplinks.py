"""The broker's uplinks, as one: the CurveZMQ uplink to a central broker
(`broker.uplink`), the JetStream uplink (`broker.nats.enabled`), or both. The
forwarding loop asks `wants` once per frame and `offer`s what it forwarded."""

from __future__ import annotations

from typing import Any

from daemoneye.config import Settings

from .uplink import CurveUplink, QueuedUplink


class Uplinks:
    def __init__(self, members: list[QueuedUplink]) -> None:
        self.members = members
        self.prefixes = tuple({p for m in members for p in m.prefixes})

    def start(self) -> None:
        for member in self.members:
            member.start()

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def wants(self, topic: bytes) -> bool:
        return topic.startswith(self.prefixes)

    def offer(self, frames: list[tuple[bytes, bytes]]) -> None:
        for member in self.members:
            member.offer([f for f in frames if member.wants(f[0])])

    def pick(self, kind: str | None) -> list[QueuedUplink]:
        chosen = [m for m in self.members if not kind or m.kind == kind]
        if not chosen:
            kinds = ", ".join(m.kind for m in self.members)
            raise ValueError(f"no {kind} uplink is configured (configured: {kinds})")
        return chosen

    def status(self) -> dict[str, Any]:
        """The first uplink's figures at the top (as before there were two), and all."""
        listing = [m.status() for m in self.members]
        return {**listing[0], "uplinks": listing}

    def notes(self) -> list[str]:
        """A line per uplink that is down, for `daemoneye status` (heartbeat notes)."""
        return [
            f"{m.kind} uplink {m.stats.reason}: {m.stats.last_error} ({m.stats.queued} queued)"
            for m in self.members
            if m.stats.failures and not m.stats.link_up
        ]


def build_uplinks(settings: Settings, source_id: str) -> Uplinks | None:
    members: list[QueuedUplink] = []
    if settings.broker.uplink:
        members.append(CurveUplink(settings, source_id))
    if settings.broker.nats.enabled:
        from .nats_uplink import NatsUplink  # nats-py (~14 MB) only when it is used

        members.append(NatsUplink(settings, source_id))
    return Uplinks(members) if members else None
