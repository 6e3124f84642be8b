"""The ledger service's handlers called directly, without sockets."""

from __future__ import annotations

import json
import time

import pytest
import zmq

from daemoneye import wire
from daemoneye.bus import Gap, Message, Subscriber
from daemoneye.config import Settings
from daemoneye.ledger.note import open_checkpoint
from daemoneye.ledger.verify import verify_ledger
from daemoneye.service import Request, RpcFault
from daemoneye.services.ledger.service import Ledger, replayable
from tests.conftest import wait_for


def envelope(kind: str, body: dict, source: str = "src@h") -> tuple[object, bytes]:
    data = wire.encode_envelope(wire.Header(source, "boot", 1, time.time_ns()), kind, body)
    return wire.decode_envelope(data), data


@pytest.fixture
def service(settings: Settings) -> Ledger:
    settings.ledger.checkpoint_every_entries = 3
    svc = Ledger(settings)
    svc.setup()
    yield svc
    svc.teardown()


def test_start_and_stop_are_entries(settings: Settings) -> None:
    svc = Ledger(settings)
    svc.setup()
    start = svc.ledger.entry(0)
    assert (start.actor, start.action) == (svc.service_id, "ledger.start")
    detail = json.loads(svc.ledger.payload(0))
    assert detail["resumed_at"] == 0 and detail["key"] == svc.signer.verifier.vkey()
    svc.teardown()
    again = Ledger(settings)
    again.setup()
    try:
        assert again.ledger.entry(1).action == "ledger.stop"
        assert json.loads(again.ledger.payload(2))["resumed_at"] == 2
        assert verify_ledger(again.ledger, again.signer.verifier).ok
    finally:
        again.teardown()


def test_actor_action_and_payload(service: Ledger) -> None:
    base = service.writer.size
    audit, audit_bytes = envelope(
        "auditRecord", {"actor": "x", "action": "rule.load", "subject": "r", "timeNs": 1}
    )
    event, event_bytes = envelope("processEvent", {"kind": "start", "record": {"pid": 5}})
    assert service.record("audit.detector", audit, audit_bytes) == base
    assert service.record("events.process.start", event, event_bytes) == base + 1
    service.flush()
    first, second = service.ledger.entry(base), service.ledger.entry(base + 1)
    assert (first.actor, first.action) == ("src@h", "rule.load")
    assert (second.actor, second.action) == ("src@h", "events.process.start")
    assert service.ledger.payload(base + 1) == event_bytes


def test_messages_come_through_the_public_hooks_with_their_raw_bytes(service: Ledger) -> None:
    base = service.writer.size
    event, event_bytes = envelope("processEvent", {"kind": "start", "record": {"pid": 5}})
    service.on_message(Message("events.process.start", event, len(event_bytes), event_bytes))
    service.on_drained()  # group commit: a flush is due within commit_interval_ms
    assert service.writer.size == base + 1 and service.writer.pending == 1
    service.flush()
    assert service.ledger.payload(base) == event_bytes


def test_a_malformed_audit_action_is_a_decode_error(service: Ledger) -> None:
    """The base counts it as a malformed message; nothing half-recorded."""
    data = bytearray(envelope("auditRecord", {"actor": "x", "action": "ACTION", "timeNs": 1})[1])
    at = data.index(b"ACTION")
    data[at : at + 6] = b"\xff" * 6
    base = service.writer.size
    with pytest.raises(wire.DecodeError, match="malformed field"):
        service.record("audit.x", wire.decode_envelope(bytes(data)), bytes(data))
    assert service.writer.size == base


def test_group_commit_waits_for_the_interval_then_writes(service: Ledger) -> None:
    durable = service.writer.durable_size
    event, event_bytes = envelope("processEvent", {"kind": "start", "record": {"pid": 5}})
    service.record("events.process.start", event, event_bytes)
    service._commit_soon()
    service._commit_soon()  # a second read of the bus joins the same commit
    waiting = [t for t in service._timers if t.interval_s is None]
    assert len(waiting) == 1 and service.writer.durable_size == durable
    waiting[0].due = 0.0
    service._run_timers()
    assert service.writer.durable_size == durable + 1 and service.writer.pending == 0


def test_commit_interval_zero_commits_at_once(service: Ledger) -> None:
    service.cfg.commit_interval_ms = 0
    event, event_bytes = envelope("processEvent", {"kind": "start", "record": {"pid": 5}})
    size = service.record("events.process.start", event, event_bytes) + 1
    service._commit_soon()
    assert service.writer.durable_size == size


def test_checkpoint_every_n_entries_and_on_timer(service: Ledger) -> None:
    base = service.writer.size
    event, data = envelope("processEvent", {"kind": "stop"})
    for _ in range(4):
        service.record("events.process.stop", event, data)
    service.flush()  # 4 >= 3 since the last checkpoint: one over everything
    assert service.ledger.latest_checkpoint()[0] == base + 4
    service.record("events.process.stop", event, data)
    service.flush()  # one more only: not due yet
    assert service.ledger.latest_checkpoint()[0] == base + 4
    service._timed_checkpoint()  # T seconds have not passed since the last one
    assert service.ledger.latest_checkpoint()[0] == base + 4
    service._last_checkpoint_t -= service.cfg.checkpoint_every_s  # now they have
    service._timed_checkpoint()
    size, _, note = service.ledger.latest_checkpoint()
    assert size == base + 5
    assert open_checkpoint(note, service.signer.verifier).root == service.ledger.root(size)
    assert verify_ledger(service.ledger, service.signer.verifier).ok


def test_rpc_answers_and_bad_params(service: Ledger) -> None:
    event, data = envelope("processEvent", {"kind": "stop"})
    for _ in range(5):
        service.record("events.process.stop", event, data)
    service.flush(force_checkpoint=True)
    size = service.writer.size
    proof = service.rpc_prove(Request("prove", {"index": 2}))
    assert proof["tree_size"] == size and proof["leaf_index"] == 2 and "checkpoint" in proof
    assert service.rpc_checkpoint(Request("checkpoint", {}))["tree_size"] == size
    assert service.rpc_head(Request("head", {}))["size"] == size
    with pytest.raises(RpcFault, match="index must be a non-negative integer"):
        service.rpc_prove(Request("prove", {"index": -1}))
    with pytest.raises(RpcFault, match="not inside"):
        service.rpc_prove(Request("prove", {"index": 99}))
    cons = service.rpc_consistency(Request("consistency", {"old_size": 2}))
    assert cons["new_size"] == size and cons["proof"]


def test_missed_messages_are_recorded_as_gap_entries(service: Ledger) -> None:
    base = service.writer.size
    service.on_gap(Gap("collector@h", "events.process", 10, 14))
    service.flush()
    e = service.ledger.entry(base)
    assert (e.actor, e.action) == ("collector@h", "ledger.gap")
    assert json.loads(service.ledger.payload(base)) == {
        "stream": "events.process",
        "first_missing": 10,
        "last_missing": 14,
    }


def test_retention_drops_old_payloads_keeps_entries(service: Ledger) -> None:
    event, data = envelope("processEvent", {"kind": "stop"})
    for _ in range(3):
        service.record("events.process.stop", event, data)
    service.flush(force_checkpoint=True)
    last = service.writer.size - 1
    service.cfg.payload_retention_days = 1e-15  # everything recorded so far is "old"
    service._retention()
    assert service.ledger.payload(last) is None and service.ledger.entry(last).seq == last
    assert verify_ledger(service.ledger, service.signer.verifier).ok


def test_process_events_and_alerts_are_replayed_audit_records_are_not() -> None:
    """A collector answers replay from its WAL, a detector from its alert log."""
    assert replayable("events.process")
    assert replayable("alerts.high") and replayable("alerts.low")
    assert not replayable("audit.detector")
    assert not replayable("events.collector")


def test_a_read_that_pauses_commits_at_once(service: Ledger) -> None:
    """Reads pause read_interval_ms once the bus is dry: a commit due within the pause
    could gather nothing more, so it is written at the end of the read (no wake-up of
    its own); with a longer commit interval it waits as a group commit."""
    context = zmq.Context()
    sock = context.socket(zmq.SUB)  # a real socket with nothing waiting: read dry
    try:
        service.subscriber = Subscriber(sock, service.subscriptions, 1 << 20)
        _, event_bytes = envelope("processEvent", {"kind": "start", "record": {"pid": 5}})
        message = service.subscriber.accept([b"events.process.start", event_bytes])
        durable = service.writer.durable_size
        service.on_message(message)
        service.on_drained()
        assert service.writer.durable_size == durable + 1 and service.writer.pending == 0
        assert service.read_pauses == 1
        assert not any(t.fn == service._safe_flush for t in service._timers)

        service._resume_reads()
        service.cfg.commit_interval_ms = service.cfg.read_interval_ms + 1
        header = wire.Header("src@h", "boot", 2, time.time_ns())
        later = wire.encode_envelope(header, "processEvent", {"kind": "stop"})
        service.on_message(service.subscriber.accept([b"events.process.stop", later]))
        service.on_drained()
        assert service.writer.pending == 1  # waits for the group commit's timer
        assert any(t.fn == service._safe_flush for t in service._timers)
    finally:
        service.subscriber = None
        sock.close(0)
        context.term()


def test_teardown_records_what_waits_on_the_socket(settings: Settings) -> None:
    """Reads pause up to read_interval_ms: what waits on the socket when the ledger
    stops (other services' last audit records, at a shutdown) is recorded before its
    stop entry, not left to show as a gap after the restart."""
    svc = Ledger(settings)
    svc.setup()
    context = zmq.Context()
    pub, sub = context.socket(zmq.PUB), context.socket(zmq.SUB)
    try:
        pub.bind("inproc://ledger-teardown")
        sub.connect("inproc://ledger-teardown")
        svc.subscriber = Subscriber(sub, svc.subscriptions, 1 << 20)
        _, data = envelope("auditRecord", {"actor": "x", "action": "last.words", "timeNs": 1})

        def waiting() -> bool:  # resent until the subscription is in (same seq: one entry)
            pub.send_multipart([b"audit.tester", data])
            return bool(sub.poll(10))

        wait_for(waiting, 10, "the audit record to wait on the socket")
        size = svc.writer.size
        svc.teardown()
        svc = Ledger(settings)
        svc.setup()  # reopened: what the first one left on disk
        actions = [svc.ledger.entry(i).action for i in range(size, size + 2)]
        assert actions == ["last.words", "ledger.stop"]
    finally:
        svc.teardown()
        pub.close(0)
        sub.close(0)
        context.term()
