"""A circuit breaker per sink endpoint: closed, open after N failed attempts, half-open
(one trial) after a reset time; a good trial closes it, a bad one opens it again."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    failures_to_open: int
    reset_s: float
    state: str = "closed"  # closed | open | half_open
    failures: int = 0
    opened_at: float = 0.0
    opens: int = 0

    def allow(self, now: float) -> bool:
        """May a request go out now? Moves open -> half_open once the reset time passed."""
        if self.state == "open" and now - self.opened_at >= self.reset_s:
            self.state = "half_open"
        return self.state != "open"

    def retry_at(self) -> float:
        return self.opened_at + self.reset_s

    def success(self) -> bool:
        """Record a success; True when this closed the breaker."""
        was_open = self.state != "closed"
        self.state, self.failures = "closed", 0
        return was_open

    def failure(self, now: float) -> bool:
        """Record a failed attempt; True when this opened the breaker."""
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failures_to_open:
            opened = self.state != "open"
            self.state, self.opened_at = "open", now
            self.opens += opened
            return opened
        return False
