"""The pacer: a fixed-rate schedule that does not drift. Pure code; the
caller supplies the (monotonic) clock readings.

Period ``k`` is due at ``anchor_s + k / rate_hz``. Sleeping "1 / rate" after
each batch would add the batch's own duration to every period and drift;
computing due times from the anchor does not. When the caller falls further
behind than ``max_lag_s`` (Redis blocked, machine suspended) the schedule is
re-anchored and the missed periods are counted in :attr:`Pacer.skipped`
rather than published in one late burst.
"""

from __future__ import annotations

import math


class Pacer:
    """Due times of periods at ``rate_hz``, starting at ``start_s``."""

    def __init__(self, rate_hz: float, start_s: float, *, max_lag_s: float = 1.0,
                 max_batch: int | None = None) -> None:
        if not (rate_hz > 0 and math.isfinite(rate_hz)):
            raise ValueError("rate must be a positive number of periods per second")
        self.rate_hz = rate_hz
        self.anchor_s = start_s
        self.max_lag_s = max_lag_s
        self.max_batch = max_batch
        self.done = 0
        self.skipped = 0

    def next_due_s(self) -> float:
        """When the next period is due."""
        return self.anchor_s + self.done / self.rate_hz

    def due(self, now_s: float) -> list[float]:
        """Due times (clock of ``now_s``) of every period due by ``now_s``, oldest
        first, at most ``max_batch``; marks them done."""
        if now_s - self.next_due_s() > self.max_lag_s:
            behind = int((now_s - self.anchor_s) * self.rate_hz) + 1 - self.done
            self.skipped += behind - 1
            self.anchor_s = now_s
            self.done = 0
        count = int(math.floor((now_s - self.anchor_s) * self.rate_hz)) + 1 - self.done
        if self.max_batch is not None:
            count = min(count, self.max_batch)
        if count <= 0:
            return []
        times = [self.anchor_s + (self.done + i) / self.rate_hz for i in range(count)]
        self.done += count
        return times
