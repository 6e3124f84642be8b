"""Request/reply over the broker's ROUTER `control` socket, always with a deadline.

The only code that builds or parses control-socket frames and RPC envelopes: the
client (`RpcClient`), the service base and the broker all go through the functions
below. Frames on the control socket (the broker's ROUTER adds/strips the peer identity):
  client -> broker:   [target, request envelope]
  broker -> service:  [client id, target, request envelope]
  service -> broker:  [REPLY_MARK, client id, reply envelope]
  broker -> client:   [reply envelope]
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import zmq

from daemoneye import wire
from daemoneye.bus import Publisher, SocketFactory

REPLY_MARK = b"R"
RPC_TOPIC = "control.rpc"  # the stream RPC envelopes are numbered on; never sent on the bus


class RpcError(RuntimeError):
    """A request that failed: which target and verb, and why."""

    def __init__(self, target: str, verb: str, code: str, message: str) -> None:
        super().__init__(f"{target} {verb}: {message}")
        self.target = target
        self.verb = verb
        self.code = code


class RpcTimeout(RpcError):
    """No reply before the deadline: the peer is dead, hung or unreachable."""


@dataclass
class RpcResult:
    value: Any
    payloads: list[bytes] = field(default_factory=list)


class RpcFault(Exception):
    """Raised by an RPC handler to answer with an error code and message."""

    def __init__(self, code: str, message: str, request_id: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id  # where known: a request that failed to decode has none


@dataclass
class Request:
    verb: str
    params: dict[str, Any]
    payload: bytes = b""
    payloads: list[bytes] = field(default_factory=list)
    route: bytes | None = None  # the caller's ROUTER identity, where known
    source_id: str = ""


# --- envelopes ---------------------------------------------------------------------


def encode_request(
    publisher: Publisher,
    target: str,
    verb: str,
    params: dict[str, Any] | None = None,
    deadline_ns: int = 0,
    request_id: int = 0,
    payload: bytes = b"",
    payloads: list[bytes] | None = None,
) -> list[bytes]:
    """The frames a client sends to the broker: [target, request envelope]."""
    body = wire.rpc_request(request_id, target, verb, params, deadline_ns, payload, payloads)
    return [target.encode(), publisher.encode(RPC_TOPIC, "rpcRequest", body)[1]]


def encode_reply(publisher: Publisher, reply: dict[str, Any]) -> bytes:
    """A reply envelope (a `wire.rpc_reply` body)."""
    return publisher.encode(RPC_TOPIC, "rpcReply", reply)[1]


def result_reply(request_id: int, result: Any) -> dict[str, Any]:
    """The reply body for what a handler returned (a value, or an RpcResult)."""
    if isinstance(result, RpcResult):
        return wire.rpc_reply(request_id, result=result.value, payloads=result.payloads)
    return wire.rpc_reply(request_id, result=result)


def error_reply(request_id: int, code: str, message: str) -> dict[str, Any]:
    """The reply body of a request that failed: its error code and why."""
    return wire.rpc_reply(request_id, error=message, error_code=code)


def decode_request(data: bytes, route: bytes | None = None) -> tuple[int, Request]:
    """(request id, request) of a request envelope; RpcFault (with the request id when
    it was read) for one that is malformed, not a request, or past its deadline."""
    request_id = 0
    try:
        envelope = wire.decode_envelope(data)
        kind = wire.body_kind(envelope)
        if kind != "rpcRequest":
            raise RpcFault("bad_request", f"expected rpcRequest, got {kind}")
        body = envelope.body.rpcRequest
        request_id = body.requestId
        if body.deadlineNs and body.deadlineNs < time.time_ns():
            raise RpcFault("timeout", "request arrived after its deadline", request_id)
        request = Request(
            verb=body.verb,
            params=wire.rpc_params(body),
            payload=bytes(body.payload),
            payloads=[bytes(p) for p in body.payloads],
            route=route,
            source_id=envelope.sourceId,
        )
    except wire.DecodeError as exc:
        raise RpcFault("bad_request", str(exc), request_id) from None
    return request_id, request


def decode_reply(data: bytes) -> Any:
    """The RpcReply reader of a reply envelope, or None when it is not one."""
    try:
        envelope = wire.decode_envelope(data)
    except wire.DecodeError:
        return None
    if wire.body_kind(envelope) != "rpcReply":
        return None
    return envelope.body.rpcReply


def refusal(publisher: Publisher, request: bytes, code: str, message: str) -> bytes:
    """An error reply to a request envelope (answered for its request id, if readable)."""
    try:
        request_id = decode_request(request)[0]
    except RpcFault as exc:
        request_id = exc.request_id
    return encode_reply(publisher, error_reply(request_id, code, message))


# --- frames --------------------------------------------------------------------------


class Routed(NamedTuple):
    """A request on its way to a service: who asked, for which target, the envelope."""

    client: bytes
    target: bytes
    data: bytes


class Replied(NamedTuple):
    """A service's reply on its way back to the client that asked."""

    client: bytes
    data: bytes


def at_service(frames: list[bytes]) -> Routed | bytes | None:
    """What a service's DEALER received: a request routed to it, the broker's own reply
    (its envelope), or None for a frame of another shape."""
    if len(frames) == 3:
        return Routed(*frames)
    if len(frames) == 1:
        return frames[0]
    return None


def at_broker(frames: list[bytes]) -> Routed | Replied | None:
    """What the broker's ROUTER received (the sender's identity first): a client's
    request, a service's reply, or None for a frame of another shape."""
    if len(frames) == 4 and frames[1] == REPLY_MARK:
        return Replied(frames[2], frames[3])
    if len(frames) == 3:
        return Routed(*frames)
    return None


def reply_frames(client: bytes, reply: bytes) -> list[bytes]:
    """A service's reply to the broker, for `client`."""
    return [REPLY_MARK, client, reply]


def route_frames(route: bytes, request: Routed) -> list[bytes]:
    """The broker's ROUTER sending a request on to the service at `route`."""
    return [route, request.client, request.target, request.data]


def client_frames(client: bytes, reply: bytes) -> list[bytes]:
    """The broker's ROUTER sending a reply to `client`."""
    return [client, reply]


class RpcClient:
    """A DEALER that sends one request at a time and waits for its reply until a deadline."""

    _ids = itertools.count(1)

    def __init__(
        self,
        factory: SocketFactory,
        endpoint: str,
        source_id: str,
        default_timeout_s: float = 5.0,
        immediate: bool = False,
        monitor: int = 0,
    ) -> None:
        self.factory = factory
        # immediate: queue nothing for a peer not connected yet, so a request that timed
        # out can never be delivered late (the uplink relies on this).
        options = {"IMMEDIATE": 1} if immediate else {}
        self.sock = factory.connect(zmq.DEALER, endpoint, monitor=monitor, **options)
        self.publisher = Publisher(self.sock, source_id)  # stamps headers; never sends bus frames
        self.default_timeout_s = default_timeout_s

    def call(
        self,
        target: str,
        verb: str,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        payload: bytes = b"",
        payloads: list[bytes] | None = None,
    ) -> RpcResult:
        timeout_s = self.default_timeout_s if timeout_s is None else timeout_s
        request_id = next(self._ids)
        deadline = time.monotonic() + timeout_s
        deadline_ns = time.time_ns() + int(timeout_s * 1e9)
        frames = encode_request(
            self.publisher, target, verb, params, deadline_ns, request_id, payload, payloads
        )
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            raise RpcTimeout(target, verb, "timeout", "the broker is not reachable") from None
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self.sock.poll(remaining_ms):
                raise RpcTimeout(
                    target, verb, "timeout", f"no reply within {timeout_s:g} s (peer dead or hung)"
                )
            frames = self.sock.recv_multipart()
            reply = decode_reply(frames[0]) if len(frames) == 1 else None
            if reply is None or reply.requestId != request_id:
                continue  # a late reply to an earlier, timed-out request
            if not reply.ok:
                raise RpcError(target, verb, reply.errorCode, reply.error)
            return RpcResult(wire.rpc_result(reply), [bytes(p) for p in reply.payloads])

    def close(self) -> None:
        self.factory.close(self.sock, linger_ms=0)


def call_once(
    factory: SocketFactory,
    endpoint: str,
    target: str,
    verb: str,
    params: dict[str, Any] | None = None,
    timeout_s: float = 5.0,
    source_id: str = "console",
) -> RpcResult:
    """One request on a fresh DEALER, closed afterwards (what the console does)."""
    client = RpcClient(factory, endpoint, source_id, timeout_s)
    try:
        return client.call(target, verb, params, timeout_s)
    finally:
        client.close()
