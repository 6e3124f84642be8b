"""Ancestry without sockets: chains over the live table, the recent exits and a history
lookup; the ancestor_* SQL functions rules call; the detector's Ancestor dicts."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from daemoneye import wire
from daemoneye.rules.engine import Engine, Firing
from daemoneye.rules.lineage import RecentExits, chain
from daemoneye.rules.live import EventIn, normalise
from daemoneye.rules.model import Rule, parse_rules_text
from daemoneye.services.detector.ancestry import Ancestry
from daemoneye.services.detector.history import History
from daemoneye.services.detector.service import alert_body
from daemoneye.store import Store

_ticks = itertools.count(5000)


def rec(pid: int, ppid: int, path: str, argv: list[str] | None = None, **extra) -> dict:
    return normalise(
        {
            "pid": pid,
            "ppid": ppid,
            "startTicks": extra.pop("startTicks", next(_ticks)),
            "startTime": time.time(),
            "exePath": path,
            "name": path.rsplit("/", 1)[-1],
            "cmdline": argv or [path],
            "uid": 1000,
            "username": "ann",
            "sessionId": 40,
            **extra,
        }
    )


def engine_with(text: str) -> Engine:
    engine = Engine()
    rules, problems = parse_rules_text(text, "t.yml")
    assert not problems
    engine.load([engine.validator.check(r) for r in rules])
    return engine


def test_recent_exits_find_the_parent_not_a_later_reuse_of_its_pid() -> None:
    exits = RecentExits(max_entries=3)
    old = rec(10, 1, "/bin/old", startTicks=100)
    exits.add(old)
    exits.add(rec(10, 1, "/bin/reused", startTicks=300))
    assert exits.find(10, before_ticks=200)["exePath"] == "/bin/old"  # the child started at 200
    assert exits.find(10)["exePath"] == "/bin/reused"
    for pid in (11, 12):
        exits.add(rec(pid, 1, "/bin/x"))
    assert exits.find(10, before_ticks=200) is None and len(exits) == 3  # bounded


def test_a_chain_walks_live_then_exits_then_history_and_names_what_it_cannot_find() -> None:
    live_parent = rec(20, 19, "/bin/bash", startTicks=10)
    exited = rec(19, 18, "/usr/sbin/sshd", startTicks=5)
    from_history = rec(18, 17, "/usr/sbin/sshd-listener", startTicks=2)
    child = rec(21, 20, "/bin/sh", startTicks=20)
    exits = RecentExits()
    exits.add(exited)
    live = {20: live_parent}
    links = chain(
        child,
        8,
        lambda pid, ns, ticks: live.get(pid),
        exits,
        lambda pid, ns, ticks: from_history if pid == 18 else None,
    )
    assert [(r["pid"], source) for r, source in links] == [
        (20, "live"), (19, "exited"), (18, "history"), (17, "unknown"),
    ]  # fmt: skip
    assert len(chain(child, 2, lambda *a: live.get(a[0]), exits)) == 2  # the depth holds


def test_parents_that_exited_in_the_same_batch_are_named_by_rules_and_alerts() -> None:
    """The must-show in miniature: a three-level tree whose top two exited in the batch
    that started the leaf; the rule sees the chain, and so does the alert."""
    engine = engine_with(
        "id: nested\nname: shell under a web server\nseverity: high\n"
        "sql: SELECT pid, name, ancestor_names(pid) AS chain, ancestor_cmdlines(pid, 1) "
        "AS up FROM processes WHERE ',' || ancestor_names(pid) || ',' LIKE '%,nginx,%'\n"
    )
    top = rec(100, 1, "/usr/sbin/nginx", ["nginx: worker"], startTicks=10)
    middle = rec(101, 100, "/bin/sh", ["sh", "-c", "id; exit"], startTicks=11)
    leaf = rec(102, 101, "/usr/bin/id", ["id"], startTicks=12)
    firings, _ = engine.apply(
        [
            EventIn("start", top),
            EventIn("start", middle),
            EventIn("start", leaf),
            EventIn("stop", middle),
            EventIn("stop", top),
        ]
    )
    assert [(f.row["pid"], f.row["chain"], f.row["up"]) for f in firings] == [
        (101, "nginx", "nginx: worker"),
        (102, "sh,nginx", "sh -c id; exit"),
    ]
    ancestry = Ancestry(engine.tables, None, 8).of(firings[1].record)
    assert [(a["name"], a["cmdline"], a["exited"], a["source"]) for a in ancestry] == [
        ("sh", ["sh", "-c", "id; exit"], True, "exited"),
        ("nginx", ["nginx: worker"], True, "exited"),
    ]
    assert ancestry[0]["username"] == "ann" and ancestry[0]["startTicks"] == 11
    # the functions cost nothing for a pid nobody knows, and say so with NULL
    _, rows = engine.query("SELECT ancestor_names(999999)", 1.0, 1)
    assert rows == [(None,)]


def test_ancestors_older_than_memory_come_from_the_history(tmp_path: Path) -> None:
    engine = Engine()
    history = History(Store(tmp_path / "db"))
    grandparent = rec(300, 1, "/usr/bin/cron", ["cron", "-f"], startTicks=50)
    parent = rec(301, 300, "/bin/sh", ["sh", "-c", "job"], startTicks=60)
    _, batch = engine.apply([EventIn("start", grandparent), EventIn("start", parent)])
    assert history.add(batch.event_rows)
    fresh = Engine()  # a restarted detector: its memory is empty, its history is not
    child = rec(302, 301, "/tmp/job", ["/tmp/job"], startTicks=70)
    ancestry = Ancestry(fresh.tables, history, 8).of(child)
    assert [(a["pid"], a["name"], a["source"]) for a in ancestry] == [
        (301, "sh", "history"), (300, "cron", "history"),
    ]  # fmt: skip
    assert ancestry[0]["cmdline"] == ["sh -c job"]  # the history keeps argv joined


def test_the_alert_carries_its_ancestry_on_the_wire() -> None:
    engine = Engine()
    parent = rec(400, 1, "/bin/bash", ["bash", "-l"], startTicks=80)
    child = rec(401, 400, "/tmp/x", ["/tmp/x", "--go"], startTicks=90)
    engine.apply([EventIn("start", parent), EventIn("start", child)])
    body = alert_body(Firing(Rule("r", "R", "SELECT 1"), {"pid": 401}, child, "401:90"), "d", "h")
    body["ancestry"] = Ancestry(engine.tables, None, 8).of(child)
    header = wire.Header("detector@h", "boot", 1, time.time_ns())
    alert = wire.body_of(wire.decode_envelope(wire.encode_envelope(header, "alert", body)))
    first = alert.ancestry[0]
    assert (first.pid, first.name, list(first.cmdline), first.username) == (
        400, "bash", ["bash", "-l"], "ann"
    )  # fmt: skip
    assert first.source == "live" and not first.exited
    assert Ancestry(engine.tables, None, 0).of(child) == []  # ancestry_depth = 0: none
