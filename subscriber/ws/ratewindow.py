"""A connection's subscribe rate: a moving window of its own.

limits' in-memory store, the one ``MovingWindowRateLimiter`` offers without
Redis, keeps every connection's hits in one store whose expiry thread walks
all of its keys every 10 ms while any of them is hit, holding the GIL: with
10,000 connections that had each subscribed once, 100 subscribe requests a
second across them cost the server 32-37 % of a core, against the event loop
(docs/bench.md, finding 28). A connection's window is only its own last
``amount`` hits: a deque, which goes with the session. limits still reads the
rate (``20/second``), and the window is the same rule as limits' moving
window: at most ``amount`` hits in any ``expiry`` seconds, refused ones not
counted.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from limits import RateLimitItem


class MovingWindow:
    """At most ``rate.amount`` hits in any window of ``rate.get_expiry()`` s."""

    __slots__ = ("_amount", "_window_s", "_hits", "_clock")

    def __init__(self, rate: RateLimitItem, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._amount = rate.amount
        self._window_s = float(rate.get_expiry())
        self._hits: deque[float] = deque(maxlen=max(rate.amount, 1))
        self._clock = clock

    def hit(self) -> bool:
        """Count a hit and return True, or return False (not counted) when
        the window already holds ``amount`` of them."""
        if self._amount <= 0:
            return False
        now = self._clock()
        hits = self._hits
        if len(hits) == self._amount and now - hits[0] < self._window_s:
            return False
        hits.append(now)  # the oldest falls out of the full deque
        return True
