"""Backpressure against a real Redis with a small ``maxmemory`` (noeviction)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from pricepipe.backpressure import MemoryUsage, Policy, is_oom_error, memory_usage
from pricepipe.embedded import RedisServer
from pricepipe.events import Event, Quote, Side, Trade
from pricepipe.exceptions import ConfigError
from pricepipe.keys import PERSISTED, Keys
from pricepipe.publisher.metrics import PublisherMetrics
from pricepipe.publisher.sink import StreamSink
from pricepipe.stop import StopRequest

MAXMEMORY_BYTES = 4 * 1024 * 1024
SYMBOLS = ("AAA", "BBB", "CCC", "DDD")


def event(n: int) -> Event:
    """Event ``n``: every third a trade, else a quote, over the four symbols."""
    symbol, ts_us, price = SYMBOLS[n % 4], 1_700_000_000_000_000 + n, 100.0 + n % 97
    if n % 3 == 0:
        return Trade(symbol, ts_us, price, 1.0, "test", None, Side.SELL)
    return Quote(symbol, ts_us, price, 2.0, price + 0.05, 3.0, "test")


def batch(start: int, size: int = 1000) -> list[Event]:
    return [event(start + i) for i in range(size)]


@pytest.fixture
def small_redis(make_redis_server: Callable[..., RedisServer]) -> Any:
    server = make_redis_server(maxmemory_bytes=MAXMEMORY_BYTES, appendonly=False)
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


def stream_total(r: Any, keys: Keys) -> int:
    return sum(r.xlen(keys.stream(s, c)) for s in SYMBOLS for c in PERSISTED)


def test_pure_helpers() -> None:
    assert memory_usage({"used_memory": 50, "maxmemory": 200}).fraction == 0.25
    assert memory_usage({"used_memory": 50, "maxmemory": 0}).fraction == 0.0
    cluster = {"n1": {"used_memory": 10, "maxmemory": 100},
               "n2": {"used_memory": 90, "maxmemory": 100}}
    assert memory_usage(cluster) == MemoryUsage(90, 100)
    with pytest.raises(ValueError):
        memory_usage({"maxmemory": 5})
    assert is_oom_error(redis.ResponseError(
        "OOM command not allowed when used memory > 'maxmemory'."))
    assert is_oom_error(redis.exceptions.OutOfMemoryError(
        "command not allowed when used memory > 'maxmemory'."))
    assert not is_oom_error(redis.ResponseError("WRONGTYPE Operation against a key"))
    assert Policy.parse(" Drop ") is Policy.DROP
    with pytest.raises(ConfigError):
        Policy.parse("explode")


@pytest.mark.parametrize("high_water", [0.7, 1.0])
def test_drop_policy_counts_and_never_crashes(small_redis: Any, keys: Keys,
                                              high_water: float) -> None:
    """high_water 0.7: the INFO check trips first; 1.0: Redis's OOM reply does."""
    metrics = PublisherMetrics()
    sink = StreamSink(small_redis, keys, stop=StopRequest(), metrics=metrics, policy=Policy.DROP,
                      high_water=high_water, low_water=min(high_water, 0.6),
                      check_interval_s=0.0)
    attempted = appended = 0
    for i in range(200):
        events = batch(i * 1000)
        attempted += len(events)
        appended += sink.publish(events)
        if metrics.value("pricepipe_publisher_events_dropped", reason="backpressure") >= 3000:
            break
    dropped = metrics.value("pricepipe_publisher_events_dropped", reason="backpressure")
    assert dropped >= 3000, "redis never filled up"
    assert sink.pressure and metrics.value("pricepipe_publisher_backpressure") == 1
    assert appended + dropped == attempted
    assert stream_total(small_redis, keys) == appended  # nothing stored twice or lost silently
    assert metrics.total("pricepipe_publisher_events_published") == appended


def test_block_policy_resumes_after_memory_is_freed(small_redis: Any, keys: Keys) -> None:
    metrics = PublisherMetrics()
    stop = StopRequest()
    sink = StreamSink(small_redis, keys, stop=stop, metrics=metrics, policy=Policy.BLOCK,
                      high_water=0.8, low_water=0.5, check_interval_s=0.05)
    filled = 0
    while not sink.pressure:  # fill up to the high-water mark
        filled += sink.publish(batch(filled))
        sink._check_memory(force=True)
        assert filled < 1_000_000, "redis never filled up"
    blocked = threading.Event()
    done: list[int] = []

    def publish_more() -> None:
        blocked.set()
        done.append(sink.publish(batch(10_000_000, 500)))

    worker = threading.Thread(target=publish_more)
    worker.start()
    blocked.wait(10)
    worker.join(0.5)
    assert worker.is_alive() and not done, "publish did not block under pressure"
    # The operator (or the persist workers' trimming) frees memory.
    for symbol in SYMBOLS:
        for channel in PERSISTED:
            small_redis.xtrim(keys.stream(symbol, channel), maxlen=10, approximate=False)
    worker.join(30)
    assert done == [500]
    assert not sink.pressure
    assert stream_total(small_redis, keys) == 4 * 2 * 10 + 500
    assert metrics.total("pricepipe_publisher_events_dropped") == 0


def test_block_policy_gives_up_on_stop(small_redis: Any, keys: Keys) -> None:
    metrics = PublisherMetrics()
    stop = StopRequest()
    sink = StreamSink(small_redis, keys, stop=stop, metrics=metrics, policy=Policy.BLOCK,
                      high_water=1.0, low_water=0.9, check_interval_s=0.05)
    total = 0
    while not sink.pressure:
        total += 1
        if total > 500:
            pytest.fail("redis never filled up")
        worker_done: list[int] = []

        def publish_one(start: int = total, out: list[int] = worker_done) -> None:
            out.append(sink.publish(batch(start * 1000)))

        worker = threading.Thread(target=publish_one)
        worker.start()
        # Blocked means alive *and* under pressure: a publish that is merely
        # slow on a busy machine is not blocked.
        deadline = time.monotonic() + 30
        while worker.is_alive() and not sink.pressure and time.monotonic() < deadline:
            time.sleep(0.01)
        if worker.is_alive() and sink.pressure:  # blocked: the OOM reply arrived mid-batch
            stop.set()
            worker.join(30)
            assert not worker.is_alive()
            dropped = metrics.value("pricepipe_publisher_events_dropped", reason="stop")
            assert dropped > 0 and worker_done[0] + dropped == 1000
            return
    pytest.fail("publish never blocked")
