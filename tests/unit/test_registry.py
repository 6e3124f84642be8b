"""The broker's registry: registration, heartbeats, health transitions, routing."""

from __future__ import annotations

import time

from daemoneye.services.broker.registry import Registry


def reg(service: str, sid: str, boot: str = "b1", interval_ms: int = 1000) -> dict:
    return {
        "service": service,
        "service_id": sid,
        "pid": 42,
        "boot_id": boot,
        "heartbeat_interval_ms": interval_ms,
        "verbs": ["health"],
    }


def test_register_refresh_and_restart() -> None:
    r = Registry()
    assert r.register(reg("collector", "c1"), b"route1").action == "register"
    assert r.register(reg("collector", "c1"), b"route2") is None  # a refresh
    assert r.entries["c1"].route == b"route2"
    assert r.register(reg("collector", "c1", boot="b2"), b"route3").action == "register"


def test_missed_heartbeats_make_unhealthy_then_removed() -> None:
    r = Registry(unhealthy_after_missed=3, remove_after_missed=6)
    r.register(reg("detector", "d1"), b"r")
    now = time.monotonic()
    assert r.sweep(now + 2.0) == []
    [change] = r.sweep(now + 3.5)
    assert (change.action, r.entries["d1"].state) == ("unhealthy", "unhealthy")
    assert r.sweep(now + 4.0) == []  # announced once
    [change] = r.sweep(now + 6.5)
    assert change.action == "removed" and "d1" not in r.entries


def test_heartbeat_revives_an_unhealthy_service() -> None:
    r = Registry()
    r.register(reg("alerter", "a1"), b"r")
    r.sweep(time.monotonic() + 3.5)
    change = r.heartbeat({"serviceId": "a1", "service": "alerter", "intervalMs": 1000})
    assert change.action == "healthy" and r.entries["a1"].state == "healthy"


def test_heartbeat_from_an_unregistered_service_is_listed_without_a_route() -> None:
    r = Registry()
    r.heartbeat({"serviceId": "x1", "service": "ledger", "intervalMs": 1000, "pid": 7})
    [row] = r.listing()
    assert row["service_id"] == "x1" and row["registered"] is False
    assert r.route_for("control.ledger").route is None


def test_routing_by_id_and_by_service() -> None:
    r = Registry()
    r.register(reg("collector", "collector@a"), b"ra")
    r.register(reg("collector", "collector@b"), b"rb")
    assert r.route_for("control.collector.collector@a").route == b"ra"
    assert r.route_for("control.collector").route == b"rb"  # the newest healthy
    r.entries["collector@b"].state = "unhealthy"
    assert r.route_for("control.collector").route == b"ra"
    assert r.route_for("control.detector") is None


def test_deregister() -> None:
    r = Registry()
    r.register(reg("ledger", "l1"), b"r")
    assert r.deregister("l1").action == "deregister"
    assert r.deregister("l1") is None and r.listing() == []


def test_messages_per_stream_from_heartbeat_positions() -> None:
    from daemoneye.services.broker.counts import OTHER, StreamCounts

    c = StreamCounts(max_streams=2)
    c.observe("col@h", "b1", [("events.process", 10), ("control.health", 3)])
    c.observe("col@h", "b1", [("events.process", 25), ("control.health", 3)])
    c.observe("col@h", "b1", [("events.process", 20)])  # a late, older heartbeat
    assert c.counts == {"events.process": 25, "control.health": 3}
    c.observe("col@h", "b2", [("events.process", 30)])  # a new boot continuing (a WAL)
    c.observe("det@h", "x1", [("alerts.high", 4)])  # a third stream: beyond the bound
    assert c.counts == {"events.process": 30, "control.health": 3, OTHER: 4}
    c.observe("col@h", "b3", [("events.process", 2)])  # restarted at 1
    assert c.counts["events.process"] == 32


def test_stream_positions_are_bounded() -> None:
    from daemoneye.services.broker.counts import StreamCounts

    c = StreamCounts(max_streams=8, max_positions=2)
    for i in range(5):  # sources invented by a publisher: only two tracked
        c.observe(f"s{i}", "b", [("t.x", 1)])
    for i in range(5):  # and the untracked are not counted again and again
        c.observe(f"s{i}", "b", [("t.x", 1)])
    assert c.counts == {"t.x": 2}
