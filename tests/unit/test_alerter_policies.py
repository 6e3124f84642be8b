"""Dedup windows, token buckets and the circuit breaker, on a controlled clock."""

from __future__ import annotations

from daemoneye.services.alerter.breaker import CircuitBreaker
from daemoneye.services.alerter.dedup import Deduper
from daemoneye.services.alerter.ratelimit import Limiter, TokenBucket


def test_first_alert_goes_out_and_repeats_are_counted() -> None:
    d = Deduper(window_s=10, max_keys=100)
    assert d.check("k", 0.0, 1) == (True, 0)
    for i in range(9_999):
        assert d.check("k", 1.0 + i / 10_000, 2 + i) == (False, 0)
    assert d.check("other", 2.0, 5) == (True, 0)
    assert d.suppressed == 9_999
    assert d.expire(9.9) == []
    ended = d.expire(10.0)
    assert [(k, r.count, r.first_ns, r.last_ns) for k, r in ended if r] == [("k", 9_999, 2, 10_000)]
    assert list(d.windows) == ["other"] and list(d.repeats) == []
    assert [(k, r) for k, r in d.expire(12.0)] == [("other", None)]  # ended, no repeats


def test_repeats_not_yet_summarised_are_carried_on_the_next_alert() -> None:
    d = Deduper(window_s=5, max_keys=100)
    d.check("k", 0.0, 1)
    d.check("k", 1.0, 2)
    d.check("k", 2.0, 3)
    assert d.check("k", 6.0, 4) == (True, 2)  # window over, no sweep ran yet
    assert d.expire(7.0) == []  # the carried repeats are not reported twice
    assert d.check("k", 8.0, 5) == (False, 0)  # the reopened window is open until 11
    assert [(k, r.count if r else 0) for k, r in d.expire(11.0)] == [("k", 1)]
    assert d.windows == {} and d.repeats == {}


def test_max_keys_evicts_the_oldest_with_its_repeats() -> None:
    d = Deduper(window_s=100, max_keys=2)
    d.check("a", 0.0, 1)
    d.check("a", 0.1, 2)
    d.check("b", 0.2, 3)
    d.check("c", 0.3, 4)
    ended = d.expire(1.0)
    assert [(k, r.count if r else 0) for k, r in ended] == [("a", 1)]
    assert list(d.windows) == ["b", "c"]


def test_reopened_keys_keep_window_start_order() -> None:
    """A key reopened after its window ended is expired by its new window, not the old
    place in line (which is skipped), and memory is not kept for ended windows."""
    d = Deduper(window_s=10, max_keys=1000)
    for n in range(5):
        d.check(n, float(n), n)  # windows 0..4 end at 10..14
    assert d.check(0, 10.5, 1) == (True, 0)  # ended, not swept: reopened until 20.5
    assert [k for k, _ in d.expire(12.0)] == [1, 2]
    assert 0 in d.windows
    assert [k for k, _ in d.expire(20.4)] == [3, 4]
    assert [k for k, _ in d.expire(20.5)] == [0]
    d.expire(1000.0)
    assert d.windows == {} and not d._keys and not d._ends


def test_window_zero_disables_dedup() -> None:
    d = Deduper(window_s=0, max_keys=10)
    assert all(d.check("k", 0.0, i) == (True, 0) for i in range(5))


def test_token_bucket_burst_then_rate() -> None:
    b = TokenBucket(rate=10, capacity=5)
    assert sum(b.take(0.0) for _ in range(20)) == 5
    assert sum(b.take(0.5) for _ in range(20)) == 5  # 0.5 s at 10/s, capped at 5
    assert sum(b.take(0.75) for _ in range(20)) == 2  # 2.5 tokens refilled
    assert TokenBucket(rate=0, capacity=1).take(0.0)  # 0: unlimited


def test_limiter_counts_what_it_holds_back() -> None:
    lim = Limiter(rate=1, capacity=2)
    allowed = [lim.allow("r1", 0.0, 100 + i, sev, "r1") for i, sev in
               enumerate(["low", "low", "critical", "medium"])]  # fmt: skip
    assert allowed == [True, True, False, False]
    held = lim.take_held()
    assert held["r1"].count == 2 and held["r1"].severity == "critical"
    assert (held["r1"].first_ns, held["r1"].last_ns) == (102, 103)
    assert lim.take_held() == {} and lim.total_held == 2


def test_breaker_opens_half_opens_and_closes() -> None:
    b = CircuitBreaker(failures_to_open=3, reset_s=10)
    assert b.allow(0) and not b.failure(0) and not b.failure(1)
    assert b.failure(2) and b.state == "open"
    assert not b.allow(5)
    assert b.allow(12) and b.state == "half_open"
    assert b.failure(12) and b.state == "open"  # a failed trial opens it again at once
    assert b.allow(22)
    assert b.success() and b.state == "closed" and b.failures == 0
    assert b.opens == 2
