"""Attribution of alerts to corpus items, on hand-made records (no services)."""

from __future__ import annotations

import json

from tests.detection.harness import Attributor, Outcome, Parents, Phase
from tests.detection.model import Item

ITEM = Item("x", "x", "true\n", "execution", "T1059.004", source="test")
OTHER = Item("y", "y", "true\n", "execution", "T1059.004", source="test")


def _phase(item: Item, kind: str, sid: int, ticks: tuple[int, int], wall: tuple[float, float]):
    return Phase(item.id, kind, sid, ticks, wall, 0, False, True, "")


def _outcomes() -> list[Outcome]:
    return [
        Outcome(ITEM, phases=[_phase(ITEM, "run", 500, (1000, 1100), (10.0, 11.0))]),
        # the same session id later: pid 500 reused by another item's leader
        Outcome(
            OTHER,
            phases=[
                _phase(OTHER, "setup", 600, (1200, 1210), (12.0, 12.1)),
                _phase(OTHER, "run", 500, (1300, 1400), (13.0, 14.0)),
            ],
        ),
    ]


def _alert(sid: int, ticks: int, pid: int = 900, row: dict | None = None, when: float = 0):
    return {
        "ruleId": "r",
        "severity": "high",
        "process": {"pid": pid, "sessionId": sid, "startTicks": ticks},
        "rowJson": json.dumps(row or {}),
        "timeNs": int(when * 1e9),
    }


def test_session_and_start_time_pick_the_item() -> None:
    a = Attributor(_outcomes(), None)
    (phase, outcome), how = a.attribute(_alert(500, 1050))
    assert (outcome.item.id, phase.kind, how) == ("x", "run", "session")
    (phase, outcome), _ = a.attribute(_alert(500, 1350))
    assert (outcome.item.id, phase.kind) == ("y", "run")
    (phase, outcome), _ = a.attribute(_alert(600, 1205))
    assert (outcome.item.id, phase.kind) == ("y", "setup")


def test_a_reused_session_id_outside_every_window_is_nobodys() -> None:
    a = Attributor(_outcomes(), None)
    assert a.attribute(_alert(500, 1150)) == (None, "")  # between the two phases
    assert a.attribute(_alert(500, 5000)) == (None, "")  # long after
    assert a.attribute(_alert(0, 0)) == (None, "")  # no process at all


def test_a_process_that_left_its_session_is_followed_up_its_parents() -> None:
    parents = Parents()
    parents.add(900, 1055, 500, 500)  # python, in the item's session
    parents.add(901, 1060, 900, 901)  # the shell pty.spawn started: a session of its own
    a = Attributor(_outcomes(), parents)
    (_, outcome), how = a.attribute(_alert(901, 1060, pid=901))
    assert (outcome.item.id, how) == ("x", "lineage")


def test_an_aggregate_is_attributed_by_its_row_and_time() -> None:
    a = Attributor(_outcomes(), None)
    hit, how = a.attribute(_alert(0, 0, pid=0, row={"session_id": 500, "n": 4}, when=10.5))
    assert hit is not None and hit[1].item.id == "x" and how == "row.session_id"
    hit, _ = a.attribute(_alert(0, 0, pid=0, row={"session_id": 500}, when=13.5))
    assert hit is not None and hit[1].item.id == "y"
    assert a.attribute(_alert(0, 0, pid=0, row={"uid": 0}, when=10.5)) == (None, "")
    assert a.attribute(_alert(0, 0, pid=0, row={"session_id": 500}, when=5.0)) == (None, "")


def test_a_sessions_processes_and_what_they_ran() -> None:
    parents = Parents()
    parents.add(900, 1055, 500, 500, ("perl", "/usr/bin/perl", "perl -e socket"))
    parents.add(900, 1055, 500, 500, ("sh", "/usr/bin/dash", "/bin/sh -i"))  # perl's exec
    parents.add(901, 1060, 900, 500, ("id", "/usr/bin/id", "id"))
    parents.add(902, 2000, 500, 500, ("ls", "/usr/bin/ls", "ls"))  # a later phase
    seen = parents.session(500, (1000, 1100))
    assert [p["pid"] for p in seen] == [900, 901]
    assert [i["name"] for i in seen[0]["images"]] == ["perl", "sh"]
