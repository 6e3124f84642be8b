"""The ledger service: records process events, alerts and audit records in a
BLAKE3 hash chain and RFC 9162 Merkle tree, and publishes signed checkpoints.

Each bus message becomes one entry: actor = envelope sourceId, action = topic (or
the AuditRecord's action for `audit.*`), payload = the envelope bytes exactly as
received (`Message.raw`). The bus is read in batches: once read dry it is left for
`read_interval_ms`, so a trickle costs a wake-up per batch, not per message. Entries
are committed as one durable batch at most `commit_interval_ms` after the first of
them (group commit: one write and one fsync for all that arrived meanwhile); when the
reads pause at least that long (the default), at the end of each read. A
checkpoint is signed into the same batch when N entries or T seconds have passed, and
published on `ledger.checkpoint` only after that batch is on disk, so no published
tree head can be lost or forked by a crash.

Nothing missed silently: a gap in a collector's `events.process` stream is repaired
by a `replay` RPC to that collector (its WAL answers) before the message that
revealed it is recorded; what no replay can supply is recorded as a `ledger.gap`
entry. The last seq of every stream is committed with the entries (a cursor), so
after a restart the first message of each source shows what the ledger missed
while it was down, and that is replayed too.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, ClassVar

import zmq

from daemoneye import wire
from daemoneye.bus import Gap, Message, Topics
from daemoneye.ledger.note import Signer, load_or_create_key, public_key_path
from daemoneye.ledger.proofs import consistency_document, inclusion_document
from daemoneye.ledger.store import (
    LedgerError,
    LedgerStore,
    LedgerWriter,
    open_store,
    prune_payloads,
)
from daemoneye.replay import Intake
from daemoneye.rpc import RpcClient
from daemoneye.service import Request, RpcFault, Service, rpc
from daemoneye.store import StoreError

AUDIT_PREFIX = Topics.AUDIT
GAP_ACTION = "ledger.gap"  # the action of entries recording messages the ledger missed
START_ACTION = "ledger.start"
STOP_ACTION = "ledger.stop"
_audit_action = wire.tuple_reader(wire.AuditRecord.schema, ("action",))


def replayable(stream: str) -> bool:
    """Streams whose source answers `replay`: a collector's process events (its WAL) and
    a detector's alerts (its alert log). Audit records are not kept for replay."""
    return stream == Topics.PROCESS_STREAM or stream.startswith(Topics.ALERTS)


REPLAY_TIMEOUT_S = 5.0


class Ledger(Service):
    name: ClassVar[str] = "ledger"
    subscriptions: ClassVar[tuple[str, ...]] = (Topics.PROCESS, Topics.ALERTS, Topics.AUDIT)
    # RocksDB's flushes and compactions free megabytes of heap every few seconds under
    # load; trimmed every 10 s, 3-7 MB of it stayed resident at any instant (a soak's
    # sample), every 2 s 1-3 MB, for ~0.3 ms a trim (2,200 entries/s).
    trim_interval_s: ClassVar[float] = 2.0

    def __init__(self, settings: Any, service_id: str | None = None) -> None:
        super().__init__(settings, service_id)
        self.cfg = settings.ledger
        self.origin = self.cfg.origin_for(settings.hostname)
        self.ledger: LedgerStore | None = None
        self.writer: LedgerWriter | None = None
        self.signer: Signer | None = None
        self.appended = 0
        self.checkpoints_published = 0
        self.write_errors = 0
        self.gaps_recorded = 0
        self.missing_recorded = 0
        self.read_pauses = 0  # how often the bus was left to fill (batched reads)
        self.intake = Intake(
            lambda stream: True,  # every stream's cursor, for the trail
            lambda topic, envelope, data: self.record(topic, envelope, data),
            lambda gap, first, last: self._record_gap(gap.source_id, gap.stream, first, last),
        )
        # -inf: the first checkpoint of a run is signed at the first tick (about a second
        # after start, over its start entry), not checkpoint_every_s later: `ledger
        # checkpoint` answered "no checkpoint yet" for the first minute.
        self._last_checkpoint_t = float("-inf")

    # --- lifecycle ---------------------------------------------------------------

    def setup(self) -> None:
        data_dir = self.settings.data_dir
        key_path = self.cfg.signing_key_path(data_dir)
        self.signer = Signer(self.origin, load_or_create_key(key_path))
        pub = public_key_path(key_path)
        if not pub.exists() or pub.read_text().strip() != self.signer.verifier.vkey():
            pub.write_text(self.signer.verifier.vkey() + "\n")
        db_path = self.cfg.db_path(data_dir)
        os.makedirs(db_path.parent, mode=0o750, exist_ok=True)
        self.ledger = LedgerStore(open_store(db_path))
        self.writer = LedgerWriter(self.ledger, sync=self.cfg.sync)
        self.log.info(
            "ledger open",
            extra={"path": str(db_path), "size": self.writer.size, "key": str(key_path)},
        )
        # Its own starts and stops are entries too, so a restart (after a crash, say) and
        # a key change are visible in the chain itself.
        self._record_own(
            START_ACTION,
            {
                "pid": os.getpid(),
                "resumed_at": self.writer.size,
                "key": self.signer.verifier.vkey(),
            },
        )
        self.writer.commit()
        self._resume_cursors()
        client = RpcClient(
            self.factory, self.settings.endpoint("control"), self.service_id, REPLAY_TIMEOUT_S
        )
        self.intake.connect(client, self.log, REPLAY_TIMEOUT_S)
        self.every(
            min(1.0, self.cfg.checkpoint_every_s),
            self._timed_checkpoint,
            idle_until=self._checkpoint_idle_until,
        )
        if self.cfg.payload_retention_days > 0:
            self.every(self.cfg.retention_interval_s, self._retention)

    def teardown(self) -> None:
        if self.writer is not None and self.subscriber is not None:
            # What waits on the socket (reads pause up to read_interval_ms: other
            # services' last audit records, at a shutdown) is recorded before the stop
            # entry, not left to show as a gap after the restart. A gap it reveals is
            # replayed without waiting for a source to register: its source may be gone,
            # and the supervisor kills what does not stop within its grace.
            if self.intake.replayer is not None:
                self.intake.replayer.routing_wait_s = 0.0
            self._drain_bus(self.subscriber)
        if self.writer is not None:
            try:
                self._record_own(STOP_ACTION, {"pid": os.getpid(), "size": self.writer.size})
                self.flush(force_checkpoint=self.writer.size > self.writer.last_checkpoint_size)
            except StoreError as exc:
                self.log.error("final ledger write failed: %s", exc)
        if self.ledger is not None:
            self.ledger.close()

    # --- recording ---------------------------------------------------------------

    def on_message(self, msg: Message) -> None:
        """One entry per message, its envelope bytes as received (`Message.raw`). The
        header comes from what the Subscriber read: the body is never read here, but for
        an audit record's action."""
        assert self.writer is not None
        topic, source, seq = msg.topic, msg.source_id, msg.seq
        cursors = self.intake.cursors
        if cursors.stream(topic) == Topics.PROCESS_STREAM:
            # A collector stream never seen before that does not start at 1 (the ledger
            # joined late, or is new): its beginning from the WAL first, as a gap.
            self.intake.catch_up_at(topic, source, seq, routing_wait_s=None)
        self._append(topic, msg.envelope, msg.kind, source, msg.raw)
        cursors.note_seq(topic, source, msg.boot_id, seq)
        if self.writer.pending >= self.cfg.batch_max_entries:
            self._safe_flush()

    def on_drained(self) -> None:
        if self._pause_reads() and self.cfg.commit_interval_ms <= self.cfg.read_interval_ms:
            # Nothing more is read before the pause ends, so nothing could join a commit
            # that waited: write now, and spare the loop a wake-up for the commit alone.
            self._safe_flush()
        else:
            self._commit_soon()

    def _pause_reads(self) -> bool:
        """Batch per wake-up: once the bus is read dry, leave it for `read_interval_ms`
        (its queue holds what arrives meanwhile, far below the high-water mark at any
        rate) and read it all at once then. At 400 messages/s and 250 ms that is one
        wake-up (and one durable write) for a hundred messages instead of one each: the
        ledger is not on the alert path, nobody waits on it but its checkpoints, and a
        busy bus (not read dry) is read straight on. True when reads are paused."""
        sub = self.subscriber
        wait_s = self.cfg.read_interval_ms / 1000
        if wait_s <= 0 or sub is None or sub.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            return False
        self.unwatch(sub.sock)
        self.read_pauses += 1
        self.once(wait_s, self._resume_reads)
        return True

    def _resume_reads(self) -> None:
        if self.subscriber is not None:
            self.watch(self.subscriber.sock, self._on_bus)

    def _commit_soon(self) -> None:
        """Group commit: what arrived waits up to `commit_interval_ms` for more to share
        its synced write, so a steady trickle does not cost an fsync per message."""
        if self.cfg.commit_interval_ms <= 0:
            self._safe_flush()
        elif self.writer is not None and self.writer.pending:
            self.once(self.cfg.commit_interval_ms / 1000, self._safe_flush)

    def record(self, topic: str, envelope: Any, data: bytes) -> int:
        """One entry for an envelope read by hand (a replayed one): its header read from
        the envelope."""
        seq = self._append(topic, envelope, "", envelope.sourceId, data)
        self.intake.cursors.note(topic, envelope)
        return seq

    def _append(self, topic: str, envelope: Any, kind: str, source: str, data: bytes) -> int:
        assert self.writer is not None
        action = topic
        if topic.startswith(AUDIT_PREFIX) and (kind or wire.body_kind(envelope)) == "auditRecord":
            action = _audit_action(envelope.body.auditRecord)[0] or topic
        seq = self.writer.append(source, action, data)
        self.appended += 1
        return seq

    def _resume_cursors(self) -> None:
        """Seed sequence checking with what is on disk, so messages sent while the
        ledger was down show up as a gap on the first message after them."""
        assert self.ledger is not None
        if self.subscriber is None:  # unit tests run setup() without sockets
            return
        resumed = self.intake.resume(self.subscriber, self.ledger.cursors())
        if resumed:
            self.log.info("resumed sequence checking of %d streams", resumed)

    def _record_own(self, action: str, detail: dict[str, Any]) -> None:
        assert self.writer is not None
        body = {"boot_id": self.boot_id, **detail}
        self.writer.append(self.service_id, action, json.dumps(body, sort_keys=True).encode())

    def on_gap(self, gap: Gap) -> None:
        """Missed bus messages: replayed from the collector's WAL or the detector's alert
        log where it can; what they cannot supply becomes a `ledger.gap` entry, so the
        trail shows what it lacks."""
        if replayable(gap.stream):
            self.intake.repair(gap)  # what it cannot replay is recorded as missing
        else:
            self._record_gap(gap.source_id, gap.stream, gap.first_missing, gap.last_missing)

    def _record_gap(self, source: str, stream: str, first: int, last: int) -> None:
        assert self.writer is not None
        detail = {"stream": stream, "first_missing": first, "last_missing": last}
        self.writer.append(source, GAP_ACTION, json.dumps(detail).encode())
        self.gaps_recorded += 1
        self.missing_recorded += last - first + 1

    def _safe_flush(self) -> None:
        try:
            self.flush()
        except StoreError as exc:
            self.write_errors += 1
            self.state = "degraded"
            if self.write_errors == 1 or self.write_errors % 100 == 0:
                self.log.error(
                    "ledger write failed (%d times); %d entries kept pending: %s",
                    self.write_errors,
                    self.writer.pending if self.writer else 0,
                    exc,
                )
            note = f"ledger writes failing: {exc}"
            self.notes = [n for n in self.notes if not n.startswith("ledger writes failing")]
            self.notes.append(note[:200])

    def flush(self, force_checkpoint: bool = False) -> int:
        """Commit pending entries (with a checkpoint when due); publish it once durable."""
        writer = self.writer
        assert writer is not None and self.signer is not None
        due = writer.size - writer.last_checkpoint_size >= self.cfg.checkpoint_every_entries
        signed = None
        if (due or force_checkpoint) and writer.size > writer.last_checkpoint_size:
            signed = writer.sign_checkpoint(self.signer, self.origin)
        cursors = self.intake.cursors.take()
        for (source, stream), (boot_id, seq) in cursors.items():
            writer.put_cursor(source, stream, boot_id, seq)
        try:
            size = writer.commit()
        except StoreError:
            self.intake.cursors.restore(cursors)  # kept pending with their entries
            raise
        if self.state == "degraded" and self.write_errors:
            self.state = "running"
            self.notes = [n for n in self.notes if not n.startswith("ledger writes failing")]
        if signed is not None:
            self._publish_checkpoint(*signed)
        return size

    def _timed_checkpoint(self) -> None:
        """A checkpoint once T seconds have passed since the last one, if the tree grew."""
        assert self.writer is not None
        if time.monotonic() - self._last_checkpoint_t < self.cfg.checkpoint_every_s:
            return
        if self.writer.size > self.writer.last_checkpoint_size:
            self.flush(force_checkpoint=True)

    def _checkpoint_idle_until(self) -> float:
        """The timed checkpoint's work: T seconds after the last, once the tree grew (an
        idle ledger then wakes for its heartbeat, not every second to find it did not)."""
        writer = self.writer
        if writer is None or writer.size <= writer.last_checkpoint_size:
            return float("inf")  # it grows only by what the loop handles
        return self._last_checkpoint_t + self.cfg.checkpoint_every_s

    def _publish_checkpoint(self, cp: Any, note: str, time_ns: int) -> None:
        self._last_checkpoint_t = time.monotonic()
        self.checkpoints_published += 1
        if self.publisher is None:
            return
        self.publisher.publish(
            Topics.CHECKPOINT,
            "checkpoint",
            {
                "origin": cp.origin,
                "treeSize": cp.size,
                "rootHash": cp.root,
                "timestampNs": time_ns,
                "signedNote": note,
            },
        )

    def _retention(self) -> None:
        assert self.ledger is not None
        cutoff = time.time_ns() - int(self.cfg.payload_retention_days * 86400e9)
        dropped = prune_payloads(self.ledger, cutoff)
        if dropped:
            self.log.info("retention dropped %d payloads (entries kept)", dropped)

    # --- status ------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        writer = self.writer
        latest = self._latest_checkpoint()
        return {
            "ledger.checkpoint_size": latest[0] if latest else 0,
            "ledger.checkpoint_time": latest[1] / 1e9 if latest else 0,
            "ledger.size": writer.size if writer else 0,
            "ledger.durable": writer.durable_size if writer else 0,
            "ledger.appended": self.appended,
            "ledger.checkpoints": self.checkpoints_published,
            "ledger.write_errors": self.write_errors,
            "ledger.gaps_recorded": self.gaps_recorded,
            "ledger.missing_recorded": self.missing_recorded,
            "ledger.read_pauses": self.read_pauses,
            **self.intake.metrics("ledger"),
        }

    def _latest_checkpoint(self) -> tuple[int, int, str] | None:
        """(size, time ns, note) of the newest stored checkpoint; None when there is none
        or the store cannot say (a heartbeat must go out regardless)."""
        try:
            return self.ledger.latest_checkpoint() if self.ledger else None
        except Exception as exc:
            self.log.debug("latest checkpoint unreadable: %s", exc)
            return None

    def queue_depth(self) -> int:
        return self.writer.pending if self.writer else 0

    # --- RPC ---------------------------------------------------------------------

    def _size_param(self, request: Request, name: str, default: int) -> int:
        value = request.params.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RpcFault("bad_request", f"{name} must be a non-negative integer, got {value!r}")
        return value

    @rpc("head")
    def rpc_head(self, request: Request) -> dict[str, Any]:
        assert self.writer is not None
        latest = self.ledger.latest_checkpoint() if self.ledger else None
        return {
            "size": self.writer.durable_size,
            "root_hash": self.ledger.root(self.writer.durable_size).hex() if self.ledger else "",
            "checkpoint_size": latest[0] if latest else 0,
            "public_key": self.signer.verifier.vkey() if self.signer else "",
        }

    @rpc("checkpoint")
    def rpc_checkpoint(self, request: Request) -> dict[str, Any]:
        """The latest checkpoint; `{"new": true}` signs one over every durable entry first."""
        assert self.ledger is not None and self.writer is not None
        if request.params.get("new"):
            self.flush(force_checkpoint=True)
        latest = self.ledger.latest_checkpoint()
        if latest is None:
            raise RpcFault("not_found", "no checkpoint yet: the ledger is empty")
        size, time_ns, note = latest
        return {"tree_size": size, "timestamp_ns": time_ns, "note": note}

    @rpc("prove")
    def rpc_prove(self, request: Request) -> dict[str, Any]:
        """Inclusion proof of entry `index` in the tree of `tree_size` (latest checkpoint)."""
        assert self.ledger is not None
        index = self._size_param(request, "index", 0)
        size = request.params.get("tree_size")
        if size is not None:
            size = self._size_param(request, "tree_size", 0)
        try:
            return inclusion_document(self.ledger, index, size)
        except (LedgerError, ValueError) as exc:
            raise RpcFault("bad_request", str(exc)) from None

    @rpc("consistency")
    def rpc_consistency(self, request: Request) -> dict[str, Any]:
        assert self.ledger is not None and self.writer is not None
        old = self._size_param(request, "old_size", 0)
        new = self._size_param(request, "new_size", self.writer.durable_size)
        try:
            return consistency_document(self.ledger, old, new)
        except (LedgerError, ValueError) as exc:
            raise RpcFault("bad_request", str(exc)) from None


SERVICE = Ledger
