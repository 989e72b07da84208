"""``pricepipe bench publish``: GBM bulk publishing speed, with the realistic
mix of trades and quotes, against a raw redis-py baseline measured in the
same run, on the same Redis.

* figure ``gbm_publish_events_per_s``: the real publisher path (numpy GBM,
  :class:`~pricepipe.publisher.generator.GbmGenerator` events validated as
  :class:`~pricepipe.events.Trade` / :class:`~pricepipe.events.Quote`, codec,
  the append script through the backpressure-aware
  :class:`~pricepipe.publisher.sink.StreamSink`), with
  ``gbm_publish_trades_per_s`` and ``gbm_publish_quotes_per_s`` its two
  kinds (same run: they add up to the total);
* figure ``gbm_generate_events_per_s``: the same events generated, not sent;
* baseline ``raw_xadd_events_per_s``: the same number of pre-encoded entries
  of the same mix over the same streams with plain pipelined ``XADD``, same
  batch size.

The ratio ``publish_vs_raw_xadd`` is the share of Redis's raw pipelined speed
the publisher keeps. The mix is the publisher's default
(``PRICEPIPE_PUBLISHER_QUOTES_PER_TRADE``, 5 quotes per trade). Keys live
under a separate prefix and are deleted afterwards. Speeds are reported,
never asserted.
"""

from __future__ import annotations

import time
from typing import Any

from pricepipe.keys import Keys

DEFAULT_N = 100_000
SYMBOLS = 10
BATCH_SIZE = 1000
BENCH_PREFIX = "ppbench"
START_US = 1_700_000_000_000_000


def _row(name: str, value: float, unit: str) -> None:
    print(f"  {name:<28} {value:>14,.0f} {unit}", flush=True)


def run(*, redis_url: str, database_url: str | None = None,
        n: int | None = None) -> dict[str, Any]:
    """Measure and return ``{"target", "figures", "baselines", "ratios", "params"}``."""
    import redis

    from pricepipe import codec
    from pricepipe.publisher.catalog import demo_symbols
    from pricepipe.publisher.generator import GbmGenerator
    from pricepipe.publisher.metrics import PublisherMetrics
    from pricepipe.publisher.settings import PublisherSettings
    from pricepipe.publisher.simulator import Simulator
    from pricepipe.publisher.sink import StreamSink
    from pricepipe.stop import StopRequest
    from pricepipe.streams import delete_all

    count = n or DEFAULT_N
    quotes_per_trade = PublisherSettings().quotes_per_trade
    keys = Keys(BENCH_PREFIX, 8)
    specs = demo_symbols(SYMBOLS)

    def generator(seed: int) -> GbmGenerator:
        return GbmGenerator(specs, seed=seed, quotes_per_trade=quotes_per_trade)

    r = redis.Redis.from_url(redis_url)
    print(f"bench publish: {count:,} events ({quotes_per_trade:g} quotes per trade) over "
          f"{SYMBOLS} symbols, batches of {BATCH_SIZE}")
    try:
        delete_all(r, keys)
        # Figure 1: generation alone (numpy + event validation).
        gen = generator(1)
        periods = -(-count // SYMBOLS)
        started = time.perf_counter()
        done = 0
        while done < periods:
            step = min(BATCH_SIZE // SYMBOLS, periods - done)
            gen.events(list(range(START_US + done, START_US + done + step)))
            done += step
        generate_s = time.perf_counter() - started
        generate_rate = periods * SYMBOLS / generate_s
        _row("gbm_generate_events_per_s", generate_rate, "events/s")

        # Baseline: raw pipelined XADD of pre-encoded entries of the same mix.
        sample = generator(2).events(list(range(START_US, START_US + BATCH_SIZE // SYMBOLS)))
        encoded = []
        for event in sample:
            field, value = codec.encode_event(event)
            encoded.append((keys.stream(event.symbol, codec.channel_of(event)), {field: value}))
        started = time.perf_counter()
        sent = 0
        while sent < count:
            pipe = r.pipeline(transaction=False)
            for i in range(min(BATCH_SIZE, count - sent)):
                stream, fields = encoded[i % len(encoded)]
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            sent += len(pipe)
            pipe.execute()
        raw_s = time.perf_counter() - started
        raw_rate = count / raw_s
        _row("raw_xadd_events_per_s", raw_rate, "events/s (baseline)")
        delete_all(r, keys)

        # Figure 2: the publisher's bulk mode, end to end.
        metrics = PublisherMetrics()
        stop = StopRequest()
        sink = StreamSink(r, keys, stop=stop, metrics=metrics)
        simulator = Simulator(generator(3), sink, stop=stop, metrics=metrics,
                              batch_size=BATCH_SIZE, log_interval_s=3600)
        started = time.perf_counter()
        appended = simulator.run_bulk(count)
        publish_s = time.perf_counter() - started
        trades = int(metrics.value("pricepipe_publisher_events_published", channel="trades"))
        quotes = int(metrics.value("pricepipe_publisher_events_published", channel="quotes"))
        publish_rate = appended / publish_s
        _row("gbm_publish_events_per_s", publish_rate, "events/s")
        _row("gbm_publish_trades_per_s", trades / publish_s, "trades/s (of those)")
        _row("gbm_publish_quotes_per_s", quotes / publish_s, "quotes/s (of those)")
        ratio = publish_rate / raw_rate
        print(f"  {'publish_vs_raw_xadd':<28} {ratio:>14.2f} x")
    finally:
        delete_all(r, keys)
        r.close()
    return {
        "target": "publish",
        "figures": {"gbm_publish_events_per_s": publish_rate,
                    "gbm_publish_trades_per_s": trades / publish_s,
                    "gbm_publish_quotes_per_s": quotes / publish_s,
                    "gbm_generate_events_per_s": generate_rate},
        "baselines": {"raw_xadd_events_per_s": raw_rate},
        "ratios": {"publish_vs_raw_xadd": ratio},
        "params": {"n": count, "symbols": SYMBOLS, "batch_size": BATCH_SIZE,
                   "quotes_per_trade": quotes_per_trade, "published": appended,
                   "trades": trades, "quotes": quotes},
    }
