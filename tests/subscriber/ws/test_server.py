"""The websocket server end to end on a real Redis: subscribe by channel,
snapshots per channel, live trades and quotes with entry IDs, one frame type
per channel, errors that leave the connection usable, health, and the
``pricepipe ws`` process contract (ready, SIGTERM closes with 1001)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from typing import Any

import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pricepipe import codec, streams
from pricepipe.config import RedisSettings
from pricepipe.embedded import RedisServer, free_port
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.ws import scripts
from tests.helpers import wait_http

from .helpers import (
    collect,
    ids,
    live,
    publish,
    quote,
    recv_json,
    recv_type,
    running_server,
    subscribe_message,
    trade,
)

T, Q, B = Channel.TRADES, Channel.QUOTES, Channel.BARS_1M


def test_a_snapshot_is_read_again_after_redis_forgot_the_script(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    # The newest entries come from one script call; a restarted or
    # failed-over Redis has no scripts (NOSCRIPT), as SCRIPT FLUSH leaves it.
    trades = publish(r, keys, "AAPL", 2)
    quotes = publish(r, keys, "MSFT", 3, channel=Q)

    async def snapshot_of(port: int) -> dict[str, Any]:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await recv_type(ws, "hello")
            # AAPL has no quotes and MSFT no trades: streams that do not exist.
            await ws.send(subscribe_message(["AAPL", "MSFT"]))
            await recv_type(ws, "subscribed")
            return await recv_type(ws, "snapshot")

    async def scenario() -> None:
        async with running_server(redis_settings) as server:
            for _ in range(2):
                r.script_flush()
                snapshot = await snapshot_of(server.port)
                assert [(t["symbol"], t["id"]) for t in snapshot["trades"]] == \
                    [("AAPL", trades[-1])]
                assert [(q["symbol"], q["id"]) for q in snapshot["quotes"]] == \
                    [("MSFT", quotes[-1])]
                assert r.script_exists(scripts.LATEST_SHA) == [True]
            # A resume's checks and first page: another script, read again too.
            r.script_flush()
            async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                await recv_type(ws, "hello")
                await ws.send(json.dumps({"op": "subscribe", "symbols": ["AAPL"],
                                          "channels": ["trades"],
                                          "resume": {"AAPL": {"trades": trades[0]}}}))
                await recv_type(ws, "subscribed")
                replay = await recv_type(ws, "trades")
                assert replay["replay"] is True
                assert [t["id"] for t in replay["trades"]] == trades[1:]
            assert r.script_exists(scripts.RESUME_SHA) == [True]
            assert server.stats.unrecoverable == 0

    asyncio.run(scenario())


def test_subscribe_gets_ack_snapshot_per_channel_then_live_entries_with_ids(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    old_trades = publish(r, keys, "AAPL", 3)
    old_quotes = publish(r, keys, "AAPL", 2, channel=Q)
    msft_quote = publish(r, keys, "MSFT", 1, channel=Q)

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            hello = await recv_json(ws)
            assert hello["type"] == "hello" and hello["auth_required"] is False
            assert hello["version"] == 2
            assert hello["channels"] == ["trades", "quotes", "bars.1m", "status"]
            await ws.send('{"op": "subscribe", "symbols": ["AAPL", "MSFT"], "req": 7}')
            ack = await recv_json(ws)
            # Without channels: trades and quotes; the epoch of each symbol's
            # streams (here one Redis: the same for both).
            epoch = streams.epoch(r, keys.trades("AAPL"))
            assert ack == {"type": "subscribed", "symbols": ["AAPL", "MSFT"],
                           "channels": ["trades", "quotes"], "req": 7,
                           "epochs": {"AAPL": epoch, "MSFT": epoch}}
            snapshot = await recv_type(ws, "snapshot")
            # The latest entry of each pair that has one, a list per channel.
            assert set(snapshot) == {"type", "trades", "quotes", "epochs"}
            assert snapshot["epochs"] == {"AAPL": epoch, "MSFT": epoch}
            assert [(t["symbol"], t["id"]) for t in snapshot["trades"]] == \
                [("AAPL", old_trades[-1])]
            assert sorted((q["symbol"], q["id"]) for q in snapshot["quotes"]) == \
                [("AAPL", old_quotes[-1]), ("MSFT", msft_quote[0])]
            await live(server)
            new_trades = await asyncio.to_thread(publish, r, keys, "AAPL", 5, start=10)
            new_quotes = await asyncio.to_thread(publish, r, keys, "MSFT", 2, start=20,
                                                 channel=Q)
            got = await collect(ws, 7)
            assert ids(got, "AAPL", T) == new_trades and ids(got, "MSFT", Q) == new_quotes
            assert len(got) == 7
            first = next(e for c, e in got if c is T and e["id"] == new_trades[0])
            assert first == codec.event_to_dict(trade("AAPL", 10), new_trades[0])
            first_quote = next(e for c, e in got if c is Q and e["id"] == new_quotes[0])
            assert first_quote == codec.event_to_dict(quote("MSFT", 20), new_quotes[0])

    asyncio.run(scenario())


def test_channels_are_subscribed_and_unsubscribed_apart(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    publish(r, keys, "AAPL", 2)
    last_quote = publish(r, keys, "AAPL", 2, channel=Q)[-1]

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(subscribe_message(["AAPL"], ["quotes"], req=1))
            assert (await recv_json(ws))["channels"] == ["quotes"]
            snapshot = await recv_json(ws)  # only the quotes key
            assert snapshot == {"type": "snapshot", "quotes": [snapshot["quotes"][0]],
                                "epochs": {"AAPL": streams.epoch(r, keys.quotes("AAPL"))}}
            assert snapshot["quotes"][0]["id"] == last_quote
            await live(server)
            # A trade is not sent: trades are not subscribed.
            await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=5)
            quotes = await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=6, channel=Q)
            frame = await recv_json(ws)
            assert frame["type"] == "quotes" and [q["id"] for q in frame["quotes"]] == quotes
            # Adding trades later, without a snapshot: only what comes next.
            await ws.send(subscribe_message(["AAPL"], ["trades", "quotes"], snapshot=False))
            assert (await recv_type(ws, "subscribed"))["channels"] == ["trades", "quotes"]
            await live(server)
            assert server.hub is not None and set(server.hub.streams) == {("AAPL", T), ("AAPL", Q)}
            trades = await asyncio.to_thread(publish, r, keys, "AAPL", 2, start=7)
            assert ids(await collect(ws, 2), "AAPL", T) == trades
            # Unsubscribing quotes leaves trades.
            await ws.send('{"op":"unsubscribe","symbols":["AAPL"],"channels":["quotes"],"req":2}')
            assert await recv_type(ws, "unsubscribed") == {
                "type": "unsubscribed", "symbols": ["AAPL"], "channels": ["quotes"], "req": 2}
            assert server.hub.streams == [("AAPL", T)]
            await asyncio.to_thread(publish, r, keys, "AAPL", 3, start=9, channel=Q)
            trades = await asyncio.to_thread(publish, r, keys, "AAPL", 1, start=12)
            frame = await recv_json(ws)
            assert frame["type"] == "trades" and [t["id"] for t in frame["trades"]] == trades
            # Unsubscribing without channels: all of them.
            await ws.send('{"op":"unsubscribe","symbols":["AAPL","MSFT"]}')
            assert await recv_type(ws, "unsubscribed") == {
                "type": "unsubscribed", "symbols": ["AAPL"],
                "channels": ["trades", "quotes", "bars.1m"]}
            assert server.hub.streams == [] and server.health()["streams"] == 0

    asyncio.run(scenario())


def test_bad_frames_get_errors_and_the_connection_stays_usable(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    streams.register_symbols(r, keys, ["IBM"])

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await recv_json(ws)  # hello
            cases: list[tuple[str | bytes, str]] = [
                ("{not json", "bad_json"),
                ('{"op": "dance"}', "unknown_op"),
                ("[1, 2]", "bad_message"),
                (b"\x00\x01binary", "binary_frame"),
                ('{"op": "subscribe", "symbols": ["lower"]}', "invalid_symbol"),
                ('{"op": "subscribe", "symbols": ["A"], "channels": ["ticks"]}',
                 "unknown_channel"),
                ('{"op": "subscribe", "symbols": ["A"], "resume": {"A": {"trades": "x-y"}}}',
                 "invalid_cursor"),
                ('{"op": "subscribe", "symbols": ["IBM"], "resume": {"IBM": {"epoch": 7}}}',
                 "invalid_cursor"),
                # Registered or not, only IBM is: nothing of the request is subscribed.
                ('{"op": "subscribe", "symbols": ["IBM", "NOPE", "ZZZ"]}', "unknown_symbol"),
            ]
            for frame, code in cases:
                await ws.send(frame)
                msg = await recv_json(ws)
                assert msg["type"] == "error" and msg["code"] == code, (frame, msg)
                assert msg["message"]
                if code == "unknown_symbol":
                    assert msg["symbols"] == ["NOPE", "ZZZ"]
            assert server.stats.protocol_errors == len(cases)
            assert server.hub is not None and server.hub.streams == []  # nothing subscribed
            await ws.send('{"op": "ping", "req": "p1"}')
            assert await recv_json(ws) == {"type": "pong", "req": "p1"}
            # A client that always authenticates works with a server without tokens.
            await ws.send('{"op": "auth", "token": "anything", "req": 2}')
            assert await recv_json(ws) == {"type": "auth_ok", "req": 2}
            await ws.send('{"op": "subscribe", "symbols": ["IBM"], "snapshot": false}')
            assert (await recv_json(ws))["type"] == "subscribed"
            await live(server)
            new = await asyncio.to_thread(publish, r, keys, "IBM", 2)
            assert ids(await collect(ws, 2), "IBM", T) == new
            await ws.send('{"op": "unsubscribe", "symbols": ["IBM", "NOPE"], "req": 3}')
            assert await recv_json(ws) == {"type": "unsubscribed", "symbols": ["IBM"],
                                           "channels": ["trades", "quotes", "bars.1m"],
                                           "req": 3}

    asyncio.run(scenario())


def test_healthz_heartbeat_metrics_and_unknown_paths(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    async def scenario() -> None:
        async with running_server(redis_settings) as server:
            await asyncio.sleep(0.1)
            (key,) = await asyncio.to_thread(lambda: list(r.scan_iter(
                match=keys.heartbeat_pattern("ws"))))
            ttl: Any = r.ttl(key)
            assert key.decode().endswith(f"-{server.port}") and 0 < ttl <= 3
            raw: Any = r.get(key)
            beat = codec.decode_json(raw)
            assert beat["status"] == "ok" and beat["connections"] == 0
            base = f"http://127.0.0.1:{server.port}"
            body = await asyncio.to_thread(_get, base + "/healthz")
            assert body.startswith(b"{") and b'"redis":true' in body
            metrics = await asyncio.to_thread(_get, base + "/metrics")
            for name in (b"pricepipe_ws_connections", b"pricepipe_ws_entries_read_total",
                         b"pricepipe_ws_trade_gaps_total", b"pricepipe_ws_streams"):
                assert name in metrics, name
            status = await asyncio.to_thread(_status, base + "/nope")
            assert status == 404

    asyncio.run(scenario())


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def test_ws_command_serves_and_sigterm_closes_with_1001(
    spawn: Callable[..., subprocess.Popen[bytes]], pipeline_env: dict[str, str],
    r: redis.Redis, keys: Keys,
) -> None:
    streams.register_symbols(r, keys, ["AAPL"])
    port = free_port()
    proc = spawn(["ws", "--host", "127.0.0.1", "--port", str(port)], env=pipeline_env)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)

    async def scenario() -> int | None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await recv_json(ws)
            await ws.send('{"op": "subscribe", "symbols": ["AAPL"], "snapshot": false}')
            await recv_type(ws, "subscribed")
            await asyncio.sleep(0.3)
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            assert ids(await collect(ws, 2), "AAPL", T) == new
            proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
        return None

    assert asyncio.run(scenario()) == 1001
    assert proc.wait(timeout=15) == 0


def test_server_rides_out_a_redis_restart_without_gaps(
    make_redis_server: Callable[..., RedisServer], keys: Keys
) -> None:
    redis_server = make_redis_server()
    settings = RedisSettings(url=redis_server.url, prefix="pp", shards=4, socket_timeout_s=2)
    r = redis.Redis.from_url(redis_server.url)
    streams.register_symbols(r, keys, ["AAPL"])

    async def scenario() -> None:
        async with running_server(settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send('{"op": "subscribe", "symbols": ["AAPL"], "snapshot": false}')
            await recv_type(ws, "subscribed")
            await live(server)
            before = await asyncio.to_thread(publish, r, keys, "AAPL", 3)
            assert ids(await collect(ws, 3), "AAPL", T) == before
            await asyncio.to_thread(redis_server.stop)
            health = f"http://127.0.0.1:{server.port}/healthz"
            for _ in range(500):  # the server notices, and says so
                if await asyncio.to_thread(_status, health) == 503:
                    break
                await asyncio.sleep(0.02)
            assert await asyncio.to_thread(_status, health) == 503
            old_epoch = server.hub.epoch(keys.shard("AAPL")) if server.hub else None
            await asyncio.to_thread(redis_server.start)  # AOF kept the stream
            # The hub reconnects. A restarted Redis is a new epoch (a restart
            # may lose the last writes): each pair says so, after the last
            # entry the client has, then starts again from a snapshot.
            gaps = [await recv_type(ws, "unrecoverable", timeout_s=30) for _ in range(2)]
            epoch = streams.epoch(r, keys.trades("AAPL"))
            assert epoch != old_epoch
            assert sorted((g["channel"], g["after"], g["reason"], g["epoch"]) for g in gaps) == [
                ("quotes", "0-0", "epoch", epoch), ("trades", before[-1], "epoch", epoch)]
            snapshot = await recv_type(ws, "snapshot")
            assert [t["id"] for t in snapshot["trades"]] == before[-1:]  # nothing was lost
            assert snapshot["quotes"] == [] and snapshot["epochs"] == {"AAPL": epoch}
            await live(server)
            trades = await asyncio.to_thread(publish, r, keys, "AAPL", 3, start=10)
            quotes = await asyncio.to_thread(publish, r, keys, "AAPL", 2, start=20, channel=Q)
            got = await collect(ws, 5, timeout_s=30)
            assert ids(got, "AAPL", T) == trades and ids(got, "AAPL", Q) == quotes
            assert server.health()["redis"] is True
            assert server.hub is not None and server.hub.epoch_changes == 1

    try:
        asyncio.run(scenario())
    finally:
        r.close()


def test_two_server_processes_serve_their_own_clients(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    streams.register_symbols(r, keys, ["AAPL"])

    async def scenario() -> None:
        async with running_server(redis_settings) as one, running_server(redis_settings) as two:
            clients = []
            for server in (one, two):
                ws = await connect(f"ws://127.0.0.1:{server.port}/ws")
                await recv_json(ws)
                await ws.send('{"op": "subscribe", "symbols": ["AAPL"], "snapshot": false}')
                await recv_type(ws, "subscribed")
                await live(server)
                clients.append(ws)
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 4)
            for ws in clients:
                assert ids(await collect(ws, 4), "AAPL", T) == new
                await ws.close()

    asyncio.run(scenario())


def test_server_survives_its_streams_being_deleted(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    streams.register_symbols(r, keys, ["AAPL"])

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send('{"op": "subscribe", "symbols": ["AAPL"], "snapshot": false}')
            await recv_type(ws, "subscribed")
            await live(server)
            await asyncio.to_thread(r.flushall)  # under the hub's blocked XREAD
            await asyncio.sleep(0.3)
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 2, channel=Q)
            assert ids(await collect(ws, 2), "AAPL", Q) == new

    asyncio.run(scenario())


def test_a_bad_stream_entry_is_skipped_and_the_rest_flows(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    streams.register_symbols(r, keys, ["AAPL"])

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send('{"op": "subscribe", "symbols": ["AAPL"], "snapshot": false}')
            await recv_type(ws, "subscribed")
            await live(server)
            await asyncio.to_thread(r.xadd, keys.trades("AAPL"), {"t": "1 NaN? 1 b x test "})
            await asyncio.to_thread(r.xadd, keys.quotes("AAPL"), {"sym": "AAPL"})
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            assert ids(await collect(ws, 2), "AAPL", T) == new
            assert server.hub is not None and server.hub.bad_entries == 2
            # The bad entries stay in the streams (the persist workers dead-letter them).
            assert await asyncio.to_thread(r.xlen, keys.trades("AAPL")) == 3

    asyncio.run(scenario())
