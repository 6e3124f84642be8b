"""Several collectors on one bus: the live table keeps processes of different pid
namespaces apart (same pid, different containers) and does not duplicate a process
two collectors on the same host both report."""

from __future__ import annotations

import time

from daemoneye.rules.engine import Engine
from daemoneye.rules.live import EventIn
from daemoneye.rules.model import parse_rules_text

HOST_NS, CONTAINER_A, CONTAINER_B = 4026531836, 4026532001, 4026532002
RULE = """
id: tmp-exec
name: execution from /tmp
severity: high
sql: "SELECT pid, path, collector, pid_namespace FROM processes WHERE path LIKE '/tmp/%'"
"""


def rec(pid: int, ns: int, path: str, ticks: int = 500, ppid: int = 1) -> dict:
    name = path.rsplit("/", 1)[-1]
    return {"pid": pid, "ppid": ppid, "startTicks": ticks, "startTime": time.time(),
            "exePath": path, "name": name, "cmdline": [path], "pidNamespace": ns}  # fmt: skip


def engine() -> Engine:
    eng = Engine()
    rules, problems = parse_rules_text(RULE, "ns.yml")
    assert not problems
    eng.load(eng.validator.check(r) for r in rules)  # type: ignore[misc]
    return eng


def rows(eng: Engine, sql: str) -> list[tuple]:
    return eng.query(sql, 1.0, 1000)[1]


def test_same_pid_in_two_namespaces_are_two_processes() -> None:
    eng = engine()
    a = EventIn("start", rec(7, CONTAINER_A, "/tmp/a"), collector="collector-a")
    b = EventIn("start", rec(7, CONTAINER_B, "/tmp/b"), collector="collector-b")
    firings, _ = eng.apply([a])
    more, _ = eng.apply([b])
    # neither overwrote (nor "pid-reused") the other: both rows live, both alerted
    assert rows(eng, "SELECT collector, path FROM processes WHERE pid = 7 ORDER BY collector") == [
        ("collector-a", "/tmp/a"),
        ("collector-b", "/tmp/b"),
    ]
    assert [f.row["collector"] for f in firings + more] == ["collector-a", "collector-b"]
    assert firings[0].identity != more[0].identity  # the alerter must not dedup them together
    # a modify in one namespace updates that one only; a stop removes that one only
    eng.apply([EventIn("modify", {**rec(7, CONTAINER_A, "/tmp/a"), "threads": 3},
                       collector="collector-a")])  # fmt: skip
    eng.apply([EventIn("stop", rec(7, CONTAINER_B, "/tmp/b"), collector="collector-b")])
    assert rows(eng, "SELECT collector, threads FROM processes WHERE pid = 7") == [
        ("collector-a", 3)
    ]


def test_parents_are_looked_up_in_the_same_namespace() -> None:
    eng = engine()
    eng.apply([
        EventIn("start", rec(1, CONTAINER_A, "/usr/bin/init-a", ticks=10), collector="ca"),
        EventIn("start", rec(1, CONTAINER_B, "/usr/bin/init-b", ticks=11), collector="cb"),
        EventIn("start", rec(9, CONTAINER_B, "/bin/sh", ticks=20, ppid=1), collector="cb"),
        EventIn("start", rec(8, CONTAINER_A, "/bin/sh", ticks=21, ppid=1), collector="ca"),
    ])  # fmt: skip
    parents = "SELECT pid, parent_path FROM processes WHERE pid IN (8, 9) ORDER BY pid"
    assert rows(eng, parents) == [(8, "/usr/bin/init-a"), (9, "/usr/bin/init-b")]
    assert rows(eng, "SELECT count(*) FROM processes WHERE pid = 1") == [(2,)]


def test_two_collectors_on_one_host_report_one_process_once() -> None:
    eng = engine()
    r = rec(4242, HOST_NS, "/tmp/dropper")
    first, _ = eng.apply([EventIn("start", r, collector="collector-1")])
    second, _ = eng.apply([EventIn("start", r, collector="collector-2")])
    third, _ = eng.apply([EventIn("modify", {**r, "threads": 2}, collector="collector-3")])
    assert rows(eng, "SELECT count(*) FROM processes WHERE pid = 4242") == [(1,)]
    assert len(first) == 1 and second == [] and third == []  # one alert, not three
    eng.apply([EventIn("stop", r, collector="collector-2")])
    assert rows(eng, "SELECT count(*) FROM processes WHERE pid = 4242") == [(0,)]


def test_namespace_unread_at_first_is_still_the_same_process() -> None:
    eng = engine()
    partial = rec(300, 0, "/tmp/early", ticks=77)
    eng.apply([EventIn("start", partial, collector="c")])
    eng.apply([EventIn("modify", rec(300, HOST_NS, "/tmp/early", ticks=77), collector="c")])
    assert rows(eng, "SELECT pid_namespace FROM processes WHERE pid = 300") == [(HOST_NS,)]
    eng.apply([EventIn("stop", partial, collector="c")])
    assert rows(eng, "SELECT count(*) FROM processes WHERE pid = 300") == [(0,)]


def test_snapshot_rebuild_of_one_collector_keeps_the_other_namespace() -> None:
    eng = engine()
    eng.apply([EventIn("start", rec(7, CONTAINER_A, "/tmp/a"), collector="collector-a")])
    eng.apply([EventIn("start", rec(7, CONTAINER_B, "/tmp/b"), collector="collector-b")])
    eng.rebuild([rec(8, CONTAINER_B, "/usr/bin/x")], "collector-b")
    assert rows(eng, "SELECT collector, pid FROM processes ORDER BY pid") == [
        ("collector-a", 7),
        ("collector-b", 8),
    ]
