"""``pricepipe publish``: flags only; the work (and numpy, requests) is
imported by the handler, so ``pricepipe --help`` stays fast."""

from __future__ import annotations

import argparse
from typing import Any

SOURCES = ("gbm", "binance", "coinbase", "finnhub", "generic", "binance-ws", "coinbase-ws")
#: The websocket feeds (the other sources but gbm are pollers).
FEEDS = ("binance-ws", "coinbase-ws")


def register(subparsers: Any) -> None:
    from pricepipe.flags import add_server_flags

    p: argparse.ArgumentParser = subparsers.add_parser(
        "publish", help="publish trades and quotes: simulated (GBM), polled from an "
        "upstream API or streamed from a venue's websocket",
        description="Append trades and quotes to the Redis streams. Flags override "
                    "PRICEPIPE_PUBLISHER_* settings (see `pricepipe config`).")
    add_server_flags(p, database=False)
    p.add_argument("--source", choices=SOURCES, help="where prices come from (default gbm)")
    p.add_argument("--symbols",
                   help="a number N (first N demo symbols) or AAPL,MSFT,LOCAL=UPSTREAM; a "
                        "venue's symbols become VENUE:SYMBOL (BTCUSDT: BINANCE:BTCUSDT)")
    p.add_argument("--force-source", action="store_true", default=None,
                   help="publish even to symbols the source registry records with another "
                        "source")
    p.add_argument("--count", type=int,
                   help="bulk mode: publish N events (trades and quotes) in total, then exit")
    g = p.add_argument_group("GBM")
    g.add_argument("--rate", type=float, help="events per second per symbol (default 5)")
    g.add_argument("--seed", type=int, help="random seed: same seed, same events")
    g.add_argument("--params", action="append", metavar="SYM:PRICE[:MU[:SIGMA]]",
                   help="per-symbol start price, annual drift and volatility (repeatable)")
    g.add_argument("--dt-years", type=float, help="simulated years per period")
    g.add_argument("--correlation", help="one number for every pair, or rows '1,0.5;0.5,1'")
    g.add_argument("--spread-bps", type=float, help="quoted spread in basis points (default 2)")
    g.add_argument("--quotes-per-trade", type=float,
                   help="mix: quotes per trade on average (default 5)")
    g.add_argument("--batch-size", type=int, help="most events per round trip to Redis")
    g = p.add_argument_group("pollers")
    g.add_argument("--interval", type=float, help="seconds between polls (default 5)")
    g.add_argument("--rounds", type=int, help="poll this many times, then exit")
    g.add_argument("--base-url",
                   help="provider base URL, or the generic poller's URL template "
                        "(a fake upstream, a mirror)")
    g = p.add_argument_group("websocket feeds")
    g.add_argument("--ws-url", help="venue websocket base URL (a fake venue, a mirror); "
                                    "--base-url sets the REST one used for repairs")
    g.add_argument("--feed-name", help="name in the feed status (default: the source)")
    g = p.add_argument_group("backpressure")
    g.add_argument("--backpressure", choices=("block", "drop"),
                   help="policy when Redis memory is above the high-water mark")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.set_defaults(func=_cmd_publish)


def _cmd_publish(args: argparse.Namespace) -> int:
    from pricepipe import flags

    from .providers import make_provider
    from .service import run
    from .settings import PollerSettings, PublisherSettings

    env = flags.env(args)
    settings = PublisherSettings.from_env(
        env, source=args.source, symbols=args.symbols, rate=args.rate, seed=args.seed,
        params=",".join(args.params) if args.params else None, dt_years=args.dt_years,
        correlation=args.correlation, spread_bps=args.spread_bps,
        quotes_per_trade=args.quotes_per_trade, batch_size=args.batch_size,
        backpressure=args.backpressure, metrics_port=args.metrics_port,
        force_source=args.force_source)
    provider = None
    adapter = None
    feed_settings = None
    if settings.source in FEEDS:
        from .feeds.adapters import make_adapter
        from .settings import FeedSettings

        adapter = make_adapter(settings.source, env, base_url=args.base_url, ws_url=args.ws_url)
        feed_settings = FeedSettings.from_env(env, name=args.feed_name)
    elif settings.source != "gbm":
        provider = make_provider(settings.source, env, base_url=args.base_url)
    return run(settings, flags.redis_settings(args),
               poller_settings=PollerSettings.from_env(env, interval_s=args.interval),
               provider=provider, adapter=adapter, feed_settings=feed_settings,
               count=args.count, rounds=args.rounds)
