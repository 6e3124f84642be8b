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


def test_an_idle_loop_sleeps_until_its_timer_and_stop_wakes_it(settings: Settings) -> None:
    """With the wake-up pipe the poll is bounded by the next timer, not MAX_POLL_MS; a
    stop() from another thread (or a signal, through set_wakeup_fd) ends the sleep."""
    import threading
    import time

    from daemoneye import service as service_mod

    svc = Plain(settings)
    svc.every(3600, lambda: None, first_in_s=3600)  # the only timer: an hour away
    svc._open_wakeup()
    try:
        assert svc._poll_bound_ms == service_mod.IDLE_POLL_MS  # pytest runs on the main thread
        stopper = threading.Timer(0.3, svc.stop, ("test",))
        stopper.start()
        started = time.monotonic()
        svc._loop()
        # bound far below IDLE_POLL_MS (60 s): the stop woke the poll, not its timeout
        assert time.monotonic() - started < 10
        stopper.join()
    finally:
        svc._close_wakeup()
    assert svc._poll_bound_ms == service_mod.MAX_POLL_MS


def test_the_heap_is_trimmed_only_after_work(settings: Settings, monkeypatch) -> None:
    from daemoneye import memory

    trims: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(1) or True)
    svc = Plain(settings)
    svc._trim()  # the first: the start-up's garbage
    svc._trim()  # idle since: nothing freed, no walk of the heaps
    assert len(trims) == 1
    svc.events.add(5)
    svc._trim()
    svc._trim()
    assert len(trims) == 2


def test_no_service_replaces_the_heap_trim() -> None:
    """The base class's timer calls self._trim: a service method of that name for
    other work would silently stop its heap trims (the detector's did)."""
    import importlib

    for name in ("collector", "alerter", "detector", "ledger", "broker"):
        module = importlib.import_module(f"services.{name}.service")
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, Service):
                assert cls._trim is Service._trim, f"{name}: {cls.__name__}._trim"
