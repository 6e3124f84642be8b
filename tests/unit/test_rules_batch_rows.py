"""A batch holding more matching rows than `max_rows` (the detector catching up on a
backlog or a replay applies up to `max_batch` events at once): every new matching row
still fires once. The 10-minute alert-storm soak lost 28 alerts this way: full batches
of 2,000 events held a little over 1,000 matching storm processes and the rule's
result was cut at `max_rows` = 1,000, silently."""

from __future__ import annotations

import itertools
import logging

import pytest

from daemoneye.rules.engine import Engine
from daemoneye.rules.live import EventIn
from daemoneye.rules.model import parse_rules_text

_ticks = itertools.count(50_000)
MARKER = "storm-7f3a"

STORM_RULE = f"""
id: storm
name: storm process
severity: low
sql: SELECT pid, name, cmdline FROM processes WHERE cmdline LIKE '%{MARKER} %'
"""
EVENT_RULE = f"""
id: storm-exec
name: storm exec event
severity: low
sql: SELECT pid, cmdline FROM process_events WHERE event = 'start' AND cmdline LIKE '%{MARKER} %'
"""
JOIN_RULE = f"""
id: storm-fanout
name: storm process beside every event
severity: low
sql: >-
  SELECT p.pid, e.eid FROM processes p JOIN process_events e
  WHERE p.cmdline LIKE '%{MARKER} %'
"""


def engine_with(text: str, **kwargs) -> Engine:
    engine = Engine(**kwargs)
    rules, problems = parse_rules_text(text, "test.yml")
    assert not problems
    engine.load([engine.validator.check(r) for r in rules])
    return engine


def storm_rec(pid: int, n: int) -> dict:
    return {
        "pid": pid,
        "ppid": 1,
        "startTicks": next(_ticks),
        "exePath": "/usr/bin/true",
        "name": "true",
        "cmdline": ["/usr/bin/true", MARKER, str(n)],
    }


def storm_events(count: int, lag: int, first_pid: int = 10_000) -> list[EventIn]:
    """`count` storm processes in collector order: each one's start, and its stop `lag`
    processes later (the exits of a storm trail its execs), the last stops at the end."""
    recs = [storm_rec(first_pid + i, i) for i in range(count)]
    events: list[EventIn] = []
    for i, r in enumerate(recs):
        events.append(EventIn("start", r))
        if i >= lag:
            events.append(EventIn("stop", recs[i - lag]))
    events += [EventIn("stop", r) for r in recs[count - lag :]]
    return events


def storm_numbers(firings) -> list[int]:
    return sorted(int(f.record["cmdline"][2]) for f in firings)


def test_a_full_batch_with_more_matches_than_max_rows_fires_for_each() -> None:
    """The soak's case at scale: max_batch 2,000 events, max_rows 1,000 (the defaults)
    and a batch of 1,005 storm processes whose last 5 stops trail into the next batch."""
    engine = engine_with(STORM_RULE, max_rows=1000)
    events = storm_events(1005, lag=5)
    batch, rest = events[:2005], events[2005:]
    firings, _ = engine.apply(batch)
    assert storm_numbers(firings) == list(range(1005))
    assert engine.apply(rest)[0] == []  # their stops do not fire again
    assert engine.rows_cut == 0


@pytest.mark.parametrize("max_rows", [1, 10, 49])
def test_no_new_row_is_lost_whatever_max_rows(max_rows: int) -> None:
    engine = engine_with(STORM_RULE, max_rows=max_rows)
    firings, _ = engine.apply(storm_events(50, lag=3))
    assert storm_numbers(firings) == list(range(50))


def test_an_event_driven_rule_fires_for_every_event_of_a_big_batch() -> None:
    engine = engine_with(EVENT_RULE, max_rows=10)
    firings, _ = engine.apply(storm_events(40, lag=2))
    assert storm_numbers(firings) == list(range(40))


def test_a_result_beyond_its_bound_is_counted_and_logged(caplog) -> None:
    """A join can give many rows per changed row: what is beyond max_rows plus the
    batch's changed rows is still cut (memory stays bounded), but said, not silent."""
    engine = engine_with(JOIN_RULE, max_rows=5)
    with caplog.at_level(logging.WARNING, logger="daemoneye.rules"):
        engine.apply(storm_events(20, lag=2))
    assert engine.rows_cut == 1
    assert engine.rules["storm-fanout"].rows_cut == 1
    assert any("storm-fanout" in r.getMessage() and "cut" in r.getMessage() for r in caplog.records)
