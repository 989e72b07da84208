"""The client library on a three-master Redis Cluster: one read per shard,
symbols spread over several nodes, latest-only and consumer-group readers,
sync and asyncio. (The websocket server on a cluster is covered by
tests/deploy/test_cluster.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio

from pricepipe import codec, streams
from pricepipe.embedded import RedisServer
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.client import AsyncStreamReader, GroupReader, StreamReader
from pricepipe.subscriber.client.settings import ClientSettings

from .helpers import quote, take, trade

SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA"]
FAST = ClientSettings(block_ms=100, count=50)


def test_readers_on_a_cluster(redis_cluster: list[RedisServer]) -> None:  # noqa: F811
    keys = Keys("pp", 8)
    cluster: Any = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    try:
        nodes = {cluster.get_node_from_key(keys.trades(s)).port for s in SYMBOLS}
        assert len(nodes) >= 2, "symbols should live on several masters"
        streams.register_symbols(cluster, keys, SYMBOLS)
        with StreamReader(cluster, keys, SYMBOLS, settings=FAST) as latest, \
                GroupReader(cluster, keys, SYMBOLS, group="strat", consumer="c1",
                            settings=FAST) as grouped:
            events = [make(s, i) for i in range(5) for s in SYMBOLS for make in (trade, quote)]
            ids = streams.append_events(cluster, keys, events)
            want = sorted((e.symbol, codec.channel_of(e), i.decode())
                          for e, i in zip(events, ids, strict=True))
            assert sorted((d.symbol, d.channel, d.entry_id) for d in take(latest, 60)) == want
            got = take(grouped, 60)
            assert sorted((d.symbol, d.channel, d.entry_id) for d in got) == want
            grouped.ack(*got)
        for symbol in SYMBOLS:
            for stream in (keys.trades(symbol), keys.quotes(symbol)):
                summary: Any = cluster.xpending(stream, "strat")
                assert summary["pending"] == 0

        async def scenario() -> None:
            client = redis.asyncio.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
            try:
                async with AsyncStreamReader(client, keys, SYMBOLS, start="last",
                                             settings=FAST) as reader:
                    got = [await reader.get(10) for _ in range(2 * len(SYMBOLS))]
                    assert sorted((d.symbol, d.channel) for d in got if d) == sorted(
                        (s, c) for s in SYMBOLS for c in (Channel.TRADES, Channel.QUOTES))
            finally:
                await client.aclose()

        asyncio.run(scenario())
    finally:
        cluster.close()
