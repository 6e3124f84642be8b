"""The alerter's per-rule and per-sink figures for /metrics (see daemoneye.metrics):
what dedup and the rate limits held back, by rule and by sink. Sink workers report
their own delivery figures (`sink.<name>.*`)."""

from __future__ import annotations

from collections.abc import Mapping

from daemoneye.metrics import labelled

from .ratelimit import Limiter


def figures(
    deduped: Mapping[str, int], rule_limiter: Limiter, sink_limiters: Mapping[str, Limiter]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for rule, count in deduped.items():
        out[labelled("rule.suppressed", rule=rule, reason="dedup")] = count
    for rule, count in rule_limiter.held_by_name.items():
        out[labelled("rule.suppressed", rule=rule, reason="rate_limit")] = count
    for sink, limiter in sink_limiters.items():
        out[labelled("sink.rate_limited", sink=sink)] = limiter.held_by_name.get(sink, 0)
    return out
