"""The poller: keeps feeding trades and quotes from an upstream API,
whatever it does.

Every ``interval_s`` each of the provider's requests (one per symbol, or one
per batch of symbols) is put on a bounded queue served by ``concurrency``
worker threads. A request whose previous poll is still queued or running
(the upstream is slower than the schedule) is not queued again: the stale
poll is dropped and counted (``pricepipe_publisher_polls_dropped``).

A worker waits for the provider's :class:`~pricepipe.budget.Budget`, sends
the request through :class:`~pricepipe.upstream.Upstream` (retries and
backoff happen there), then parses, validates and de-duplicates:

* no answer, an error status, an HTML page, malformed JSON: logged, counted
  (``pricepipe_publisher_requests{outcome}``), nothing published;
* an item the provider cannot read (a missing field, a bad number) or that
  is not a valid event (a crossed book, a non-positive price, an absurd
  timestamp: the :exc:`~pricepipe.exceptions.InvalidEventError` reason):
  logged, counted with its reason (``pricepipe_publisher_rejected{reason}``),
  the rest of the answer still counts;
* the same trade or quote as last time, per (symbol, channel)
  (:mod:`~pricepipe.publisher.freshness`): not published (unless
  ``publish_unchanged``).

No error stops the poller: the next poll simply tries again, so it recovers
by itself when the upstream does. The first stop request lets polls in
flight finish and publish; queued polls are abandoned.

At start the poller reads each symbol's newest trade from its stream: a
trade of this provider sets the freshness baseline, so a restart does not
publish the last trade (or a Binance trade list) again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import requests

from pricepipe import notify
from pricepipe.budget import Budget
from pricepipe.clock import now_us
from pricepipe.codec import decode_json
from pricepipe.events import Event, Trade
from pricepipe.exceptions import BadResponseError, DecodeError, InvalidEventError
from pricepipe.keys import Channel
from pricepipe.stop import StopRequest
from pricepipe.upstream import Upstream

from .catalog import SymbolSpec
from .freshness import Freshness, numeric_id
from .metrics import PublisherMetrics
from .providers import make_upstream
from .providers.base import (
    Parsed,
    Provider,
    QuoteReport,
    Request,
    TimeChecks,
    TradeReport,
    to_quote,
    to_trade,
)
from .settings import PollerSettings
from .sink import StreamSink

log = logging.getLogger(__name__)


def looks_like_html(response: requests.Response) -> bool:
    content_type = response.headers.get("Content-Type", "")
    return "html" in content_type or response.content.lstrip()[:1] == b"<"


class Poller:
    """Polls one provider for ``specs`` and publishes through ``sink``."""

    def __init__(
        self, provider: Provider, specs: Sequence[SymbolSpec], sink: StreamSink, *,
        settings: PollerSettings, stop: StopRequest, metrics: PublisherMetrics,
        upstream: Upstream | None = None, budget: Budget | None = None,
        log_interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
        wall_us: Callable[[], int] = now_us,
    ) -> None:
        self.provider = provider
        self.name = provider.name
        self.sink = sink
        self.settings = settings
        self.stop = stop
        self.metrics = metrics
        self.upstream = upstream or make_upstream(provider, settings.http_options())
        self.budget = budget or Budget(provider.rate_limit, name=provider.name)
        self.checks = TimeChecks(max_future_s=settings.max_future_s,
                                 max_age_s=settings.max_age_s)
        self.freshness = Freshness()
        self.log_interval_s = log_interval_s
        self.clock = clock
        self.wall_us = wall_us
        self.local_of = {spec.upstream_name: spec.symbol for spec in specs}
        self.upstream_of = {local: upstream for upstream, local in self.local_of.items()}
        self.requests = provider.requests(list(self.local_of))
        self._queue: queue.Queue[Request] = queue.Queue(maxsize=settings.queue_max)
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._closing = threading.Event()
        self._workers: list[threading.Thread] = []
        self._seeded = False
        self._warn_if_over_budget()

    # --- scheduling -------------------------------------------------------------------------

    def run(self, *, rounds: int | None = None) -> None:
        """Poll every ``interval_s`` until stopped, or ``rounds`` times and then
        wait for those polls to finish (burst mode, for tests and one-offs).
        May be called again; :meth:`close` when done with the poller."""
        self.sink.register(self.local_of.values())
        if not self._seeded:
            self._seed_freshness()
        self._start_workers()
        notify.ready(f"polling {self.name} for {len(self.local_of)} symbols")
        logged_at = next_at = self.clock()
        done = 0
        try:
            while not self.stop.requested and (rounds is None or done < rounds):
                self.schedule_round()
                done += 1
                notify.watchdog()
                if self.clock() - logged_at >= self.log_interval_s:
                    logged_at = self.clock()
                    self.log_progress()
                if rounds is not None and done >= rounds:
                    break
                next_at = max(next_at + self.settings.interval_s, self.clock())
                self.stop.wait(next_at - self.clock())
            if rounds is not None:
                while self._queue.unfinished_tasks and not self.stop.requested:
                    self.stop.wait(0.02)
        finally:
            self._stop_workers()
        self.log_progress(final=True)

    def schedule_round(self) -> int:
        """Queue one poll of every request not already in flight; returns how many."""
        queued = 0
        for request in self.requests:
            with self._lock:
                if request.key in self._in_flight:
                    self.metrics.stale_polls.labels(provider=self.name).inc()
                    continue
                self._in_flight.add(request.key)
            try:
                self._queue.put_nowait(request)
                queued += 1
            except queue.Full:
                with self._lock:
                    self._in_flight.discard(request.key)
                self.metrics.stale_polls.labels(provider=self.name).inc()
        return queued

    def _start_workers(self) -> None:
        for i in range(self.settings.concurrency):
            # Daemon threads: a request stuck in urllib3's retry sleep must
            # not keep the process alive after a stop.
            worker = threading.Thread(target=self._work, name=f"poll-{self.name}-{i}",
                                      daemon=True)
            worker.start()
            self._workers.append(worker)

    def _work(self) -> None:
        while True:
            try:
                request = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            try:
                if not self.stop.requested:
                    self.poll(request)
            except Exception:  # a bug must not kill the worker, or polling stops
                log.exception("%s: poll of %s failed unexpectedly", self.name, request.path)
                self.metrics.requests.labels(provider=self.name, outcome="bug").inc()
            finally:
                with self._lock:
                    self._in_flight.discard(request.key)
                self._queue.task_done()

    def _stop_workers(self) -> None:
        """Let the workers finish their current poll and end; queued polls
        are abandoned."""
        self._closing.set()
        deadline = self.clock() + self.settings.connect_timeout_s + \
            self.settings.read_timeout_s + 5.0
        for worker in self._workers:
            worker.join(max(deadline - self.clock(), 0.0))
        self._workers.clear()
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                self._in_flight.discard(request.key)
            self._queue.task_done()
        self._closing.clear()

    def close(self) -> None:
        """Release the HTTP connections."""
        self.upstream.close()

    # --- one poll ---------------------------------------------------------------------------

    def _outcome(self, outcome: str) -> None:
        self.metrics.requests.labels(provider=self.name, outcome=outcome).inc()

    def _reject(self, reason: str, count: int = 1) -> None:
        self.metrics.rejected.labels(provider=self.name, reason=reason).inc(count)

    def _warn_if_over_budget(self) -> None:
        """Log when one round of requests per ``interval_s`` needs more than
        the budget grants: polls will then wait and some be dropped."""
        weight_per_s = sum(r.weight for r in self.requests) / self.settings.interval_s
        for item in self.budget.items:
            allowed_per_s = item.amount / item.get_expiry()
            if weight_per_s > allowed_per_s:
                log.warning("%s: %d request(s) of total weight %d every %.1fs need %.1f/s, "
                            "but the budget %s grants %.1f/s: polls will wait, and stale "
                            "ones be dropped", self.name, len(self.requests),
                            sum(r.weight for r in self.requests), self.settings.interval_s,
                            weight_per_s, item, allowed_per_s)

    def _seed_freshness(self) -> None:
        """Start from each symbol's newest trade of this provider in Redis."""
        found = self.sink.last_events(self.local_of.values(), Channel.TRADES)
        for symbol, event in found.items():
            if isinstance(event, Trade) and event.source == self.name:
                upstream = self.upstream_of[symbol]
                self.freshness.seed(symbol, Channel.TRADES, TradeReport(
                    upstream, event.price, event.ts_us, event.size, event.trade_id,
                    event.side))
        self._seeded = True

    def poll(self, request: Request) -> int:
        """Fetch, check and publish one request's trades and quotes; returns
        how many events were published."""
        if not self.budget.acquire(request.weight, wait=self.stop.wait):
            return 0
        try:
            response = self.upstream.get(request)
        except requests.RequestException as exc:
            self._outcome("error")
            log.warning("%s %s: no answer: %s", self.name, request.path, exc)
            return 0
        recv_ts_us = self.wall_us()
        with response:
            if response.status_code == 429:
                pause_s = self.upstream.retry_after_s(response) or self.settings.interval_s
                self.budget.pause(pause_s)
                self._outcome("rate_limited")
                log.warning("%s %s: 429 rate limited; pausing %.1fs", self.name, request.path,
                            pause_s)
                return 0
            if response.status_code != 200:
                self._outcome("http_error")
                log.warning("%s %s: HTTP %d: %.200r", self.name, request.path,
                            response.status_code, response.text)
                return 0
            try:
                payload = decode_json(response.content)
            except DecodeError as exc:
                reason = "html" if looks_like_html(response) else "malformed"
                self._outcome("bad_response")
                self._reject(reason, len(request.symbols) or 1)
                log.warning("%s %s: %s answer rejected: %s", self.name, request.path, reason, exc)
                return 0
        try:
            parsed = self.provider.parse(request, payload)
        except BadResponseError as exc:
            self._outcome("bad_response")
            self._reject(exc.reason, len(request.symbols) or 1)
            log.warning("%s %s: answer rejected (%s): %s", self.name, request.path, exc.reason,
                        exc)
            return 0
        self._outcome("ok")
        for rejection in parsed.rejections:
            self._reject(rejection.reason)
            log.warning("%s: item of %s rejected (%s): %s", self.name, rejection.upstream,
                        rejection.reason, rejection.detail)
        return self._publish(parsed, recv_ts_us)

    def _publish(self, parsed: Parsed, recv_ts_us: int) -> int:
        """Validate, de-duplicate and publish one answer's reports."""
        # (symbol, channel) -> the valid reports of that stream and their events
        streams: dict[tuple[str, Channel], tuple[list[TradeReport | QuoteReport],
                                                 list[Event]]] = {}
        reports: list[TradeReport | QuoteReport] = [*parsed.trades, *parsed.quotes]
        for report in reports:
            local = self.local_of.get(report.upstream)
            if local is None:  # the provider checks this too; never publish an unasked symbol
                self._reject("unexpected_symbol")
                continue
            try:
                if isinstance(report, TradeReport):
                    event: Event = to_trade(report, symbol=local, source=self.name,
                                            recv_ts_us=recv_ts_us, checks=self.checks)
                    channel = Channel.TRADES
                else:
                    event = to_quote(report, symbol=local, source=self.name,
                                     recv_ts_us=recv_ts_us, checks=self.checks)
                    channel = Channel.QUOTES
            except (BadResponseError, InvalidEventError) as exc:
                self._reject(exc.reason)
                log.warning("%s: %s of %s rejected (%s): %s", self.name,
                            "trade" if isinstance(report, TradeReport) else "quote",
                            report.upstream, exc.reason, exc)
                continue
            valid, events = streams.setdefault((local, channel), ([], []))
            valid.append(report)
            events.append(event)
        batch: list[Event] = []
        published: list[tuple[str, Channel, list[TradeReport | QuoteReport]]] = []
        for (symbol, channel), (valid, events) in streams.items():
            fresh = valid
            if not self.settings.publish_unchanged:
                fresh = self.freshness.fresh(symbol, channel, valid)
                if len(fresh) < len(valid):
                    self.metrics.unchanged.labels(provider=self.name, channel=str(channel)) \
                        .inc(len(valid) - len(fresh))
            if not fresh:
                continue
            if channel is Channel.TRADES and self.provider.lists_trades:
                self._count_missed(symbol, fresh)
            keep = {id(r) for r in fresh}
            batch.extend(e for r, e in zip(valid, events, strict=True) if id(r) in keep)
            published.append((symbol, channel, fresh))
        if not batch:
            return 0
        with self._publish_lock:
            appended = self.sink.publish(batch)
        if appended:  # not published: the next poll must still see these as new
            for symbol, channel, fresh in published:
                self.freshness.commit(symbol, channel, fresh)
        return appended

    def _count_missed(self, symbol: str, fresh: Sequence[TradeReport | QuoteReport]) -> None:
        """Count the trades between the last one published and the first new
        one (the answer's list did not reach back far enough)."""
        high = self.freshness.highest_trade_id(symbol)
        first = numeric_id(fresh[0])
        if high is not None and first is not None and first > high + 1:
            missed = first - high - 1
            self.metrics.trades_missed.labels(provider=self.name).inc(missed)
            log.warning("%s: %d trade(s) of %s missed between two polls (ids %d..%d); poll "
                        "more often or ask for more trades per poll", self.name, missed,
                        symbol, high + 1, first - 1)

    def log_progress(self, *, final: bool = False) -> None:
        m = self.metrics
        requests_ok = m.value("pricepipe_publisher_requests", provider=self.name, outcome="ok")
        failed = m.total("pricepipe_publisher_requests") - requests_ok
        log.info("%s%s: %d ok requests, %d failed, %d items rejected, %d unchanged, "
                 "%d polls dropped, %d trades and %d quotes published",
                 "done: " if final else "", self.name, requests_ok, failed,
                 m.total("pricepipe_publisher_rejected"),
                 m.total("pricepipe_publisher_unchanged"),
                 m.total("pricepipe_publisher_polls_dropped"),
                 m.value("pricepipe_publisher_events_published", channel="trades"),
                 m.value("pricepipe_publisher_events_published", channel="quotes"))
