"""Request/reply over the broker's ROUTER `control` socket, always with a deadline.

Frames on the control socket (the broker's ROUTER adds/strips the peer identity):
  client -> broker:   [target, request envelope]
  broker -> service:  [client id, target, request envelope]
  service -> broker:  [REPLY_MARK, client id, reply envelope]
  broker -> client:   [reply envelope]
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from daemoneye import wire
from daemoneye.bus import Publisher, SocketFactory

REPLY_MARK = b"R"


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
        body = wire.rpc_request(request_id, target, verb, params, deadline_ns, payload, payloads)
        _, data = self.publisher.encode("control.rpc", "rpcRequest", body)
        try:
            self.sock.send_multipart([target.encode(), data], zmq.NOBLOCK)
        except zmq.Again:
            raise RpcTimeout(target, verb, "timeout", "the broker is not reachable") from None
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self.sock.poll(remaining_ms):
                raise RpcTimeout(
                    target, verb, "timeout", f"no reply within {timeout_s:g} s (peer dead or hung)"
                )
            frames = self.sock.recv_multipart()
            reply = _reply_of(frames)
            if reply is None or reply.requestId != request_id:
                continue  # a late reply to an earlier, timed-out request
            if not reply.ok:
                raise RpcError(target, verb, reply.errorCode, reply.error)
            return RpcResult(wire.rpc_result(reply), [bytes(p) for p in reply.payloads])

    def close(self) -> None:
        self.factory.close(self.sock, linger_ms=0)


def _reply_of(frames: list[bytes]) -> Any:
    if len(frames) != 1:
        return None
    try:
        envelope = wire.decode_envelope(frames[0])
    except wire.DecodeError:
        return None
    if wire.body_kind(envelope) != "rpcReply":
        return None
    return envelope.body.rpcReply


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
