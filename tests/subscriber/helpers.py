"""Helpers of the subscriber tests: an in-process websocket server on a free
port talking to the session Redis, a client that reads typed messages, and
what the websocket and client-library tests share."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from pricepipe.subscriber.client import ClientSettings, Delivery
from pricepipe.subscriber.ws.server import WsServer
from pricepipe.subscriber.ws.settings import WsSettings
from websockets.asyncio.client import ClientConnection, connect

from pricepipe import codec, streams
from pricepipe.clock import us_to_datetime
from pricepipe.config import RedisSettings
from pricepipe.keys import Keys
from pricepipe.tick import Tick

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


# Small kernel buffers so a stalled reader shows up quickly; a high-water mark
# well above what one event-loop turn can write (3 shards x read_count ticks),
# so a reader that keeps up is never taken for a slow one on a busy machine.
SLOW = {"buffer_high_bytes": 65_536, "buffer_low_bytes": 16_384,
        "socket_send_buffer_bytes": 4_096, "read_count": 100}


def stalled_max_bytes(symbols: int) -> int:
    """What a stalled reader may hold: the high-water mark plus one frame, of at
    most read_count ticks (well under 250 bytes each) per subscribed symbol."""
    return 65_536 + 100 * 250 * symbols


async def until(predicate: Any, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def subscribed(port: int, symbols: list[str], *, small_window: bool = False,
                     **kwargs: Any) -> ClientConnection:
    """A connected client, subscribed, its hello and ack consumed."""
    if small_window:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        kwargs["sock"] = sock
    ws = await connect(f"ws://127.0.0.1:{port}/ws", **kwargs)
    await recv_json(ws)
    await ws.send(json.dumps({"op": "subscribe", "symbols": symbols, "snapshot": False}))
    await recv_type(ws, "subscribed")
    return ws


def publish_many(r: redis.Redis, keys: Keys, symbols: list[str], rounds: int,
                 pause_s: float = 0.0) -> dict[str, str]:
    """``rounds`` ticks per symbol in pipelined batches; the last id per symbol.

    ``pause_s`` between batches lets a reader that keeps up stay under the
    buffer mark even when the machine is starved of CPU (the server and the
    readers share one event loop here)."""
    last: dict[str, str] = {}
    for n in range(0, rounds, 50):
        if n and pause_s:
            time.sleep(pause_s)
        ticks = [Tick(s, TS + n + i, 100.0 + i) for i in range(min(50, rounds - n))
                 for s in symbols]
        for tick, entry_id in zip(ticks, streams.append_ticks(r, keys, ticks), strict=True):
            last[tick.symbol] = entry_id.decode()
    return last


FAST = ClientSettings(block_ms=100, count=50, reconnect_base_s=0.02, reconnect_cap_s=0.2)


def take(reader: Any, n: int, timeout_s: float = 10.0) -> list[Delivery]:
    out: list[Delivery] = []
    while len(out) < n:
        delivery = reader.get(timeout_s=timeout_s)
        assert delivery is not None, f"only {len(out)} of {n} deliveries"
        out.append(delivery)
    return out


def insert_ticks(db: Any, ticks: list[tuple[Tick, str]]) -> None:
    with db.cursor() as cur:
        day = us_to_datetime(TS).date()
        cur.execute("SELECT ensure_tick_partitions(%s, %s)", (day, day))
        for tick, entry_id in ticks:
            cur.execute(
                "INSERT INTO ticks (symbol, ts, price, size, source, recv_ts, entry_id) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (tick.symbol, us_to_datetime(tick.ts_us), tick.price, tick.size, tick.source,
                 None, codec.pack_entry_id(entry_id)))
