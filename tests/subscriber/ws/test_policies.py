"""Per-connection policies: slow consumers (conflation by channel: the
latest quote, the latest state of each bar, the latest trade with the
skipped trades named as gaps; then close 4008), keepalive, limits (message
size, symbols, subscribe rate, connections), auth and origins; each
violation is answered on its own connection while other clients carry on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pricepipe import codec, streams
from pricepipe.config import RedisSettings
from pricepipe.events import BarState
from pricepipe.keys import Channel, Keys

from .helpers import (
    SLOW,
    Got,
    append,
    bar,
    collect,
    entries_of,
    ids,
    live,
    publish,
    publish_mix,
    recv_json,
    recv_type,
    running_server,
    stalled_max_bytes,
    subscribed,
    until,
)

T, Q, B = Channel.TRADES, Channel.QUOTES, Channel.BARS_1M
ALL = ["trades", "quotes", "bars.1m"]


async def drain_until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    frames = []
    try:
        while True:
            frames.append(await recv_json(ws, 10))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None


def publish_bars(r: redis.Redis, keys: Keys, symbols: list[str]) -> dict[tuple[str, int], Any]:
    """Minute 0 of each symbol changes 20 times and ends final, minute 1
    changes 10 times; the last entry ID and state per (symbol, minute)."""
    events = [bar(s, 0, n) for n in range(1, 21) for s in symbols]
    events += [bar(s, 0, 20, state=BarState.FINAL) for s in symbols]
    events += [bar(s, 1, n) for n in range(1, 11) for s in symbols]
    last: dict[tuple[str, int], Any] = {}
    for event, entry_id in zip(events, append(r, keys, events), strict=True):
        last[(event.symbol, (event.bucket_us - events[0].bucket_us) // 60_000_000)] = (
            entry_id, event)
    return last


def test_slow_reader_gets_conflated_frames_per_channel_others_get_everything(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    symbols = ["AAPL", "MSFT", "IBM"]
    streams.register_symbols(r, keys, symbols)

    async def scenario() -> None:
        async with running_server(redis_settings, slow_timeout_s=60, **SLOW) as server:
            slow = await subscribed(server.port, symbols, ALL, small_window=True)
            fast = await subscribed(server.port, symbols, ALL)
            await live(server, 2)
            assert slow.transport is not None
            slow.transport.pause_reading()  # a reader that stalls
            total = 3 * 1500 + 3 * 31
            fast_got = asyncio.create_task(collect(fast, total, timeout_s=60))
            published = await asyncio.to_thread(publish_mix, r, keys, symbols, 1500,
                                                pause_s=0.02)
            bars = await asyncio.to_thread(publish_bars, r, keys, symbols)
            got = await fast_got
            for (symbol, channel), want in published.items():
                assert ids(got, symbol, channel) == want, (symbol, channel)
            assert len(got) == total
            (session,) = [s for s in server.sessions if s.ws.remote_address ==
                          slow.local_address]
            await until(lambda: session.behind)
            assert server.stats.conflations >= 1
            # Bounded: the stalled client holds at most the buffer mark plus a flush.
            transport = session.ws.transport
            assert transport.get_write_buffer_size() < stalled_max_bytes(3 * len(symbols))
            slow.transport.resume_reading()
            seen: list[Got] = []
            conflated: dict[str, dict[str, Any]] = {}
            while "bars" not in conflated:  # the last of the flush that ends the spell
                msg = await recv_json(slow, 10)
                if msg.get("conflated"):
                    conflated[msg["type"]] = msg
                else:
                    seen += entries_of(msg)
            for channel in (T, Q, B):
                for symbol in symbols:
                    got_ids = ids(seen, symbol, channel)
                    assert len(got_ids) == len(set(got_ids)), (symbol, channel)

            # Quotes: the latest quote of each symbol.
            assert {q["symbol"]: q["id"] for q in conflated["quotes"]["quotes"]} == \
                {s: published[(s, Q)][-1] for s in symbols}
            # Bars: the latest state of each bar, in stream order per symbol.
            latest_bars = [(b["symbol"], b["id"], b["state"], b["trades"])
                           for b in conflated["bars"]["bars"]]
            assert sorted(latest_bars) == sorted(
                (s, entry_id, str(event.state), event.trades)
                for (s, _), (entry_id, event) in bars.items())
            for symbol in symbols:
                mine = [b[1] for b in latest_bars if b[0] == symbol]
                assert mine == sorted(mine, key=codec.parse_entry_id)
            # Trades: the latest of each symbol, and what was skipped named in
            # gaps: every trade is either received or inside a gap.
            frame = conflated["trades"]
            assert {t["symbol"]: t["id"] for t in frame["trades"]} == \
                {s: published[(s, T)][-1] for s in symbols}
            gaps = {g["symbol"]: g for g in frame["gaps"]}
            assert set(gaps) == set(symbols) and server.stats.gaps == 3
            for symbol in symbols:
                received = ids(seen, symbol, T) + [gaps[symbol]["until"]]
                assert gaps[symbol]["after"] == (received[-2] if len(received) > 1 else "0-0")
                after = codec.parse_entry_id(gaps[symbol]["after"])
                until_ = codec.parse_entry_id(gaps[symbol]["until"])
                skipped = [i for i in published[(symbol, T)] if i not in received]
                assert skipped and all(after < codec.parse_entry_id(i) < until_
                                       for i in skipped)
            # The slow client is live again.
            new = await asyncio.to_thread(publish, r, keys, "IBM", 2)
            assert ids(await collect(slow, 2), "IBM", T) == new
            await fast.close()
            await slow.close()

    asyncio.run(scenario())


def test_reader_stalled_too_long_is_closed_4008_others_carry_on(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    streams.register_symbols(r, keys, ["AAPL"])

    async def scenario() -> None:
        async with running_server(redis_settings, slow_timeout_s=0.5, **SLOW) as server:
            slow = await subscribed(server.port, ["AAPL"], small_window=True)
            fast = await subscribed(server.port, ["AAPL"])
            await live(server, 2)
            assert slow.transport is not None
            slow.transport.pause_reading()
            fast_got = asyncio.create_task(collect(fast, 1500, timeout_s=60))
            await asyncio.to_thread(publish_mix, r, keys, ["AAPL"], 1500, pause_s=0.02)
            assert len(await fast_got) == 1500
            for _ in range(500):
                if server.stats.slow_closes:
                    break
                await asyncio.sleep(0.02)
            assert server.stats.slow_closes == 1
            slow.transport.resume_reading()
            _, code = await drain_until_closed(slow)
            assert code == 4008
            # The fast client is still served.
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 3, start=5000)
            assert ids(await collect(fast, 3), "AAPL", T) == new
            await fast.close()

    asyncio.run(scenario())


def test_dead_connection_is_closed_by_keepalive_and_freed(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    streams.register_symbols(r, keys, ["DEAD", "AAPL"])

    async def scenario() -> None:
        async with running_server(redis_settings, ping_interval_s=0.2, ping_timeout_s=0.2,
                                  close_timeout_s=0.5) as server:
            dead = await subscribed(server.port, ["DEAD"])
            alive = await subscribed(server.port, ["AAPL"])
            assert dead.transport is not None
            dead.transport.pause_reading()  # never sees the pings: no pongs
            for _ in range(500):
                if server.stats.connections == 1:
                    break
                await asyncio.sleep(0.02)
            assert server.stats.connections == 1
            assert server.hub is not None and server.hub.symbols == ["AAPL"]
            await asyncio.sleep(0.6)  # the live client answers pings and stays
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            assert ids(await collect(alive, 2), "AAPL", T) == new
            await alive.close()
            dead.transport.abort()

    asyncio.run(scenario())


def test_oversized_and_huge_messages_close_or_error_while_others_carry_on(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    huge = json.dumps({"op": "subscribe", "symbols": [f"S{i}" for i in range(100_000)]})
    streams.register_symbols(r, keys, ["AAPL", "A", "B", "C", "D"])

    async def scenario() -> None:
        async with running_server(redis_settings) as server:
            other = await subscribed(server.port, ["AAPL"])
            for message in ("x" * 10_000_000, huge):
                ws = await connect(f"ws://127.0.0.1:{server.port}/ws")
                await recv_json(ws)
                # The server closes while the client is still writing: the
                # send fails or not, depending on timing; the close code is
                # what counts.
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(message)
                _, code = await drain_until_closed(ws)
                assert code == 1009  # message too big
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            assert ids(await collect(other, 2), "AAPL", T) == new
            await other.close()
        # With room for the message, the symbol limit answers instead.
        async with running_server(redis_settings, max_message_bytes=4_000_000,
                                  max_symbols=3) as server:
            async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                await recv_json(ws)
                await ws.send(huge)
                error = await recv_json(ws)
                assert error["type"] == "error" and error["code"] == "too_many_symbols"
                await ws.send('{"op":"subscribe","symbols":["A","B"]}')
                await recv_type(ws, "subscribed")
                # The limit counts symbols, whatever their channels.
                await ws.send('{"op":"subscribe","symbols":["A","B","C"],"channels":'
                              '["trades","quotes","bars.1m"]}')
                await recv_type(ws, "subscribed")
                await ws.send('{"op":"subscribe","symbols":["C","D"],"req":9}')
                error = await recv_type(ws, "error")
                assert error["code"] == "too_many_symbols" and error["req"] == 9
                assert server.hub is not None and server.hub.symbols == ["A", "B", "C"]
                assert len(server.hub.streams) == 9
                await ws.send('{"op":"ping"}')
                assert (await recv_type(ws, "pong"))["type"] == "pong"

    asyncio.run(scenario())


def test_subscribe_rate_and_connection_limits(redis_settings: RedisSettings, r: redis.Redis,
                                              keys: Keys) -> None:
    streams.register_symbols(r, keys, ["A", "B", "C", "D", "E"])

    async def scenario() -> None:
        async with running_server(redis_settings, subscribe_rate="3/minute",
                                  max_connections=2) as server:
            ws = await subscribed(server.port, ["A"])  # 1
            other = await subscribed(server.port, ["B"])  # 1 on another connection
            for symbol in ("C", "D"):  # 2, 3
                await ws.send(json.dumps({"op": "subscribe", "symbols": [symbol]}))
                await recv_type(ws, "subscribed")
            await ws.send('{"op":"unsubscribe","symbols":["C"],"req":4}')
            error = await recv_type(ws, "error")
            assert error["code"] == "rate_limited" and error["req"] == 4
            # Limits are per connection: the other one is not limited.
            await other.send('{"op":"subscribe","symbols":["E"]}')
            await recv_type(other, "subscribed")
            with pytest.raises(InvalidStatus) as info:
                await connect(f"ws://127.0.0.1:{server.port}/ws")
            assert info.value.response.status_code == 503
            await ws.close()
            await other.close()

    asyncio.run(scenario())


def test_token_auth(redis_settings: RedisSettings, r: redis.Redis, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["AAPL"])

    async def close_code(ws: ClientConnection) -> int | None:
        return (await drain_until_closed(ws))[1]

    async def scenario() -> None:
        async with running_server(redis_settings, tokens=("s3cret", "other"),
                                  auth_timeout_s=0.5) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with connect(url) as ws:  # token as the first message
                assert (await recv_json(ws))["auth_required"] is True
                await ws.send('{"op":"auth","token":"s3cret","req":1}')
                assert await recv_json(ws) == {"type": "auth_ok", "req": 1}
                await ws.send('{"op":"subscribe","symbols":["AAPL"]}')
                await recv_type(ws, "subscribed")
            # A token in the URL is refused, right or wrong (test_access.py).
            with pytest.raises(InvalidStatus) as info:
                await connect(url + "?token=other")
            assert info.value.response.status_code == 400
            async with connect(url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
                assert (await recv_json(ws))["auth_required"] is False
            with pytest.raises(InvalidStatus) as info:
                await connect(url, additional_headers={"Authorization": "Bearer wrong"})
            assert info.value.response.status_code == 401
            async with connect(url) as ws:  # wrong token
                await recv_json(ws)
                await ws.send('{"op":"auth","token":"wrong"}')
                assert (await recv_json(ws))["code"] == "auth_failed"
                assert await close_code(ws) == 4001
            async with connect(url) as ws:  # no auth first
                await recv_json(ws)
                await ws.send('{"op":"subscribe","symbols":["AAPL"]}')
                assert (await recv_json(ws))["code"] == "auth_required"
                assert await close_code(ws) == 4001
            async with connect(url) as ws:  # silence
                await recv_json(ws)
                assert await close_code(ws) == 4001
            for _ in range(250):
                if not server.stats.connections:
                    break
                await asyncio.sleep(0.02)
            assert server.stats.connections == 0

    asyncio.run(scenario())


def test_origins(redis_settings: RedisSettings) -> None:
    async def scenario() -> None:
        async with running_server(redis_settings, allowed_origins=(
                "app.example.com", "https://dash.example.com:8443")) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            for origin in ("http://app.example.com", "https://dash.example.com:8443", None):
                headers = {"Origin": origin} if origin else {}
                async with connect(url, additional_headers=headers) as ws:
                    assert (await recv_json(ws))["type"] == "hello"
            for origin in ("http://evil.example.com", "https://dash.example.com"):
                with pytest.raises(InvalidStatus) as info:
                    await connect(url, additional_headers={"Origin": origin})
                assert info.value.response.status_code == 403

    asyncio.run(scenario())
