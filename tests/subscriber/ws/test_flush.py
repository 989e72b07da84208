"""Frames of live ticks: the hub's flush interval coalesces ticks read apart
into one frame (and stops waiting once a full read's worth is held), and the
frames the server writes straight to the transport are read correctly by a
real websockets client, large ones and ones interleaved with control
messages included.

The intervals here are a minute long, so "not flushed yet" holds however
slow the machine is; nothing measures time."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis
import redis.asyncio
from pricepipe.subscriber.ws.hub import Batch, Hub
from pricepipe.subscriber.ws.settings import WsSettings
from websockets.asyncio.client import connect

from pricepipe import streams
from pricepipe.config import RedisSettings
from pricepipe.exceptions import ConfigError
from pricepipe.keys import Keys
from pricepipe.tick import Tick

from ..helpers import TS, collect_ticks, publish, recv_json, recv_type, running_server, until

A_MINUTE_MS = 60_000


class Recorder:
    """A hub subscriber that records what it is fed, flush by flush."""

    def __init__(self) -> None:
        self.fed: list[list[str]] = []  # entry ids of each batch since the last flush
        self.flushes: list[list[list[str]]] = []

    def feed(self, batch: Batch) -> None:
        self.fed.append([entry[1] for entry in batch.entries])

    def flush(self) -> None:
        self.flushes.append(self.fed)
        self.fed = []


def test_hub_paces_reads_by_the_flush_interval(
    redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    async def scenario() -> None:
        ar = redis.asyncio.Redis.from_url(redis_url)
        hub = Hub(ar, keys, block_ms=50, flush_interval_ms=A_MINUTE_MS)
        sub = Recorder()
        try:
            await hub.add(sub, "AAPL")
            # The first tick after a quiet spell leaves at once (after the linger).
            (first,) = await asyncio.to_thread(publish, r, keys, "AAPL", 1)
            await until(lambda: len(sub.flushes) == 1)
            assert sub.flushes == [[[first]]]
            # The next one is read, then held: the interval (a minute) is not over.
            (a,) = await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=1)
            await until(lambda: hub.ticks_read == 2)
            await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=2)
            await asyncio.sleep(0.3)
            # And the shard is not read again before the next flush: the third
            # tick waits in Redis for the read that precedes it.
            assert hub.ticks_read == 2
            assert len(sub.flushes) == 1 and sub.fed == [[a]]
        finally:
            await hub.close()
            await ar.aclose()

    asyncio.run(scenario())


def test_hub_reads_a_backlog_on_without_waiting_for_the_interval(
    redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """Reads of ``count`` entries (more may be waiting) are flushed and
    followed by the next read at once, whatever the interval."""
    async def scenario() -> None:
        ar = redis.asyncio.Redis.from_url(redis_url)
        hub = Hub(ar, keys, block_ms=50, count=3, flush_interval_ms=A_MINUTE_MS,
                  linger_ms=500)
        sub = Recorder()
        try:
            await hub.add(sub, "AAPL")
            ids = await asyncio.to_thread(publish, r, keys, "AAPL", 30)

            def flushed() -> list[str]:
                return [i for flush in sub.flushes for batch in flush for i in batch]

            # All but the last read's ticks (fewer than count: they wait for
            # the next flush), in order.
            await until(lambda: len(flushed()) >= 30 - 2)
            assert flushed() == ids[:len(flushed())]
        finally:
            await hub.close()
            await ar.aclose()

    asyncio.run(scenario())


def test_a_burst_after_a_quiet_spell_leaves_in_one_flush(
    redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """Appends to streams of several shards reach the hub as several replies;
    the first flush after a quiet spell lingers so that they all make it,
    instead of the first alone and the rest an interval later."""
    symbols = ["AAPL", "MSFT", "IBM", "ORCL", "TSLA", "NVDA"]
    assert len({keys.shard(s) for s in symbols}) > 1
    streams.register_symbols(r, keys, symbols)

    async def scenario() -> None:
        ar = redis.asyncio.Redis.from_url(redis_url)
        # A long linger, so that a slow machine cannot split the burst either.
        hub = Hub(ar, keys, block_ms=50, flush_interval_ms=A_MINUTE_MS, linger_ms=500)
        sub = Recorder()
        try:
            await asyncio.gather(*(hub.add(sub, s) for s in symbols))
            ticks = [Tick(s, TS, 100.0) for s in symbols]
            ids = await asyncio.to_thread(streams.append_ticks, r, keys, ticks)
            await until(lambda: len(sub.flushes) == 1)
            assert sorted(i for batch in sub.flushes[0] for i in batch) == \
                sorted(i.decode() for i in ids)
        finally:
            await hub.close()
            await ar.aclose()

    asyncio.run(scenario())


def test_ticks_read_apart_reach_the_client_in_one_frame(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    assert keys.shard("AAPL") != keys.shard("MSFT")
    streams.register_symbols(r, keys, ["AAPL", "MSFT"])

    async def scenario() -> None:
        # Long enough for the publishing below on a starved machine.
        async with running_server(redis_settings, flush_interval_ms=1500) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            hub = server.hub
            assert hub is not None
            await recv_json(ws)
            await ws.send('{"op":"subscribe","symbols":["AAPL","MSFT"],"snapshot":false}')
            await recv_type(ws, "subscribed")
            (session,) = server.sessions
            await until(lambda: not session._catching)  # live: later ticks are not snapshot
            first = await asyncio.to_thread(publish, r, keys, "AAPL", 1)
            assert [t["id"] for t in await collect_ticks(ws, 1)] == first
            # Two symbols, two shards, three appends: one frame.
            ids = await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=1)
            await until(lambda: hub.ticks_read == 2)
            ids += await asyncio.to_thread(publish, r, keys, "MSFT", 1, start=2)
            await until(lambda: hub.ticks_read == 3)
            ids += await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=3)
            frame = await recv_json(ws)
            assert frame["type"] == "ticks" and "conflated" not in frame
            assert [t["id"] for t in frame["ticks"]] == ids
            assert server.stats.frames == 2 and server.stats.deliveries == 4

    asyncio.run(scenario())


def test_frames_written_directly_are_read_by_a_real_client(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    """Frames with a 16-bit and a 64-bit length, with pongs and replies sent
    by websockets itself in between: a real client reads every tick once, in
    order, and every reply."""
    streams.register_symbols(r, keys, ["AAPL"])
    sent = 0

    def publish_n(n: int) -> list[str]:
        nonlocal sent
        ticks = [Tick("AAPL", TS + sent + i, 100.0 + i % 13, 1.0, "test") for i in range(n)]
        sent += n
        return [eid.decode() for eid in streams.append_ticks(r, keys, ticks)]

    async def scenario() -> None:
        async with running_server(redis_settings, read_count=5000, flush_interval_ms=5,
                                  buffer_high_bytes=8_000_000,
                                  buffer_low_bytes=1_000_000) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as ws:
            await recv_json(ws)
            await ws.send('{"op":"subscribe","symbols":["AAPL"],"snapshot":false}')
            await recv_type(ws, "subscribed")
            (session,) = server.sessions
            await until(lambda: not session._catching)
            req = 0
            # 2,000 ticks: a frame over 64 KiB.
            for n in (1, 5, 2000, 1, 700):
                publishing = asyncio.create_task(asyncio.to_thread(publish_n, n))
                for _ in range(3):
                    await ws.send(json.dumps({"op": "ping", "req": req}))
                    await ws.ping()
                    req += 1
                ids = await publishing
                got: list[dict[str, Any]] = []
                pongs: list[int] = []
                while len(got) < n or len(pongs) < 3:
                    msg = await recv_json(ws, 10)
                    if msg["type"] == "pong":
                        pongs.append(msg["req"])
                    else:
                        assert msg["type"] == "ticks" and "conflated" not in msg, msg
                        got += msg["ticks"]
                assert [t["id"] for t in got] == ids
                assert pongs == [req - 3, req - 2, req - 1]
            assert server.stats.frames >= 5 and server.stats.deliveries == 2707

    asyncio.run(scenario())


def test_flush_interval_setting_is_checked() -> None:
    assert WsSettings().flush_interval_ms > 0
    assert WsSettings(flush_interval_ms=0).flush_interval_ms == 0
    with pytest.raises(ConfigError, match="FLUSH_INTERVAL_MS"):
        WsSettings(flush_interval_ms=-1)
