"""The websocket server on a three-master Redis Cluster, in process: the
registry check, epochs per shard (each shard's node), a resume checked and
replayed per shard, live entries of symbols on several nodes, health. (The
processes on a cluster, behind the whole pipeline: tests/deploy/test_cluster.py.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis
from websockets.asyncio.client import connect

from pricepipe import streams
from pricepipe.config import RedisSettings
from pricepipe.embedded import RedisServer
from pricepipe.keys import Channel, Keys

from .helpers import collect, ids, live, recv_json, recv_type, running_server, trade

SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA"]
T = Channel.TRADES


def test_the_server_on_a_cluster(redis_cluster: list[RedisServer]) -> None:
    keys = Keys("pp", 8)
    settings = RedisSettings(url=redis_cluster[0].url, cluster=True, prefix="pp", shards=8)
    cluster: Any = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    try:
        nodes = {cluster.get_node_from_key(keys.trades(s)).port for s in SYMBOLS}
        assert len(nodes) >= 2, "symbols should live on several masters"
        streams.register_symbols(cluster, keys, SYMBOLS)
        first = [i.decode() for i in streams.append_events(
            cluster, keys, [trade(s, n) for n in range(3) for s in SYMBOLS])]
        by_symbol = {s: first[i::len(SYMBOLS)] for i, s in enumerate(SYMBOLS)}
        epochs = {s: streams.epoch(cluster, keys.trades(s)) for s in SYMBOLS}
        assert len(set(epochs.values())) == len(nodes)  # one per node

        async def scenario() -> None:
            async with running_server(settings) as server:
                ws = await connect(f"ws://127.0.0.1:{server.port}/ws")
                await recv_json(ws)
                await ws.send(json.dumps({
                    "op": "subscribe", "symbols": [*SYMBOLS, "NOPE"], "channels": ["trades"]}))
                assert (await recv_type(ws, "error"))["symbols"] == ["NOPE"]
                await ws.send(json.dumps({
                    "op": "subscribe", "symbols": SYMBOLS, "channels": ["trades"],
                    "resume": {s: {"trades": by_symbol[s][0], "epoch": epochs[s]}
                               for s in SYMBOLS}}))
                ack = await recv_type(ws, "subscribed")
                assert ack["epochs"] == epochs
                replayed = await collect(ws, 2 * len(SYMBOLS))
                for s in SYMBOLS:
                    assert ids(replayed, s, T) == by_symbol[s][1:]
                await live(server)
                new = await asyncio.to_thread(lambda: [i.decode() for i in streams.append_events(
                    cluster, keys, [trade(s, 10) for s in SYMBOLS])])
                got = await collect(ws, len(SYMBOLS))
                assert sorted(e["id"] for _, e in got) == sorted(new)
                assert server.health()["redis"] is True and server.stats.unrecoverable == 0
                await ws.close()

        asyncio.run(scenario())
    finally:
        cluster.close()

