"""Wiring of ``pricepipe publish``: settings in, a running publisher out.
Connections are made here, never at import."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff

from pricepipe import sources
from pricepipe.backpressure import Policy, is_oom_error
from pricepipe.config import RedisSettings
from pricepipe.connections import redis_client
from pricepipe.exceptions import ConfigError
from pricepipe.keys import Keys
from pricepipe.stop import StopRequest
from pricepipe.venues import VENUE_OF_SOURCE

from .catalog import SymbolSpec, apply_params, parse_correlation, parse_symbols
from .feeds.adapters import VenueAdapter
from .metrics import PublisherMetrics
from .providers.base import Provider
from .settings import FeedSettings, PollerSettings, PublisherSettings
from .sink import StreamSink

log = logging.getLogger(__name__)


def run(settings: PublisherSettings, redis_settings: RedisSettings, *,
        poller_settings: PollerSettings | None = None, provider: Provider | None = None,
        adapter: VenueAdapter | None = None, feed_settings: FeedSettings | None = None,
        count: int | None = None, rounds: int | None = None) -> int:
    """Run the publisher until done (``count`` events for GBM, ``rounds`` polls
    for a provider) or stopped; returns the exit code. A poller needs its
    ``provider`` (see :func:`pricepipe.publisher.providers.make_provider`), a
    websocket feed its ``adapter`` (:func:`pricepipe.publisher.feeds.adapters.make_adapter`).

    Before publishing, the symbols' source is checked against the source
    registry (:mod:`pricepipe.sources`): a symbol first published from
    another source is refused (:exc:`ConfigError`) unless
    ``settings.force_source``."""
    metrics = PublisherMetrics()
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.metrics_host,
                          registry=metrics.registry)
    stop = StopRequest().install()
    r = redis_client(redis_settings)
    try:
        sink = StreamSink(
            r, redis_settings.keys, stop=stop, metrics=metrics,
            policy=Policy.parse(settings.backpressure), high_water=settings.high_water,
            low_water=settings.low_water, check_interval_s=settings.memory_check_interval_s,
        )
        claim = _Claim(r, redis_settings.keys, stop, force=settings.force_source)
        if settings.source == "gbm":
            return _run_gbm(settings, sink, stop, metrics, count, claim)
        if count is not None:
            raise ConfigError("--count is for --source gbm")
        if adapter is not None:
            if rounds is not None:
                raise ConfigError("--rounds is for pollers; a feed runs until stopped")
            return _run_feed(settings, feed_settings or FeedSettings.from_env(),
                             poller_settings or PollerSettings.from_env(), adapter, sink, r,
                             redis_settings.keys, stop, metrics, claim)
        if provider is None:
            raise ConfigError(f"source {settings.source!r} needs a provider")
        return _run_poller(settings, poller_settings or PollerSettings.from_env(), provider,
                           sink, stop, metrics, rounds, claim)
    finally:
        stop.restore()
        r.close()


class _Claim:
    """The source-registry check, waiting out Redis outages."""

    def __init__(self, r: Any, keys: Keys, stop: StopRequest, *, force: bool) -> None:
        self.r, self.keys, self.stop, self.force = r, keys, stop, force

    def __call__(self, specs: Sequence[SymbolSpec], source: str) -> None:
        symbols = [spec.symbol for spec in specs]
        backoff = ExponentialWithJitterBackoff(cap=5.0, base=0.05)
        failures = 0
        while True:
            try:
                conflicts = sources.claim(self.r, self.keys, symbols, source, force=self.force)
                break
            except redis.ResponseError as exc:
                if not is_oom_error(exc):
                    raise
                # Refused at its first write: nothing else recorded, no conflict.
                log.warning("redis is full: the source %s of %s is not recorded in the "
                            "source registry yet (no other source was found)", source,
                            ",".join(symbols))
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                failures += 1
                delay_s = backoff.compute(failures)
                log.warning("redis unreachable (%s); retry %d in %.2fs", exc, failures, delay_s)
                if self.stop.wait(delay_s):
                    return
        if not conflicts:
            return
        listed = ", ".join(f"{symbol} (from {other})" for symbol, other in
                           sorted(conflicts.items()))
        if not self.force:
            raise ConfigError(
                f"refusing to publish {source} events to symbols first published from another "
                f"source: {listed}; pick other names (LOCAL=UPSTREAM) or pass --force-source")
        log.warning("--force-source: %s now publishes to %s", source, listed)


def _run_gbm(settings: PublisherSettings, sink: StreamSink, stop: StopRequest,
             metrics: PublisherMetrics, count: int | None, claim: _Claim) -> int:
    from .generator import GbmGenerator
    from .simulator import Simulator

    specs = parse_symbols(settings.symbols or "10")
    if settings.params:
        specs = apply_params(specs, [settings.params])
    correlation: Any = None
    if settings.correlation:
        correlation = parse_correlation(settings.correlation, len(specs))
    try:
        generator = GbmGenerator(
            specs, dt_years=settings.dt_years, seed=settings.seed, correlation=correlation,
            spread_bps=settings.spread_bps, quotes_per_trade=settings.quotes_per_trade,
            trade_notional=settings.trade_notional, quote_notional=settings.quote_notional)
    except ValueError as exc:
        raise ConfigError(f"gbm: {exc}") from exc
    claim(specs, "gbm")
    simulator = Simulator(generator, sink, stop=stop, metrics=metrics,
                          batch_size=settings.batch_size, log_interval_s=settings.log_interval_s,
                          max_lag_s=settings.max_lag_s,
                          batch_interval_s=settings.batch_interval_ms / 1000)
    sink.register(generator.symbols)
    log.info("publishing gbm %s %s, %g quotes per trade, spread %g bps",
             ",".join(generator.symbols),
             f"bulk {count} events" if count is not None else
             f"at {settings.rate} events/s per symbol", settings.quotes_per_trade,
             settings.spread_bps)
    if count is not None:
        simulator.run_bulk(count)
    else:
        simulator.run_realtime(settings.rate)
    return 0


def _run_poller(settings: PublisherSettings, poll_settings: PollerSettings, provider: Provider,
                sink: StreamSink, stop: StopRequest, metrics: PublisherMetrics,
                rounds: int | None, claim: _Claim) -> int:
    from .poller import Poller

    specs = parse_symbols(settings.symbols or provider.example_symbols,
                          venue=VENUE_OF_SOURCE.get(provider.name))
    claim(specs, provider.name)
    poller = Poller(provider, specs, sink, settings=poll_settings, stop=stop, metrics=metrics,
                    log_interval_s=settings.log_interval_s)
    log.info("polling %s every %.1fs for %s", provider.name, poll_settings.interval_s,
             ",".join(spec.symbol for spec in specs))
    try:
        poller.run(rounds=rounds)
    finally:
        poller.close()
    return 0


def _run_feed(settings: PublisherSettings, feed_settings: FeedSettings,
              poll_settings: PollerSettings, adapter: VenueAdapter, sink: StreamSink, r: Any,
              keys: Keys, stop: StopRequest, metrics: PublisherMetrics, claim: _Claim) -> int:
    from .feeds.feed import Feed

    if not settings.symbols:
        raise ConfigError(f"--source {adapter.source} needs --symbols (the venue's symbols)")
    specs = parse_symbols(settings.symbols, venue=adapter.venue)
    claim(specs, adapter.source)
    feed = Feed(adapter, specs, sink, r=r, keys=keys, settings=feed_settings, stop=stop,
                metrics=metrics, http=poll_settings.http_options(),
                log_interval_s=settings.log_interval_s)
    log.info("feed %s: %s over %d connection(s)", feed.name,
             ",".join(f"{spec.symbol}={spec.upstream_name}" for spec in specs),
             len(feed.connections))
    return feed.run()
