"""The stream sink: where every publisher's ticks go.

A thin I/O layer over :func:`pricepipe.streams.append_ticks` that adds:

* registration of symbols before their first ``XADD``;
* the backpressure policy (:mod:`pricepipe.backpressure`): ``INFO memory``
  is read at most every ``check_interval_s``, and Redis's ``OOM`` error
  reply is recognised per entry, so a full Redis never crashes a publisher;
* survival of Redis outages: connection errors are logged, counted and
  retried with redis-py's exponential backoff with jitter.

Delivery is at least once: a batch whose round trip failed on the
connection is sent again (Redis may have applied part of it). Entries
refused with ``OOM`` are known not to be stored and only those are retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff

from pricepipe import notify
from pricepipe.backpressure import Policy, is_oom_error, memory_usage
from pricepipe.keys import Keys
from pricepipe.streams import append_ticks, register_symbols
from pricepipe.tick import Tick

from .metrics import PublisherMetrics
from .stop import StopRequest

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class StreamSink:
    """Appends ticks to their symbols' streams under a backpressure policy.

    ``high_water`` and ``low_water`` are fractions of Redis ``maxmemory``:
    above ``high_water`` the policy applies until usage falls below
    ``low_water`` (the gap keeps it from flapping). Without ``maxmemory``
    only ``OOM`` replies trigger it.
    """

    def __init__(
        self, r: Any, keys: Keys, *, stop: StopRequest, metrics: PublisherMetrics,
        policy: Policy = Policy.BLOCK, high_water: float = 0.9, low_water: float = 0.8,
        check_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < low_water <= high_water <= 1:
            raise ValueError("want 0 < low_water <= high_water <= 1")
        self.r = r
        self.keys = keys
        self.stop = stop
        self.metrics = metrics
        self.policy = policy
        self.high_water = high_water
        self.low_water = low_water
        self.check_interval_s = check_interval_s
        self.clock = clock
        self.pressure = False
        self._checked_at: float | None = None
        self._registered: set[str] = set()
        self._backoff = ExponentialWithJitterBackoff(cap=5.0, base=0.05)

    # --- registration ---------------------------------------------------------------------

    def register(self, symbols: Iterable[str]) -> None:
        """Register symbols (creating their persist groups) once per sink."""
        new = sorted(set(symbols) - self._registered)
        if not new:
            return
        self._retrying(lambda: register_symbols(self.r, self.keys, new))
        self._registered.update(new)

    # --- publishing -----------------------------------------------------------------------

    def publish(self, ticks: Sequence[Tick]) -> int:
        """Append ``ticks``; returns how many were appended.

        Under the ``block`` policy this waits while Redis is full and returns
        once every tick is stored or a stop is requested (the rest are then
        counted as dropped with reason ``stop``). Under ``drop`` it returns at
        once, counting refused ticks with reason ``backpressure``.
        """
        if not ticks:
            return 0
        self.register({t.symbol for t in ticks})
        pending = list(ticks)
        appended = 0
        while pending:
            self._check_memory()
            if self.pressure:
                if self.policy is Policy.DROP:
                    self._drop(len(pending), "backpressure")
                    return appended
                if not self._wait_for_memory():
                    self._drop(len(pending), "stop")
                    return appended
            batch = pending
            results = self._retrying(lambda: self._send(batch))  # noqa: B023 (called now)
            if results is None:
                self._drop(len(pending), "stop")
                return appended
            refused = []
            for tick, result in zip(pending, results, strict=True):
                if isinstance(result, Exception):
                    if not is_oom_error(result):
                        raise result
                    refused.append(tick)
            appended += len(pending) - len(refused)
            self.metrics.published.inc(len(pending) - len(refused))
            if refused:
                self._enter_pressure("redis refused writes: OOM")
            pending = refused
        return appended

    def _send(self, ticks: Sequence[Tick]) -> list[Any]:
        pipe = self.r.pipeline(transaction=False)
        append_ticks(self.r, self.keys, ticks, pipeline=pipe)
        # raise_on_error=False: one refused entry must not hide which others
        # were stored, or a retry would duplicate them.
        return list(pipe.execute(raise_on_error=False))

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """``call()`` until it gets through Redis; None if a stop came first."""
        failures = 0
        while True:
            try:
                return call()
            except _CONNECTION_ERRORS as exc:
                failures += 1
                self.metrics.redis_errors.inc()
                delay_s = self._backoff.compute(failures)
                log.warning("redis unreachable (%s); retry %d in %.2fs", exc, failures, delay_s)
                if self.stop.wait(delay_s):
                    return None

    def _drop(self, count: int, reason: str) -> None:
        self.metrics.dropped.labels(reason=reason).inc(count)

    # --- backpressure ---------------------------------------------------------------------

    def _check_memory(self, *, force: bool = False) -> None:
        now = self.clock()
        if not force and self._checked_at is not None and \
                now - self._checked_at < self.check_interval_s:
            return
        self._checked_at = now
        try:
            usage = memory_usage(self.r.info("memory"))
        except _CONNECTION_ERRORS as exc:
            log.debug("INFO memory failed: %s", exc)
            return
        if usage.max_bytes <= 0:
            # No limit (any more): Redis never answers OOM without maxmemory.
            self._leave_pressure(0.0)
            return
        if not self.pressure and usage.fraction >= self.high_water:
            self._enter_pressure(f"redis memory at {usage.fraction:.0%} of maxmemory")
        elif self.pressure and usage.fraction < self.low_water:
            self._leave_pressure(usage.fraction)

    def _enter_pressure(self, why: str) -> None:
        if not self.pressure:
            log.warning("backpressure on (%s): policy %s", why, self.policy.value)
            notify.status(f"backpressure: {why}; policy {self.policy.value}")
        self.pressure = True
        self.metrics.backpressure.set(1)
        self._checked_at = self.clock()

    def _leave_pressure(self, fraction: float) -> None:
        if self.pressure:
            log.warning("backpressure off (redis memory at %.0f%% of maxmemory)", fraction * 100)
            notify.status("publishing")
        self.pressure = False
        self.metrics.backpressure.set(0)

    def _wait_for_memory(self) -> bool:
        """Block until memory is below the low-water mark; False if stopped."""
        while self.pressure:
            notify.watchdog()  # blocking on purpose is healthy, not hung
            if self.stop.wait(self.check_interval_s):
                return False
            self._check_memory(force=True)
        return True
