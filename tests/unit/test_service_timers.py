"""The service loop's timers: `every` repeats, `once` runs a single time and is not
scheduled twice while it waits (group commits and batch waits rely on that)."""

from __future__ import annotations

from daemoneye.config import Settings
from daemoneye.service import Service


class Plain(Service):
    name = "plain"


def make_due(service: Service) -> None:
    for timer in service._timers:
        timer.due = 0.0


def test_once_runs_a_single_time_and_is_not_doubled(settings: Settings) -> None:
    svc = Plain(settings)
    calls: list[str] = []
    svc.once(60, lambda: calls.append("x"))
    fn = svc._timers[0].fn
    svc.once(60, fn)  # already waiting: not scheduled again
    assert len(svc._timers) == 1
    svc._run_timers()
    assert calls == []  # not due yet
    make_due(svc)
    svc._run_timers()
    svc._run_timers()
    assert calls == ["x"] and svc._timers == []
    svc.once(0, fn)  # once it ran, it can be asked for again
    svc._run_timers()
    assert calls == ["x", "x"]


def test_every_keeps_repeating(settings: Settings) -> None:
    svc = Plain(settings)
    calls: list[int] = []
    svc.every(60, lambda: calls.append(1))
    for _ in range(3):
        make_due(svc)
        svc._run_timers()
    assert calls == [1, 1, 1] and len(svc._timers) == 1
