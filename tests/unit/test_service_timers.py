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


NEVER = float("inf")


def test_a_timer_with_nothing_to_do_rests_until_the_loop_handles_something(
    settings: Settings,
) -> None:
    """`idle_until`: due with no work, the timer rests (no wake-up); once the loop has
    handled something that gave it work, it runs; a time it names, it runs then."""
    svc = Plain(settings)
    work: list[int] = []
    calls: list[int] = []
    timer = svc.every(
        60, lambda: calls.append(len(work)), idle_until=lambda: 0.0 if work else NEVER
    )
    svc._run_timers()
    assert calls == [] and timer.resting and timer.due == NEVER
    svc._active = True  # the loop handled a message, a request or a wake-up
    svc._wake_resting()
    svc._run_timers()
    assert calls == [] and timer.due == NEVER  # still nothing to do
    work.append(1)
    svc._active = True
    svc._wake_resting()
    svc._run_timers()
    assert calls == [1]
    # with work left after its run it keeps its interval; none left: it rests at once
    assert timer.due > 0 and not timer.resting
    work.clear()
    make_due(svc)
    svc._run_timers()
    assert calls == [1] and timer.resting


def test_a_rested_timer_keeps_its_interval_and_runs_at_the_time_it_names(
    settings: Settings,
) -> None:
    import time

    svc = Plain(settings)
    calls: list[float] = []
    soon = [NEVER]
    timer = svc.every(60, lambda: calls.append(1), idle_until=lambda: soon[0])
    timer.ran_at = time.monotonic()  # ran just now: the next run not before 60 s
    svc._run_timers()
    assert timer.resting
    soon[0] = 0.0
    svc._active = True
    svc._wake_resting()
    assert timer.due >= timer.ran_at + 60  # work, but its interval holds
    soon[0] = time.monotonic() + 3600
    timer.ran_at = float("-inf")
    svc._active = True
    svc._wake_resting()
    assert timer.due == soon[0]  # when the work is due
    svc._run_timers()
    assert calls == []


def test_a_resting_loop_sleeps_and_a_thread_wakes_it_for_work(settings: Settings) -> None:
    """A timer resting on NEVER does not make the loop spin, and a thread that gives
    it work and writes the wake-up pipe gets it run at once (not at IDLE_POLL_MS)."""
    import threading
    import time

    svc = Plain(settings)
    work: list[int] = []
    asked: list[int] = []

    def idle_until() -> float:
        asked.append(1)
        return 0.0 if work else NEVER

    svc.every(60, lambda: svc.stop("done"), idle_until=idle_until)
    svc._open_wakeup()
    try:
        giver = threading.Timer(0.5, lambda: (work.append(1), svc._wake()))
        giver.start()
        started = time.monotonic()
        svc._loop()
        assert time.monotonic() - started < 10  # the wake-up, not the 60 s poll bound
        giver.join()
    finally:
        svc._close_wakeup()
    assert len(asked) <= 5  # asked when due and after the wake-up: no busy loop


def test_the_heap_trim_rests_while_nothing_was_done(settings: Settings, monkeypatch) -> None:
    """The trim timer runs after work only, heartbeats aside (each publishes)."""
    from daemoneye import memory

    monkeypatch.setattr(memory, "trim", lambda: True)
    svc = Plain(settings)
    svc.open_sockets()  # a publisher (nothing listens: what it sends is dropped)
    try:
        svc._trim()
        assert svc._trim_idle_until() == NEVER
        svc.heartbeat()
        assert svc.publisher is not None and svc.publisher.sent > 0
        assert svc._trim_idle_until() == NEVER
        svc.audit("x")  # other publishing is work
        assert svc._trim_idle_until() == 0.0
        svc._trim()
        svc.events.add(3)
        assert svc._trim_idle_until() == 0.0
    finally:
        svc.factory.close_all(linger_ms=0)


def test_the_drain_after_a_batch_wait_counts_as_work(settings: Settings) -> None:
    """A batch's drain runs from the timers when its wait ends: a resting timer that the
    drain gave work (the detector's flush of staged history rows) is asked again at the
    loop's next turn, not left asleep until some other activity (a heartbeat, 5 s)."""
    svc = Plain(settings)
    drained: list[int] = []
    svc._on_bus_after_wait = lambda: drained.append(1)  # type: ignore[method-assign]
    timer = svc.every(60, lambda: None, idle_until=lambda: 0.0 if drained else NEVER)
    make_due(svc)
    svc._run_timers()
    assert timer.resting and timer.due == NEVER
    svc._active = False
    svc._bus_wait_due = 0.0  # a batch's wait, over
    svc._run_timers()
    assert drained == [1] and svc._active
    svc._wake_resting()
    assert timer.due < NEVER
