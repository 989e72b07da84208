"""Wiring of ``pricepipe publish``: settings in, a running publisher out.
Connections are made here, never at import."""

from __future__ import annotations

import logging
from typing import Any

from pricepipe.backpressure import Policy
from pricepipe.config import RedisSettings
from pricepipe.connections import redis_client
from pricepipe.exceptions import ConfigError
from pricepipe.stop import StopRequest

from .catalog import apply_params, parse_correlation, parse_symbols
from .metrics import PublisherMetrics
from .providers.base import Provider
from .settings import PollerSettings, PublisherSettings
from .sink import StreamSink

log = logging.getLogger(__name__)


def run(settings: PublisherSettings, redis_settings: RedisSettings, *,
        poller_settings: PollerSettings | None = None, provider: Provider | None = None,
        count: int | None = None, rounds: int | None = None) -> int:
    """Run the publisher until done (``count`` events for GBM, ``rounds`` polls
    for a provider) or stopped; returns the exit code. A poller needs its
    ``provider`` (see :func:`pricepipe.publisher.providers.make_provider`)."""
    metrics = PublisherMetrics()
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=metrics.registry)
    stop = StopRequest().install()
    r = redis_client(redis_settings)
    try:
        sink = StreamSink(
            r, redis_settings.keys, stop=stop, metrics=metrics,
            policy=Policy.parse(settings.backpressure), high_water=settings.high_water,
            low_water=settings.low_water, check_interval_s=settings.memory_check_interval_s,
        )
        if settings.source == "gbm":
            return _run_gbm(settings, sink, stop, metrics, count)
        if provider is None:
            raise ConfigError(f"source {settings.source!r} needs a provider")
        if count is not None:
            raise ConfigError("--count is for --source gbm; pollers take --rounds")
        return _run_poller(settings, poller_settings or PollerSettings.from_env(), provider,
                           sink, stop, metrics, rounds)
    finally:
        stop.restore()
        r.close()


def _run_gbm(settings: PublisherSettings, sink: StreamSink, stop: StopRequest,
             metrics: PublisherMetrics, count: int | None) -> int:
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
                rounds: int | None) -> int:
    from .poller import Poller

    specs = parse_symbols(settings.symbols or provider.example_symbols)
    poller = Poller(provider, specs, sink, settings=poll_settings, stop=stop, metrics=metrics,
                    log_interval_s=settings.log_interval_s)
    log.info("polling %s every %.1fs for %s", provider.name, poll_settings.interval_s,
             ",".join(spec.symbol for spec in specs))
    try:
        poller.run(rounds=rounds)
    finally:
        poller.close()
    return 0
