"""Helpers of the websocket server tests: an in-process server on a free port
talking to the session Redis, a client that reads typed messages, and
publishers of trades, quotes and bars written with the core's streams/codec
(as the publishers and the persist workers write them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection, connect

from pricepipe import codec, streams
from pricepipe.config import RedisSettings
from pricepipe.events import US_PER_MINUTE, Bar, BarState, Event, Quote, Side, Trade
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.ws.server import WsServer
from pricepipe.subscriber.ws.settings import WsSettings

TS = 1_767_323_045_000_000

#: Data frame type -> its channel.
DATA_TYPES = {"trades": Channel.TRADES, "quotes": Channel.QUOTES, "bars": Channel.BARS_1M}
LIST_KEY = {Channel.TRADES: "trades", Channel.QUOTES: "quotes", Channel.BARS_1M: "bars"}

#: An entry received, with the channel of the frame that carried it.
Got = tuple[Channel, dict[str, Any]]


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
    except data frames (which callers expecting control messages skip)."""
    while True:
        msg = await recv_json(ws, timeout_s)
        if msg["type"] == kind:
            return msg
        assert msg["type"] in DATA_TYPES, msg


def entries_of(msg: dict[str, Any]) -> list[Got]:
    """The entries a data frame or snapshot carries, with their channels."""
    if msg["type"] in DATA_TYPES:
        channel = DATA_TYPES[msg["type"]]
        return [(channel, entry) for entry in msg[msg["type"]]]
    if msg["type"] == "snapshot":
        return [(DATA_TYPES[kind], entry) for kind in DATA_TYPES for entry in msg.get(kind, ())]
    return []


async def collect(ws: ClientConnection, want: int, timeout_s: float = 10.0) -> list[Got]:
    """Read data frames (and snapshots) until ``want`` entries arrived."""
    out: list[Got] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(out) < want:
        out.extend(entries_of(await recv_json(ws, max(deadline - loop.time(), 0.01))))
    return out


def ids(got: Iterable[Got], symbol: str, channel: Channel) -> list[str]:
    """Entry IDs of one pair, in receipt order."""
    return [entry["id"] for ch, entry in got if ch is channel and entry["symbol"] == symbol]


# --- writing the streams ---------------------------------------------------------------------


def trade(symbol: str, i: int, **kwargs: Any) -> Trade:
    options: dict[str, Any] = {"size": 1.0, "source": "test", "trade_id": f"t{i}",
                               "side": Side.BUY if i % 2 else Side.SELL}
    options.update(kwargs)
    return Trade(symbol, TS + i, 100.0 + i % 50, **options)


def quote(symbol: str, i: int) -> Quote:
    mid = 100.0 + i % 50
    return Quote(symbol, TS + i, mid - 0.01, 5.0, mid + 0.01, 7.0, "test")


def bar(symbol: str, minute: int, trades: int, *, state: BarState = BarState.OPEN) -> Bar:
    return Bar(symbol, TS - TS % US_PER_MINUTE + minute * US_PER_MINUTE, 100.0, 100.0 + trades,
               99.0, 100.5, float(trades), 100.2, trades, state)


def append(r: redis.Redis, keys: Keys, events: Sequence[Event]) -> list[str]:
    """Append events (registering their symbols); their entry IDs, in order."""
    streams.register_symbols(r, keys, sorted({e.symbol for e in events}))
    return [eid.decode() for eid in streams.append_events(r, keys, events)]


def publish(r: redis.Redis, keys: Keys, symbol: str, n: int, *, start: int = 0,
            channel: Channel = Channel.TRADES) -> list[str]:
    """Append ``n`` trades (or quotes) of ``symbol``; their entry IDs."""
    make = trade if channel is Channel.TRADES else quote
    return append(r, keys, [make(symbol, start + i) for i in range(n)])


def publish_mix(r: redis.Redis, keys: Keys, symbols: Sequence[str], rounds: int, *,
                quotes_per_trade: int = 5, pause_s: float = 0.0, start: int = 0
                ) -> dict[tuple[str, Channel], list[str]]:
    """``rounds`` events per symbol, one trade then ``quotes_per_trade``
    quotes, in pipelined batches of 60 rounds; every entry ID per pair.

    ``pause_s`` between batches lets a reader that keeps up stay under the
    buffer mark even when the machine is starved of CPU (the server and the
    readers share one event loop here)."""
    out: dict[tuple[str, Channel], list[str]] = {
        (s, c): [] for s in symbols for c in (Channel.TRADES, Channel.QUOTES)}
    streams.register_symbols(r, keys, symbols)
    for n in range(0, rounds, 60):
        if n and pause_s:
            time.sleep(pause_s)
        events: list[Event] = []
        for i in range(start + n, start + min(n + 60, rounds)):
            for s in symbols:
                events.append(trade(s, i) if i % (quotes_per_trade + 1) == 0 else quote(s, i))
        for event, entry_id in zip(events, streams.append_events(r, keys, events), strict=True):
            channel = Channel.TRADES if isinstance(event, Trade) else Channel.QUOTES
            out[(event.symbol, channel)].append(entry_id.decode())
    return out


# --- connections -----------------------------------------------------------------------------

# Small kernel buffers so a stalled reader shows up quickly; a high-water mark
# well above what one event-loop turn can write (3 shards x read_count
# entries), so a reader that keeps up is never taken for a slow one on a busy
# machine.
SLOW = {"buffer_high_bytes": 65_536, "buffer_low_bytes": 16_384,
        "socket_send_buffer_bytes": 4_096, "read_count": 100}


def stalled_max_bytes(streams_: int) -> int:
    """What a stalled reader may hold: the high-water mark plus one flush, of at
    most read_count entries (well under 300 bytes each) per subscribed stream."""
    return 65_536 + 100 * 300 * streams_


async def until(predicate: Any, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def subscribe_message(symbols: Sequence[str], channels: Sequence[str] | None = None,
                      **fields: Any) -> str:
    msg: dict[str, Any] = {"op": "subscribe", "symbols": list(symbols), **fields}
    if channels is not None:
        msg["channels"] = list(channels)
    return json.dumps(msg)


async def subscribed(port: int, symbols: list[str], channels: Sequence[str] | None = None, *,
                     small_window: bool = False, **kwargs: Any) -> ClientConnection:
    """A connected client, subscribed without snapshot, its hello and ack consumed."""
    if small_window:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        kwargs["sock"] = sock
    ws = await connect(f"ws://127.0.0.1:{port}/ws", **kwargs)
    await recv_json(ws)
    await ws.send(subscribe_message(symbols, channels, snapshot=False))
    await recv_type(ws, "subscribed")
    return ws


async def live(server: WsServer, count: int = 1) -> None:
    """Until ``count`` sessions hold no pair still catching up (so entries
    appended from now on arrive live, not as part of a snapshot)."""
    await until(lambda: len(server.sessions) >= count
                and all(not s._catching for s in server.sessions))
