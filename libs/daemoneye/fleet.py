"""Reading a fleet's alerts back from JetStream (what `daemoneye fleet alerts` and
`daemoneye alerts --from nats://...` print).

Two ways to read, both pull consumers on `<prefix>.<host|*>.alerts.>`:
- ephemeral (the default): no state on the server; reads from `since` (or the
  stream's start) to the end and keeps the newest `limit`, like `daemoneye alerts`.
- durable (`durable=NAME`): the server remembers what this reader acknowledged, so
  each run prints only what is new, in order, at least once; an alert is acked
  after it was handed on. A durable keeps the filter it was created with.
With `follow` both go on printing alerts as they arrive.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from daemoneye.jetstream import HOST_HEADER, JetStreamError, classify, connect_options, describe
from daemoneye.jetstream import host_token as _host_token
from daemoneye.settings.nats import NatsConnection

SEVERITY_ORDER = ("info", "low", "medium", "high", "critical")
FETCH_BATCH = 256
FOLLOW_WAIT_S = 1.0
CONNECT_ATTEMPTS = 2  # a reader that cannot reach the server says so, it does not wait


@dataclass
class FleetAlert:
    host: str
    subject: str
    stream_seq: int
    record: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "streamSeq": self.stream_seq, **self.record}


@dataclass
class Query:
    host: str = ""  # "" for every host
    since_ns: int = 0
    severity: str = "info"
    rule: str = ""
    limit: int = 50
    durable: str = ""
    follow: bool = False

    def subject(self, cfg: NatsConnection) -> str:
        host = _host_token(self.host) if self.host else "*"
        return f"{cfg.subject_prefix}.{host}.alerts.>"

    def wants(self, alert: FleetAlert) -> bool:
        r = alert.record
        rank = SEVERITY_ORDER.index(r["severity"]) if r.get("severity") in SEVERITY_ORDER else 0
        if rank < SEVERITY_ORDER.index(self.severity):
            return False
        return not self.rule or r.get("ruleId") == self.rule


def alert_of(msg: Any) -> FleetAlert | None:
    """A stored message as a fleet alert; None when it is not an alert record."""
    try:
        record = json.loads(msg.data)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    tokens = msg.subject.split(".")
    host = (msg.headers or {}).get(HOST_HEADER) or (tokens[-3] if len(tokens) >= 3 else "")
    return FleetAlert(host, msg.subject, msg.metadata.sequence.stream, record)


async def read(cfg: NatsConnection, query: Query, emit: Callable[[list[FleetAlert]], None]) -> int:
    """Read per `query`, calling `emit` with the catch-up (oldest first), then with each
    batch that arrives while following; return how many alerts were emitted."""
    options = connect_options(cfg, "daemoneye-fleet")
    options["max_reconnect_attempts"] = 60 if query.follow else CONNECT_ATTEMPTS
    try:
        nc = await nats.connect(**options, error_cb=_quiet)
    except Exception as exc:
        raise JetStreamError(
            f"cannot reach NATS {', '.join(cfg.servers)}: {describe(exc)}", classify(exc)
        ) from None
    try:
        return await _read(nc.jetstream(timeout=cfg.ack_timeout_s), cfg, query, emit)
    except nats.js.errors.NotFoundError as exc:
        raise JetStreamError(f"no stream {cfg.stream} on the server ({exc})", "no_stream") from None
    except nats.errors.NoRespondersError:
        raise JetStreamError(
            "nothing answers JetStream requests on this NATS server (JetStream enabled?)",
            "no_stream",
        ) from None
    finally:
        await nc.close()


async def _quiet(exc: Exception) -> None:
    """nats-py reports connection errors here too; the caller reports the final one."""


async def _read(
    js: Any, cfg: NatsConnection, query: Query, emit: Callable[[list[FleetAlert]], None]
) -> int:
    config = api.ConsumerConfig(
        # ALL: acknowledging a batch's last message acknowledges the batch
        ack_policy=api.AckPolicy.ALL if query.durable else api.AckPolicy.NONE,
        max_ack_pending=-1,
    )
    if query.since_ns:
        config.deliver_policy = api.DeliverPolicy.BY_START_TIME
        config.opt_start_time = datetime.datetime.fromtimestamp(query.since_ns / 1e9, datetime.UTC)
    sub = await js.pull_subscribe(
        query.subject(cfg), durable=query.durable or None, stream=cfg.stream, config=config
    )
    pending = (await sub.consumer_info()).num_pending
    emitted = 0
    if query.durable:
        # What is new since this reader's last run, oldest first, `limit` at most; each
        # batch acknowledged once handed on (what was not printed stays for next time).
        taken = 0
        while pending > 0 and taken < query.limit:
            msgs = await _fetch(sub, min(FETCH_BATCH, query.limit - taken))
            if not msgs:
                break
            taken += len(msgs)
            emitted += _emit(msgs, query, emit)
            await _ack(msgs)
            pending = msgs[-1].metadata.num_pending
    else:
        # The newest `limit` matching alerts from `since` (or the stream's start).
        kept: deque[FleetAlert] = deque(maxlen=query.limit)
        while pending > 0:
            msgs = await _fetch(sub, FETCH_BATCH)
            if not msgs:
                break
            kept.extend(a for a in map(alert_of, msgs) if a is not None and query.wants(a))
            pending = msgs[-1].metadata.num_pending
        if kept:
            emit(list(kept))
            emitted += len(kept)
    while query.follow:
        msgs = await _fetch(sub, FETCH_BATCH)
        emitted += _emit(msgs, query, emit)
        if query.durable:
            await _ack(msgs)
    return emitted


async def _fetch(sub: Any, count: int) -> list[Any]:
    try:
        return await sub.fetch(count, timeout=FOLLOW_WAIT_S)
    except nats.errors.TimeoutError:
        return []


def _emit(msgs: list[Any], query: Query, emit: Callable[[list[FleetAlert]], None]) -> int:
    fresh = [a for a in map(alert_of, msgs) if a is not None and query.wants(a)]
    if fresh:
        emit(fresh)
    return len(fresh)


async def _ack(msgs: list[Any]) -> None:
    """The batch acknowledged (its last message, AckPolicy.ALL) and the server's
    confirmation awaited: a reader stopped right after does not see it again."""
    if msgs:
        await msgs[-1].ack_sync()


def run(cfg: NatsConnection, query: Query, emit: Callable[[list[FleetAlert]], None]) -> int:
    """The synchronous entry point (the console has no event loop of its own)."""
    return asyncio.run(read(cfg, query, emit))
