"""Helpers for the subscriber tests: an in-process websocket server on a free
port, talking to the session Redis; and a client that reads typed messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection

from pricepipe import codec, streams
from pricepipe.config import RedisSettings
from pricepipe.keys import Keys
from pricepipe.tick import Tick
from subscriber.server import WsServer
from subscriber.settings import WsSettings

TS = 1_767_323_045_000_000


@contextlib.asynccontextmanager
async def running_server(redis_settings: RedisSettings, **overrides: Any
                         ) -> AsyncIterator[WsServer]:
    """A :class:`WsServer` on a free port; stopped (1001) on exit."""
    options: dict[str, Any] = {"port": 0, "read_block_ms": 50, "heartbeat_interval_s": 0.5}
    options.update(overrides)
    server = WsServer(WsSettings(**options), redis_settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def recv_json(ws: ClientConnection, timeout_s: float = 5.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), timeout_s)
    assert isinstance(message, str), "the server sends text frames"
    out = codec.decode_json(message)
    assert isinstance(out, dict)
    return out


async def recv_type(ws: ClientConnection, kind: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Next message of type ``kind``, failing on any other type in between
    except ``ticks`` (which callers expecting control messages skip)."""
    while True:
        msg = await recv_json(ws, timeout_s)
        if msg["type"] == kind:
            return msg
        assert msg["type"] == "ticks", msg


async def collect_ticks(ws: ClientConnection, want: int, timeout_s: float = 10.0
                        ) -> list[dict[str, Any]]:
    """Read tick-carrying frames until ``want`` ticks arrived."""
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(out) < want:
        msg = await recv_json(ws, max(deadline - loop.time(), 0.01))
        if msg["type"] in ("ticks", "snapshot"):
            out.extend(msg["ticks"])
    return out


def publish(r: redis.Redis, keys: Keys, symbol: str, n: int, *, start: int = 0) -> list[str]:
    """Register ``symbol`` and append ``n`` ticks; returns their entry IDs."""
    streams.register_symbols(r, keys, [symbol])
    ticks = [Tick(symbol, TS + start + i, 100.0 + start + i, 1.0, "test") for i in range(n)]
    return [eid.decode() for eid in streams.append_ticks(r, keys, ticks)]
