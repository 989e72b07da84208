"""Resume: a client reconnecting with its last entry ID per symbol and
channel gets exactly what it missed of each stream, in order, then live
entries: across a websocket server restart, while trades and quotes keep
arriving; and an honest ``unrecoverable`` (naming the channel) when a stream
no longer holds what it missed, which leaves the other channels alone."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pricepipe import streams
from pricepipe.config import RedisSettings
from pricepipe.events import Event, Trade
from pricepipe.keys import Channel, Keys

from . import helpers
from .helpers import (
    collect,
    entries_of,
    ids,
    live,
    publish,
    quote,
    recv_json,
    recv_type,
    running_server,
    trade,
)

SYMBOLS = ["AAPL", "MSFT", "BTC-USD"]
T, Q = Channel.TRADES, Channel.QUOTES
PAIRS = [(s, c) for s in SYMBOLS for c in (T, Q)]


class Publisher(threading.Thread):
    """Appends a trade or a quote (one trade in three) to each symbol every
    few ms until stopped; every entry ID per pair."""

    def __init__(self, r: redis.Redis, keys: Keys, pause_s: float = 0.003) -> None:
        super().__init__(daemon=True)
        self.r, self.keys, self.pause_s = r, keys, pause_s
        self.ids: dict[tuple[str, Channel], list[str]] = {pair: [] for pair in PAIRS}
        self.halt = threading.Event()
        self.n = 0

        #: Rounds to append at once, in one call, at the next turn.
        self.burst = 0

    def run(self) -> None:
        while not self.halt.is_set():
            rounds, self.burst = max(self.burst, 1), 0
            events: list[Event] = []
            for n in range(self.n, self.n + rounds):
                events += [trade(s, n) if n % 3 == 0 else quote(s, n) for s in SYMBOLS]
            self.n += rounds
            for event, entry_id in zip(events, streams.append_events(self.r, self.keys, events),
                                       strict=True):
                channel = T if isinstance(event, Trade) else Q
                self.ids[(event.symbol, channel)].append(entry_id.decode())
            time.sleep(self.pause_s)


@pytest.mark.parametrize("catchup_buffer_max", [10_000, 3])
def test_resume_across_server_restart_no_gap_no_duplicate(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys, catchup_buffer_max: int
) -> None:
    """With a catch-up buffer of 3 entries (and reads that block for 1 ms
    only, so that the hub reads new streams at once) it overflows while the
    missed entries are replayed: the session then reads the stream again
    instead, and still stitches exactly."""
    options: dict[str, Any] = {"catchup_buffer_max": catchup_buffer_max}
    if catchup_buffer_max < 100:
        options["read_block_ms"] = 1
    streams.register_symbols(r, keys, SYMBOLS)
    for symbol in SYMBOLS:  # some history before the client arrives
        publish(r, keys, symbol, 5)
        publish(r, keys, symbol, 5, channel=Q)
    publisher = Publisher(r, keys)
    received: dict[tuple[str, Channel], list[str]] = {pair: [] for pair in PAIRS}
    first_ids: dict[tuple[str, Channel], str] = {}

    def take(msg: dict[str, Any]) -> None:
        assert not msg.get("conflated"), msg
        for channel, entry in entries_of(msg):
            received[(entry["symbol"], channel)].append(entry["id"])

    async def session(port: int, resume: dict[str, dict[str, str]] | None, want: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await recv_json(ws)
            request: dict[str, Any] = {"op": "subscribe", "symbols": SYMBOLS,
                                       "channels": ["trades", "quotes"]}
            if resume:
                request["resume"] = resume
            await ws.send(json.dumps(request))
            await recv_type(ws, "subscribed")
            got = 0
            try:
                while got < want:
                    msg = await recv_json(ws, 10)
                    assert msg["type"] in ("trades", "quotes", "snapshot"), msg
                    if msg["type"] == "snapshot":
                        assert resume is None
                        first_ids.update({(e["symbol"], c): e["id"] for c, e in entries_of(msg)})
                        continue
                    take(msg)
                    got += len(entries_of(msg))
                # Keep reading until the server goes away (the restart).
                while True:
                    take(await recv_json(ws, 10))
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1001

    async def scenario() -> None:
        publisher.start()
        async with running_server(redis_settings, **options) as server:
            task = asyncio.create_task(session(server.port, None, 60))
            while sum(map(len, received.values())) < 60:
                await asyncio.sleep(0.01)
        await task  # the server stopped: the client saw 1001
        # Server down for a while: entries keep coming and are missed, many
        # at once, so that the replay takes a while (pages of entries) while
        # live entries are read for the pairs catching up.
        publisher.burst = 2000
        await asyncio.sleep(0.3)
        while publisher.burst:
            await asyncio.sleep(0.01)
        cursors: dict[str, dict[str, str]] = {}
        for (symbol, channel), got in received.items():
            cursors.setdefault(symbol, {})[str(channel)] = got[-1] if got else first_ids[
                (symbol, channel)]
        seen_before = sum(map(len, received.values()))
        async with running_server(redis_settings, **options) as server:
            task = asyncio.create_task(session(server.port, cursors, 150))
            while sum(map(len, received.values())) < seen_before + 6300:
                await asyncio.sleep(0.01)
            publisher.halt.set()
            publisher.join()
            # Everything published reaches the client before we stop.
            deadline = time.monotonic() + 10
            while any(received[pair][-1:] != publisher.ids[pair][-1:] for pair in PAIRS):
                assert time.monotonic() < deadline, "client never caught up"
                await asyncio.sleep(0.01)
            assert server.stats.resumes == len(PAIRS) and server.stats.unrecoverable == 0
            # The small buffer overflowed: those pairs were read again.
            assert (server.stats.catchup_overflows > 0) == (catchup_buffer_max < 100)
        await task

    asyncio.run(scenario())
    for pair in PAIRS:
        got = received[pair]
        expected = publisher.ids[pair]
        # Each stream's live entries start right after its snapshot entry, and
        # are then exactly the stream to its end: no gap, no repeat, across
        # the restart.
        snapshot_id = first_ids[pair]
        start = expected.index(snapshot_id) + 1 if snapshot_id in expected else 0
        assert got == expected[start:], pair


def resume_request(symbol: str, cursors: dict[str, str], **fields: Any) -> str:
    return json.dumps({"op": "subscribe", "symbols": [symbol], "resume": {symbol: cursors},
                       **fields})


def test_resume_of_trimmed_history_is_unrecoverable_per_channel(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    trades = publish(r, keys, "AAPL", 10)
    quotes = publish(r, keys, "AAPL", 4, channel=Q)
    streams.register_symbols(r, keys, ["MSFT"])  # registered, nothing published yet
    # Trades 0..4 are gone, by a trim that keeps no record (not the workers'):
    # the server can only tell from the first entry left.
    r.xtrim(keys.trades("AAPL"), minid=trades[5], approximate=False)
    epoch = streams.epoch(r, keys.trades("AAPL"))

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            # Resuming after trades[5], the oldest entry kept, is fine.
            await ws.send(resume_request("AAPL", {"trades": trades[5]}, channels=["trades"]))
            await recv_type(ws, "subscribed")
            frame = await recv_json(ws)
            assert frame["type"] == "trades" and frame["replay"] is True
            assert [t["id"] for t in frame["trades"]] == trades[6:]
            await ws.send('{"op":"unsubscribe","symbols":["AAPL"]}')
            await recv_type(ws, "unsubscribed")
            # After trades[2], trades 3 and 4 were trimmed: not recoverable.
            # The quotes resume from quotes[1] is served all the same.
            await ws.send(resume_request("AAPL", {"trades": trades[2], "quotes": quotes[1]}))
            await recv_type(ws, "subscribed")
            got: dict[str, list[dict[str, Any]]] = {}
            while len(got) < 3:
                msg = await recv_json(ws)
                got[msg["type"]] = got.get(msg["type"], []) + [msg]
            (gap,) = got["unrecoverable"]
            assert gap == {"type": "unrecoverable", "symbol": "AAPL", "channel": "trades",
                           "after": trades[2], "reason": "trimmed", "first_id": trades[5],
                           "epoch": epoch}
            # ... then a snapshot of that channel only ...
            (snapshot,) = got["snapshot"]
            assert snapshot == {"type": "snapshot", "trades": [snapshot["trades"][0]],
                                "epochs": {"AAPL": epoch}}
            assert snapshot["trades"][0]["id"] == trades[-1]
            (replay,) = got["quotes"]
            assert replay["replay"] is True and [q["id"] for q in replay["quotes"]] == quotes[2:]
            # ... then live.
            new = await asyncio.to_thread(publish, r, keys, "AAPL", 2, start=50)
            assert ids(await collect(ws, 2), "AAPL", T) == new
            # A cursor the stream never reached.
            await ws.send(resume_request("MSFT", {"quotes": "1-0"}, channels=["quotes"]))
            await recv_type(ws, "subscribed")
            gap = await recv_json(ws)
            assert gap["type"] == "unrecoverable" and gap["reason"] == "cursor_ahead"
            assert gap["channel"] == "quotes"
            # A snapshot follows even with nothing in it: it names the epoch.
            assert await recv_json(ws) == {"type": "snapshot", "epochs": {"MSFT": epoch},
                                           "quotes": []}
            assert server.stats.unrecoverable == 2

    asyncio.run(scenario())


def test_resume_some_channels_snapshot_the_others(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    trades = publish(r, keys, "AAPL", 6)
    quotes = publish(r, keys, "AAPL", 3, channel=Q)
    streams.register_symbols(r, keys, ["MSFT"])
    epoch = streams.epoch(r, keys.trades("AAPL"))

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(resume_request("AAPL", {"trades": trades[3]}))
            await recv_type(ws, "subscribed")
            # Quotes have no cursor: their snapshot; trades: the replay.
            snapshot = await recv_json(ws)
            assert snapshot == {"type": "snapshot", "quotes": [snapshot["quotes"][0]],
                                "epochs": {"AAPL": epoch}}
            assert snapshot["quotes"][0]["id"] == quotes[-1]
            replay = await recv_json(ws)
            assert replay["type"] == "trades" and replay["replay"] is True
            assert [t["id"] for t in replay["trades"]] == trades[4:]
            # A resume without a snapshot for the rest: nothing but the replay.
            await ws.send(resume_request("MSFT", {"quotes": "0-0"}, snapshot=False))
            await recv_type(ws, "subscribed")
            new = await asyncio.to_thread(publish, r, keys, "MSFT", 1, channel=Q)
            (frame,) = [await recv_json(ws)]
            assert frame["type"] == "quotes" and [q["id"] for q in frame["quotes"]] == new

    asyncio.run(scenario())


def test_replay_limit_is_unrecoverable_too(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    quotes = publish(r, keys, "AAPL", 30, channel=Q)

    async def scenario() -> None:
        async with running_server(redis_settings, max_replay_entries=10) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(resume_request("AAPL", {"quotes": quotes[0]}, channels=["quotes"]))
            await recv_type(ws, "subscribed")
            gap = await recv_type(ws, "unrecoverable")
            assert gap["reason"] == "too_far_behind" and gap["after"] == quotes[0]
            assert gap["channel"] == "quotes"
            snapshot = await recv_json(ws)
            assert snapshot["type"] == "snapshot" and snapshot["quotes"][0]["id"] == quotes[-1]

    asyncio.run(scenario())


def trim_all(r: redis.Redis, keys: Keys, symbol: str, channel: Channel) -> int:
    """What the persist workers do once everything is persisted and older
    than the window: trim the stream (recording the trim) and acknowledge
    nothing more. Here the window is 0 and no group holds anything back."""
    stream = keys.stream(symbol, channel)
    r.xgroup_destroy(stream, "persist")  # a stream without a group: nothing to wait for
    time.sleep(0.005)  # a window of 0 ms keeps what was appended this millisecond
    return streams.trim_stream(r, keys, stream, window_ms=0, max_age_ms=None, persisted=False)


def test_trimmed_is_exact_from_the_trimmed_record(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    """A cursor at the last trimmed entry missed nothing (the old check,
    "older than the first entry left", called it trimmed); one before it
    did. Bars streams are trimmed the same way, without a group."""
    first = publish(r, keys, "AAPL", 4)
    assert trim_all(r, keys, "AAPL", T) == 4
    assert r.hget(keys.trimmed(keys.shard("AAPL")), keys.trades("AAPL")) == first[-1].encode()
    kept = publish(r, keys, "AAPL", 3, start=10)

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(resume_request("AAPL", {"trades": first[-1]}, channels=["trades"]))
            await recv_type(ws, "subscribed")
            replay = await recv_json(ws)
            assert replay["type"] == "trades" and replay["replay"] is True
            assert [t["id"] for t in replay["trades"]] == kept
            await ws.send('{"op":"unsubscribe","symbols":["AAPL"]}')
            await recv_type(ws, "unsubscribed")
            await ws.send(resume_request("AAPL", {"trades": first[-2]}, channels=["trades"]))
            await recv_type(ws, "subscribed")
            gap = await recv_json(ws)
            assert (gap["type"], gap["reason"], gap["after"], gap["first_id"]) == (
                "unrecoverable", "trimmed", first[-2], kept[0])
            snapshot = await recv_json(ws)
            assert [t["id"] for t in snapshot["trades"]] == kept[-1:]
            assert server.stats.unrecoverable == 1

    asyncio.run(scenario())


def test_a_big_resume_is_a_few_round_trips(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 symbols x 3 channels, each a few entries behind: the checks and
    the first page of every replay share one pipeline per shard (per 128
    pairs), not 600 sequential round trips of each kind."""
    symbols = [f"R{i:03d}" for i in range(200)]
    streams.register_symbols(r, keys, symbols)
    seen_trades = streams.append_events(r, keys, [trade(s, 0) for s in symbols])
    seen_quotes = streams.append_events(r, keys, [quote(s, 0) for s in symbols])
    cursors = {s: {"trades": t.decode(), "quotes": q.decode(), "bars.1m": "0-0"}
               for s, t, q in zip(symbols, seen_trades, seen_quotes, strict=True)}
    # Missed: a trade, a quote and a bar of each symbol.
    missed: list[Event] = [*(trade(s, 1) for s in symbols), *(quote(s, 1) for s in symbols)]
    streams.append_events(r, keys, [*missed, *(helpers.bar(s, 0, 1) for s in symbols)])
    rounds = {"n": 0}

    def count_round_trips(client: Any) -> None:
        """Every command and every pipeline sent by ``client``: its round trips."""
        real_command, real_pipeline = client.execute_command, client.pipeline

        async def command(*args: Any, **kwargs: Any) -> Any:
            rounds["n"] += 1
            return await real_command(*args, **kwargs)

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = real_pipeline(*args, **kwargs)
            real_execute = pipe.execute

            async def execute(*a: Any, **k: Any) -> Any:
                rounds["n"] += 1
                return await real_execute(*a, **k)

            pipe.execute = execute
            return pipe

        monkeypatch.setattr(client, "execute_command", command)
        monkeypatch.setattr(client, "pipeline", pipeline)

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as ws:
            await recv_json(ws)
            # The sessions' and the hub's shared client (the hub's readers
            # have their own connections, and read on whatever happens).
            count_round_trips(server._r)
            await ws.send(json.dumps({"op": "subscribe", "symbols": symbols,
                                      "channels": ["trades", "quotes", "bars.1m"],
                                      "resume": cursors}))
            await recv_type(ws, "subscribed")
            # One entry after each trades and quotes cursor, the one bar after "0-0".
            got = await collect(ws, 600)
            assert all(ids(got, s, c) for s in symbols[:3] for c in (T, Q, Channel.BARS_1M))
            assert len(got) == 600 and server.stats.unrecoverable == 0
            # Registry, cursors of the hub, checks per shard and chunk: a few.
            print("round trips:", rounds["n"])
            assert rounds["n"] <= 3 * keys.shards, rounds

    asyncio.run(scenario())


def test_replay_budget_per_request(
    redis_settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    """Each pair is within its own limit, the request is not: the resume that
    reaches the budget and every later one are too far behind."""
    missed = {s: publish(r, keys, s, 6) for s in ("A1", "A2", "A3")}

    async def scenario() -> None:
        async with running_server(redis_settings, max_replay_entries_per_request=8) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({
                "op": "subscribe", "symbols": ["A1", "A2", "A3"], "channels": ["trades"],
                "resume": {s: {"trades": "0-0"} for s in missed}}))
            await recv_type(ws, "subscribed")
            got: dict[str, list[dict[str, Any]]] = {}
            while len(got.get("unrecoverable", ())) < 2 or "snapshot" not in got:
                msg = await recv_json(ws)
                got.setdefault(msg["type"], []).append(msg)
            (replay,) = got["trades"]
            assert [t["id"] for t in replay["trades"]] == missed["A1"]
            assert sorted((g["symbol"], g["reason"]) for g in got["unrecoverable"]) == [
                ("A2", "too_far_behind"), ("A3", "too_far_behind")]
            (snapshot,) = got["snapshot"]
            assert sorted(t["id"] for t in snapshot["trades"]) == sorted(
                [missed["A2"][-1], missed["A3"][-1]])
            await live(server)
            new = await asyncio.to_thread(publish, r, keys, "A3", 1, start=9)
            assert ids(await collect(ws, 1), "A3", T) == new

    asyncio.run(scenario())
