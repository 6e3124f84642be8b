"""Forwarding chosen topics off this host, with nothing lost while the link is down.

Matching frames are appended to a disk queue (RocksDB under <data_dir>/<queue dir>)
as they pass the broker. A thread delivers them in order, in batches, and deletes a
batch only once the other end acknowledged it. A lost link means retries with
backoff and a growing queue, bounded by the queue's maximum (the oldest frames are
dropped and counted past it). Delivery is at-least-once: a batch whose
acknowledgement was lost is sent again, and the other end drops the repeats
(subscribers by (source, stream, seq); JetStream by the message id).

`QueuedUplink` is the queue and the delivery thread; a transport says how a batch
goes out and when the link is back. Two exist: `CurveUplink` (here: `ingest` RPCs to
a central DaemonEye broker over tcp:// with CurveZMQ) and `NatsUplink` (nats_uplink:
JetStream). Each tells why its link is down (`reason`: down, refused, ...), and a
returning link ends the backoff at once rather than at the next retry.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from daemoneye.bus import SocketFactory
from daemoneye.config import Settings
from daemoneye.rpc import RpcClient, RpcError, RpcTimeout
from daemoneye.store import Store, be64, un_be64

log = logging.getLogger("daemoneye.broker.uplink")

QUEUE = b"q/"
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_BATCH_BYTES = 4 << 20
LINK_POLL_S = 0.25  # how often a backoff wait looks for a returned link and for stop


def pack(topic: bytes, data: bytes) -> bytes:
    return struct.pack(">H", len(topic)) + topic + data


def unpack(value: bytes) -> tuple[bytes, bytes]:
    (size,) = struct.unpack_from(">H", value)
    return value[2 : 2 + size], value[2 + size :]


@dataclass
class UplinkStats:
    kind: str = ""
    target: str = ""
    queued: int = 0
    delivered: int = 0
    dropped_full: int = 0
    failures: int = 0
    link_up: bool = False
    reason: str = "connecting"  # up, connecting, down, refused, key_mismatch, tls, no_stream
    last_error: str = ""


class LinkDown(Exception):
    """A batch did not go out; `reason` says why in one word (UplinkStats.reason)."""

    def __init__(self, message: str, reason: str = "down") -> None:
        super().__init__(message)
        self.reason = reason


class QueuedUplink:
    """The disk queue and its delivery thread; subclasses are the transports."""

    kind = ""

    def __init__(
        self,
        settings: Settings,
        source_id: str,
        *,
        target: str,
        topics: list[str],
        queue_dir: Path,
        queue_max: int,
        batch: int,
    ) -> None:
        self.settings = settings
        self.source_id = source_id
        self.prefixes = tuple(p.encode() for p in topics)
        self.max_queue = queue_max
        self.batch = batch
        self.store = Store(queue_dir)
        self.stats = UplinkStats(kind=self.kind, target=target)
        last = self.store.last(QUEUE)
        first = next(self.store.scan(QUEUE), None)
        self._tail = un_be64(last[0][len(QUEUE) :]) + 1 if last else 0
        self._head = un_be64(first[0][len(QUEUE) :]) if first else self._tail
        self.stats.queued = self._tail - self._head
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"uplink-{self.kind}", daemon=True)

    def start(self) -> None:
        log.info("%s uplink to %s for %s", self.kind, self.stats.target, self.prefixes)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.join_timeout_s())
        self.store.close()

    def join_timeout_s(self) -> float:
        return 5.0

    def wants(self, topic: bytes) -> bool:
        return topic.startswith(self.prefixes)

    def wake(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {**asdict(self.stats), "paused": self.paused.is_set()}

    def offer(self, frames: list[tuple[bytes, bytes]]) -> None:
        """Queue frames (called by the forwarding loop with what it just forwarded)."""
        if not frames:
            return
        batch = self.store.batch()
        with self._lock:
            for topic, data in frames:
                batch.put(QUEUE + be64(self._tail), pack(topic, data))
                self._tail += 1
            overflow = (self._tail - self._head) - self.max_queue
            if overflow > 0:
                batch.delete_range(QUEUE + be64(self._head), QUEUE + be64(self._head + overflow))
                self._head += overflow
                self.stats.dropped_full += overflow
            self.stats.queued = self._tail - self._head
        self.store.write(batch)
        self._wake.set()

    # --- what a transport provides ------------------------------------------------

    def open(self) -> None:
        """Set up the transport (on the delivery thread)."""

    def deliver(self, topics: list[bytes], payloads: list[bytes]) -> None:
        """Send one batch and wait for its acknowledgement, or raise LinkDown."""
        raise NotImplementedError

    def reset(self) -> None:
        """After a failure: drop whatever the old connection still holds."""

    def wait_for_link(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` (a backoff); True as soon as the link is back."""
        return self._stop.wait(timeout_s)

    def shut(self) -> None:
        """Release the transport (on the delivery thread, on the way out)."""

    # --- the delivery thread ------------------------------------------------------

    def _run(self) -> None:
        self.open()
        backoff = BACKOFF_START_S
        try:
            while not self._stop.is_set():
                if self.paused.is_set() or self.stats.queued == 0:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    self._deliver_one_batch()
                    backoff = BACKOFF_START_S
                except LinkDown as exc:
                    self._down(exc)
                    self.reset()
                    if self.wait_for_link(backoff):
                        backoff = BACKOFF_START_S  # it is back: try again now
                    else:
                        backoff = min(BACKOFF_MAX_S, backoff * 2)
        finally:
            self.shut()

    def _down(self, exc: LinkDown) -> None:
        self.stats.failures += 1
        if self.stats.link_up or str(exc) != self.stats.last_error:
            log.warning("%s uplink down: %s; queueing on disk", self.kind, exc)
        self.stats.link_up = False
        self.stats.reason = exc.reason
        self.stats.last_error = str(exc)

    def _deliver_one_batch(self) -> None:
        with self._lock:
            head = self._head
        topics: list[bytes] = []
        payloads: list[bytes] = []
        size = 0
        last_key = head
        for key, value in self.store.scan(QUEUE, start=QUEUE + be64(head)):
            topic, data = unpack(value)
            topics.append(topic)
            payloads.append(data)
            size += len(value)
            last_key = un_be64(key[len(QUEUE) :])
            if len(payloads) >= self.batch or size >= MAX_BATCH_BYTES:
                break
        if not payloads:
            return
        self.deliver(topics, payloads)
        if not self.stats.link_up:
            log.info("%s uplink up: delivering %d queued frames", self.kind, self.stats.queued)
        self.stats.link_up = True
        self.stats.reason = "up"
        self.stats.last_error = ""
        with self._lock:
            # The queue may have overflowed past what we sent while we waited.
            start = max(self._head, head)
            if last_key + 1 > start:
                self.store.delete_range(QUEUE + be64(start), QUEUE + be64(last_key + 1))
                self._head = last_key + 1
            self.stats.delivered += len(payloads)
            self.stats.queued = self._tail - self._head


# The monitor events that tell the CurveZMQ link's state.
HANDSHAKE_OK = zmq.EVENT_HANDSHAKE_SUCCEEDED
REFUSED = zmq.EVENT_HANDSHAKE_FAILED_AUTH
BAD_HANDSHAKE = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
WATCHED = HANDSHAKE_OK | REFUSED | BAD_HANDSHAKE


class CurveUplink(QueuedUplink):
    """`ingest` RPCs to a central DaemonEye broker over tcp:// with CurveZMQ. The
    DEALER's handshakes are watched (a ZeroMQ socket monitor): a key the center
    refuses is reported as such, not as a center that is down, and a handshake that
    succeeds during a backoff ends it."""

    kind = "curve"

    def __init__(self, settings: Settings, source_id: str) -> None:
        cfg = settings.broker
        super().__init__(
            settings,
            source_id,
            target=cfg.uplink,
            topics=cfg.uplink_topics,
            queue_dir=settings.data_dir / "broker-uplink",
            queue_max=cfg.uplink_queue_max,
            batch=cfg.uplink_batch,
        )
        self.timeout_s = cfg.uplink_timeout_s
        self.factory: SocketFactory | None = None
        self.client: RpcClient | None = None
        self._seen = 0  # monitor events on the current client
        self._handshook = False  # the last failed try had a handshake

    def join_timeout_s(self) -> float:
        return self.timeout_s + 2

    def open(self) -> None:
        self.factory = SocketFactory(self.settings, zmq.Context.instance())
        self._new_client()

    def _new_client(self) -> None:
        assert self.factory is not None
        self.client = RpcClient(
            self.factory,
            self.settings.broker.uplink,
            self.source_id,
            self.timeout_s,
            immediate=True,
            monitor=WATCHED,
        )
        self._seen = 0

    def _monitor(self) -> zmq.Socket:
        assert self.client is not None
        return self.client.sock.get_monitor_socket()  # the one made at connect

    def _drain_events(self, wait_ms: int = 0) -> int:
        """Read the monitor's events (waiting up to `wait_ms` for the first); their bits."""
        monitor, seen = self._monitor(), 0
        while monitor.poll(wait_ms):
            seen |= recv_monitor_message(monitor)["event"]
            wait_ms = 0
        self._seen |= seen
        return seen

    def deliver(self, topics: list[bytes], payloads: list[bytes]) -> None:
        assert self.client is not None
        try:
            self.client.call(
                "control.broker", "ingest", {"topics": [t.decode() for t in topics]},
                payloads=payloads,
            )  # fmt: skip
        except RpcError as exc:
            self._drain_events()
            raise self._why(exc) from None

    def _why(self, exc: RpcError) -> LinkDown:
        self._handshook = bool(self._seen & HANDSHAKE_OK)
        if self._seen & REFUSED:
            return self._refused()
        if self._seen & BAD_HANDSHAKE and not self._handshook:
            return LinkDown(
                f"the CurveZMQ handshake with {self.stats.target} failed: is "
                f"{self.settings.bus.server_key}.key here the center's broker key?",
                "key_mismatch",
            )
        if isinstance(exc, RpcTimeout) and not self._handshook:
            return LinkDown(f"the center {self.stats.target} does not answer ({exc})", "down")
        return LinkDown(str(exc), "down" if isinstance(exc, RpcTimeout) else "error")

    def _refused(self) -> LinkDown:
        return LinkDown(
            f"the center refused this host's key: {self.settings.bus.client_key}.key is not "
            "in the center's authorized dir (<data_dir>/keys/authorized; the center counts "
            "it in auth_refused)",
            "refused",
        )

    def reset(self) -> None:
        self._close_client()
        self._new_client()  # connects (and reconnects) in the background meanwhile

    def wait_for_link(self, timeout_s: float) -> bool:
        """The backoff, cut short by a successful handshake: the center is back. (Not
        when the last try had a handshake too: then the center answered badly or not
        at all, and trying again at once would only repeat that.)"""
        waited = 0.0
        while waited < timeout_s and not self._stop.is_set():
            step = min(LINK_POLL_S, timeout_s - waited)
            events = self._drain_events(int(step * 1000))
            if events & HANDSHAKE_OK and not self._handshook:
                return True
            if events & REFUSED and self.stats.reason != "refused":
                self._down(self._refused())  # told at once, not after the next timeout
            waited += step
        return False

    def _close_client(self) -> None:
        if self.client is None:
            return
        monitor = self._monitor()
        self.client.sock.disable_monitor()
        monitor.close(linger=0)
        self.client.close()
        self.client = None

    def shut(self) -> None:
        self._close_client()
        if self.factory is not None:
            self.factory.close_all(linger_ms=0)
