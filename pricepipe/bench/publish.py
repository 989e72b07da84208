"""``pricepipe bench publish``: GBM bulk publishing speed against a raw
redis-py baseline measured in the same run, on the same Redis.

* figure ``gbm_publish_ticks_per_s``: the real publisher path (numpy GBM,
  :class:`~pricepipe.publisher.generator.GbmGenerator` ticks validated as
  :class:`~pricepipe.tick.Tick`, codec, pipelined ``XADD`` through the
  backpressure-aware :class:`~pricepipe.publisher.sink.StreamSink`);
* figure ``gbm_generate_ticks_per_s``: the same ticks generated, not sent;
* baseline ``raw_xadd_ticks_per_s``: the same number of pre-encoded entries
  over the same streams with plain pipelined ``XADD``, same batch size.

The ratio ``publish_vs_raw_xadd`` is the share of Redis's raw pipelined speed
the publisher keeps. Keys live under a separate prefix and are deleted
afterwards. Speeds are reported, never asserted.
"""

from __future__ import annotations

import time
from typing import Any

from pricepipe.keys import Keys

DEFAULT_N = 100_000
SYMBOLS = 10
BATCH_SIZE = 1000
BENCH_PREFIX = "ppbench"


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
    from pricepipe.publisher.simulator import Simulator
    from pricepipe.publisher.sink import StreamSink
    from pricepipe.stop import StopRequest
    from pricepipe.streams import delete_all

    count = n or DEFAULT_N
    keys = Keys(BENCH_PREFIX, 8)
    specs = demo_symbols(SYMBOLS)
    r = redis.Redis.from_url(redis_url)
    print(f"bench publish: {count:,} ticks over {SYMBOLS} symbols, batches of {BATCH_SIZE}")
    try:
        delete_all(r, keys)
        # Figure 1: generation alone (numpy + Tick validation).
        generator = GbmGenerator(specs, seed=1)
        periods = -(-count // SYMBOLS)
        started = time.perf_counter()
        done = 0
        while done < periods:
            step = min(BATCH_SIZE // SYMBOLS, periods - done)
            generator.ticks(list(range(1_700_000_000_000_000 + done,
                                       1_700_000_000_000_000 + done + step)))
            done += step
        generate_s = time.perf_counter() - started
        generate_rate = periods * SYMBOLS / generate_s
        _row("gbm_generate_ticks_per_s", generate_rate, "ticks/s")

        # Baseline: raw pipelined XADD of pre-encoded entries.
        sample = GbmGenerator(specs, seed=2).ticks([1_700_000_000_000_000])
        encoded = [(keys.stream(t.symbol), codec.encode_fields(t)) for t in sample]
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
        _row("raw_xadd_ticks_per_s", raw_rate, "ticks/s (baseline)")
        delete_all(r, keys)

        # Figure 2: the publisher's bulk mode, end to end.
        metrics = PublisherMetrics()
        stop = StopRequest()
        sink = StreamSink(r, keys, stop=stop, metrics=metrics)
        simulator = Simulator(GbmGenerator(specs, seed=3), sink, stop=stop, metrics=metrics,
                              batch_size=BATCH_SIZE, log_interval_s=3600)
        started = time.perf_counter()
        appended = simulator.run_bulk(count)
        publish_s = time.perf_counter() - started
        publish_rate = appended / publish_s
        _row("gbm_publish_ticks_per_s", publish_rate, "ticks/s")
        ratio = publish_rate / raw_rate
        print(f"  {'publish_vs_raw_xadd':<28} {ratio:>14.2f} x")
    finally:
        delete_all(r, keys)
        r.close()
    return {
        "target": "publish",
        "figures": {"gbm_publish_ticks_per_s": publish_rate,
                    "gbm_generate_ticks_per_s": generate_rate},
        "baselines": {"raw_xadd_ticks_per_s": raw_rate},
        "ratios": {"publish_vs_raw_xadd": ratio},
        "params": {"n": count, "symbols": SYMBOLS, "batch_size": BATCH_SIZE,
                   "published": appended},
    }


