"""The request budget: an upstream's documented rate limit, never exceeded.

Shared by every role that calls a venue's REST API: the publisher's pollers
and feed repairs, the workers' backfills (each process counts its own
requests; give each a share of the venue's limit when several run at once).

The counting is the ``limits`` library's moving window (in-memory storage):
at no instant do the requests of the last window exceed the limit, which is
what providers enforce. ``limits`` only answers "may I?"; :meth:`Budget.acquire`
turns that into waiting, sleeping until the window's reset time. A 429 from
the upstream (its count and ours disagree, or another client shares the IP)
pauses the whole budget for the ``Retry-After`` time through :meth:`Budget.pause`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from pricepipe.exceptions import ConfigError


class Budget:
    """Rate limit(s) shared by every request to one upstream; thread-safe.

    ``rate_limit`` uses the ``limits`` notation: ``"60/minute;30/second"``
    (every limit applies). A request's ``cost`` is its weight.
    """

    def __init__(self, rate_limit: str, *, name: str = "upstream",
                 clock: Callable[[], float] = time.time) -> None:
        # ``clock`` must be the wall clock ``limits`` uses for its windows;
        # it is a parameter only so tests can drive :meth:`pause`.
        try:
            self.items: list[RateLimitItem] = parse_many(rate_limit)
        except ValueError as exc:
            raise ConfigError(f"invalid rate limit {rate_limit!r}: {exc}") from exc
        if not self.items:
            raise ConfigError(f"invalid rate limit {rate_limit!r}")
        self.name = name
        self.clock = clock
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self._lock = threading.Lock()
        self._paused_until = 0.0

    def try_acquire(self, cost: int = 1) -> float:
        """Take ``cost`` from every limit if all allow it: returns 0.0; else
        takes nothing and returns seconds to wait before trying again."""
        with self._lock:
            now = self.clock()
            if now < self._paused_until:
                return self._paused_until - now
            for item in self.items:
                if cost > item.amount:
                    raise ConfigError(f"request weight {cost} exceeds the limit {item}")
                if not self.limiter.test(item, self.name, cost=cost):
                    reset_s = self.limiter.get_window_stats(item, self.name).reset_time
                    return max(reset_s - now, 0.01)
            for item in self.items:
                self.limiter.hit(item, self.name, cost=cost)
            return 0.0

    def acquire(self, cost: int = 1, *, wait: Callable[[float], bool],
                max_wait_s: float | None = None) -> bool:
        """Block until ``cost`` is available and take it; ``wait(seconds)``
        sleeps and returns True to abandon (a stop). Returns False if
        abandoned, or when the budget would not grant ``cost`` within
        ``max_wait_s`` (None: wait as long as it takes); then nothing is taken."""
        waited_s = 0.0
        while True:
            delay_s = self.try_acquire(cost)
            if delay_s <= 0:
                return True
            if max_wait_s is not None and waited_s + delay_s > max_wait_s:
                return False
            if wait(delay_s):
                return False
            waited_s += delay_s

    def pause(self, seconds: float) -> None:
        """No request for ``seconds`` (a 429's ``Retry-After``)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self.clock() + seconds)
