"""Token buckets, and the tally of what they held back (reported by summaries)."""

from __future__ import annotations

from dataclasses import dataclass, field

from daemoneye.wire import SEVERITIES

SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second; 0 means unlimited
    capacity: float
    tokens: float = -1.0
    last: float = 0.0

    def take(self, now: float) -> bool:
        if self.rate <= 0:
            return True
        if self.tokens < 0:  # first use: a full bucket
            self.tokens, self.last = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class Held:
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    severity: str = "info"  # the worst held back
    rules: dict[str, int] = field(default_factory=dict)

    def add(self, time_ns: int, severity: str, rule_id: str) -> None:
        self.count += 1
        self.first_ns = self.first_ns or time_ns
        self.last_ns = time_ns
        if SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(self.severity, 0):
            self.severity = severity
        self.rules[rule_id] = self.rules.get(rule_id, 0) + 1


class Limiter:
    """One bucket per name (a rule id or a sink), and what each held back since the
    last `take_held()`."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.buckets: dict[str, TokenBucket] = {}
        self.held: dict[str, Held] = {}
        self.total_held = 0
        self.held_by_name: dict[str, int] = {}  # since start, for /metrics

    def allow(self, name: str, now: float, time_ns: int, severity: str, rule_id: str) -> bool:
        if self.rate <= 0:
            return True
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = TokenBucket(self.rate, self.capacity)
        if bucket.take(now):
            return True
        self.held.setdefault(name, Held()).add(time_ns, severity, rule_id)
        self.total_held += 1
        self.held_by_name[name] = self.held_by_name.get(name, 0) + 1
        return False

    def take_held(self) -> dict[str, Held]:
        held, self.held = self.held, {}
        return held
