"""Access without leaks (issue 16): tokens never in URLs unless a setting
allows it, a loopback listener by default, and ``/healthz`` reporting state
without the Redis client's error text."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from pricepipe import codec, streams
from pricepipe.config import RedisSettings
from pricepipe.embedded import RedisServer
from pricepipe.keys import Keys
from pricepipe.subscriber.ws.settings import WsSettings

from .helpers import recv_json, running_server, until


def _http(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read()


def test_a_token_in_the_url_is_refused_with_a_clear_error(
        redis_settings: RedisSettings, r: redis.Redis, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["AAPL"])

    async def scenario() -> None:
        for tokens in (("s3cret-token",), ()):  # with or without auth required
            async with running_server(redis_settings, tokens=tokens) as server:
                url = f"ws://127.0.0.1:{server.port}/ws"
                for query in ("?token=s3cret-token", "?token=wrong", "?x=1&token=s3cret-token"):
                    with pytest.raises(InvalidStatus) as info:
                        await connect(url + query)
                    response = info.value.response
                    assert response.status_code == 400
                    assert b"tokens in the URL are refused" in response.body
                    assert b'{"op": "auth"' in response.body
                async with connect(url) as ws:  # the auth message still works
                    assert (await recv_json(ws))["auth_required"] is bool(tokens)
                    await ws.send('{"op":"auth","token":"s3cret-token","req":7}')
                    assert await recv_json(ws) == {"type": "auth_ok", "req": 7}

    asyncio.run(scenario())


def test_url_tokens_for_old_clients_only_when_allowed(
        redis_settings: RedisSettings, r: redis.Redis, keys: Keys) -> None:
    async def scenario() -> None:
        async with running_server(redis_settings, tokens=("s3cret-token",),
                                  allow_url_token=True) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with connect(url + "?token=s3cret-token") as ws:
                assert (await recv_json(ws))["auth_required"] is False
            with pytest.raises(InvalidStatus) as info:
                await connect(url + "?token=wrong")
            assert info.value.response.status_code == 401

    asyncio.run(scenario())


def test_listens_on_loopback_by_default() -> None:
    assert WsSettings().host == "127.0.0.1"
    assert WsSettings().allow_url_token is False


def test_healthz_says_unreachable_without_the_error_text(
        make_redis_server: Callable[..., RedisServer], keys: Keys) -> None:
    server_redis = make_redis_server()
    settings = RedisSettings(url=server_redis.url, prefix=keys.prefix, shards=keys.shards)
    client = redis.Redis.from_url(server_redis.url)
    streams.register_symbols(client, keys, ["AAPL"])
    client.close()

    async def scenario() -> None:
        async with running_server(settings) as server:
            healthz = f"http://127.0.0.1:{server.port}/healthz"
            status, _ = await asyncio.to_thread(_http, healthz)
            assert status == 200
            server_redis.kill()
            await until(lambda: not server.health()["redis"], timeout_s=30)
            status, body = await asyncio.to_thread(_http, healthz)
            health: dict[str, Any] = codec.decode_json(body)
            assert status == 503 and health["status"] == "degraded"
            assert health["redis"] is False and health["redis_writable"] is False
            # Only states and counts: no driver text, host or port.
            assert all(isinstance(v, bool | int) for k, v in health.items() if k != "status")
            assert str(server_redis.port).encode() not in body
            assert b"Error" not in body and b"refused" not in body.lower()

    asyncio.run(scenario())
