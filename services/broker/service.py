"""The broker: forwards the bus (XSUB events-in -> XPUB events-out), routes RPC on its
ROUTER `control`, keeps the service registry and counts traffic per topic.

It never decodes event bodies on the forwarding path (only heartbeats, to track
health): each frame is checked for shape, size and a coherent Cap'n Proto segment
table, counted and forwarded. The XSUB subscribes to everything, so the broker
counts every topic whether or not anyone downstream listens.
"""

from __future__ import annotations

import struct
import time
from functools import partial
from typing import Any, ClassVar

import zmq

from daemoneye import wire
from daemoneye.bus import Publisher, Topics
from daemoneye.rpc import (
    Replied,
    Routed,
    at_broker,
    client_frames,
    refusal,
    route_frames,
)
from daemoneye.service import Request, RpcFault, Service, rpc

from .metrics import MetricsServer, heartbeat_of
from .registry import Registry, Transition
from .uplinks import build_uplinks

HEARTBEAT_PREFIX = Topics.HEARTBEAT.encode()
DRAIN_LIMIT = 5000  # frames per wake-up before the loop looks at its other sockets
BURST_FRAMES = 2 * 128  # checked [topic, envelope] frames held before they are sent
OTHER_TOPICS = b"(other)"
# plain ints: pyzmq converts its IntEnum flags on every call
NOBLOCK, RCVMORE, SNDMORE = int(zmq.NOBLOCK), int(zmq.RCVMORE), int(zmq.SNDMORE)


_SEGMENT_HEAD = struct.Struct("<II").unpack_from  # segment count - 1, first segment's words


def _plausible_envelope(data: bytes, size: int) -> bool:
    """A coherent segment table (one-segment messages checked inline, for speed)."""
    if size < 16 or size & 7:
        return False
    count_minus_one, words = _SEGMENT_HEAD(data)
    if not count_minus_one:  # one segment: its size must match
        return words * 8 + 8 == size
    try:
        wire.split_segments(data)
    except wire.DecodeError:
        return False
    return True


class Broker(Service):
    name: ClassVar[str] = "broker"
    registers: ClassVar[bool] = False  # it is the registry

    def __init__(self, settings: Any, service_id: str | None = None) -> None:
        super().__init__(settings, service_id)
        cfg = settings.broker
        self.registry = Registry(cfg.unhealthy_after_missed, cfg.remove_after_missed)
        self.max_topics = cfg.max_counted_topics
        self.topic_counts: dict[bytes, int] = {}  # bytes keys: no decode on the hot path
        self.forwarded = 0
        self.dropped: dict[str, int] = {"shape": 0, "oversize": 0, "malformed": 0, "rpc": 0}
        self.rpc_routed = 0
        self.rpc_unroutable = 0
        self._last_drop_log = 0.0
        self.uplink = build_uplinks(settings, self.service_id)  # CurveZMQ and/or NATS
        listen = settings.metrics
        self.metrics_server = MetricsServer(self, listen.address()) if listen.listen else None

    # --- sockets --------------------------------------------------------------

    def open_sockets(self) -> None:
        s = self.settings
        self.xsub = self.factory.bind(zmq.XSUB, s.endpoint("events-in"))
        self.xpub = self.factory.bind(zmq.XPUB, s.endpoint("events-out"))
        self.router = self.factory.bind(zmq.ROUTER, s.endpoint("control"), ROUTER_MANDATORY=1)
        self.xsub.send(b"\x01")  # subscribe to everything upstream
        self.publisher = Publisher(self.xpub, self.service_id, self.boot_id)
        self.watch(self.xsub, self._forward)
        self.watch(self.xpub, self._drain_subscriptions)
        self.watch(self.router, self._route)
        # pyzmq's Socket.send is a Python wrapper for routing ids and groups (~0.3 us a
        # call); the forwarding path sends plain bytes, so it calls the Cython send.
        self._send_frame = partial(zmq.backend.Socket.send, self.xpub)

    def niceness(self) -> int:
        return self.settings.broker.nice

    def setup(self) -> None:
        self.registry.register(self.registration(), route=None)
        self.every(min(1.0, self.settings.heartbeat_interval_s), self._sweep)
        if self.uplink is not None:
            self.uplink.start()
        if self.metrics_server is not None:
            why = self.metrics_server.start()
            if why:  # the bus matters more than its figures: say so and keep forwarding
                self.log.error("%s", why)
                self.notes.append(why)

    def teardown(self) -> None:
        own = self.registry.entries.get(self.service_id)
        if own is not None:
            self._announce(Transition(own, "deregister", "broker stopping"))
        if self.uplink is not None:
            self.uplink.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    # --- forwarding -----------------------------------------------------------

    def _forward(self) -> None:
        # The hot path, ~4 us a frame in Python: single-frame recv with int flags,
        # because recv_multipart/send_multipart cost ~3 us each in pyzmq's Python layer.
        # Checked frames are sent in bursts: sent one by one as they arrive, each send
        # woke libzmq's I/O thread to write that one frame (three syscalls a frame).
        max_bytes = self.settings.bus.max_event_bytes
        sock_in = self.xsub
        recv, more = sock_in.recv, sock_in.getsockopt
        counts = self.topic_counts
        count_of = counts.get
        head = _SEGMENT_HEAD
        uplink = self.uplink
        upward: list[tuple[bytes, bytes]] = []
        burst: list[bytes] = []  # topic, envelope, topic, envelope, ...
        forwarded = 0
        try:
            for _ in range(DRAIN_LIMIT):
                try:
                    topic = recv(NOBLOCK)
                except zmq.Again:
                    return
                if not more(RCVMORE):
                    self._drop("shape", "expected [topic, envelope], got 1 frame")
                    continue
                data = recv(NOBLOCK)  # a multipart message arrives whole: never Again here
                if more(RCVMORE):
                    self._drop("shape", f"expected [topic, envelope], got {self._discard_rest()}")
                    continue
                size = len(data)
                if size > max_bytes:
                    self._drop("oversize", f"{size} bytes on {topic[:80]!r} > {max_bytes}")
                    continue
                # the one-segment case of _plausible_envelope inline: no call per frame
                if (size < 16 or size & 7 or head(data) != (0, (size >> 3) - 1)) and (
                    not _plausible_envelope(data, size)
                ):
                    self._drop("malformed", f"topic {topic[:80]!r}: not a Cap'n Proto message")
                    continue
                seen = count_of(topic)  # one lookup less than `in` and `+=`
                if seen is not None:
                    counts[topic] = seen + 1
                elif not self._admit_topic(topic):
                    continue
                if topic.startswith(HEARTBEAT_PREFIX):
                    self._observe_heartbeat(data)
                burst += (topic, data)
                if len(burst) >= BURST_FRAMES:
                    forwarded += self._send_burst(burst)
                if uplink is not None and uplink.wants(topic):
                    upward.append((topic, data))
        finally:
            forwarded += self._send_burst(burst)
            self.forwarded += forwarded
            self.events.add(forwarded)
            if upward:
                uplink.offer(upward)

    def _send_burst(self, burst: list[bytes]) -> int:
        """Send [topic, envelope] pairs back to back; empty the list; return how many."""
        send = self._send_frame
        for i in range(0, len(burst), 2):
            send(burst[i], SNDMORE)
            send(burst[i + 1])
        sent = len(burst) >> 1
        burst.clear()
        return sent

    def _discard_rest(self) -> str:
        """Read off the remaining frames of an over-long message; say how many it had."""
        frames = 2
        while True:
            self.xsub.recv()
            frames += 1
            if not self.xsub.getsockopt(RCVMORE):
                return f"{frames} frames"

    def _admit_topic(self, topic: bytes) -> bool:
        """First sight of a topic: it must be UTF-8; counted by name while there is room."""
        try:
            topic.decode()
        except UnicodeDecodeError:
            self._drop("malformed", f"topic {topic[:80]!r} is not UTF-8")
            return False
        counts = self.topic_counts
        if len(counts) < self.max_topics:
            counts[topic] = 1
        else:
            counts[OTHER_TOPICS] = counts.get(OTHER_TOPICS, 0) + 1
        return True

    def _drain_subscriptions(self) -> None:
        """Downstream subscriptions need no forwarding: upstream sends everything."""
        for _ in range(DRAIN_LIMIT):
            try:
                self.xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _drop(self, kind: str, reason: str) -> None:
        self.dropped[kind] += 1
        now = time.monotonic()
        if now - self._last_drop_log > 1.0:  # one line a second at most; the counts are exact
            self._last_drop_log = now
            self.log.warning(
                "dropped frame: %s", reason, extra={"dropped": sum(self.dropped.values())}
            )

    def _observe_heartbeat(self, data: bytes) -> None:
        try:
            envelope = wire.decode_envelope(data)
        except wire.DecodeError as exc:
            self._drop("malformed", f"heartbeat: {exc}")
            return
        if wire.body_kind(envelope) != "heartbeat":
            return
        try:
            heartbeat = heartbeat_of(envelope.body.heartbeat, data)
        except wire.DecodeError as exc:
            self._drop("malformed", f"heartbeat: {exc}")
            return
        self._announce(self.registry.heartbeat(heartbeat))

    # --- heartbeats and the registry -----------------------------------------

    def heartbeat(self) -> None:
        assert self.publisher is not None
        self.events.sample()
        body = self.heartbeat_body()
        topic = Topics.heartbeat(self.service_id)
        _, data = self.publisher.encode(topic, "heartbeat", body)
        self.publisher.send_encoded(topic, data)
        self.registry.heartbeat(body)
        if self.uplink is not None:
            self.notes[:] = [n for n in self.notes if " uplink " not in n] + self.uplink.notes()
            if self.uplink.wants(topic.encode()):
                self.uplink.offer([(topic.encode(), data)])

    def metrics(self) -> dict[str, float]:
        return {
            "bus.forwarded": self.forwarded,
            "bus.dropped": sum(self.dropped.values()),
            "rpc.routed": self.rpc_routed,
            "rpc.unroutable": self.rpc_unroutable,
            "registry.services": len(self.registry.entries),
            "auth.refused": self.auth_refused(),
        }

    def _sweep(self) -> None:
        for change in self.registry.sweep():
            self._announce(change)

    def _announce(self, change: Transition | None) -> None:
        if change is None or self.publisher is None:
            return
        e = change.entry
        level = self.log.warning if change.action in ("unhealthy", "removed") else self.log.info
        level(
            "service %s",
            change.action,
            extra={"service_id": e.service_id, "kind": e.service, "reason": change.reason},
        )
        topic = Topics.LIFECYCLE if e.service == "collector" else Topics.SERVICE_LIFECYCLE
        self.publisher.publish(
            topic,
            "registration",
            {
                "action": change.action,
                "service": e.service,
                "serviceId": e.service_id,
                "pid": e.pid,
                "hostname": e.hostname,
                "bootId": e.boot_id,
                "heartbeatIntervalMs": int(e.interval_s * 1000),
                "rpcVerbs": e.verbs,
                "startedNs": e.started_ns,
                "reason": change.reason,
            },
        )

    # --- RPC routing ----------------------------------------------------------

    def _route(self) -> None:
        for _ in range(DRAIN_LIMIT):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            got = at_broker(frames)
            if isinstance(got, Replied):
                self._send_quietly(client_frames(got.client, got.data))  # a service's reply
            elif isinstance(got, Routed):
                self._request(got)
            else:
                self._drop("rpc", f"control message with {len(frames)} frames")

    def _request(self, request: Routed) -> None:
        client, data = request.client, request.data
        target = request.target.decode(errors="replace")
        if target == Topics.BROKER:
            self._send_quietly(client_frames(client, self.handle_request(data, route=client)))
            return
        entry = self.registry.route_for(target)
        if entry is None or entry.route is None:
            known = ", ".join(sorted(e.targets[0] for e in self.registry.entries.values()))
            self._refuse(
                client,
                data,
                "unknown_target",
                f"no service registered as {target} (registered: {known or 'none'})",
            )
            return
        try:
            self.router.send_multipart(route_frames(entry.route, request), zmq.NOBLOCK)
            self.rpc_routed += 1
        except zmq.ZMQError:
            self._refuse(
                client,
                data,
                "unreachable",
                f"{target} is registered but not connected (state {entry.state})",
            )

    def _refuse(self, client: bytes, data: bytes, code: str, message: str) -> None:
        self.rpc_unroutable += 1
        assert self.publisher is not None
        self._send_quietly(client_frames(client, refusal(self.publisher, data, code, message)))

    def _send_quietly(self, frames: list[bytes]) -> None:
        """A reply to a client that has gone away is dropped, not an error."""
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            self.rpc_unroutable += 1

    # --- the broker's own verbs ----------------------------------------------

    def auth_refused(self) -> int:
        auth = self.factory.authenticator
        return auth.refused if auth is not None else 0

    @rpc("ingest")
    def rpc_ingest(self, request: Request) -> dict[str, int]:
        """Frames forwarded by another host's broker uplink: checked, counted, published."""
        topics = request.params.get("topics", [])
        if not isinstance(topics, list) or len(topics) != len(request.payloads):
            raise RpcFault("bad_request", "ingest needs one topic per payload")
        max_bytes = self.settings.bus.max_event_bytes
        accepted = 0
        for name, data in zip(topics, request.payloads, strict=True):
            topic = str(name).encode()
            if len(data) > max_bytes or not _plausible_envelope(data, len(data)):
                self._drop(
                    "malformed", f"ingested frame on {topic[:80]!r} from {request.source_id}"
                )
                continue
            if topic in self.topic_counts:
                self.topic_counts[topic] += 1
            elif not self._admit_topic(topic):
                continue
            if topic.startswith(HEARTBEAT_PREFIX):
                self._observe_heartbeat(data)  # edge services appear in the center's status
            self.xpub.send_multipart([topic, data])
            accepted += 1
        self.forwarded += accepted
        return {"accepted": accepted, "dropped": len(request.payloads) - accepted}

    @rpc("uplink")
    def rpc_uplink(self, request: Request) -> dict[str, Any]:
        """Status of the uplinks; `{"action": "pause"|"resume", "kind": "curve"|"nats"}`
        holds or releases delivery (of one kind, or all)."""
        if self.uplink is None:
            raise RpcFault(
                "failed", "no uplink is configured (broker.uplink or broker.nats.enabled)"
            )
        action = request.params.get("action", "status")
        if action not in ("status", "pause", "resume"):
            raise RpcFault("bad_request", f"unknown uplink action {action!r}")
        try:
            chosen = self.uplink.pick(request.params.get("kind"))
        except ValueError as exc:
            raise RpcFault("bad_request", str(exc)) from None
        for member in chosen if action != "status" else ():
            if action == "pause":
                member.paused.set()
            else:
                member.paused.clear()
                member.wake()  # deliver what waits now, not at the next idle check
        return self.uplink.status()

    @rpc("register")
    def rpc_register(self, request: Request) -> dict[str, Any]:
        params = request.params
        if not params.get("service_id") or not params.get("service"):
            raise RpcFault("bad_request", "register needs service and service_id")
        self._announce(self.registry.register(params, request.route))
        return {"registered": params["service_id"]}

    @rpc("deregister")
    def rpc_deregister(self, request: Request) -> dict[str, Any]:
        service_id = str(request.params.get("service_id", ""))
        self._announce(self.registry.deregister(service_id))
        return {"deregistered": service_id}

    @rpc("registry")
    def rpc_registry(self, request: Request) -> list[dict[str, Any]]:
        return self.registry.listing()

    @rpc("stats")
    def rpc_stats(self, request: Request) -> dict[str, Any]:
        return {
            "forwarded": self.forwarded,
            "dropped": dict(self.dropped),
            "rpc_routed": self.rpc_routed,
            "rpc_unroutable": self.rpc_unroutable,
            "auth_refused": self.auth_refused(),
            "uplink": self.uplink.status() if self.uplink else None,
            "topics": {t.decode(): n for t, n in self.topic_counts.items()},
        }


SERVICE = Broker
