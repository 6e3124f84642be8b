"""The broker: forwards the bus (XSUB events-in -> XPUB events-out), routes RPC on its
ROUTER `control`, keeps the service registry and counts traffic per stream.

Forwarding is libzmq's proxy in a thread (forwarder.py): no Python runs per frame.
Frames are checked where they are received, by every subscriber (`bus.Subscriber`),
which drops and counts what is malformed before its service acts on it. The broker's
Python loop reads the bus like any subscriber, for what it needs: heartbeats (health,
/metrics, messages per stream from their positions), its own lifecycle announcements,
and the topics an uplink carries off the host.
"""

from __future__ import annotations

import struct
import time
from typing import Any, ClassVar

import zmq

from daemoneye import wire
from daemoneye.bus import Publisher, Subscriber, Topics
from daemoneye.rpc import (
    Replied,
    Routed,
    at_broker,
    client_frames,
    refusal,
    route_frames,
)
from daemoneye.service import Request, RpcFault, Service, rpc

from .counts import StreamCounts
from .forwarder import Forwarder, ProxyStats
from .metrics import MetricsServer, heartbeat_of
from .registry import Registry, Transition
from .uplinks import build_uplinks

DRAIN_LIMIT = 5000  # messages per wake-up before the loop looks at its other sockets
JOIN_TIMEOUT_S = 5.0  # for the forwarder to pass the broker's own first frames
# plain ints: pyzmq converts its IntEnum flags on every call
SNDMORE = int(zmq.SNDMORE)


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
        self.streams = StreamCounts(cfg.max_counted_topics)
        self.forwarder: Forwarder | None = None
        self.proxy = ProxyStats()
        self.dropped: dict[str, int] = {"malformed": 0, "rpc": 0}
        self.rpc_routed = 0
        self.rpc_unroutable = 0
        # sources whose frames came by `ingest` (another host's uplink): not sent up again
        self.ingested_from: set[str] = set()
        self._last_drop_log = 0.0
        self.uplink = build_uplinks(settings, self.service_id)  # CurveZMQ and/or NATS
        listen = settings.metrics
        self.metrics_server = MetricsServer(self, listen.address()) if listen.listen else None

    @property
    def forwarded(self) -> int:
        return self.proxy.messages

    # --- sockets --------------------------------------------------------------

    def open_sockets(self) -> None:
        s, factory = self.settings, self.factory
        tag = f"broker-{id(self):x}"
        own_in, own_out = f"inproc://{tag}-in", f"inproc://{tag}-out"
        xsub = factory.bind(zmq.XSUB, s.endpoint("events-in"))
        xpub = factory.bind(zmq.XPUB, s.endpoint("events-out"))
        xsub.bind(own_in)  # the broker's own publisher, through the proxy like any other
        xpub.bind(own_out)  # the broker's own subscriber
        xsub.send(b"\x01")  # subscribe to everything upstream
        steer = factory.bind(zmq.PAIR, f"inproc://{tag}-steer")
        control = factory.connect(zmq.PAIR, f"inproc://{tag}-steer")
        self.forwarder = Forwarder(xsub, xpub, steer, control, self._forwarder_failed)
        self.forwarder.start()
        self.router = self.factory.bind(zmq.ROUTER, s.endpoint("control"), ROUTER_MANDATORY=1)
        # An XPUB, not a PUB: it hears the XSUB's subscription, so the broker knows when
        # its own frames (its registration, first) stop being dropped for want of one.
        own_pub = factory.connect(zmq.XPUB, own_in)
        self.publisher = Publisher(own_pub, self.service_id, self.boot_id)
        if not own_pub.poll(int(JOIN_TIMEOUT_S * 1000)):
            raise RuntimeError("the forwarder did not start")
        own_pub.recv()  # the subscription; later ones (forwarded upstream) are drained
        prefixes = (Topics.HEARTBEAT, Topics.SERVICE_LIFECYCLE)
        if self.uplink is not None:
            prefixes += tuple(p.decode() for p in self.uplink.prefixes)
        self.tap = Subscriber(factory.connect(zmq.SUB, own_out), prefixes, s.bus.max_event_bytes)
        self.watch(self.tap.sock, self._on_tap)
        self.watch(own_pub, self._drain_subscriptions)
        self.watch(self.router, self._route)

    def niceness(self) -> int:
        return self.settings.broker.nice

    def setup(self) -> None:
        self.registry.register(self.registration(), route=None)
        # Health is judged in missed heartbeats: a sweep each half interval (at most
        # 2.5 s apart) is soon enough, and wakes an idle broker less often
        hb = self.settings.heartbeat_interval_s
        self.every(max(min(1.0, hb), min(2.5, hb / 2)), self._sweep)
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
            self._await_own("deregister")
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.uplink is not None:
            self.uplink.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    # --- the broker's view of the bus ----------------------------------------

    def _await_own(self, action: str, timeout_s: float = 1.0) -> None:
        """Wait (bounded) until the broker's own announcement has come back through the
        forwarder: stopped before, the proxy would drop it with its queue."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg = self.tap.recv(int(left * 1000) + 1)
            if msg is None:
                return
            if (
                msg.kind == "registration"
                and msg.source_id == self.service_id
                and msg.body.action == action
            ):
                return

    def _forwarder_failed(self, why: str) -> None:  # from the forwarder's thread
        self.notes.append(why)
        self.stop(why)

    def _on_tap(self) -> None:
        tap, own = self.tap, self.service_id
        uplink = self.uplink
        upward: list[tuple[bytes, bytes]] = []
        for msg in tap.drain(DRAIN_LIMIT):
            if msg.kind == "heartbeat":
                self._observe_heartbeat(msg, own)
            if uplink is not None and msg.source_id not in self.ingested_from:
                topic = msg.topic.encode()
                if uplink.wants(topic):
                    upward.append((topic, msg.raw))
        self.dropped["malformed"] = tap.stats.dropped_malformed
        if upward:
            uplink.offer(upward)

    def _observe_heartbeat(self, msg: Any, own: str) -> None:
        try:
            body = msg.body
            self.streams.observe(
                msg.source_id, msg.boot_id, [(p.stream, p.lastSeq) for p in body.streams]
            )
            if msg.source_id != own:  # its own is recorded when sent
                self._announce(self.registry.heartbeat(heartbeat_of(body, msg.raw)))
        except wire.DecodeError as exc:
            self.tap.count_malformed(f"heartbeat from {msg.source_id}: {exc}", msg.topic)

    def _drain_subscriptions(self) -> None:
        """Subscriptions forwarded upstream to the broker's own publisher: not needed
        (the forwarder subscribes to everything)."""
        sock = self.publisher.sock if self.publisher is not None else None
        for _ in range(DRAIN_LIMIT):
            try:
                sock.recv(zmq.NOBLOCK)
            except (zmq.Again, AttributeError):
                return

    def _drop(self, kind: str, reason: str) -> None:
        self.dropped[kind] += 1
        now = time.monotonic()
        if now - self._last_drop_log > 1.0:  # one line a second at most; the counts are exact
            self._last_drop_log = now
            self.log.warning(
                "dropped frame: %s", reason, extra={"dropped": sum(self.dropped.values())}
            )

    def _refresh_proxy(self) -> None:
        if self.forwarder is not None:
            self.proxy = self.forwarder.stats()
            self.events.count = self.proxy.messages

    # --- heartbeats and the registry -----------------------------------------

    def heartbeat(self) -> None:
        assert self.publisher is not None
        self._refresh_proxy()
        self.events.sample()
        if self.uplink is not None:
            self.notes[:] = [n for n in self.notes if " uplink " not in n] + self.uplink.notes()
        body = self.heartbeat_body()
        # through the forwarder, like every heartbeat: the tap offers it to the uplink
        self.publisher.publish(Topics.heartbeat(self.service_id), "heartbeat", body)
        self.registry.heartbeat(body)

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
            try:
                topic.decode()
                source_id = wire.decode_parts(data)[2]
            except (UnicodeDecodeError, wire.DecodeError) as exc:
                self._drop("malformed", f"ingested frame on {topic[:80]!r}: {exc}")
                continue
            if len(self.ingested_from) < self.settings.broker.max_counted_topics:
                self.ingested_from.add(source_id)
            # through the forwarder like any frame: the tap sees an edge's heartbeats, so
            # edge services appear in the center's status
            self.publisher.sock.send(topic, SNDMORE)  # verbatim: another source's seq
            self.publisher.sock.send(data)
            accepted += 1
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
        self._refresh_proxy()
        return {
            "forwarded": self.forwarded,
            "frames_in": self.proxy.frames_in,
            "frames_out": self.proxy.frames_out,
            "dropped": dict(self.dropped),
            "rpc_routed": self.rpc_routed,
            "rpc_unroutable": self.rpc_unroutable,
            "auth_refused": self.auth_refused(),
            "uplink": self.uplink.status() if self.uplink else None,
            # messages per stream, from the sources' heartbeats (counts.py)
            "topics": dict(self.streams.counts),
        }


SERVICE = Broker
