"""Incidents in the alerter, its handlers called directly over a real store and file
sink: one delivery per process tree and a rate-limited update, severity raises sent at
once, dedup repeats counted into the incident, sinks that want every alert."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemoneye import wire
from daemoneye.bus import Message
from daemoneye.service import Request
from daemoneye.services.alerter.incidents import tree_keys
from tests.conftest import wait_for
from tests.unit.test_alerter_service import close, feed, lines, make_alerter

pytestmark = pytest.mark.usefixtures("no_host_config")
_seq = iter(range(1, 10**9))
HOST = "h1"


def proc(pid: int, sid: int, argv: list[str], ticks: int | None = None) -> dict:
    return {"pid": pid, "ppid": sid, "startTicks": ticks or pid * 10, "sessionId": sid,
            "exePath": argv[0], "name": argv[0].rsplit("/", 1)[-1], "cmdline": argv}  # fmt: skip


def ancestor(pid: int, sid: int, name: str) -> dict:
    return {"pid": pid, "startTicks": pid * 10, "sessionId": sid, "name": name,
            "cmdline": [name], "source": "live"}  # fmt: skip


def alert(
    rule: str, process: dict, severity: str = "high", ancestry: list | None = None
) -> Message:
    fields = {
        "ruleId": rule, "ruleName": rule, "severity": severity, "title": f"{rule} fired",
        "timeNs": time.time_ns(), "hostname": HOST, "process": process,
        "ancestry": ancestry if ancestry is not None else [ancestor(process["sessionId"],
                                                                    process["sessionId"], "bash")],
    }  # fmt: skip
    header = wire.Header("detector@h", "boot", next(_seq), time.time_ns())
    data = wire.encode_envelope(header, "alert", fields)
    return Message(f"alerts.{severity}", wire.decode_envelope(data), len(data), data)


def settle(svc) -> None:
    """Send the pending incident update now, as its timer would once it is due."""
    svc._incident_updates(force=True)


def of_type(svc, kind: str) -> list[dict]:
    return [r for r in lines(svc) if r["type"] == kind]


def test_five_identical_processes_are_one_alert_line_counted_five_times(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        argv = ["/usr/bin/curl", "-s", "http://127.0.0.1:1/x"]
        feed(svc, *(alert("de-download", proc(500 + n, 40, argv)) for n in range(5)))
        settle(svc)
        wait_for(lambda: len(lines(svc)) == 2, 5, "the alert and the incident update")
        [first] = of_type(svc, "alert")  # one alert line: dedup ignores the pid
        assert first["count"] == 1 and first["process"]["pid"] == 500
        [update] = of_type(svc, "incident_update")
        [incident] = update["incidents"]
        assert incident["incidentId"] == first["incidentId"]
        assert incident["alerts"] == 5 and incident["rules"][0]["count"] == 5
        # the window's repeats were told by the incident: no repeat summary to follow
        now = svc.clock()
        svc.clock = lambda: now + svc.dedup.window_s + 1
        svc._expire_dedup()
        assert not of_type(svc, "repeat_summary") and svc.summaries == 1
    finally:
        close(svc)


def test_a_21_port_sweep_by_one_shell_is_one_incident(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        shell = proc(700, 700, ["bash", "-c", "for p in ...; do echo > /dev/tcp/..."])
        probes = [
            proc(701 + n, 700, ["bash", "-c", f"echo > /dev/tcp/127.0.0.1/{40000 + n}"])
            for n in range(21)
        ]
        chain = [ancestor(700, 700, "bash")]
        feed(svc, alert("de-reverse-shell", shell, "critical", []))
        feed(svc, *(alert("de-reverse-shell", p, "critical", chain) for p in probes))
        settle(svc)
        wait_for(lambda: of_type(svc, "incident_update"), 5, "the incident update")
        assert len(of_type(svc, "alert")) == 1
        listing = svc.rpc_incidents(Request("alerts.incidents", {}))["incidents"]
        assert len(listing) == 1
        assert (listing[0]["alerts"], listing[0]["processCount"]) == (22, 22)
        assert (listing[0]["delivered"], listing[0]["held"]) == (1, 21)
        held = svc.rpc_list(Request("alerts.list", {"limit": 100}))["alerts"]
        assert sum(1 for a in held if a.get("heldBy") == ["incident"]) == 21  # kept, not lost
    finally:
        close(svc)


def test_behaviours_get_at_most_one_and_a_half_deliveries_each_and_none_is_missed(
    tmp_path: Path,
) -> None:
    """Twelve behaviours, each a session running 3 to 5 commands that several rules
    catch: each gets its first alert at once, and one update covers them all."""
    svc = make_alerter(tmp_path, "[alerter]\n")
    rules = ["de-download", "de-tmp-exec", "de-reverse-shell", "de-discovery", "de-creds"]
    try:
        for b in range(12):
            sid = 1000 + 100 * b
            for c in range(3 + b % 3):
                feed(svc, alert(rules[c], proc(sid + 1 + c, sid, [f"/bin/cmd{c}", str(b)])))
        settle(svc)
        wait_for(lambda: of_type(svc, "incident_update"), 5, "the incident update")
        delivered = lines(svc)
        per_session = {r["process"]["sessionId"] for r in of_type(svc, "alert")}
        assert per_session == {1000 + 100 * b for b in range(12)}  # none went undetected
        assert len(delivered) / 12 <= 1.5, f"{len(delivered)} deliveries for 12 behaviours"
        assert len(of_type(svc, "incident_update")[0]["incidents"]) == 12
    finally:
        close(svc)


def test_a_raised_severity_goes_out_at_once_and_sets_the_incidents(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        feed(svc, alert("de-discovery", proc(801, 800, ["/usr/bin/id"]), "low"))
        feed(svc, alert("de-discovery-2", proc(802, 800, ["/usr/bin/uname"]), "low"))
        feed(svc, alert("de-reverse-shell", proc(803, 800, ["/bin/nc", "-e"]), "critical"))
        wait_for(lambda: len(lines(svc)) == 2, 5, "two alerts")
        assert [r["severity"] for r in of_type(svc, "alert")] == ["low", "critical"]
        [incident] = svc.rpc_incidents(Request("alerts.incidents", {}))["incidents"]
        assert incident["severity"] == "critical" and incident["delivered"] == 2
    finally:
        close(svc)


def test_a_sink_without_incidents_gets_every_alert_and_no_updates(tmp_path: Path) -> None:
    archive = tmp_path / "archive.jsonl"
    svc = make_alerter(
        tmp_path,
        f'[[alerter.sinks]]\nkind = "file"\n\n[[alerter.sinks]]\nkind = "file"\n'
        f'name = "archive"\npath = "{archive}"\nincidents = false\n',
    )
    try:
        feed(svc, *(alert(f"rule{n}", proc(901 + n, 900, [f"/bin/c{n}"])) for n in range(4)))
        settle(svc)
        wait_for(lambda: archive.exists() and archive.read_text().count("\n") == 4, 5, "all 4")
        wait_for(lambda: len(lines(svc)) == 2, 5, "one alert and one update")
        assert "incident_update" not in archive.read_text()
    finally:
        close(svc)


def test_separate_trees_and_a_quiet_window_make_separate_incidents(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\nincident_window_s = 60\n")
    now = [5000.0]
    svc.clock = lambda: now[0]
    try:
        feed(svc, alert("r1", proc(1101, 1100, ["/bin/a"])))
        feed(svc, alert("r2", proc(1201, 1200, ["/bin/b"])))  # another session
        now[0] += 61  # the first incident's window passes
        feed(svc, alert("r3", proc(1102, 1100, ["/bin/c"])))
        wait_for(lambda: len(of_type(svc, "alert")) == 3, 5, "three alerts")
        listing = svc.rpc_incidents(Request("alerts.incidents", {}))["incidents"]
        assert sorted(i["state"] for i in listing) == ["closed", "closed", "open"]
        first, second, third = of_type(svc, "alert")
        assert len({first["incidentId"], second["incidentId"], third["incidentId"]}) == 3
    finally:
        close(svc)


def test_tree_keys_follow_the_session_and_ancestors_below_its_leader() -> None:
    record = {
        "hostname": "h",
        "process": {"pid": 30, "startTicks": 3, "sessionId": 10},
        "ancestry": [
            {"pid": 20, "startTicks": 2, "sessionId": 10},  # below the leader
            {"pid": 10, "startTicks": 1, "sessionId": 10},  # the session leader: stop
            {"pid": 5, "startTicks": 0, "sessionId": 5},
        ],
    }
    assert tree_keys(record) == {"p|h|0|30|3", "p|h|0|20|2", "s|h|0|10"}
    # a process that called setsid: what launched it is another tree
    alone = {"hostname": "h", "process": {"pid": 40, "startTicks": 4, "sessionId": 40},
             "ancestry": [{"pid": 20, "startTicks": 2, "sessionId": 10}]}  # fmt: skip
    assert tree_keys(alone) == {"p|h|0|40|4", "s|h|0|40"}
    # a daemon's children in init's session are tied by their ancestors below init
    daemon = {"hostname": "h", "process": {"pid": 60, "startTicks": 6, "sessionId": 1},
              "ancestry": [{"pid": 50, "startTicks": 5, "sessionId": 1},
                           {"pid": 1, "sessionId": 1}]}  # fmt: skip
    assert tree_keys(daemon) == {"p|h|0|60|6", "p|h|0|50|5"}
    assert tree_keys({"process": {"pid": 30, "sessionId": 0}}) == set()  # no tree known
    assert tree_keys({"process": {"pid": 1, "sessionId": 1}, "ancestry": [{"pid": 0}]}) == set()


def test_a_restart_restores_open_incidents_and_tells_what_they_held(tmp_path: Path) -> None:
    svc = make_alerter(tmp_path, "[alerter]\n")
    try:
        feed(svc, *(alert(f"rule{n}", proc(1301 + n, 1300, [f"/bin/c{n}"])) for n in range(3)))
        [first] = wait_for(lambda: of_type(svc, "alert"), 5, "the first alert")
    finally:
        svc.factory.close_all(linger_ms=0)  # a crash: no teardown, no update sent
        assert svc.store is not None
        svc.store.close()
        for worker in svc.workers:
            svc.halt.set()
            worker.wake()
            worker.join(5)
    again = make_alerter(tmp_path, "[alerter]\n")
    try:
        [incident] = again.rpc_incidents(Request("alerts.incidents", {}))["incidents"]
        assert incident["incidentId"] == first["incidentId"] and incident["alerts"] == 3
        settle(again)  # the held alerts were never told: an update now
        [update] = wait_for(lambda: of_type(again, "incident_update"), 5, "the update")
        assert update["incidents"][0]["incidentId"] == first["incidentId"]
        feed(again, alert("rule9", proc(1309, 1300, ["/bin/c9"])))  # joins, is held
        assert [r["alertId"] for r in of_type(again, "alert")] == [first["alertId"]]
    finally:
        close(again)
