"""Services' timers at idle (Service.every's idle_until): each says it has nothing to
do while nothing arrived, so an idle service sleeps between heartbeats, and says so as
soon as there is work, so nothing waits longer than it did when they ran every tick."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemoneye import wire
from daemoneye.config import Settings, load_settings
from daemoneye.services.alerter.service import Alerter
from daemoneye.services.alerter.sinks.file import FileSink
from daemoneye.services.detector.service import Detector
from daemoneye.services.ledger.service import Ledger
from tests.conftest import close_in_process, open_in_process, wait_for

pytestmark = pytest.mark.usefixtures("no_host_config")

NEVER = float("inf")
SCHEDULED = """id: many_children
name: many children
severity: low
interval: 5
sql: "SELECT parent, count(*) AS n FROM processes GROUP BY parent HAVING n > 1000"
"""


def settings_for(tmp_path: Path, toml: str) -> Settings:
    path = tmp_path / "daemoneye.toml"
    path.write_text(toml)
    return load_settings(config_file=path, data_dir=tmp_path / "data", run_dir=tmp_path / "run")


def detector(tmp_path: Path, rules: str = "") -> Detector:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(parents=True)
    if rules:
        (rules_dir / "r.yml").write_text(rules)
    return open_in_process(
        Detector(
            settings_for(
                tmp_path,
                f'[detector]\nrules_dir = "{rules_dir}"\nsnapshot_timeout_s = 0.05\n'
                "history_wait_ms = 250\n",
            )
        )
    )


def start_event(det: Detector, seq: int) -> None:
    header = wire.Header("collector@t", "boot", seq, time.time_ns())
    record = {"pid": 1000 + seq, "ppid": 1, "startTicks": seq, "exePath": "/bin/x", "name": "x"}
    body = {"kind": "start", "source": "netlink", "timeNs": time.time_ns(), "record": record}
    data = wire.encode_envelope(header, "processEvent", body)
    det.take("events.process.start", wire.decode_envelope(data), "processEvent")


def test_an_idle_detector_flushes_only_what_waits_and_history_when_due(tmp_path: Path) -> None:
    det = detector(tmp_path)
    try:
        det.flush()
        det.write_history()
        assert det._flush_idle_until() == NEVER  # nothing pending, nothing staged
        start_event(det, 1)
        assert det._flush_idle_until() == 0.0  # an event no drain applied: at once
        det.flush()  # applied; its history row waits history_wait_ms for others
        assert det.history is not None and det.history.pending == 1
        due = det._flush_idle_until()
        assert 0 < due - time.monotonic() <= 0.25
        det.write_history()
        assert det._flush_idle_until() == NEVER
    finally:
        close_in_process(det)


def test_scheduled_rules_wake_the_detector_at_their_interval_only(tmp_path: Path) -> None:
    det = detector(tmp_path, SCHEDULED)
    try:
        assert det.engine is not None
        assert det._scheduled_idle_until() <= time.monotonic()  # just loaded: due at once
        det.run_scheduled()
        due = det._scheduled_idle_until()
        assert 4 < due - time.monotonic() <= 5  # `interval: 5`, not 4 times a second
        det.load_rules("reload")
        assert det._scheduled_idle_until() <= time.monotonic()
    finally:
        close_in_process(det)


def test_no_scheduled_rule_no_wake_up(tmp_path: Path) -> None:
    det = detector(tmp_path)
    try:
        det.run_scheduled()
        assert det._scheduled_idle_until() == NEVER
    finally:
        close_in_process(det)


def test_the_window_trim_waits_for_its_oldest_row_or_new_rows(tmp_path: Path) -> None:
    det = detector(tmp_path)
    try:
        assert det.engine is not None
        tables = det.engine.tables
        det._trim_events()
        assert det._trim_events_idle_until() == NEVER  # empty: nothing to drop
        start_event(det, 1)
        det.flush()
        assert det._trim_events_idle_until() == 0.0  # rows since: look at them
        det._trim_events()
        rest = det._trim_events_idle_until() - time.monotonic()
        assert 0 < rest <= 60  # the oldest goes in window_s (600 s): looked at again then
        tables.window_s = 0  # the window ends now: the row is due once its second is over
        det._trim_events()
        assert det._trim_events_idle_until() - time.monotonic() <= 2
        wait_for(lambda: det._trim_events_idle_until() <= time.monotonic(), 5, "row due")
        det._trim_events()
        assert det._oldest_event is None and det._trim_events_idle_until() == NEVER
        tables.window_s, tables.window_rows = 600, 100
        for seq in range(2, 103):  # one more than the row limit
            start_event(det, seq)
        det.flush()
        det._trim_events()
        assert det._trim_events_idle_until() > time.monotonic()
        start_event(det, 200)
        det.flush()
        assert det._trim_events_idle_until() == 0.0  # over the row limit: at once
    finally:
        close_in_process(det)


def test_the_ledger_checkpoint_timer_waits_for_growth_and_its_time(settings: Settings) -> None:
    svc = Ledger(settings)
    svc.setup()
    try:
        svc._timed_checkpoint()  # the first: over the start entry
        assert svc._checkpoint_idle_until() == NEVER  # the tree did not grow since
        data = wire.encode_envelope(
            wire.Header("src@h", "boot", 1, time.time_ns()), "processEvent", {"kind": "stop"}
        )
        svc.record("events.process.stop", wire.decode_envelope(data), data)
        due = svc._checkpoint_idle_until()
        assert due == pytest.approx(svc._last_checkpoint_t + svc.cfg.checkpoint_every_s)
    finally:
        svc.teardown()


def alerter(tmp_path: Path, toml: str = "") -> Alerter:
    settings = settings_for(tmp_path, "[alerter]\n" + toml)
    settings.alerter.catch_up_new_streams = False
    return open_in_process(Alerter(settings))


def test_an_idle_alerter_has_no_reports_dedup_or_incidents_to_look_at(tmp_path: Path) -> None:
    svc = alerter(tmp_path, "dedup_window_s = 60\n")
    try:
        wait_for(svc.reports.empty, 5, "the workers' start-up reports")  # none expected
        svc._publish_reports()
        assert svc._reports_idle_until() == NEVER
        assert svc._dedup_idle_until() == NEVER
        svc._incident_updates()
        assert svc._incidents_idle_until() == NEVER
        svc._report("alert.delivered", "file", {"keys": [1], "alert_ids": ["a"]})
        assert svc._reports_told  # a worker's report wakes the loop...
        assert svc._reports_idle_until() == 0.0  # ...and the timer has work
        svc._publish_reports()
        assert not svc._reports_told and svc._reports_idle_until() == NEVER
        header = wire.Header("detector@h", "boot", 1, time.time_ns())
        body = {"ruleId": "r", "severity": "high", "title": "r fired", "timeNs": 5,
                "process": {"pid": 1, "exePath": "/bin/x", "cmdline": ["/bin/x"]}}  # fmt: skip
        data = wire.encode_envelope(header, "alert", body)
        svc.take("alerts.high", wire.decode_envelope(data), "alert")
        svc.flush()
        ends = svc._dedup_idle_until()  # the window's end, not every second till then
        assert 59 < ends - time.monotonic() <= 60
    finally:
        close_in_process(svc)


def test_an_idle_file_sink_worker_sleeps_until_its_fsync_is_due(tmp_path: Path) -> None:
    svc = alerter(tmp_path, '[[alerter.sinks]]\nkind = "file"\nfsync = "interval"\n')
    try:
        [worker] = svc.workers
        sink = worker.sink
        assert isinstance(sink, FileSink)
        wait_for(lambda: worker.cond.acquire(blocking=False), 5, "the worker's lock")
        try:
            assert worker._wait_s() is None  # nothing queued, nothing unsynced: until notified
            sink._dirty = True
            sink._synced_at = time.monotonic()
            assert 0 < worker._wait_s() <= sink.config.fsync_interval_s
            sink._synced_at -= 10  # due, and flush() just failed: retried as before
            assert worker._wait_s() == pytest.approx(0.5)
            sink._dirty = False
        finally:
            worker.cond.release()
    finally:
        close_in_process(svc)


def test_an_open_incident_wakes_the_alerter_at_its_end_not_every_second(tmp_path: Path) -> None:
    from tests.unit.test_alerter_incidents import alert, proc
    from tests.unit.test_alerter_service import feed, make_alerter

    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        svc._incident_updates()
        assert svc._incidents_idle_until() == NEVER
        feed(svc, alert("rule1", proc(1301, 1300, ["/bin/c1"])))
        assert svc.incidents.open and svc._incidents_idle_until() == 0.0  # an alert: look
        svc._incident_updates()  # its first delivery went alone; nothing changed since
        ends = svc._incidents_idle_until()
        [incident] = svc.incidents.open.values()
        assert ends == pytest.approx(incident.last_seen + svc.incidents.window_s)
        feed(svc, alert("rule2", proc(1302, 1300, ["/bin/c2"])))  # same tree: a change
        svc._incident_updates()  # update_s has not passed: told later, not now
        update_at = svc.incidents._last_update + svc.incidents.update_s
        assert svc._incidents_idle_until() == pytest.approx(min(update_at, ends))
    finally:
        close_in_process(svc)
