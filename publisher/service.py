"""Wiring of ``pricepipe publish``: settings and flags in, a running
publisher out. Connections are made here, never at import."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pricepipe.backpressure import Policy
from pricepipe.cli import redis_settings
from pricepipe.connections import redis_client
from pricepipe.exceptions import ConfigError
from pricepipe.keys import Keys
from pricepipe.stop import StopRequest

from .catalog import apply_params, parse_correlation, parse_symbols
from .metrics import PublisherMetrics
from .settings import PublisherSettings
from .sink import StreamSink

log = logging.getLogger(__name__)


def publisher_settings(args: argparse.Namespace) -> PublisherSettings:
    """Environment settings with the command-line flags winning."""
    return PublisherSettings.from_env(
        source=getattr(args, "source", None),
        symbols=getattr(args, "symbols", None),
        rate=getattr(args, "rate", None),
        seed=getattr(args, "seed", None),
        params=",".join(args.params) if getattr(args, "params", None) else None,
        dt_years=getattr(args, "dt_years", None),
        correlation=getattr(args, "correlation", None),
        batch_size=getattr(args, "batch_size", None),
        backpressure=getattr(args, "backpressure", None),
        metrics_port=getattr(args, "metrics_port", None),
    )


def run(args: argparse.Namespace) -> int:
    """Run the publisher until done (``--count``) or stopped; exit code."""
    settings = publisher_settings(args)
    rs = redis_settings(args)
    count = getattr(args, "count", None)
    metrics = PublisherMetrics()
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=metrics.registry)
    stop = StopRequest().install()
    r = redis_client(rs)
    try:
        sink = StreamSink(
            r, Keys(rs.prefix, rs.shards), stop=stop, metrics=metrics,
            policy=Policy.parse(settings.backpressure), high_water=settings.high_water,
            low_water=settings.low_water, check_interval_s=settings.memory_check_interval_s,
        )
        if settings.source == "gbm":
            return _run_gbm(settings, sink, stop, metrics, count)
        return _run_poller(args, settings, sink, stop, metrics)
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
        generator = GbmGenerator(specs, dt_years=settings.dt_years, seed=settings.seed,
                                 correlation=correlation)
    except ValueError as exc:
        raise ConfigError(f"gbm: {exc}") from exc
    simulator = Simulator(generator, sink, stop=stop, metrics=metrics,
                          batch_size=settings.batch_size, log_interval_s=settings.log_interval_s,
                          max_lag_s=settings.max_lag_s,
                          batch_interval_s=settings.batch_interval_ms / 1000)
    sink.register(generator.symbols)
    log.info("publishing gbm %s %s", ",".join(generator.symbols),
             f"bulk {count} ticks" if count is not None else f"at {settings.rate}/s per symbol")
    if count is not None:
        simulator.run_bulk(count)
    else:
        simulator.run_realtime(settings.rate)
    return 0


def _run_poller(args: argparse.Namespace, settings: PublisherSettings, sink: StreamSink,
                stop: StopRequest, metrics: PublisherMetrics) -> int:
    from .poller import Poller
    from .providers import PROVIDERS, make_provider
    from .settings import PollerSettings

    if getattr(args, "count", None) is not None:
        raise ConfigError("--count is for --source gbm; pollers take --rounds")
    provider_cls = PROVIDERS.get(settings.source)
    if provider_cls is None:
        raise ConfigError(f"unknown source {settings.source!r}")
    provider = make_provider(settings.source, base_url=getattr(args, "base_url", None))
    specs = parse_symbols(settings.symbols or provider_cls.example_symbols)
    poll_settings = PollerSettings.from_env(interval_s=getattr(args, "interval", None))
    poller = Poller(provider, specs, sink, settings=poll_settings, stop=stop, metrics=metrics,
                    log_interval_s=settings.log_interval_s)
    log.info("polling %s every %.1fs for %s", provider.name, poll_settings.interval_s,
             ",".join(spec.symbol for spec in specs))
    try:
        poller.run(rounds=getattr(args, "rounds", None))
    finally:
        poller.close()
    return 0
