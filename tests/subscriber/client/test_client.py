"""The strategy client library on real servers: latest-only and consumer
group readers (sync and asyncio), reconnection across a Redis restart, and
replay from PostgreSQL through the same interface."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from pricepipe import codec
from pricepipe.embedded import RedisServer
from pricepipe.events import Quote, Side, Trade
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.client import (
    AsyncGroupReader,
    AsyncReplayReader,
    AsyncStreamReader,
    Delivery,
    Gap,
    GapReason,
    GroupReader,
    ReplayReader,
    StreamReader,
)
from pricepipe.subscriber.client.settings import ClientSettings

from .helpers import FAST, TS, deliveries, insert_events, inside, publish, take


def pending(r: redis.Redis, keys: Keys, group: str) -> int:
    summary: Any = r.xpending(keys.trades("AAPL"), group)
    return int(summary["pending"])


def test_stream_reader_start_modes(r: redis.Redis, keys: Keys) -> None:
    old = publish(r, keys, "AAPL", 3) + publish(r, keys, "MSFT", 2)
    with StreamReader(r, keys, ["AAPL", "MSFT"], start="0", settings=FAST) as everything, \
            StreamReader(r, keys, ["AAPL"], start="last", settings=FAST) as last, \
            StreamReader(r, keys, ["AAPL"], start={"AAPL": {"trades": old[0]}},
                         settings=FAST) as resumed, \
            StreamReader(r, keys, ["AAPL", "MSFT"], settings=FAST) as live:
        got = take(everything, 5)
        assert sorted(d.entry_id for d in got) == sorted(old)
        assert [d.entry_id for d in take(last, 1)] == [old[2]]
        assert [d.entry_id for d in take(resumed, 2)] == old[1:3]
        assert live.get(timeout_s=0.3) is None  # "$": nothing old
        new = publish(r, keys, "MSFT", 2, start=10)
        got = take(live, 2)
        assert [d.entry_id for d in got] == new
        assert got[0].event == Trade("MSFT", TS + 10, 110.0, 1.0, "test", "t10", Side.SELL)


def test_group_reader_redelivers_unacked_after_restart_of_consumer(
    r: redis.Redis, keys: Keys
) -> None:
    ids = publish(r, keys, "AAPL", 4)
    with GroupReader(r, keys, ["AAPL"], group="strat", consumer="c1", start="0",
                     settings=FAST) as reader:
        got = take(reader, 4)
        assert [d.entry_id for d in got] == ids and not any(d.redelivered for d in got)
        reader.ack(*got[:2])
    # Same consumer name again: the two unacknowledged entries come back first.
    with GroupReader(r, keys, ["AAPL"], group="strat", consumer="c1", settings=FAST) as reader:
        again = take(reader, 2)
        assert [(d.entry_id, d.redelivered) for d in again] == [(ids[2], True), (ids[3], True)]
        reader.ack(*again)
        new = publish(r, keys, "AAPL", 1, start=10)
        fresh = take(reader, 1)
        assert [(d.entry_id, d.redelivered) for d in fresh] == [(new[0], False)]
        reader.ack(*fresh)
    assert pending(r, keys, "strat") == 0


def test_reader_reconnects_after_redis_restart(
    make_redis_server: Callable[..., RedisServer], keys: Keys
) -> None:
    server = make_redis_server()
    r = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        first = publish(r, keys, "AAPL", 2)
        trades = ["trades"]
        with StreamReader(r, keys, ["AAPL"], channels=trades, start="0",
                          settings=FAST) as reader, \
                GroupReader(r, keys, ["AAPL"], group="g", consumer="c", channels=trades,
                            start="0", settings=FAST) as grouped:
            assert [d.entry_id for d in take(reader, 2)] == first
            assert [d.entry_id for d in take(grouped, 2)] == first
            grouped.ack(*[Delivery(i, Trade("AAPL", TS, 1.0, 1.0)) for i in first])
            server.restart()  # AOF keeps the streams and the group, but...
            later = publish(r, keys, "AAPL", 3, start=5)
            gaps = [take(each, 1)[0] for each in (reader, grouped)]
            newer = publish(r, keys, "AAPL", 2, start=10)
            for each, gap in zip((reader, grouped), gaps, strict=True):
                # ...a restarted Redis may have lost its last second: a gap
                # after what each reader had, past what the server held when
                # the reader saw it (what was appended before that is in the
                # gap: it cannot be told from what was lost), then reading
                # goes on.
                assert isinstance(gap, Gap) and gap.reason is GapReason.EPOCH
                assert (gap.symbol, gap.channel, gap.after) == ("AAPL", Channel.TRADES,
                                                                first[-1])
                assert not codec.parse_entry_id(gap.until) > codec.parse_entry_id(newer[0])
                outside = [i for i in later if not inside(gap, i)]
                got = take(each, len(outside) + len(newer))
                assert [d.entry_id for d in got] == outside + newer
            grouped.ack(*got)
        assert pending(r, keys, "g") == 0
    finally:
        r.close()


def test_async_readers(redis_url: str, r: redis.Redis, keys: Keys) -> None:
    ids = publish(r, keys, "AAPL", 3)

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            async with AsyncStreamReader(client, keys, ["AAPL"], start="0",
                                         settings=FAST) as reader, \
                    AsyncGroupReader(client, keys, ["AAPL"], group="ga", consumer="c",
                                     start="0", settings=FAST) as grouped:
                got = deliveries([await reader.get(5) for _ in range(3)])
                assert [d.entry_id for d in got] == ids
                seen: list[Delivery] = []
                async for delivery in grouped:
                    seen += deliveries([delivery])
                    await grouped.ack(*seen[-1:])
                    if len(seen) == 3:
                        break
                assert [d.entry_id for d in seen] == ids
        finally:
            await client.aclose()

    asyncio.run(scenario())
    assert pending(r, keys, "ga") == 0


class _SwallowingRedis(redis.asyncio.Redis):
    """Finishes a command it is cancelled in and returns the reply, as
    Python 3.11's ``wait_for`` (redis-py's send, with a ``socket_timeout``)
    does when the cancel lands just as the send completes."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        inner = asyncio.ensure_future(super().execute_command(*args, **options))
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            return await inner


def test_async_readers_close_when_a_library_swallows_the_cancel(
        redis_url: str, r: redis.Redis, keys: Keys) -> None:
    publish(r, keys, "AAPL", 2)

    async def scenario() -> None:
        client = _SwallowingRedis.from_url(redis_url)
        try:
            for reader in (AsyncStreamReader(client, keys, ["AAPL"], start="0", settings=FAST),
                           AsyncGroupReader(client, keys, ["AAPL"], group="gs", consumer="c",
                                            start="0", settings=FAST)):
                await reader.ready()
                assert isinstance(await reader.get(5), Delivery)
                # Its shard task sits in a blocking read when the cancel comes.
                await asyncio.sleep(0.05)
                await reader.aclose()
        finally:
            await client.aclose()

    # In a thread: a close that hangs would take the event loop (and any
    # timeout in it) with it.
    closer = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    closer.start()
    closer.join(20)
    assert not closer.is_alive(), "aclose() hung"


def test_replay_from_postgres_in_time_order(db: Any) -> None:
    ticks: list[tuple[Trade | Quote, str]] = [
        (Trade("AAPL" if i % 2 else "MSFT", TS + i * 1000, 10.0 + i, 1.0, "gbm"),
         f"{1_767_323_045_000 + i}-0") for i in range(20)]
    ticks.append((Trade("IBM", TS + 5, 1.0, None), "1767323045000-9"))  # not asked for
    insert_events(db, ticks)
    wanted = [(t, eid) for t, eid in ticks if t.symbol != "IBM"]
    with ReplayReader(db, ["AAPL", "MSFT"], start_us=TS, speed=None) as reader:
        got = list(reader)
    assert [(d.event, d.entry_id) for d in got] == wanted
    # 20 ms of history at 1000x; paced, and the second half only.
    with ReplayReader(db, ["AAPL"], start_us=TS + 10_000, end_us=TS + 20_000,
                      speed=1000.0) as reader:
        assert [d.event.ts_us for d in reader] == [TS + i * 1000 for i in range(11, 20, 2)]

    async def scenario() -> list[Delivery]:
        async with AsyncReplayReader(db, ["MSFT"], start_us=TS, speed=1000.0,
                                     batch_size=3) as reader:
            return [d async for d in reader]

    got = asyncio.run(scenario())
    assert [d.event.ts_us for d in got] == [TS + i * 1000 for i in range(0, 20, 2)]


def test_close_stops_reader_threads(r: redis.Redis, keys: Keys) -> None:
    before = threading.active_count()
    reader = StreamReader(r, keys, ["AAPL", "MSFT", "IBM", "ORCL"], settings=FAST)
    assert threading.active_count() > before
    reader.close()
    assert threading.active_count() == before


def test_group_reader_recreates_a_vanished_group(r: redis.Redis, keys: Keys) -> None:
    publish(r, keys, "AAPL", 1)
    with GroupReader(r, keys, ["AAPL"], group="g", consumer="c", settings=FAST) as reader, \
            StreamReader(r, keys, ["AAPL"], settings=FAST) as latest:
        r.flushall()  # a Redis that lost its data: stream and group are gone
        deadline = 50
        while r.exists(keys.trades("AAPL")) == 0 and deadline:
            deadline -= 1  # the reader recreates the group (and the stream) by itself
            threading.Event().wait(0.1)
        assert r.exists(keys.trades("AAPL"))
        ids = publish(r, keys, "AAPL", 2, start=5)
        got = take(reader, 2)
        assert [d.entry_id for d in got] == ids and not any(d.redelivered for d in got)
        reader.ack(*got)
        assert [d.entry_id for d in take(latest, 2)] == ids
    assert pending(r, keys, "g") == 0


def test_group_reader_claims_entries_of_a_consumer_gone_for_good(
    redis_url: str, r: redis.Redis, keys: Keys
) -> None:
    ids = publish(r, keys, "AAPL", 3)
    with GroupReader(r, keys, ["AAPL"], group="g", consumer="gone", start="0",
                     settings=FAST) as reader:
        assert len(take(reader, 3)) == 3  # read, never acknowledged: then it "dies"
    claiming = ClientSettings(block_ms=100, count=50, claim_idle_ms=50)
    with GroupReader(r, keys, ["AAPL"], group="g", consumer="heir",
                     settings=claiming) as heir:
        got = take(heir, 3)
        assert sorted(d.entry_id for d in got) == ids and all(d.redelivered for d in got)
        heir.ack(*got[:1])  # the heir dies too, leaving two
    assert pending(r, keys, "g") == 2

    async def scenario() -> list[Delivery]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            async with AsyncGroupReader(client, keys, ["AAPL"], group="g", consumer="heir2",
                                        settings=claiming) as reader:
                out = deliveries([await reader.get(10), await reader.get(10)])
                await reader.ack(*out)
                return out
        finally:
            await client.aclose()

    got = asyncio.run(scenario())
    assert sorted(d.entry_id for d in got) == ids[1:] and all(d.redelivered for d in got)
    assert pending(r, keys, "g") == 0


def test_claiming_never_takes_this_consumers_own_pending_entries(
    r: redis.Redis, keys: Keys
) -> None:
    ids = publish(r, keys, "AAPL", 2)
    claiming = ClientSettings(block_ms=50, count=50, claim_idle_ms=20)
    with GroupReader(r, keys, ["AAPL"], group="g", consumer="slow", start="0",
                     settings=claiming) as reader:
        got = take(reader, 2)
        threading.Event().wait(0.3)  # a slow strategy: its entries idle past claim_idle_ms
        assert reader.get(timeout_s=0.3) is None  # ... and are not handed out again
        reader.ack(*got)
    assert [d.entry_id for d in got] == ids


def test_async_reader_reconnects_after_redis_restart(
    make_redis_server: Callable[..., RedisServer], keys: Keys
) -> None:
    server = make_redis_server()
    r = redis.Redis.from_url(server.url)

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=2)
        try:
            async with AsyncGroupReader(client, keys, ["AAPL"], group="g", consumer="c",
                                        channels=["trades"], settings=FAST) as reader:
                first = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
                got = deliveries([await reader.get(10) for _ in first])
                assert [d.entry_id for d in got] == first
                await reader.ack(*got)
                await asyncio.to_thread(server.restart)
                later = await asyncio.to_thread(publish, r, keys, "AAPL", 2, start=5)
                gap = await reader.get(30)
                assert isinstance(gap, Gap) and (gap.after, gap.reason) == (
                    first[-1], GapReason.EPOCH)
                newer = await asyncio.to_thread(publish, r, keys, "AAPL", 2, start=10)
                outside = [i for i in later if not inside(gap, i)]  # see the sync twin
                got = deliveries([await reader.get(30) for _ in outside + newer])
                assert [d.entry_id for d in got] == outside + newer
                await reader.ack(*got)
        finally:
            await client.aclose()

    try:
        asyncio.run(scenario())
        assert pending(r, keys, "g") == 0
    finally:
        r.close()


def test_readers_read_the_channels_asked_for(r: redis.Redis, keys: Keys) -> None:
    from pricepipe.keys import Channel

    from .helpers import publish_events, quote, trade

    with StreamReader(r, keys, ["AAPL"], channels=["quotes"], settings=FAST) as quotes_only, \
            StreamReader(r, keys, ["AAPL"], settings=FAST) as both, \
            GroupReader(r, keys, ["AAPL"], group="q", consumer="c", channels=["trades"],
                        settings=FAST) as trades_only:
        ids = publish_events(r, keys, [trade("AAPL", 1), quote("AAPL", 2), trade("AAPL", 3),
                                       quote("AAPL", 4)])
        got = take(quotes_only, 2)
        assert [(d.channel, d.entry_id) for d in got] == [(Channel.QUOTES, ids[1]),
                                                          (Channel.QUOTES, ids[3])]
        assert all(isinstance(d.event, Quote) for d in got)
        assert quotes_only.get(timeout_s=0.3) is None  # never a trade
        assert sorted(d.entry_id for d in take(both, 4)) == sorted(ids)
        grouped = take(trades_only, 2)
        assert [d.event for d in grouped] == [trade("AAPL", 1), trade("AAPL", 3)]
        trades_only.ack(*grouped)
    assert pending(r, keys, "q") == 0
    # Resuming per channel: after the first quote only.
    with StreamReader(r, keys, ["AAPL"], channels=["quotes"],
                      start={"AAPL": {"quotes": ids[1]}}, settings=FAST) as resumed:
        assert [d.entry_id for d in take(resumed, 1)] == [ids[3]]


def test_the_persist_group_is_not_a_strategy_group(r: redis.Redis, keys: Keys) -> None:
    import pytest

    with pytest.raises(ValueError, match="persist"):
        GroupReader(r, keys, ["AAPL"], group="persist", consumer="c", settings=FAST)
    with pytest.raises(ValueError):
        StreamReader(r, keys, ["AAPL"], channels=["ticks"], settings=FAST)


def test_replay_interleaves_trades_and_quotes_in_event_time_order(db: Any) -> None:
    from .helpers import quote, trade

    events: list[tuple[Trade | Quote, str]] = []
    for i in range(6):
        events.append((quote("AAPL", i * 10), f"{1_767_323_045_000 + i}-0"))
        events.append((trade("AAPL", i * 10 + 5), f"{1_767_323_045_000 + i}-1"))
    insert_events(db, events)
    with ReplayReader(db, ["AAPL"], start_us=TS, speed=None) as reader:
        assert [(d.event, d.entry_id) for d in reader] == events
    with ReplayReader(db, ["AAPL"], start_us=TS, speed=None, channels=["quotes"]) as reader:
        assert [d.event for d in reader] == [e for e, _ in events if isinstance(e, Quote)]
