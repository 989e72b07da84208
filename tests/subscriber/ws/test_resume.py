"""Resume: a client reconnecting with its last entry ID per symbol gets
exactly what it missed, in order, then live ticks: across a websocket server
restart, while ticks keep arriving; and an honest ``unrecoverable`` when the
stream no longer holds what it missed."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pricepipe import streams
from pricepipe.config import RedisSettings
from pricepipe.keys import Keys
from pricepipe.tick import Tick

from ..helpers import TS, collect_ticks, publish, recv_json, recv_type, running_server

SYMBOLS = ["AAPL", "MSFT", "BTC-USD"]


class Publisher(threading.Thread):
    """Appends one tick to each symbol every few ms until stopped."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        super().__init__(daemon=True)
        self.r, self.keys = r, keys
        self.ids: dict[str, list[str]] = {s: [] for s in SYMBOLS}
        self.halt = threading.Event()
        self.n = 0

    def run(self) -> None:
        while not self.halt.is_set():
            ticks = [Tick(s, TS + self.n, 100.0 + self.n % 50) for s in SYMBOLS]
            ids = streams.append_ticks(self.r, self.keys, ticks)
            for symbol, entry_id in zip(SYMBOLS, ids, strict=True):
                self.ids[symbol].append(entry_id.decode())
            self.n += 1
            time.sleep(0.003)


def test_resume_across_server_restart_no_gap_no_duplicate(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    streams.register_symbols(r, keys, SYMBOLS)
    for symbol in SYMBOLS:  # some history before the client arrives
        publish(r, keys, symbol, 5)
    publisher = Publisher(r, keys)
    received: dict[str, list[str]] = {s: [] for s in SYMBOLS}
    first_ids: dict[str, str] = {}

    def take(msg: dict[str, Any]) -> None:
        for tick in msg["ticks"]:
            received[tick["symbol"]].append(tick["id"])

    async def session(port: int, resume: dict[str, str] | None, want: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await recv_json(ws)
            request: dict[str, Any] = {"op": "subscribe", "symbols": SYMBOLS}
            if resume:
                request["resume"] = resume
            await ws.send(json.dumps(request))
            await recv_type(ws, "subscribed")
            got = 0
            try:
                while got < want:
                    msg = await recv_json(ws, 10)
                    assert msg["type"] in ("ticks", "snapshot"), msg
                    assert not msg.get("conflated")
                    if msg["type"] == "snapshot":
                        first_ids.update({t["symbol"]: t["id"] for t in msg["ticks"]})
                        continue
                    take(msg)
                    got += len(msg["ticks"])
                # Keep reading until the server goes away (the restart).
                while True:
                    take(await recv_json(ws, 10))
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1001

    async def scenario() -> None:
        publisher.start()
        async with running_server(redis_settings) as server:
            task = asyncio.create_task(session(server.port, None, 60))
            while sum(map(len, received.values())) < 60:
                await asyncio.sleep(0.01)
        await task  # the server stopped: the client saw 1001
        # Server down for a while: ticks keep coming and are missed.
        await asyncio.sleep(0.3)
        cursors = {s: ids[-1] for s, ids in received.items()}
        async with running_server(redis_settings) as server:
            task = asyncio.create_task(session(server.port, cursors, 150))
            while sum(map(len, received.values())) < sum(map(len, cursors)) + 300:
                await asyncio.sleep(0.01)
            publisher.halt.set()
            publisher.join()
            # Everything published reaches the client before we stop.
            deadline = time.monotonic() + 10
            while any(received[s][-1] != publisher.ids[s][-1] for s in SYMBOLS):
                assert time.monotonic() < deadline, "client never caught up"
                await asyncio.sleep(0.01)
        await task

    asyncio.run(scenario())
    for symbol in SYMBOLS:
        got = received[symbol]
        expected = publisher.ids[symbol]
        # The live ticks start right after the snapshot's tick, and are then
        # exactly the stream to its end: no gap, no repeat, across the restart.
        snapshot_id = first_ids[symbol]
        start = expected.index(snapshot_id) + 1 if snapshot_id in expected else 0
        assert got == expected[start:], symbol


def resume_request(symbol: str, entry_id: str) -> str:
    return json.dumps({"op": "subscribe", "symbols": [symbol], "resume": {symbol: entry_id}})


def test_resume_of_trimmed_history_is_unrecoverable(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    ids = publish(r, keys, "AAPL", 10)
    r.xtrim(keys.stream("AAPL"), minid=ids[5], approximate=False)  # entries 0..4 are gone

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            # Resuming after ids[5], the oldest entry kept, is fine.
            await ws.send(resume_request("AAPL", ids[5]))
            await recv_type(ws, "subscribed")
            assert [t["id"] for t in await collect_ticks(ws, 4)] == ids[6:]
            await ws.send('{"op":"unsubscribe","symbols":["AAPL"]}')
            await recv_type(ws, "unsubscribed")
            # After ids[2], entries 3 and 4 were trimmed: not recoverable.
            await ws.send(resume_request("AAPL", ids[2]))
            await recv_type(ws, "subscribed")
            gap = await recv_json(ws)
            assert gap == {"type": "unrecoverable", "symbol": "AAPL", "after": ids[2],
                           "reason": "trimmed", "first_id": ids[5]}
            snapshot = await recv_json(ws)
            assert snapshot["type"] == "snapshot" and snapshot["ticks"][0]["id"] == ids[-1]
            # ... then live.
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 2, start=50)
            assert [t["id"] for t in await collect_ticks(ws, 2)] == new
            # A cursor the stream never reached.
            await ws.send('{"op":"subscribe","symbols":["MSFT"],"resume":{"MSFT":"1-0"}}')
            await recv_type(ws, "subscribed")
            gap = await recv_json(ws)
            assert gap["type"] == "unrecoverable" and gap["reason"] == "cursor_ahead"

    asyncio.run(scenario())


def test_replay_limit_is_unrecoverable_too(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    ids = publish(r, keys, "AAPL", 30)

    async def scenario() -> None:
        async with running_server(redis_settings, max_replay_entries=10) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(resume_request("AAPL", ids[0]))
            await recv_type(ws, "subscribed")
            gap = await recv_type(ws, "unrecoverable")
            assert gap["reason"] == "too_far_behind" and gap["after"] == ids[0]
            snapshot = await recv_json(ws)
            assert snapshot["type"] == "snapshot" and snapshot["ticks"][0]["id"] == ids[-1]

    asyncio.run(scenario())
