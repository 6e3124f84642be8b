"""daemoneye.rpc without sockets: the control frames and RPC envelopes it alone builds
and parses (requests, replies, refusals, the frame shapes at a service and the broker)."""

from __future__ import annotations

import time

import pytest

from daemoneye import rpc, wire
from daemoneye.bus import Publisher


def publisher(source: str = "client@h") -> Publisher:
    return Publisher(None, source)  # type: ignore[arg-type]  # encodes only, never sends


def test_a_request_round_trips_with_its_id_params_and_payloads() -> None:
    target, data = rpc.encode_request(
        publisher(), "control.x", "echo", {"a": 1}, 0, 7, b"p", [b"q", b"r"]
    )
    assert target == b"control.x"
    request_id, request = rpc.decode_request(data, route=b"route-1")
    assert request_id == 7
    assert (request.verb, request.params, request.payload, request.payloads) == (
        "echo", {"a": 1}, b"p", [b"q", b"r"]
    )  # fmt: skip
    assert (request.route, request.source_id) == (b"route-1", "client@h")


def test_a_late_or_bad_request_is_a_fault_with_what_could_be_read() -> None:
    late = rpc.encode_request(publisher(), "control.x", "echo", None, time.time_ns() - 1, 9)[1]
    with pytest.raises(rpc.RpcFault, match="after its deadline") as caught:
        rpc.decode_request(late)
    assert (caught.value.code, caught.value.request_id) == ("timeout", 9)
    with pytest.raises(rpc.RpcFault, match="not a Cap'n Proto message") as caught:
        rpc.decode_request(b"\x00" * 12)
    assert (caught.value.code, caught.value.request_id) == ("bad_request", 0)
    reply = rpc.encode_reply(publisher(), rpc.result_reply(3, {"ok": 1}))
    with pytest.raises(rpc.RpcFault, match="expected rpcRequest, got rpcReply"):
        rpc.decode_request(reply)


def test_replies_results_errors_and_refusals() -> None:
    ok = rpc.decode_reply(
        rpc.encode_reply(publisher(), rpc.result_reply(3, rpc.RpcResult(5, [b"x"])))
    )
    assert (ok.requestId, ok.ok, wire.rpc_result(ok), list(ok.payloads)) == (3, True, 5, [b"x"])
    bad = rpc.decode_reply(rpc.encode_reply(publisher(), rpc.error_reply(4, "failed", "why")))
    assert (bad.ok, bad.errorCode, bad.error) == (False, "failed", "why")
    request = rpc.encode_request(publisher(), "control.gone", "ping", None, 0, 11)[1]
    refused = rpc.decode_reply(rpc.refusal(publisher("broker@h"), request, "unknown_target", "no"))
    assert (refused.requestId, refused.errorCode, refused.error) == (11, "unknown_target", "no")
    assert rpc.decode_reply(request) is None  # a request is not a reply
    assert rpc.decode_reply(b"junk") is None


def test_frame_shapes_at_a_service_and_at_the_broker() -> None:
    routed = rpc.at_service([b"client", b"control.x", b"env"])
    assert routed == rpc.Routed(b"client", b"control.x", b"env")
    assert rpc.at_service([b"env"]) == b"env"  # the broker's own reply
    assert rpc.at_service([b"a", b"b"]) is None
    reply = rpc.reply_frames(b"client", b"reply")
    assert rpc.at_broker([b"service-route", *reply]) == rpc.Replied(b"client", b"reply")
    asked = rpc.at_broker([b"client", b"control.x", b"env"])
    assert asked == rpc.Routed(b"client", b"control.x", b"env")
    assert rpc.route_frames(b"service-route", asked) == [
        b"service-route", b"client", b"control.x", b"env"
    ]  # fmt: skip
    assert rpc.client_frames(b"client", b"reply") == [b"client", b"reply"]
    assert rpc.at_broker([b"a", b"b", b"c", b"d", b"e"]) is None
