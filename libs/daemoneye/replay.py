"""Replay: fetching a stream's missed messages from their source, and answering for them.

A subscriber that missed seqs of a (source, stream) — a bus gap, or messages sent
while it was down — asks the source with a `replay` RPC: the collector answers from
its WAL (`events.process`), the detector from its alert log (`alerts.*`). One answer
carries at most `limit` envelopes (and half the bus's frame limit in bytes), so a
`Replayer` asks chunk by chunk until the gap is filled or the source has no more.

Exactly-once across a subscriber's restart needs a cursor per stream (the last seq it
has taken in), committed in the same write as what it took in: `StreamCursors` keeps
them between commits and tells a stream seen for the first time that does not start
at 1 (its beginning was missed); `put_cursors`/`load_cursors` keep them in a Store.
`Intake` wires the two together for a subscribing service.

The verb (server side): params `from_seq`, `to_seq` (optional), `limit`, and
`stream` (sources with one stream ignore it); answer value `{first_seq, last_seq,
topics, truncated, wal_first_seq, wal_last_seq}` with one payload (envelope bytes)
per topic.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from daemoneye import wire
from daemoneye.bus import Gap, SequenceTracker, Subscriber, Topics, stream_of
from daemoneye.rpc import RpcClient, RpcError, RpcResult

CHUNK = 1000  # envelopes asked for per replay call
TOPIC_CACHE = 1024
ROUTING_ERRORS = {"unknown_target", "unreachable"}  # a restarted broker relearns in a beat

Deliver = Callable[[str, Any, bytes], None]  # (topic, decoded envelope, envelope bytes)
Missing = Callable[[int, int], None]  # (first, last) seqs no replay could supply


def service_target(source_id: str) -> str:
    """The RPC target of a bus source: `control.<service>.<service id>` (ids are
    `<service>@<host>`)."""
    return Topics.control(source_id.partition("@")[0], source_id)


class Replayer:
    """Repairs gaps by `replay` RPCs to each stream's source, in chunks, in seq order."""

    def __init__(
        self,
        client: RpcClient,
        log: logging.Logger,
        target: Callable[[str], str] = service_target,
        chunk: int = CHUNK,
        routing_wait_s: float = 5.0,
    ) -> None:
        self.client = client
        self.log = log
        self.target = target
        self.chunk = chunk
        self.routing_wait_s = routing_wait_s  # how long an unknown source may take to register
        self.replays = 0  # gaps asked about
        self.replayed = 0  # envelopes delivered from answers
        self.missing = 0  # seqs no answer could supply
        self.failures = 0  # replays that ended on an RPC error
        # the same three per stream, for /metrics: stream -> [replays, replayed, missing]
        self.by_stream: dict[str, list[int]] = {}

    def repair(
        self,
        gap: Gap,
        deliver: Deliver,
        missing: Missing | None = None,
        routing_wait_s: float | None = None,
    ) -> bool:
        """Deliver the gap's envelopes in seq order; each range the source lacks goes to
        `missing` (in order, between deliveries). True when nothing is missing.
        `routing_wait_s` overrides how long an unknown source may take to register."""
        self.replays += 1
        self._of(gap.stream)[0] += 1
        expected = gap.first_missing
        wait = self.routing_wait_s if routing_wait_s is None else routing_wait_s
        try:
            while expected <= gap.last_missing:
                expected, got = self._chunk(gap, expected, deliver, missing, wait)
                if not got:
                    break
        except RpcError as exc:
            self.failures += 1
            self.log.warning("replay of %s from %s failed: %s", gap.stream, gap.source_id, exc)
        if expected <= gap.last_missing:
            self._missing(missing, expected, gap.last_missing, gap.stream)
            return False
        self.log.info(
            "gap %d-%d of %s %s repaired by replay",
            gap.first_missing,
            gap.last_missing,
            gap.source_id,
            gap.stream,
        )
        return True

    def _of(self, stream: str) -> list[int]:
        counts = self.by_stream.get(stream)
        if counts is None:
            counts = self.by_stream[stream] = [0, 0, 0]
        return counts

    def _missing(self, missing: Missing | None, first: int, last: int, stream: str) -> None:
        self.missing += last - first + 1
        self._of(stream)[2] += last - first + 1
        if missing is not None:
            missing(first, last)

    def _call(self, gap: Gap, params: dict[str, Any], routing_wait_s: float) -> RpcResult:
        target = self.target(gap.source_id)
        deadline = time.monotonic() + routing_wait_s
        while True:
            try:
                return self.client.call(target, "replay", params)
            except RpcError as exc:
                if exc.code not in ROUTING_ERRORS or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # the source re-registers on its next heartbeat

    def _chunk(
        self,
        gap: Gap,
        expected: int,
        deliver: Deliver,
        missing: Missing | None,
        routing_wait_s: float,
    ) -> tuple[int, int]:
        """Deliver one answer; (next seq wanted, envelopes delivered)."""
        params = {
            "from_seq": expected,
            "to_seq": gap.last_missing,
            "limit": self.chunk,
            "stream": gap.stream,
        }
        result = self._call(gap, params, routing_wait_s)
        topics = result.value.get("topics", []) if isinstance(result.value, dict) else []
        got = 0
        for topic, data in zip(topics, result.payloads, strict=False):
            try:
                envelope = wire.decode_envelope(data)
            except wire.DecodeError as exc:
                self.log.warning("replayed envelope undecodable: %s", exc)
                continue
            seq = envelope.seq
            if (
                envelope.sourceId != gap.source_id
                or stream_of(topic) != gap.stream
                or not expected <= seq <= gap.last_missing
            ):
                continue  # not what was asked for: never take it in
            if seq > expected:  # the source no longer holds these (retention, a cut tail)
                self._missing(missing, expected, seq - 1, gap.stream)
            deliver(topic, envelope, data)
            self.replayed += 1
            got += 1
            expected = seq + 1
        self._of(gap.stream)[1] += got
        return expected, got


# --- what a subscriber that must miss nothing wires together ------------------------

MissingIn = Callable[[Gap, int, int], None]  # (gap, first, last) seqs no replay supplied


class Intake:
    """The replay-and-cursor glue of a subscriber that must take in every message of
    some streams (the detector, the alerter, the ledger): the cursors of what it took
    in, sequence checking seeded from the cursors it stored, the beginning of a stream
    it joined late, and gaps repaired by replay, each envelope handed to `deliver` as if
    it came off the bus (in seq order, before the message that revealed the gap)."""

    def __init__(
        self, streams: Callable[[str], bool], deliver: Deliver, missing: MissingIn | None = None
    ) -> None:
        self.cursors = StreamCursors(streams)
        self.deliver = deliver
        self.missing = missing
        self.replayer: Replayer | None = None  # until connect(): repairs are refused

    def connect(self, client: RpcClient, log: logging.Logger, routing_wait_s: float) -> None:
        """Replays go through `client` from now on (in a service's setup)."""
        self.replayer = Replayer(client, log, routing_wait_s=routing_wait_s)

    def resume(
        self, subscriber: Subscriber | None, stored: Iterable[tuple[str, str, str, int]]
    ) -> int:
        """Seed sequence checking with stored cursors (what was sent while down shows as
        a gap on the next message); how many. Without a subscriber (unit tests), only
        the streams' positions are known."""
        return self.cursors.resume(subscriber.tracker if subscriber else None, stored)

    def catch_up(self, topic: str, envelope: Any, routing_wait_s: float | None = 0.0) -> None:
        """A stream seen for the first time that does not start at 1: replay its
        beginning first. By default without waiting for the source to register (it
        is publishing, so it is up)."""
        self.catch_up_at(topic, envelope.sourceId, envelope.seq, routing_wait_s)

    def catch_up_at(
        self, topic: str, source_id: str, seq: int, routing_wait_s: float | None = 0.0
    ) -> None:
        """`catch_up` from the header the Subscriber already read (a bus.Message's
        source_id and seq), without reading the envelope again."""
        gap = self.cursors.first_gap_at(topic, source_id, seq)
        if gap is not None:
            self.repair(gap, routing_wait_s)

    def repair(self, gap: Gap, routing_wait_s: float | None = None) -> bool:
        """Replay a gap (see Replayer.repair); False when not all of it came back."""
        if self.replayer is None:
            if self.missing is not None:
                self.missing(gap, gap.first_missing, gap.last_missing)
            return False
        missing = self.missing
        return self.replayer.repair(
            gap,
            self.deliver,
            None if missing is None else lambda first, last: missing(gap, first, last),
            routing_wait_s=routing_wait_s,
        )

    def metrics(self, prefix: str) -> dict[str, float]:
        replayer = self.replayer
        return {
            f"{prefix}.replays": replayer.replays if replayer else 0,
            f"{prefix}.replayed": replayer.replayed if replayer else 0,
            f"{prefix}.replay_missing": replayer.missing if replayer else 0,
        }


# --- cursors -------------------------------------------------------------------------

Cursor = tuple[str, int]  # (boot id, last seq taken in)
StreamKey = tuple[str, str]  # (source id, stream)


class StreamCursors:
    """The last seq taken in per (source, stream), held until committed with what was
    taken in; and which streams have a known position (from the store or the bus)."""

    def __init__(self, streams: Callable[[str], bool]) -> None:
        self.wanted = streams  # which streams (by name) are tracked at all
        self.pending: dict[StreamKey, Cursor] = {}
        self.known: set[StreamKey] = set()
        self._stream: dict[str, str] = {}  # topic -> its stream if tracked, else ""

    def stream(self, topic: str) -> str:
        """The tracked stream of a topic, or "" (cached: this runs on every message)."""
        stream = self._stream.get(topic)
        if stream is None:
            if len(self._stream) >= TOPIC_CACHE:  # topics come off the bus: stay bounded
                self._stream.clear()
            stream = stream_of(topic)
            stream = self._stream[topic] = stream if self.wanted(stream) else ""
        return stream

    def note(self, topic: str, envelope: Any) -> None:
        """A message taken in, read from its envelope (replayed ones: see note_seq)."""
        self.note_seq(topic, envelope.sourceId, envelope.bootId, envelope.seq)

    def note_seq(self, topic: str, source_id: str, boot_id: str, seq: int) -> None:
        """`note` from the header the Subscriber already read (bus.Message's source_id,
        boot_id, seq): each read through the envelope reader costs ~0.6 us."""
        stream = self.stream(topic)
        if stream:
            self.pending[(source_id, stream)] = (boot_id, seq)

    def take(self) -> dict[StreamKey, Cursor]:
        taken, self.pending = self.pending, {}
        return taken

    def restore(self, taken: dict[StreamKey, Cursor]) -> None:
        """A commit failed: keep its cursors pending (newer ones win)."""
        self.pending = {**taken, **self.pending}

    def first_gap(self, topic: str, envelope: Any) -> Gap | None:
        """The missed beginning of a stream seen for the first time (joined late)."""
        return self.first_gap_at(topic, envelope.sourceId, envelope.seq)

    def first_gap_at(self, topic: str, source_id: str, seq: int) -> Gap | None:
        """`first_gap` from the header the Subscriber already read."""
        stream = self.stream(topic)
        if not stream:
            return None
        key = (source_id, stream)
        if key in self.known:
            return None
        self.known.add(key)
        if seq > 1:
            return Gap(source_id, stream, 1, seq - 1)
        return None

    def resume(
        self, tracker: SequenceTracker | None, stored: Iterable[tuple[str, str, str, int]]
    ) -> int:
        """Seed sequence checking with stored positions, so what was sent while down
        shows up as a gap on the first message after it. Returns how many."""
        n = 0
        for source, stream, boot_id, seq in stored:
            if tracker is not None:
                tracker.resume(source, stream, boot_id, seq)
            self.known.add((source, stream))
            n += 1
        return n


CURSOR_PREFIX = b"c/"


def put_cursors(batch: Any, cursors: dict[StreamKey, Cursor], prefix: bytes = CURSOR_PREFIX):
    """Add cursors to a Store write batch (committed with what they describe)."""
    for (source, stream), (boot_id, seq) in cursors.items():
        key = prefix + source.encode() + b"\0" + stream.encode()
        batch.put(key, json.dumps({"boot_id": boot_id, "seq": seq}).encode())


def load_cursors(store: Any, prefix: bytes = CURSOR_PREFIX) -> Iterator[tuple[str, str, str, int]]:
    """(source, stream, boot id, seq) of every cursor in a Store."""
    for key, value in store.scan(prefix):
        source, _, stream = key[len(prefix) :].partition(b"\0")
        try:
            doc = json.loads(value)
            yield source.decode(), stream.decode(), str(doc["boot_id"]), int(doc["seq"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue  # a damaged cursor: that stream is checked from its next message


# --- the verb, server side -----------------------------------------------------------


class ReplayRequestError(ValueError):
    """Bad replay params: names the param and the value."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    stream: str
    from_seq: int
    to_seq: int | None
    limit: int


def parse_request(params: dict[str, Any], max_limit: int) -> ReplayRequest:
    from_seq, to_seq = params.get("from_seq"), params.get("to_seq")
    limit = params.get("limit", max_limit)
    for name, value in (("from_seq", from_seq), ("to_seq", to_seq), ("limit", limit)):
        if value is None and name == "to_seq":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ReplayRequestError(
                f"replay: {name} must be a non-negative integer, not {value!r}"
            )
    stream = params.get("stream", "")
    if not isinstance(stream, str):
        raise ReplayRequestError(f"replay: stream must be a string, not {stream!r}")
    return ReplayRequest(stream, from_seq, to_seq, min(limit, max_limit))


def answer(
    entries: list[tuple[int, str, bytes]], limit: int, max_bytes: int, first: int, last: int
) -> RpcResult:
    """The reply to a replay: `entries` (seq, topic, envelope) read with limit + 1 (to
    tell whether more were there), cut to `limit` and to `max_bytes` (the bus refuses a
    frame above its limit); `first`/`last`: the seqs the source holds."""
    truncated = len(entries) > limit
    entries = entries[:limit]
    used = 0
    for i, (_seq, topic, data) in enumerate(entries):
        used += len(data) + len(topic) + 16
        if used > max_bytes and i > 0:
            entries, truncated = entries[:i], True
            break
    return RpcResult(
        {
            "first_seq": entries[0][0] if entries else 0,
            "last_seq": entries[-1][0] if entries else 0,
            "topics": [topic for _, topic, _ in entries],
            "truncated": truncated,
            "wal_first_seq": first,
            "wal_last_seq": last,
        },
        [data for _, _, data in entries],
    )
