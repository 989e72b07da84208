"""The websocket server end to end on a real Redis: subscribe, snapshot, live
ticks with entry IDs, errors that leave the connection usable, health, and
the ``pricepipe ws`` process contract (ready, SIGTERM closes with 1001)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from typing import Any

import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pricepipe import codec
from pricepipe.config import RedisSettings
from pricepipe.embedded import RedisServer, free_port
from pricepipe.keys import Keys
from tests.helpers import wait_http

from ..helpers import collect_ticks, publish, recv_json, recv_type, running_server


def test_subscribe_gets_ack_snapshot_then_live_ticks_with_ids(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    old_ids = publish(r, keys, "AAPL", 3)

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            hello = await recv_json(ws)
            assert hello["type"] == "hello" and hello["auth_required"] is False
            await ws.send('{"op": "subscribe", "symbols": ["AAPL", "MSFT"], "req": 7}')
            ack = await recv_json(ws)
            assert ack == {"type": "subscribed", "symbols": ["AAPL", "MSFT"], "req": 7}
            snapshot = await recv_type(ws, "snapshot")
            # Only AAPL has ticks: its latest one, with its entry id.
            assert [(t["symbol"], t["id"]) for t in snapshot["ticks"]] == [("AAPL", old_ids[-1])]
            new_aapl = await asyncio.to_thread(publish, r, keys, "AAPL", 5, start=10)
            new_msft = await asyncio.to_thread(publish, r, keys, "MSFT", 2, start=20)
            got = await collect_ticks(ws, 7)
            by_symbol = {s: [t["id"] for t in got if t["symbol"] == s] for s in ("AAPL", "MSFT")}
            assert by_symbol == {"AAPL": new_aapl, "MSFT": new_msft}
            # Entry ids are per stream: MSFT's may equal AAPL's, and ticks of
            # different symbols may share a frame in either order.
            first = next(t for t in got if t["symbol"] == "AAPL" and t["id"] == new_aapl[0])
            assert first["price"] == 110.0 and first["source"] == "test" and first["ts_us"]

    asyncio.run(scenario())


def test_bad_frames_get_errors_and_the_connection_stays_usable(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
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
                ('{"op": "subscribe", "symbols": ["A"], "resume": {"A": "x-y"}}',
                 "invalid_cursor"),
            ]
            for frame, code in cases:
                await ws.send(frame)
                msg = await recv_json(ws)
                assert msg["type"] == "error" and msg["code"] == code, (frame, msg)
                assert msg["message"]
            await ws.send('{"op": "ping", "req": "p1"}')
            assert await recv_json(ws) == {"type": "pong", "req": "p1"}
            # A client that always authenticates works with a server without tokens.
            await ws.send('{"op": "auth", "token": "anything", "req": 2}')
            assert await recv_json(ws) == {"type": "auth_ok", "req": 2}
            await ws.send('{"op": "subscribe", "symbols": ["IBM"], "snapshot": false}')
            assert (await recv_json(ws))["type"] == "subscribed"
            await asyncio.sleep(0.2)  # let the hub pick up the new stream
            ids = await asyncio.to_thread(publish, r, keys, "IBM", 2)
            assert [t["id"] for t in await collect_ticks(ws, 2)] == ids
            await ws.send('{"op": "unsubscribe", "symbols": ["IBM", "NOPE"], "req": 3}')
            assert await recv_json(ws) == {"type": "unsubscribed", "symbols": ["IBM"], "req": 3}

    asyncio.run(scenario())


def test_healthz_heartbeat_and_unknown_paths(redis_settings: RedisSettings, r: redis.Redis,
                                             keys: Keys) -> None:
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
            assert b"pricepipe_ws_connections" in metrics
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
    port = free_port()
    proc = spawn(["ws", "--host", "127.0.0.1", "--port", str(port)], env=pipeline_env)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)

    async def scenario() -> int | None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await recv_json(ws)
            await ws.send('{"op": "subscribe", "symbols": ["AAPL"]}')
            await recv_type(ws, "subscribed")
            await asyncio.sleep(0.3)
            ids = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            assert [t["id"] for t in await collect_ticks(ws, 2)] == ids
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

    async def scenario() -> None:
        async with running_server(settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send('{"op": "subscribe", "symbols": ["AAPL"], "snapshot": false}')
            await recv_type(ws, "subscribed")
            await asyncio.sleep(0.2)
            before = await asyncio.to_thread(publish, r, keys, "AAPL", 3)
            assert [t["id"] for t in await collect_ticks(ws, 3)] == before
            await asyncio.to_thread(redis_server.stop)
            health = f"http://127.0.0.1:{server.port}/healthz"
            for _ in range(500):  # the server notices, and says so
                if await asyncio.to_thread(_status, health) == 503:
                    break
                await asyncio.sleep(0.02)
            assert await asyncio.to_thread(_status, health) == 503
            await asyncio.to_thread(redis_server.start)  # AOF kept the stream
            after = await asyncio.to_thread(publish, r, keys, "AAPL", 3, start=10)
            # The hub reconnects and carries on from its cursor.
            assert [t["id"] for t in await collect_ticks(ws, 3, timeout_s=30)] == after
            assert server.health()["redis"] is True

    try:
        asyncio.run(scenario())
    finally:
        r.close()


def test_two_server_processes_serve_their_own_clients(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    async def scenario() -> None:
        async with running_server(redis_settings) as one, running_server(redis_settings) as two:
            clients = []
            for server in (one, two):
                ws = await connect(f"ws://127.0.0.1:{server.port}/ws")
                await recv_json(ws)
                await ws.send('{"op": "subscribe", "symbols": ["AAPL"], "snapshot": false}')
                await recv_type(ws, "subscribed")
                clients.append(ws)
            await asyncio.sleep(0.2)
            ids = await asyncio.to_thread(publish, r, keys, "AAPL", 4)
            for ws in clients:
                assert [t["id"] for t in await collect_ticks(ws, 4)] == ids
                await ws.close()

    asyncio.run(scenario())


def test_server_survives_its_streams_being_deleted(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send('{"op": "subscribe", "symbols": ["AAPL"], "snapshot": false}')
            await recv_type(ws, "subscribed")
            await asyncio.sleep(0.2)
            await asyncio.to_thread(r.flushall)  # under the hub's blocked XREAD
            await asyncio.sleep(0.3)
            ids = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            assert [t["id"] for t in await collect_ticks(ws, 2)] == ids

    asyncio.run(scenario())


def test_a_bad_stream_entry_is_skipped_and_the_rest_flows(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send('{"op": "subscribe", "symbols": ["AAPL"], "snapshot": false}')
            await recv_type(ws, "subscribed")
            await asyncio.sleep(0.2)
            await asyncio.to_thread(r.xadd, keys.stream("AAPL"), {"sym": "AAPL", "px": "NaN?"})
            ids = await asyncio.to_thread(publish, r, keys, "AAPL", 2)
            assert [t["id"] for t in await collect_ticks(ws, 2)] == ids
            assert server.hub is not None and server.hub.bad_entries == 1
            # The bad entry stays in the stream (the persist workers dead-letter it).
            assert await asyncio.to_thread(r.xlen, keys.stream("AAPL")) == 3

    asyncio.run(scenario())
