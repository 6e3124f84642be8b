"""The alerter: dedup, rate limits, sinks and at-least-once delivery state."""
