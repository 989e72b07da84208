"""Scale, kept lean: one process serves 1,000 concurrent clients on trades
and quotes while one reader is stalled, and the stalled reader's memory
stays bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection

from pricepipe import streams
from pricepipe.config import RedisSettings
from pricepipe.keys import Channel, Keys

from .helpers import (
    SLOW,
    collect,
    ids,
    publish_mix,
    running_server,
    stalled_max_bytes,
    subscribed,
    until,
)

CLIENTS = 1000


def test_thousand_clients_with_one_stalled_reader(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    symbols = [f"S{i}" for i in range(10)]
    streams.register_symbols(r, keys, [*symbols, "HOT"])

    async def scenario() -> None:
        async with running_server(redis_settings, slow_timeout_s=60,
                                  max_connections_per_address=None, **SLOW) as server:
            stalled = await subscribed(server.port, ["HOT", *symbols], small_window=True)
            assert stalled.transport is not None
            stalled.transport.pause_reading()
            gate = asyncio.Semaphore(50)

            async def one(i: int) -> ClientConnection:
                async with gate:
                    return await subscribed(server.port, [symbols[i % 10]], ping_interval=None)

            clients = await asyncio.gather(*(one(i) for i in range(CLIENTS - 1)))
            try:
                assert server.stats.connections == CLIENTS
                await asyncio.sleep(0.3)
                # 6 rounds: a trade and 5 quotes per symbol.
                last = await asyncio.to_thread(publish_mix, r, keys, symbols, 6)
                hot = await asyncio.to_thread(publish_mix, r, keys, ["HOT"], 3000)
                got = await asyncio.gather(*(collect(c, 6, timeout_s=60) for c in clients))
                for i, entries in enumerate(got):
                    symbol = symbols[i % 10]
                    assert {e["symbol"] for _, e in entries} == {symbol}
                    for channel in (Channel.TRADES, Channel.QUOTES):
                        assert ids(entries, symbol, channel) == last[(symbol, channel)]
                (session,) = [s for s in server.sessions
                              if s.ws.remote_address == stalled.local_address]
                # 3,000 entries later the stalled reader holds a bounded buffer
                # and at most a trade and a quote per symbol, not the backlog.
                await until(lambda: session.behind)
                bound = stalled_max_bytes(2 * 11)
                assert session.ws.transport.get_write_buffer_size() < bound
                quotes: dict[str, Any] = session._latest_quotes
                trades: dict[str, Any] = session._held_trades
                assert set(quotes) | set(trades) <= {"HOT", *symbols} and hot
                largest = max(s.ws.transport.get_write_buffer_size() for s in server.sessions)
                assert largest < bound
            finally:
                await asyncio.gather(*(c.close() for c in clients))
                stalled.transport.abort()

    asyncio.run(scenario())
