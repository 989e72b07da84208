"""The stream sink: where every publisher's trades and quotes go.

A thin I/O layer over :func:`pricepipe.streams.append_events` that adds:

* registration of symbols before their first ``XADD``;
* the backpressure policy (:mod:`pricepipe.backpressure`): ``INFO memory``
  is read at most every ``check_interval_s``, and Redis's ``OOM`` error
  reply is recognised per append call (one per shard, all or nothing; see
  :func:`pricepipe.streams.append_events`), so a full Redis never crashes a
  publisher;
* survival of Redis outages: connection errors are logged, counted and
  retried with redis-py's exponential backoff with jitter.

A batch whose round trip failed on the connection may have been applied
in part or in whole (the reply is what got lost). Before sending it again the
sink reads the newest entry of each stream the batch writes to (a symbol's
trades and its quotes are two streams) and leaves out the events Redis
already holds, so a Redis restart does not append an event twice. Events
refused with ``OOM`` are known not to be stored and only those are retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff

from pricepipe import notify
from pricepipe.backpressure import Policy, is_oom_error, memory_usage
from pricepipe.codec import channel_of, decode_entry
from pricepipe.events import Event
from pricepipe.keys import Channel, Keys
from pricepipe.stop import StopRequest
from pricepipe.streams import append_events, register_symbols

from .batch import EventBatch
from .metrics import PublisherMetrics

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class StreamSink:
    """Appends events to their streams under a backpressure policy.

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

    def register(self, symbols: Iterable[str]) -> bool:
        """Register symbols (creating their persist groups) once per sink.

        A full Redis refuses the registration (``XGROUP CREATE`` and ``SADD``
        may grow memory, even for groups that exist): that is backpressure
        like a refused append. Under ``block`` this waits for memory and
        tries again; under ``drop`` (or on a stop) it returns False, nothing
        registered, and is tried again on the next call."""
        new = sorted(set(symbols) - self._registered)
        while new:
            try:
                self._retrying(lambda _failures: register_symbols(self.r, self.keys, new))
            except redis.ResponseError as exc:
                if not is_oom_error(exc):
                    raise
                self._enter_pressure("redis refused writes: OOM")
                if self.policy is Policy.DROP or not self._wait_for_memory():
                    return False
                continue
            self._registered.update(new)
            break
        return True

    # --- publishing -----------------------------------------------------------------------

    def publish(self, events: Sequence[Event]) -> int:
        """Append ``events`` (trades and quotes, in any mix), each to its
        symbol's stream of its kind, in order per stream; returns how many
        were appended.

        Under the ``block`` policy this waits while Redis is full and returns
        once every event is stored or a stop is requested (the rest are then
        counted as dropped with reason ``stop``). Under ``drop`` it returns at
        once, counting refused events with reason ``backpressure``.
        """
        if not events:
            return 0
        # A columnar batch (the GBM publisher's) stays one: iterating it
        # would build every event, the work it exists to avoid.
        pending: Sequence[Event]
        if isinstance(events, EventBatch):
            symbols: Iterable[str] = events.present_symbols()
            pending = events
        else:
            symbols = {e.symbol for e in events}
            pending = list(events)
        if not self.register(symbols):
            self._drop(len(events), "stop" if self.stop.requested else "backpressure")
            return 0
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
            sent = self._send_once(pending)
            if sent is None:
                self._drop(len(pending), "stop")
                return appended
            batch, results = sent
            if batch is pending and isinstance(batch, EventBatch) and not any(
                    map(isinstance, results, repeat(Exception))):  # (map: no Python frame)
                # The usual round trip: every event of the batch stored.
                appended += len(batch)
                for channel, count in batch.channel_counts().items():
                    self.metrics.published.labels(channel=str(channel)).inc(count)
                return appended
            refused: list[Event] = []
            stored: dict[Channel, int] = {}
            for event, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    if not is_oom_error(result):
                        raise result
                    refused.append(event)
                else:
                    channel = channel_of(event)
                    stored[channel] = stored.get(channel, 0) + 1
            # Events left out of the batch were stored by an earlier round trip
            # (the batch is a sub-sequence of the pending events).
            if batch is not pending:
                sent_counts = _channel_counts(batch)
                for channel, count in _channel_counts(pending).items():
                    stored[channel] = stored.get(channel, 0) + count - sent_counts.get(channel, 0)
            appended += len(pending) - len(refused)
            for channel, count in stored.items():
                self.metrics.published.labels(channel=str(channel)).inc(count)
            if refused:
                self._enter_pressure("redis refused writes: OOM")
            pending = refused
        return appended

    def _send_once(self, events: Sequence[Event]) -> tuple[Sequence[Event], list[Any]] | None:
        """Send ``events`` until a round trip gets through; returns the events
        sent in that round trip and their results (after a failed round trip,
        events found already stored are not sent again). None if a stop came
        first."""
        def attempt(failures: int) -> tuple[Sequence[Event], list[Any]]:
            batch = self._not_yet_stored(list(events)) if failures else events
            return batch, self._send(batch) if batch else []

        result: tuple[Sequence[Event], list[Any]] | None = self._retrying(attempt)
        return result

    def last_events(self, symbols: Iterable[str], channel: Channel) -> dict[str, Event]:
        """:meth:`newest`, retried through Redis outages; empty if a stop
        came first."""
        wanted = list(symbols)
        found: dict[str, Event] | None = self._retrying(
            lambda _failures: self.newest(wanted, channel))
        return found or {}

    def newest(self, symbols: Iterable[str], channel: Channel) -> dict[str, Event]:
        """The newest event of each symbol's ``channel`` stream, where it has
        one that decodes (one pipelined round trip)."""
        symbols = list(dict.fromkeys(symbols))
        pipe = self.r.pipeline(transaction=False)
        for symbol in symbols:
            pipe.xrevrange(self.keys.stream(symbol, channel), count=1)
        out: dict[str, Event] = {}
        for symbol, rows in zip(symbols, pipe.execute(), strict=True):
            if rows:
                try:
                    out[symbol] = decode_entry(channel, symbol, rows[0][1])
                except ValueError:
                    continue  # not ours to judge; the persist worker dead-letters it
        return out

    def _not_yet_stored(self, events: list[Event]) -> list[Event]:
        """``events`` less those a failed round trip already appended.

        The appends to one stream are applied in order, so if a stream's
        newest entry is one of its events here, that event and every earlier
        one of the stream are stored and the later ones are not. (Events of
        a stream never repeat: time moves on, pollers drop repeats.)
        """
        streams = list(dict.fromkeys((e.symbol, channel_of(e)) for e in events))
        newest: dict[tuple[str, Channel], Event] = {}
        for channel in dict.fromkeys(c for _, c in streams):
            found = self.newest([s for s, c in streams if c is channel], channel)
            newest.update({(symbol, channel): event for symbol, event in found.items()})
        stored_upto: dict[tuple[str, Channel], int] = {}
        for i, event in enumerate(events):
            stream = (event.symbol, channel_of(event))
            if newest.get(stream) == event:
                stored_upto[stream] = i
        if stored_upto:
            log.info("after a failed round trip %d stream(s) were already appended to; "
                     "not sending those events again", len(stored_upto))
        return [e for i, e in enumerate(events)
                if i > stored_upto.get((e.symbol, channel_of(e)), -1)]

    def _send(self, events: Sequence[Event]) -> list[Any]:
        # raise_on_error=False: one refused shard must not hide which others
        # were stored, or a retry would duplicate them.
        return append_events(self.r, self.keys, events, raise_on_error=False)

    def _retrying(self, call: Callable[[int], Any]) -> Any:
        """``call(failures_so_far)`` until it gets through Redis, with capped
        exponential backoff and jitter; None if a stop came first."""
        failures = 0
        while True:
            try:
                return call(failures)
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


def _channel_counts(events: Sequence[Event]) -> dict[Channel, int]:
    """How many of ``events`` there are per channel."""
    if isinstance(events, EventBatch):
        return events.channel_counts()
    counts: dict[Channel, int] = {}
    for event in events:
        channel = channel_of(event)
        counts[channel] = counts.get(channel, 0) + 1
    return counts
