"""The ``bars.1m`` channel relays the bars stream the persist workers write
(``keys.bars(symbol)``; here written with the core's streams/codec as they
write it): a snapshot of the current bar, then every change of a bar as it
is published (open, final, revised), resumable like any stream."""

from __future__ import annotations

import asyncio
import json

import redis
from websockets.asyncio.client import connect

from pricepipe import codec, streams
from pricepipe.config import RedisSettings
from pricepipe.events import BarState
from pricepipe.keys import Channel, Keys

from .helpers import (
    append,
    bar,
    collect,
    ids,
    live,
    publish,
    recv_json,
    recv_type,
    running_server,
    subscribe_message,
)

B, T = Channel.BARS_1M, Channel.TRADES


def test_bars_snapshot_then_every_change_of_each_bar(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    history = append(r, keys, [bar("AAPL", 0, 1), bar("AAPL", 0, 2)])

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(subscribe_message(["AAPL"], ["bars.1m", "trades"], req=1))
            epoch = streams.epoch(r, keys.bars("AAPL"))
            assert await recv_json(ws) == {"type": "subscribed", "symbols": ["AAPL"],
                                           "channels": ["bars.1m", "trades"], "req": 1,
                                           "epochs": {"AAPL": epoch}}
            snapshot = await recv_json(ws)
            # The current bar (the latest entry of the bars stream); no trade yet.
            assert snapshot == {"type": "snapshot", "trades": [], "epochs": {"AAPL": epoch},
                                "bars": [codec.event_to_dict(bar("AAPL", 0, 2), history[-1])]}
            await live(server)
            changes = [bar("AAPL", 0, 3), bar("AAPL", 0, 3, state=BarState.FINAL),
                       bar("AAPL", 1, 1), bar("AAPL", 0, 4, state=BarState.REVISED)]
            new = await asyncio.to_thread(append, r, keys, changes)
            trades = await asyncio.to_thread(publish, r, keys, "AAPL", 1)
            got = await collect(ws, 5)
            assert ids(got, "AAPL", B) == new and ids(got, "AAPL", T) == trades
            assert [e for c, e in got if c is B] == [
                codec.event_to_dict(b, i) for b, i in zip(changes, new, strict=True)]
            assert [e["state"] for c, e in got if c is B] == ["open", "final", "open", "revised"]

    asyncio.run(scenario())


def test_bars_frames_and_resume(redis_settings: RedisSettings, r: redis.Redis,
                                keys: Keys) -> None:
    old = append(r, keys, [bar("MSFT", 0, n) for n in range(1, 6)])

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"op": "subscribe", "symbols": ["MSFT"],
                                      "channels": ["bars.1m"],
                                      "resume": {"MSFT": {"bars.1m": old[1]}}}))
            await recv_type(ws, "subscribed")
            replay = await recv_json(ws)
            assert replay["type"] == "bars" and replay["replay"] is True
            assert [b["id"] for b in replay["bars"]] == old[2:]
            assert [b["trades"] for b in replay["bars"]] == [3, 4, 5]
            await live(server)
            new = await asyncio.to_thread(append, r, keys, [bar("MSFT", 0, 6)])
            frame = await recv_json(ws)
            assert frame == {"type": "bars", "bars": [codec.event_to_dict(bar("MSFT", 0, 6),
                                                                           new[0])]}
            # A bad bar entry is skipped, the rest flows.
            await asyncio.to_thread(r.xadd, keys.bars("MSFT"), {"b": "1 2 3"})
            new = await asyncio.to_thread(append, r, keys, [bar("MSFT", 1, 1)])
            assert ids(await collect(ws, 1), "MSFT", B) == new
            assert server.hub is not None and server.hub.bad_entries == 1

    asyncio.run(scenario())
