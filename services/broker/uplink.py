"""Forwarding chosen topics to a central broker, with nothing lost while the link is down.

Matching frames are appended to a disk queue (RocksDB under <data_dir>/broker-uplink)
as they pass the broker. A thread delivers them in order, in batches, as `ingest`
RPCs to the central broker (over tcp:// with CurveZMQ), and deletes a batch only once
the central broker has acknowledged it. A lost link means retries with backoff and a
growing queue, bounded by `uplink_queue_max` (the oldest frames are dropped and
counted past it). Delivery is at-least-once: a batch whose acknowledgement was lost
is sent again, and subscribers drop the repeats by (source, stream, seq).
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass

import zmq

from daemoneye.bus import SocketFactory
from daemoneye.config import Settings
from daemoneye.rpc import RpcClient, RpcError
from daemoneye.store import Store, be64, un_be64

log = logging.getLogger("daemoneye.broker.uplink")

QUEUE = b"q/"
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_BATCH_BYTES = 4 << 20


def pack(topic: bytes, data: bytes) -> bytes:
    return struct.pack(">H", len(topic)) + topic + data


def unpack(value: bytes) -> tuple[bytes, bytes]:
    (size,) = struct.unpack_from(">H", value)
    return value[2 : 2 + size], value[2 + size :]


@dataclass
class UplinkStats:
    queued: int = 0
    delivered: int = 0
    dropped_full: int = 0
    failures: int = 0
    link_up: bool = False
    last_error: str = ""


class Uplink:
    def __init__(self, settings: Settings, source_id: str) -> None:
        cfg = settings.broker
        self.settings = settings
        self.source_id = source_id
        self.prefixes = tuple(p.encode() for p in cfg.uplink_topics)
        self.max_queue = cfg.uplink_queue_max
        self.batch = cfg.uplink_batch
        self.timeout_s = cfg.uplink_timeout_s
        self.store = Store(settings.data_dir / "broker-uplink")
        self.stats = UplinkStats()
        last = self.store.last(QUEUE)
        first = next(self.store.scan(QUEUE), None)
        self._tail = un_be64(last[0][len(QUEUE) :]) + 1 if last else 0
        self._head = un_be64(first[0][len(QUEUE) :]) if first else self._tail
        self.stats.queued = self._tail - self._head
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)

    def start(self) -> None:
        log.info("uplink to %s for %s", self.settings.broker.uplink, self.prefixes)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.timeout_s + 2)
        self.store.close()

    def wants(self, topic: bytes) -> bool:
        return topic.startswith(self.prefixes)

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

    # --- the delivery thread --------------------------------------------------

    def _run(self) -> None:
        factory = SocketFactory(self.settings, zmq.Context.instance())
        client = self._client(factory)
        backoff = BACKOFF_START_S
        try:
            while not self._stop.is_set():
                if self.paused.is_set() or self.stats.queued == 0:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    self._deliver_one_batch(client)
                    backoff = BACKOFF_START_S
                except RpcError as exc:
                    self.stats.failures += 1
                    if self.stats.link_up or not self.stats.last_error:
                        log.warning("uplink down: %s; queueing on disk", exc)
                    self.stats.link_up = False
                    self.stats.last_error = str(exc)
                    client.close()  # drop anything queued on the old connection
                    client = self._client(factory)
                    self._stop.wait(backoff)
                    backoff = min(BACKOFF_MAX_S, backoff * 2)
        finally:
            factory.close_all(linger_ms=0)

    def _client(self, factory: SocketFactory) -> RpcClient:
        return RpcClient(
            factory, self.settings.broker.uplink, self.source_id, self.timeout_s, immediate=True
        )

    def _deliver_one_batch(self, client: RpcClient) -> None:
        with self._lock:
            head = self._head
        topics: list[str] = []
        payloads: list[bytes] = []
        size = 0
        last_key = head
        for key, value in self.store.scan(QUEUE, start=QUEUE + be64(head)):
            topic, data = unpack(value)
            topics.append(topic.decode())
            payloads.append(data)
            size += len(value)
            last_key = un_be64(key[len(QUEUE) :])
            if len(payloads) >= self.batch or size >= MAX_BATCH_BYTES:
                break
        if not payloads:
            return
        client.call("control.broker", "ingest", {"topics": topics}, payloads=payloads)
        if not self.stats.link_up:
            log.info("uplink up: delivering %d queued frames", self.stats.queued)
        self.stats.link_up = True
        self.stats.last_error = ""
        with self._lock:
            # The queue may have overflowed past what we sent while we waited.
            start = max(self._head, head)
            if last_key + 1 > start:
                self.store.delete_range(QUEUE + be64(start), QUEUE + be64(last_key + 1))
                self._head = last_key + 1
            self.stats.delivered += len(payloads)
            self.stats.queued = self._tail - self._head
