"""The alerter's handlers called directly (no broker): dedup and summaries, rule limits,
rejected frames, history and dead-letter RPCs, over a real store and file sink."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from daemoneye import wire
from daemoneye.bus import Message
from daemoneye.config import load_settings
from daemoneye.service import Request, RpcFault
from daemoneye.services.alerter import service as alerter_service
from daemoneye.services.alerter.service import Alerter
from tests.conftest import close_in_process, open_in_process, wait_for, work_for
from tests.sink_lines import written_records

counter = iter(range(1, 10**9))


pytestmark = pytest.mark.usefixtures("no_host_config")


def make_alerter(tmp_path: Path, toml: str) -> Alerter:
    path = tmp_path / "a.toml"
    path.write_text(toml)
    run_dir = Path(f"/tmp/de-u-{os.getpid()}-{tmp_path.name[-8:]}")
    settings = load_settings(config_file=path, data_dir=tmp_path / "data", run_dir=run_dir)
    # messages fed by hand start mid-stream, and no broker runs to replay from
    settings.alerter.catch_up_new_streams = False
    return open_in_process(Alerter(settings))


close = close_in_process


def msg(rule: str = "r", exe: str = "/bin/x", severity: str = "high", kind: str = "alert",
        **body) -> Message:  # fmt: skip
    fields = {"ruleId": rule, "severity": severity, "title": f"{rule} fired", "timeNs": 5,
              "process": {"pid": 1, "exePath": exe, "cmdline": [exe, "-v"]}, **body}  # fmt: skip
    header = wire.Header("detector@h", "boot", next(counter), time.time_ns())
    data = wire.encode_envelope(header, kind, fields if kind != "empty" else None)
    return Message(f"alerts.{severity}", wire.decode_envelope(data), len(data), data)


def feed(svc: Alerter, *msgs: Message) -> None:
    """What the base's bus handler does: each message, then the end-of-burst flush."""
    for m in msgs:
        svc.on_message(m)
    svc.flush()


def window_read(svc: Alerter) -> Any:
    """The one timer of the coalescing window's bus read (see Alerter.on_drained)."""
    (read,) = [t for t in svc._timers if t.fn == svc._read_window]
    return read


def lines(svc: Alerter) -> list[dict]:
    """The file sink's complete lines: the sink's worker may be mid-write."""
    return written_records(svc.settings.data_dir / "alerts.jsonl")


def test_identical_alerts_become_one_delivery_and_a_repeat_summary(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\ndedup_window_s = 60\n")
    now = [1000.0]
    svc.clock = lambda: now[0]
    try:
        feed(svc, *(msg() for _ in range(10_000)), msg(exe="/bin/other"))
        assert svc.dedup.suppressed == 9_999
        wait_for(lambda: len(lines(svc)) == 2, 5, "two distinct alerts")
        now[0] += 59
        svc._expire_dedup()
        assert svc.summaries == 0  # the window is still open
        now[0] += 1
        svc._expire_dedup()
        wait_for(lambda: len(lines(svc)) == 3, 5, "the summary")
        summary = lines(svc)[-1]
        assert summary["type"] == "repeat_summary" and summary["count"] == 9_999
        assert summary["process"]["exePath"] == "/bin/x"
    finally:
        close(svc)


def test_the_cmdline_is_part_of_the_default_dedup_key(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        feed(svc, msg())
        feed(svc, msg(process={"exePath": "/bin/x", "cmdline": ["/bin/x", "-other"]}))
        feed(svc, msg(dedupKey="same"))  # the rule's own key replaces the default
        feed(svc, msg(exe="/bin/y", dedupKey="same"))
        assert svc.accepted == 3 and svc.dedup.suppressed == 1
    finally:
        close(svc)


def test_rule_limit_holds_back_and_summarises(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\nrule_rate_limit = { rate = 1, burst = 3 }\n")
    try:
        feed(
            svc,
            *(msg(exe=f"/bin/{n}", severity="critical" if n == 9 else "low") for n in range(10)),
        )
        svc._summarise_held()
        wait_for(lambda: len(lines(svc)) == 4, 5, "3 alerts and a summary")
        summary = lines(svc)[-1]
        assert summary["type"] == "rate_limit_summary" and summary["count"] == 7
        assert summary["severity"] == "critical" and summary["heldByRule"] == {"r": 7}
        held = svc.rpc_list(Request("alerts.list", {"limit": 100}))["alerts"]
        assert sum(1 for a in held if a.get("heldBy") == ["rule"]) == 7
    finally:
        close(svc)


def test_frames_that_are_not_usable_alerts_are_rejected(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        feed(svc, msg(kind="empty"))
        feed(svc, msg(rule=""))
        feed(svc, msg())
        assert (svc.received, svc.rejected, svc.accepted) == (3, 2, 1)
    finally:
        close(svc)


def test_history_filters_and_bad_params(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        feed(svc, msg(rule="a", severity="low"))
        feed(svc, msg(rule="b", severity="high"))
        feed(svc, msg(rule="c", severity="critical"))
        wait_for(lambda: svc.workers[0].pending == 0, 5, "deliveries")
        listed = svc.rpc_list(Request("alerts.list", {"severity": "high"}))["alerts"]
        assert [a["ruleId"] for a in listed] == ["c", "b"]  # newest first
        assert listed[0]["deliveries"] == {"file": "delivered"}
        assert [a["ruleId"] for a in svc.rpc_list(Request("x", {"rule": "a"}))["alerts"]] == ["a"]
        after = svc.rpc_list(Request("x", {"after": listed[1]["key"]}))["alerts"]
        assert [a["ruleId"] for a in after] == ["c"]  # --follow: oldest first after a key
        with pytest.raises(RpcFault, match="severity 'urgent'"):
            svc.rpc_list(Request("x", {"severity": "urgent"}))
        with pytest.raises(RpcFault, match="must be integers"):
            svc.rpc_list(Request("x", {"limit": "many"}))
        with pytest.raises(RpcFault, match="no sink 'nope'"):
            svc.rpc_retry(Request("x", {"sink": "nope"}))
    finally:
        close(svc)


def test_history_list_reads_at_most_max_scan_records_a_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter nothing matches must not scan the whole history on the service loop: the
    call stops at MAX_SCAN records and says where to go on; paging finds everything."""
    monkeypatch.setattr(alerter_service, "MAX_SCAN", 3)
    svc = make_alerter(tmp_path, "[alerter]\ndedup_window_s = 0\n")
    try:
        for rule in ("a", "b", "c", "d", "e", "f", "g"):
            feed(svc, msg(rule=rule, severity="critical" if rule in "bf" else "low"))
        first = svc.rpc_list(Request("x", {"severity": "critical"}))
        assert [a["ruleId"] for a in first["alerts"]] == ["f"]  # g, f, e read
        seen, params = [a["ruleId"] for a in first["alerts"]], {"severity": "critical"}
        result = first
        while result["continue_from"]:
            params["before"] = result["continue_from"]
            result = svc.rpc_list(Request("x", params))
            seen += [a["ruleId"] for a in result["alerts"]]
        assert seen == ["f", "b"]
        every = svc.rpc_list(Request("x", {"limit": 2}))  # the limit ends it: no cursor
        assert [a["ruleId"] for a in every["alerts"]] == ["g", "f"]
        assert every["continue_from"] == 0
        oldest = svc.rpc_list(Request("x", {"after": 1, "severity": "critical"}))
        assert [a["ruleId"] for a in oldest["alerts"]] == ["b"] and oldest["continue_from"]
    finally:
        close(svc)


def test_sink_limits_and_severity_floors_are_per_sink(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    toml = f"""
[alerter]
dedup_window_s = 0
[[alerter.sinks]]
kind = "file"
name = "limited"
path = "{a}"
rate_limit = {{ rate = 1, burst = 2 }}
[[alerter.sinks]]
kind = "file"
name = "serious"
path = "{b}"
min_severity = "high"
"""
    svc = make_alerter(tmp_path, toml)

    read = written_records
    try:
        feed(svc, *(msg(exe=f"/bin/{n}", severity="low" if n % 2 else "high") for n in range(6)))
        svc._summarise_held()
        wait_for(lambda: len(read(a)) == 3 and len(read(b)) == 3, 5, "both sinks")
        assert [r["type"] for r in read(a)] == ["alert", "alert", "rate_limit_summary"]
        assert read(a)[-1]["count"] == 4 and "sink limited" in read(a)[-1]["title"]
        assert {r["severity"] for r in read(b)} == {"high"}  # the floor, and no summary
        held = svc.rpc_list(Request("alerts.list", {"limit": 100}))["alerts"]
        assert sum(1 for r in held if r.get("heldBy") == ["limited"]) == 4
    finally:
        close(svc)


def test_the_window_after_a_long_write_counts_from_the_write_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that outlasts `coalesce_s` (a storm's burst): the alerts that came
    meanwhile have waited that long already, so the bus is read again at once, not a
    whole window after the write ended."""
    svc = make_alerter(tmp_path, "[alerter]\ncoalesce_s = 0.05\n")
    try:
        assert svc.store is not None
        add = svc.store.add

        def add_then_work(*args: Any) -> None:
            add(*args)
            work_for(0.1)  # a long write

        monkeypatch.setattr(svc.store, "add", add_then_work)
        svc.on_message(msg(exe="/bin/first"))
        svc.on_drained()
        assert not svc._staged  # written
        assert window_read(svc).due <= time.monotonic()
    finally:
        close(svc)


def test_a_batched_burst_is_written_at_once_within_the_window(tmp_path: Path) -> None:
    """A burst of BATCHED_BURST alerts or more (a detector's batch in an alert storm) is
    a batch already: written at once, though a write was just made; a lone alert after
    it waits for the window as before."""
    svc = make_alerter(tmp_path, "[alerter]\ncoalesce_s = 1\n")  # long: a loaded CI
    try:
        assert svc.store is not None
        svc.on_message(msg(exe="/bin/first"))
        svc.on_drained()  # written: a window of 1 s begins
        for n in range(alerter_service.BATCHED_BURST - 1):
            svc.on_message(msg(exe=f"/bin/small{n}"))
        svc.on_drained()
        assert len(svc._staged) == alerter_service.BATCHED_BURST - 1  # a small burst waits
        for n in range(alerter_service.BATCHED_BURST):
            svc.on_message(msg(exe=f"/bin/storm{n}"))
        svc.on_drained()
        assert not svc._staged, "a batched burst waits for no window"
        assert sum(1 for _ in svc.store.history()) == 2 * alerter_service.BATCHED_BURST
        svc.on_message(msg(exe="/bin/lone"))
        svc.on_drained()
        assert len(svc._staged) == 1
    finally:
        close(svc)


def storm_then(svc: Alerter, *exes: str) -> None:
    """A batched burst (written at once: a storm is on), then `exes` as one small burst."""
    for n in range(alerter_service.BATCHED_BURST):
        svc.on_message(msg(exe=f"/bin/storm{n}"))
    svc.on_drained()
    assert not svc._staged
    for exe in exes:
        svc.on_message(msg(exe=exe))
    svc.on_drained()


def early_read_in(svc: Alerter) -> float:
    """How soon the coalescing window's bus read is due."""
    return window_read(svc).due - time.monotonic()


def test_a_batch_read_in_pieces_in_a_storm_is_read_again_soon(tmp_path: Path) -> None:
    """Within BATCHED_HOLD_S of a batched burst, a small burst may be the first piece
    of a detector's batch still arriving: the bus is read again PIECE_WAIT_S later,
    not a whole window later, and the pieces go together once BATCHED_BURST are
    unwritten. The first piece held the rest of its batch back a whole window."""
    svc = make_alerter(tmp_path, "[alerter]\ncoalesce_s = 1\n")  # long: a loaded CI
    try:
        assert svc.store is not None
        storm_then(svc, "/bin/piece0")
        assert len(svc._staged) == 1, "a piece waits for the rest of its batch"
        assert early_read_in(svc) <= alerter_service.PIECE_WAIT_S
        for n in range(1, alerter_service.BATCHED_BURST):  # the early read: the rest
            svc.on_message(msg(exe=f"/bin/piece{n}"))
        svc.on_drained()
        assert not svc._staged, "the pieces of a batch are written together"
        assert sum(1 for _ in svc.store.history()) == 2 * alerter_service.BATCHED_BURST
    finally:
        close(svc)


def test_a_steady_stream_is_read_early_once_a_window(tmp_path: Path) -> None:
    """A steady stream after a batched burst (no batch behind its first piece): one
    early read, then the rest of the window as before, not a read per alert."""
    svc = make_alerter(tmp_path, "[alerter]\ncoalesce_s = 1\n")
    try:
        storm_then(svc, "/bin/steady")
        assert early_read_in(svc) <= alerter_service.PIECE_WAIT_S
        read = window_read(svc)
        svc._timers.remove(read)  # the early read runs, as the loop runs a due timer
        read.fn()
        assert len(svc._staged) == 1  # nothing more came: it waits for the window
        assert early_read_in(svc) > 0.5, "the window's own read, not another early one"
    finally:
        close(svc)


def test_a_trickle_after_a_write_leaves_the_bus_for_the_window(tmp_path: Path) -> None:
    """No storm: a small burst within `coalesce_s` of the last write waits for the
    window with the bus left to fill (one read and one write a window)."""
    svc = make_alerter(tmp_path, "[alerter]\ncoalesce_s = 1\n")
    try:
        assert svc.subscriber is not None
        svc.on_message(msg(exe="/bin/first"))
        svc.on_drained()  # the first after a quiet spell: written at once
        svc.on_message(msg(exe="/bin/second"))
        svc.on_drained()
        assert len(svc._staged) == 1
        assert svc.subscriber.sock not in svc._watched
        assert any(t.fn == svc._read_window for t in svc._timers)
    finally:
        close(svc)


def test_a_steady_trickle_is_written_in_batches_a_first_alert_at_once(tmp_path: Path) -> None:
    """At low rates each bus burst is one alert: within `coalesce_s` of the last store
    write a burst waits for the timer, so writes, sink wake-ups and fsyncs go per batch;
    after a quiet spell the first alert is written (and delivered) at once."""
    svc = make_alerter(tmp_path, "[alerter]\ncoalesce_s = 1\n")  # long: a loaded CI
    try:
        svc.on_message(msg(exe="/bin/first"))
        svc.on_drained()
        assert not svc._staged  # the first after a quiet spell: written at once
        for n in range(3):
            svc.on_message(msg(exe=f"/bin/trickle{n}"))
            svc.on_drained()
        assert len(svc._staged) == 3  # waiting for the timer, with their cursors
        assert svc.store is not None and sum(1 for _ in svc.store.history()) == 1

        def timers_ran() -> bool:
            svc._run_timers()  # what the service loop does after each poll
            return not svc._staged

        wait_for(timers_ran, 5, "the coalesced write")
        assert sum(1 for _ in svc.store.history()) == 4
        wait_for(lambda: len(lines(svc)) == 4, 5, "all four delivered")
    finally:
        close(svc)
