"""Per-connection policies: slow consumers (conflation, then close 4008),
keepalive, limits (message size, symbols, subscribe rate, connections), auth
and origins; each violation is answered on its own connection while other
clients carry on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pricepipe import streams
from pricepipe.config import RedisSettings
from pricepipe.keys import Keys

from ..helpers import (
    SLOW,
    collect_ticks,
    publish,
    publish_many,
    recv_json,
    recv_type,
    running_server,
    stalled_max_bytes,
    subscribed,
    until,
)


async def drain_until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    frames = []
    try:
        while True:
            frames.append(await recv_json(ws, 10))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None


def test_slow_reader_gets_conflated_latest_ticks_and_others_get_everything(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    symbols = ["AAPL", "MSFT", "IBM"]
    streams.register_symbols(r, keys, symbols)

    async def scenario() -> None:
        async with running_server(redis_settings, slow_timeout_s=60, **SLOW) as server:
            slow = await subscribed(server.port, symbols, small_window=True)
            fast = await subscribed(server.port, symbols)
            await asyncio.sleep(0.2)
            assert slow.transport is not None
            slow.transport.pause_reading()  # a reader that stalls
            fast_got = asyncio.create_task(collect_ticks(fast, 3 * 1500, timeout_s=60))
            last = await asyncio.to_thread(publish_many, r, keys, symbols, 1500, 0.02)
            got = await fast_got
            assert [t["id"] for t in got if t["symbol"] == "AAPL"][-1] == last["AAPL"]
            assert len({(t["symbol"], t["id"]) for t in got}) == len(got) == 3 * 1500
            (session,) = [s for s in server.sessions if s.ws.remote_address ==
                          slow.local_address]
            await until(lambda: session.behind)
            assert server.stats.conflations >= 1
            # Bounded: the stalled client holds at most the buffer mark plus a frame.
            transport = session.ws.transport
            assert transport.get_write_buffer_size() < stalled_max_bytes(len(symbols))
            slow.transport.resume_reading()
            seen: dict[str, list[str]] = {s: [] for s in symbols}
            while True:
                msg = await recv_json(slow, 10)
                for tick in msg["ticks"]:
                    seen[tick["symbol"]].append(tick["id"])
                if msg.get("conflated"):
                    # The latest tick of each symbol, marked as conflated.
                    assert {t["symbol"]: t["id"] for t in msg["ticks"]} == last
                    break
            for ids in seen.values():
                assert len(ids) == len(set(ids)) < 1500
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
            await asyncio.sleep(0.2)
            assert slow.transport is not None
            slow.transport.pause_reading()
            fast_got = asyncio.create_task(collect_ticks(fast, 1500, timeout_s=60))
            await asyncio.to_thread(publish_many, r, keys, ["AAPL"], 1500)
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
            ids = await asyncio.to_thread(publish, r, keys, "AAPL", 3, start=5000)
            assert [t["id"] for t in await collect_ticks(fast, 3)] == ids
            await fast.close()

    asyncio.run(scenario())


def test_dead_connection_is_closed_by_keepalive_and_freed(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
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
            ids = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            assert [t["id"] for t in await collect_ticks(alive, 2)] == ids
            await alive.close()
            dead.transport.abort()

    asyncio.run(scenario())


def test_oversized_and_huge_messages_close_or_error_while_others_carry_on(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    huge = json.dumps({"op": "subscribe", "symbols": [f"S{i}" for i in range(100_000)]})

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
            ids = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            assert [t["id"] for t in await collect_ticks(other, 2)] == ids
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
                await ws.send('{"op":"subscribe","symbols":["C","D"],"req":9}')
                error = await recv_type(ws, "error")
                assert error["code"] == "too_many_symbols" and error["req"] == 9
                await ws.send('{"op":"ping"}')
                assert (await recv_type(ws, "pong"))["type"] == "pong"

    asyncio.run(scenario())


def test_subscribe_rate_and_connection_limits(redis_settings: RedisSettings) -> None:
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
            async with connect(url + "?token=other") as ws:  # token in the URL
                assert (await recv_json(ws))["auth_required"] is False
            async with connect(url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
                assert (await recv_json(ws))["auth_required"] is False
            with pytest.raises(InvalidStatus) as info:
                await connect(url + "?token=wrong")
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
