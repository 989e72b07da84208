"""Frames of live entries: the hub's flush interval coalesces entries read
apart into one flush (and stops waiting once a full read's worth is held),
one frame per channel; and the frames the server writes straight to the
transport are read correctly by a real websockets client, large ones,
several in one write and ones interleaved with control messages included.

The intervals here are a minute long, so "not flushed yet" holds however
slow the machine is; nothing measures time."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio
from websockets.asyncio.client import connect

from pricepipe import streams
from pricepipe.config import RedisSettings
from pricepipe.events import Event, Trade
from pricepipe.exceptions import ConfigError
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.ws.hub import Batch, Hub
from pricepipe.subscriber.ws.protocol import Pair
from pricepipe.subscriber.ws.settings import WsSettings

from .helpers import (
    append,
    bar,
    entries_of,
    live,
    publish,
    quote,
    recv_json,
    recv_type,
    running_server,
    trade,
    until,
)

T, Q, B = Channel.TRADES, Channel.QUOTES, Channel.BARS_1M

A_MINUTE_MS = 60_000


class Recorder:
    """A hub subscriber that records what it is fed, flush by flush."""

    def __init__(self) -> None:
        self.fed: list[list[str]] = []  # entry ids of each batch since the last flush
        self.flushes: list[list[list[str]]] = []
        self.pairs: list[Pair] = []  # of every batch fed

    def feed(self, batch: Batch) -> None:
        self.fed.append([entry[1] for entry in batch.entries])
        self.pairs.append(batch.pair)

    def flush(self) -> None:
        self.flushes.append(self.fed)
        self.fed = []

    def epoch_changed(self, pair: Pair, last: str | None, epoch: str) -> None:
        raise AssertionError("the test's Redis does not change")


def test_hub_reads_each_subscribed_stream_and_feeds_it_apart(
    redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    """A symbol's trades, quotes and bars are three streams: each one fed as
    its own batch, only to the subscribers of that pair."""
    async def scenario() -> None:
        ar = redis.asyncio.Redis.from_url(redis_url)
        hub = Hub(ar, keys, block_ms=50)
        both, trades_only = Recorder(), Recorder()
        try:
            await asyncio.gather(hub.add(both, "AAPL", T), hub.add(both, "AAPL", Q),
                                 hub.add(both, "AAPL", B), hub.add(trades_only, "AAPL", T))
            assert hub.subscriber_count("AAPL", T) == 2 and hub.subscriber_count("AAPL", B) == 1
            assert hub.symbols == ["AAPL"] and len(hub.streams) == 3
            events: list[Event] = [trade("AAPL", 1), quote("AAPL", 2), bar("AAPL", 0, 1),
                                   quote("AAPL", 3)]
            t1, q2, b1, q3 = await asyncio.to_thread(append, r, keys, events)
            await until(lambda: hub.entries_read == 4)
            await until(lambda: not both.fed and not trades_only.fed)  # flushed
            assert sorted(both.pairs) == sorted([("AAPL", T), ("AAPL", Q), ("AAPL", B)])
            fed = {pair: i for pair, i in zip(both.pairs, [i for f in both.flushes for i in f],
                                              strict=True)}
            assert fed == {("AAPL", T): [t1], ("AAPL", Q): [q2, q3], ("AAPL", B): [b1]}
            assert trades_only.pairs == [("AAPL", T)]
            # Unsubscribing one pair leaves the others.
            hub.remove(both, "AAPL", Q)
            assert hub.subscriber_count("AAPL", Q) == 0 and len(hub.streams) == 2
            await asyncio.to_thread(append, r, keys, [quote("AAPL", 4), trade("AAPL", 5)])
            await until(lambda: hub.entries_read == 5)
            assert both.pairs[3:] == [("AAPL", T)]
        finally:
            await hub.close()
            await ar.aclose()

    asyncio.run(scenario())


def test_hub_paces_reads_by_the_flush_interval(
    redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    async def scenario() -> None:
        ar = redis.asyncio.Redis.from_url(redis_url)
        hub = Hub(ar, keys, block_ms=50, flush_interval_ms=A_MINUTE_MS)
        sub = Recorder()
        try:
            await hub.add(sub, "AAPL", T)
            # The first tick after a quiet spell leaves at once (after the linger).
            (first,) = await asyncio.to_thread(publish, r, keys, "AAPL", 1)
            await until(lambda: len(sub.flushes) == 1)
            assert sub.flushes == [[[first]]]
            # The next one is read, then held: the interval (a minute) is not over.
            (a,) = await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=1)
            await until(lambda: hub.entries_read == 2)
            await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=2)
            await asyncio.sleep(0.3)
            # And the shard is not read again before the next flush: the third
            # tick waits in Redis for the read that precedes it.
            assert hub.entries_read == 2
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
            await hub.add(sub, "AAPL", T)
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
    """Appends to streams of several shards (trades and quotes) reach the hub
    as several replies; the first flush after a quiet spell lingers so that
    they all make it, instead of the first alone and the rest an interval
    later."""
    symbols = ["AAPL", "MSFT", "IBM", "ORCL", "TSLA", "NVDA"]
    assert len({keys.shard(s) for s in symbols}) > 1
    streams.register_symbols(r, keys, symbols)

    async def scenario() -> None:
        ar = redis.asyncio.Redis.from_url(redis_url)
        # A long linger, so that a slow machine cannot split the burst either.
        hub = Hub(ar, keys, block_ms=50, flush_interval_ms=A_MINUTE_MS, linger_ms=500)
        sub = Recorder()
        try:
            await asyncio.gather(*(hub.add(sub, s, c) for s in symbols for c in (T, Q)))
            events: list[Event] = [trade(s, 0) for s in symbols]
            events += [quote(s, 1) for s in symbols]
            ids = await asyncio.to_thread(streams.append_events, r, keys, events)
            await until(lambda: len(sub.flushes) == 1)
            assert sorted(i for batch in sub.flushes[0] for i in batch) == \
                sorted(i.decode() for i in ids)
        finally:
            await hub.close()
            await ar.aclose()

    asyncio.run(scenario())


def test_entries_read_apart_leave_in_one_flush_one_frame_per_channel(
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
            await live(server)  # later entries are not part of a snapshot
            first = await asyncio.to_thread(publish, r, keys, "AAPL", 1)
            frame = await recv_json(ws)
            assert [t["id"] for t in frame["trades"]] == first
            # Two symbols, two shards, two channels, four appends: one flush,
            # a trades frame and a quotes frame, in one write.
            trades = await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=1)
            await until(lambda: hub.entries_read == 2)
            quotes = await asyncio.to_thread(publish, r, keys, "MSFT", 1, start=2, channel=Q)
            await until(lambda: hub.entries_read == 3)
            # Both readers now wait for the flush, which has them read these first.
            trades += await asyncio.to_thread(publish, r, keys, "MSFT", 1, start=3)
            quotes += await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=4, channel=Q)
            one, two = await recv_json(ws), await recv_json(ws)
            assert (one["type"], two["type"]) == ("trades", "quotes")  # CHANNELS order
            assert "conflated" not in one and "replay" not in two
            assert [t["id"] for t in one["trades"]] == trades
            assert [q["id"] for q in two["quotes"]] == quotes
            assert server.stats.frames == 3 and server.stats.deliveries == 5

    asyncio.run(scenario())


def test_frames_written_directly_are_read_by_a_real_client(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    """Frames with a 16-bit and a 64-bit length, two or three to a write,
    with pongs and replies sent by websockets itself in between: a real
    client reads every entry once, in order per channel, and every reply."""
    streams.register_symbols(r, keys, ["AAPL"])
    sent = 0

    def publish_n(n: int) -> dict[Channel, list[str]]:
        """``n`` events, a trade then five quotes."""
        nonlocal sent
        events: list[Event] = [trade("AAPL", sent + i) if (sent + i) % 6 == 0
                               else quote("AAPL", sent + i) for i in range(n)]
        sent += n
        out: dict[Channel, list[str]] = {T: [], Q: []}
        for event, entry_id in zip(events, append(r, keys, events), strict=True):
            out[T if isinstance(event, Trade) else Q].append(entry_id)
        return out

    async def scenario() -> None:
        async with running_server(redis_settings, read_count=5000, flush_interval_ms=5,
                                  buffer_high_bytes=8_000_000,
                                  buffer_low_bytes=1_000_000) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as ws:
            await recv_json(ws)
            await ws.send('{"op":"subscribe","symbols":["AAPL"],"snapshot":false}')
            await recv_type(ws, "subscribed")
            await live(server)
            req = 0
            # 2,000 events: frames over 64 KiB.
            for n in (1, 7, 2000, 1, 700):
                publishing = asyncio.create_task(asyncio.to_thread(publish_n, n))
                for _ in range(3):
                    await ws.send(json.dumps({"op": "ping", "req": req}))
                    await ws.ping()
                    req += 1
                want = await publishing
                got: dict[Channel, list[str]] = {T: [], Q: []}
                pongs: list[int] = []
                while sum(map(len, got.values())) < n or len(pongs) < 3:
                    msg = await recv_json(ws, 10)
                    if msg["type"] == "pong":
                        pongs.append(msg["req"])
                    else:
                        assert msg["type"] in ("trades", "quotes") and "conflated" not in msg
                        for channel, entry in entries_of(msg):
                            got[channel].append(entry["id"])
                assert got == want
                assert pongs == [req - 3, req - 2, req - 1]
            assert server.stats.frames >= 5 and server.stats.deliveries == 2709

    asyncio.run(scenario())


def test_flush_interval_setting_is_checked() -> None:
    assert WsSettings().flush_interval_ms > 0
    assert WsSettings(flush_interval_ms=0).flush_interval_ms == 0
    with pytest.raises(ConfigError, match="FLUSH_INTERVAL_MS"):
        WsSettings(flush_interval_ms=-1)
