"""The poller: keeps feeding ticks from an upstream API, whatever it does.

Every ``interval_s`` each of the provider's requests (one per symbol, or one
per batch of symbols) is put on a bounded queue served by ``concurrency``
worker threads. A request whose previous poll is still queued or running
(the upstream is slower than the schedule) is not queued again: the stale
poll is dropped and counted (``pricepipe_publisher_polls_dropped``).

A worker waits for the provider's :class:`~pricepipe.publisher.budget.Budget`, sends
the request through :class:`~pricepipe.publisher.upstream.Upstream` (retries and
backoff happen there), then parses, validates and de-duplicates:

* no answer, an error status, an HTML page, malformed JSON: logged, counted
  (``pricepipe_publisher_requests{outcome}``), nothing published;
* an item with a missing, non-numeric, non-positive or non-finite price or
  an absurd timestamp: logged, counted with its reason
  (``pricepipe_publisher_quotes_rejected{reason}``), the rest of the answer
  still counts;
* the same quote as last time: not published (unless ``publish_unchanged``).

No error stops the poller: the next poll simply tries again, so it recovers
by itself when the upstream does. The first stop request lets polls in
flight finish and publish; queued polls are abandoned.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import requests

from pricepipe import notify
from pricepipe.clock import now_us
from pricepipe.codec import decode_json
from pricepipe.exceptions import BadResponseError, DecodeError
from pricepipe.stop import StopRequest

from .budget import Budget
from .catalog import SymbolSpec
from .freshness import Freshness
from .metrics import PublisherMetrics
from .providers.base import Provider, QuoteChecks, Request, to_tick
from .settings import PollerSettings
from .sink import StreamSink
from .upstream import Upstream

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
        self.upstream = upstream or Upstream(provider, settings)
        self.budget = budget or Budget(provider.rate_limit, name=provider.name)
        self.checks = QuoteChecks(max_future_s=settings.max_future_s,
                                  max_age_s=settings.max_age_s)
        self.freshness = Freshness()
        self.log_interval_s = log_interval_s
        self.clock = clock
        self.wall_us = wall_us
        self.local_of = {spec.upstream_name: spec.symbol for spec in specs}
        self.requests = provider.requests(list(self.local_of))
        self._queue: queue.Queue[Request] = queue.Queue(maxsize=settings.queue_max)
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._closing = threading.Event()
        self._workers: list[threading.Thread] = []

    # --- scheduling -------------------------------------------------------------------------

    def run(self, *, rounds: int | None = None) -> None:
        """Poll every ``interval_s`` until stopped, or ``rounds`` times and then
        wait for those polls to finish (burst mode, for tests and one-offs).
        May be called again; :meth:`close` when done with the poller."""
        self.sink.register(self.local_of.values())
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

    def poll(self, request: Request) -> int:
        """Fetch, check and publish one request's quotes; returns ticks published."""
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
            log.warning("%s: quote of %s rejected (%s): %s", self.name, rejection.upstream,
                        rejection.reason, rejection.detail)
        ticks = []
        fresh = []
        for quote in parsed.quotes:
            local = self.local_of.get(quote.upstream)
            if local is None:  # the provider checks this too; never publish an unasked symbol
                self._reject("unexpected_symbol")
                continue
            try:
                tick = to_tick(quote, symbol=local, source=self.name, recv_ts_us=recv_ts_us,
                               checks=self.checks)
            except BadResponseError as exc:
                self._reject(exc.reason)
                log.warning("%s: quote rejected (%s): %s", self.name, exc.reason, exc)
                continue
            if not self.settings.publish_unchanged and not self.freshness.is_new(quote):
                self.metrics.unchanged.labels(provider=self.name).inc()
                continue
            ticks.append(tick)
            fresh.append(quote)
        if not ticks:
            return 0
        with self._publish_lock:
            appended = self.sink.publish(ticks)
        if appended == 0:
            for quote in fresh:  # not published: the next poll must not look "unchanged"
                self.freshness.forget(quote)
        return appended

    def log_progress(self, *, final: bool = False) -> None:
        m = self.metrics
        requests_ok = m.value("pricepipe_publisher_requests", provider=self.name, outcome="ok")
        failed = m.total("pricepipe_publisher_requests") - requests_ok
        log.info("%s%s: %d ok requests, %d failed, %d quotes rejected, %d unchanged, "
                 "%d polls dropped, %d ticks published",
                 "done: " if final else "", self.name, requests_ok, failed,
                 m.total("pricepipe_publisher_quotes_rejected"),
                 m.total("pricepipe_publisher_quotes_unchanged"),
                 m.total("pricepipe_publisher_polls_dropped"),
                 m.value("pricepipe_publisher_ticks_published"))
