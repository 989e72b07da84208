"""``pricepipe bench publish``: GBM bulk publishing speed, with the realistic
mix of trades and quotes, against a raw redis-py baseline measured in the
same run, on the same Redis.

* figure ``gbm_publish_events_per_s``: the real publisher path (numpy GBM,
  :class:`~pricepipe.publisher.generator.GbmGenerator` batches of events,
  validated and encoded column-wise, the append script through the backpressure-aware
  :class:`~pricepipe.publisher.sink.StreamSink`), with
  ``gbm_publish_trades_per_s`` and ``gbm_publish_quotes_per_s`` its two
  kinds (same run: they add up to the total);
* figure ``gbm_generate_events_per_s``: the same events generated and
  encoded into the append script's arguments
  (:meth:`~pricepipe.publisher.batch.EventBatch.append_calls`), not sent;
* baseline ``raw_xadd_events_per_s``: the same number of pre-encoded entries
  of the same mix over the same streams with plain pipelined ``XADD``, same
  batch size.

The ratio ``publish_vs_raw_xadd`` is the share of Redis's raw pipelined speed
the publisher keeps (goal >= 1.0: the append script should beat naive
pipelining). The baseline and the publisher run in interleaved pairs
(:func:`~pricepipe.bench.ratios.interleave`), the ratio per pair, reported
as the median with its min and max. The mix is the publisher's default
(``PRICEPIPE_PUBLISHER_QUOTES_PER_TRADE``, 5 quotes per trade). Keys live
under a separate prefix and are deleted afterwards. Speeds are reported,
never asserted.
"""

from __future__ import annotations

import time
from typing import Any

from pricepipe.keys import Keys

from .ratios import (
    DEFAULT_REPEATS,
    Ratio,
    collect,
    interleave,
    pair_ratios,
    summary_text,
    target_report,
)

DEFAULT_N = 100_000
SYMBOLS = 10
BATCH_SIZE = 1000
BENCH_PREFIX = "ppbench"
START_US = 1_700_000_000_000_000


#: The issue's goal: the append script should beat naive pipelining, not trail it.
GOAL_PUBLISH_VS_RAW_XADD = 1.0


def run(*, redis_url: str, database_url: str | None = None, n: int | None = None,
        repeats: int = DEFAULT_REPEATS) -> dict[str, Any]:
    """Measure ``repeats`` interleaved pairs (raw XADD, then the publisher)
    and return the report (:func:`~pricepipe.bench.ratios.target_report`)."""
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
    # The baseline's entries: pre-encoded, of the same mix, over the same streams.
    sample = generator(2).events(list(range(START_US, START_US + BATCH_SIZE // SYMBOLS)))
    encoded = []
    for event in sample:
        field, value = codec.encode_event(event)
        encoded.append((keys.stream(event.symbol, codec.channel_of(event)), {field: value}))

    #: (appended, trades, quotes) of each publisher run
    published: list[tuple[int, int, int]] = []

    def raw_xadd(_: int) -> dict[str, float]:
        delete_all(r, keys)
        started = time.perf_counter()
        sent = 0
        while sent < count:
            pipe = r.pipeline(transaction=False)
            for i in range(min(BATCH_SIZE, count - sent)):
                stream, fields = encoded[i % len(encoded)]
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            sent += len(pipe)
            pipe.execute()
        rate = count / (time.perf_counter() - started)
        delete_all(r, keys)
        print(f"  {'raw_xadd_events_per_s':<28} {rate:>14,.0f} events/s (baseline)", flush=True)
        return {"raw_xadd_events_per_s": rate}

    def publisher(i: int) -> dict[str, float]:
        # Generation and encoding alone (numpy, column-wise validation and
        # codec), then the bulk mode end to end: generator, codec, the
        # append script through the sink.
        gen = generator(10 + i)
        periods = -(-count // SYMBOLS)
        started = time.perf_counter()
        done = 0
        while done < periods:
            step = min(BATCH_SIZE // SYMBOLS, periods - done)
            gen.events(list(range(START_US + done, START_US + done + step))).append_calls(keys)
            done += step
        generate_rate = periods * SYMBOLS / (time.perf_counter() - started)
        metrics = PublisherMetrics()
        stop = StopRequest()
        sink = StreamSink(r, keys, stop=stop, metrics=metrics)
        simulator = Simulator(generator(100 + i), sink, stop=stop, metrics=metrics,
                              batch_size=BATCH_SIZE, log_interval_s=3600)
        started = time.perf_counter()
        appended = simulator.run_bulk(count)
        publish_s = time.perf_counter() - started
        delete_all(r, keys)
        trades = metrics.value("pricepipe_publisher_events_published", channel="trades")
        quotes = metrics.value("pricepipe_publisher_events_published", channel="quotes")
        published.append((appended, int(trades), int(quotes)))
        print(f"  {'gbm_publish_events_per_s':<28} {appended / publish_s:>14,.0f} events/s "
              f"(generation and encoding alone {generate_rate:,.0f}/s)", flush=True)
        return {"gbm_publish_events_per_s": appended / publish_s,
                "gbm_publish_trades_per_s": trades / publish_s,
                "gbm_publish_quotes_per_s": quotes / publish_s,
                "gbm_generate_events_per_s": generate_rate}

    print(f"bench publish: {count:,} events ({quotes_per_trade:g} quotes per trade) over "
          f"{SYMBOLS} symbols, batches of {BATCH_SIZE}; {repeats} interleaved pairs "
          "(raw XADD, publisher)", flush=True)
    try:
        pairs = interleave(raw_xadd, publisher, repeats)
    finally:
        delete_all(r, keys)
        r.close()
    baselines = collect([b for b, _ in pairs])
    figures = collect([f for _, f in pairs])
    ratio = Ratio("publish_vs_raw_xadd", GOAL_PUBLISH_VS_RAW_XADD, "higher",
                  tuple(pair_ratios(figures["gbm_publish_events_per_s"],
                                    baselines["raw_xadd_events_per_s"])),
                  note="publisher bulk mode / raw pipelined XADD of the same mix")
    appended, trades, quotes = published[-1]
    report = target_report(
        "publish", figures=figures, baselines=baselines, ratios=[ratio],
        params={"n": count, "symbols": SYMBOLS, "batch_size": BATCH_SIZE,
                "quotes_per_trade": quotes_per_trade, "repeats": len(pairs),
                "published": appended, "trades": trades, "quotes": quotes})
    print(summary_text(report), flush=True)
    return report
