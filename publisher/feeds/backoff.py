"""Reconnect delays: exponential, capped, jittered. Pure code.

Each failed attempt doubles the delay from ``base_s`` up to ``cap_s``; the
delay actually slept is drawn uniformly from its upper half ("equal
jitter"), so a fleet of feeds cut off together does not come back in step
(venues limit connection attempts per IP: Binance 300 per 5 minutes,
Coinbase 8 requests per second). :meth:`Backoff.reset` after a connection
proved healthy starts again from ``base_s``.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays before reconnect attempts; not thread-safe (one per connection)."""

    def __init__(self, *, base_s: float = 0.5, cap_s: float = 60.0,
                 rng: random.Random | None = None) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError("want 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()
        self.failures = 0

    def next_s(self) -> float:
        """The delay before the next attempt, seconds (and count a failure)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 62))
        self.failures += 1
        return ceiling / 2 + self.rng.random() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0
