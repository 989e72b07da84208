"""The simulator: the GBM publisher's loop (generator -> sink).

Two modes:

* real time (:meth:`Simulator.run_realtime`): one period (one event, a
  trade or a quote, per symbol) every ``1 / rate_hz`` seconds on a
  drift-free schedule (:class:`~pricepipe.publisher.pacer.Pacer`); the event
  time is the wall-clock time each period was due. Periods that fall due
  together (after a slow batch) go out in one pipelined batch.
* bulk (:meth:`Simulator.run_bulk`): ``count`` events as fast as possible, in
  pipelined batches of ``batch_size``; event times are the wall clock,
  strictly increasing by at least one microsecond per period.

Both stop after the current batch once a stop is requested.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from pricepipe import notify
from pricepipe.clock import now_us
from pricepipe.events import Event
from pricepipe.stop import StopRequest

from .batch import EventBatch
from .generator import GbmGenerator
from .metrics import PublisherMetrics
from .pacer import Pacer
from .sink import StreamSink

log = logging.getLogger(__name__)


class Simulator:
    """Publishes a :class:`GbmGenerator`'s trades and quotes through a :class:`StreamSink`."""

    def __init__(
        self, generator: GbmGenerator, sink: StreamSink, *, stop: StopRequest,
        metrics: PublisherMetrics, batch_size: int = 1000, log_interval_s: float = 10.0,
        max_lag_s: float = 1.0, batch_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic, wall_us: Callable[[], int] = now_us,
    ) -> None:
        self.generator = generator
        self.sink = sink
        self.stop = stop
        self.metrics = metrics
        self.periods_per_batch = max(1, batch_size // len(generator.symbols))
        self.log_interval_s = log_interval_s
        self.max_lag_s = max_lag_s
        self.batch_interval_s = max(batch_interval_s, 0.0)
        self.clock = clock
        self.wall_us = wall_us
        self.last_ts_us = 0
        self._ready = False
        self._logged_at = clock()
        self._logged_count = 0.0

    def run_bulk(self, count: int) -> int:
        """Publish ``count`` events in total (one per symbol per period, the
        last period cut short); returns how many were appended.

        The next batch is generated and encoded in a thread while this one
        is sent: the round trip to Redis (mostly spent waiting on the
        socket, without the GIL) and the encoding overlap. Batches are still
        made one after another, in order, from the one generator."""
        remaining = count
        appended = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gbm-ahead") as ahead:
            upcoming = ahead.submit(self._bulk_batch, remaining) if remaining > 0 else None
            while upcoming is not None and not self.stop.requested:
                events = upcoming.result()
                remaining -= len(events)
                upcoming = ahead.submit(self._bulk_batch, remaining) if remaining > 0 else None
                appended += self.sink.publish(events)
                self._batch_done()
            if upcoming is not None:
                # Stopped with the next batch made (or being made): its events
                # were never appended, so nothing is lost, but say so.
                failed = upcoming.exception()
                if failed is not None:
                    log.warning("stopped: the batch generated ahead failed (%s); none of it "
                                "was published", failed)
                else:
                    log.info("stopped: %d generated events ahead were not published",
                             len(upcoming.result()))
        self._report(final=True)
        return appended

    def _bulk_batch(self, remaining: int) -> Sequence[Event]:
        """The next bulk batch of at most ``remaining`` events, encoded for the sink."""
        n = len(self.generator.symbols)
        periods = min(self.periods_per_batch, math.ceil(remaining / n))
        base_us = max(self.wall_us(), self.last_ts_us + 1)
        ts_us = [base_us + i for i in range(periods)]
        events = self.generator.events(ts_us)[:remaining]
        self.last_ts_us = ts_us[-1]
        if isinstance(events, EventBatch):
            events.append_calls(self.sink.keys)  # kept by the batch for the sink's send
        return events

    def run_realtime(self, rate_hz: float) -> int:
        """Publish ``rate_hz`` events per second per symbol until a stop is
        requested; returns how many were appended."""
        pacer = Pacer(rate_hz, self.clock(), max_lag_s=self.max_lag_s,
                      max_batch=self.periods_per_batch)
        appended = 0
        skipped = 0
        batch_at = -math.inf
        while not self.stop.requested:
            # At high rates a period is due every few microseconds: waiting
            # batch_interval_s between batches sends fewer, larger round
            # trips (each event keeps its own scheduled event time).
            hold_s = batch_at + self.batch_interval_s - self.clock()
            if hold_s > 0:
                self.stop.wait(hold_s)
                continue
            due = pacer.due(self.clock())
            if pacer.skipped != skipped:
                log.warning("fell %d period(s) behind schedule; skipped them",
                            pacer.skipped - skipped)
                self.metrics.skipped_periods.inc(pacer.skipped - skipped)
                skipped = pacer.skipped
            if not due:
                self.stop.wait(pacer.next_due_s() - self.clock())
                continue
            now_mono, now_wall = self.clock(), self.wall_us()
            batch_at = now_mono
            ts_us = []
            for due_s in due:
                ts = max(now_wall - int((now_mono - due_s) * 1e6), self.last_ts_us + 1)
                ts_us.append(ts)
                self.last_ts_us = ts
            appended += self.sink.publish(self.generator.events(ts_us))
            self._batch_done()
        self._report(final=True)
        return appended

    def _batch_done(self) -> None:
        if not self._ready:
            self._ready = True
            notify.ready(f"publishing {len(self.generator.symbols)} symbols")
        notify.watchdog()
        if self.clock() - self._logged_at >= self.log_interval_s:
            self._report()

    def _report(self, *, final: bool = False) -> None:
        now = self.clock()
        published = self.metrics.total("pricepipe_publisher_events_published")
        trades = self.metrics.value("pricepipe_publisher_events_published", channel="trades")
        elapsed = max(now - self._logged_at, 1e-9)
        rate = (published - self._logged_count) / elapsed
        dropped = self.metrics.total("pricepipe_publisher_events_dropped")
        log.info("%spublished %d events (%.0f/s; %d trades, %d quotes), dropped %d",
                 "done: " if final else "", published, rate, trades, published - trades,
                 dropped)
        self._logged_at, self._logged_count = now, published
