"""Freshness: tells a genuine update from the same quote polled again. Pure code.

A quote is the same as the last one of its symbol when the upstream's
observation id (``version``, a trade id) is equal, or, without one, when
both the upstream timestamp and the price are equal. Quotes without an
upstream timestamp compare on price alone.
"""

from __future__ import annotations

import threading

from .providers.base import Quote


class Freshness:
    """The last quote seen per upstream symbol; thread-safe."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[object, ...]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def identity(quote: Quote) -> tuple[object, ...]:
        if quote.version is not None:
            return ("v", quote.version)
        return ("t", quote.ts_us, quote.price)

    def is_new(self, quote: Quote) -> bool:
        """True if ``quote`` differs from the last one remembered (then remembered)."""
        identity = self.identity(quote)
        with self._lock:
            if self._last.get(quote.upstream) == identity:
                return False
            self._last[quote.upstream] = identity
            return True

    def forget(self, quote: Quote) -> None:
        """Forget ``quote`` if it is the last one remembered (its publication
        failed, so its next poll must count as new)."""
        with self._lock:
            if self._last.get(quote.upstream) == self.identity(quote):
                del self._last[quote.upstream]
