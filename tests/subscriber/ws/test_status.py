"""The ``status`` channel: every feed's status events, one stream of no
symbol, subscribed without ``symbols``. A snapshot of every feed's state on
subscribe, live events after it, resume by entry ID (also across a
reconnect, with the epoch under ``feeds``), an honest ``unrecoverable`` when
the stream was trimmed past the cursor, alongside a symbol's channels in
one request, and a client that falls behind gets every event or a named
gap. Status events are written as the feeds write them: an event and the
feed's new state in one ``MULTI`` (:mod:`pricepipe.publisher.feeds.status`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect

from pricepipe import codec, streams
from pricepipe.clock import now_us
from pricepipe.config import RedisSettings
from pricepipe.embedded import RedisServer
from pricepipe.exceptions import ProtocolError
from pricepipe.feedstatus import (
    FeedEvent,
    FeedSnapshot,
    FeedState,
    FeedStatus,
    encode_state,
    encode_status,
    status_dict,
)
from pricepipe.keys import Channel, Keys
from pricepipe.subscriber.ws import protocol as p

from .helpers import (
    SLOW,
    publish,
    recv_json,
    recv_type,
    running_server,
    subscribe_message,
    subscribed,
    trade,
    until,
)

FEED = "binance-ws"


def snapshot_of(feed: str = FEED, state: FeedState = FeedState.CONNECTED,
                updated_us: int | None = None) -> FeedSnapshot:
    snap = FeedSnapshot(feed, feed, feed.split("-")[0], ["BINANCE:BTCUSDT"], 1)
    snap.state = state
    snap.since_us = snap.updated_us = updated_us or now_us()
    snap.last_message_us = snap.updated_us
    snap.connected = int(state is FeedState.CONNECTED)
    return snap


def write(r: Any, keys: Keys, kind: FeedEvent | None, snap: FeedSnapshot,
          **fields: Any) -> str | None:
    """A status event (if ``kind``) and the feed's state after it, as a feed
    writes them; the event's entry ID."""
    pipe = r.pipeline(transaction=True)
    if kind is not None:
        field, value = encode_status(FeedStatus(snap.feed, kind, now_us(), **fields))
        pipe.xadd(keys.feed_status(), {field: value})
    pipe.hset(keys.feed_states(), snap.feed, encode_state(snap))
    replies = pipe.execute()
    return replies[0].decode() if kind is not None else None


def events_in(msg: dict[str, Any]) -> list[dict[str, Any]]:
    return list(msg.get("status", ()))


async def status_events(ws: Any, want: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Status events from ``status`` frames (and snapshots) until ``want`` came."""
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(out) < want:
        msg = await recv_json(ws, max(deadline - loop.time(), 0.01))
        assert msg["type"] in ("status", "snapshot"), msg
        out.extend(events_in(msg))
    return out


# --- the protocol (pure) ---------------------------------------------------------------------


def test_status_is_subscribed_without_symbols_and_resumed_under_feeds() -> None:
    cmd = p.parse_message('{"op": "subscribe", "channels": ["status"], "req": 1}',
                          max_symbols=5)
    assert isinstance(cmd, p.Subscribe)
    assert cmd.symbols == () and cmd.pairs == [p.STATUS_PAIR] and cmd.stream_names == ["feeds"]
    cmd = p.parse_message(subscribe_message(
        ["AAPL"], ["trades", "status"],
        resume={"AAPL": {"trades": "5-0"}, "feeds": {"status": "7", "epoch": "abc"}}),
        max_symbols=5)
    assert isinstance(cmd, p.Subscribe)
    assert cmd.pairs == [("AAPL", Channel.TRADES), ("feeds", p.STATUS)]
    assert cmd.resume == {("AAPL", Channel.TRADES): "5-0", ("feeds", p.STATUS): "7-0"}
    assert cmd.epochs == {"feeds": "abc"}
    gone = p.parse_message('{"op": "unsubscribe", "channels": ["status"]}', max_symbols=5)
    assert isinstance(gone, p.Unsubscribe) and gone.channels == (p.STATUS,)
    # Without channels an unsubscribe means a symbol's channels, never status.
    gone = p.parse_message('{"op": "unsubscribe", "symbols": ["AAPL"]}', max_symbols=5)
    assert isinstance(gone, p.Unsubscribe) and p.STATUS not in gone.channels


@pytest.mark.parametrize("message, code", [
    # Symbols with the status channel alone: status has none.
    (subscribe_message(["AAPL"], ["status"]), p.BAD_MESSAGE),
    # A symbol channel still needs symbols.
    ('{"op": "subscribe", "channels": ["trades", "status"]}', p.BAD_MESSAGE),
    # The status cursor goes under "feeds", and nothing else does.
    (subscribe_message(["AAPL"], ["trades", "status"], resume={"AAPL": {"status": "1-0"}}),
     p.BAD_MESSAGE),
    (subscribe_message(["AAPL"], ["trades", "status"], resume={"feeds": {"trades": "1-0"}}),
     p.BAD_MESSAGE),
    # "feeds" in resume without the status channel.
    (subscribe_message(["AAPL"], ["trades"], resume={"feeds": {"status": "1-0"}}),
     p.BAD_MESSAGE),
    ('{"op": "subscribe", "channels": ["status"], "resume": {"feeds": {"status": "x"}}}',
     p.INVALID_CURSOR),
    (subscribe_message(["AAPL"], ["statuses"]), p.UNKNOWN_CHANNEL),
])
def test_status_requests_that_are_refused(message: str, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        p.parse_message(message, max_symbols=5)
    assert caught.value.code == code, caught.value
    if code == p.UNKNOWN_CHANNEL:
        assert "status" in str(caught.value)


def test_status_entries_frames_and_hello() -> None:
    status = FeedStatus(FEED, FeedEvent.GAP_DETECTED, 1_767_323_045_000_000, "BINANCE:BTCUSDT",
                        11, 12)
    field, value = encode_status(status)
    encoded = p.encode_entry(p.STATUS, p.FEEDS, {field: value}, "9-0")
    assert codec.decode_json(encoded) == status_dict(status, "9-0")
    with pytest.raises(ValueError):
        p.encode_entry(p.STATUS, p.FEEDS, {b"t": b"nonsense"}, "9-1")
    frame = codec.decode_json(p.data_frame(p.STATUS, [encoded]))
    assert frame == {"type": "status", "status": [status_dict(status, "9-0")]}
    conflated = codec.decode_json(p.conflated_status_frame([encoded],
                                                           [p.Gap(p.FEEDS, "3-0", "9-0")]))
    assert conflated["conflated"] is True and conflated["status"][0]["id"] == "9-0"
    assert conflated["gaps"] == [{"symbol": "feeds", "after": "3-0", "until": "9-0"}]
    snapshot = codec.decode_json(p.snapshot_frame({p.STATUS: [encoded]}, epochs={"feeds": "e"},
                                                  feeds=[{"feed": FEED}]))
    assert snapshot == {"type": "snapshot", "epochs": {"feeds": "e"},
                        "status": [status_dict(status, "9-0")], "feeds": [{"feed": FEED}]}
    hello = codec.decode_json(p.hello(auth_required=False, limits={}))
    assert hello["channels"] == ["trades", "quotes", "bars.1m", "status"]


# --- the server ------------------------------------------------------------------------------


def test_subscribe_gets_every_feeds_state_then_live_events(
        redis_settings: RedisSettings, r: redis.Redis, keys: Keys) -> None:
    connected = snapshot_of()
    write(r, keys, FeedEvent.CONNECTED, connected, connection=0)
    # A feed whose process is gone: its state stopped being rewritten.
    gone = snapshot_of("coinbase-ws", updated_us=now_us() - 600_000_000)
    write(r, keys, FeedEvent.CONNECTED, gone, connection=0)
    gap = write(r, keys, FeedEvent.GAP_DETECTED, connected, symbol="BINANCE:BTCUSDT",
                first_id=11, last_id=12)
    r.hset(keys.feed_states(), "broken", "{not json")

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            assert "status" in (await recv_json(ws))["channels"]
            await ws.send('{"op": "subscribe", "channels": ["status"], "req": 1}')
            ack = await recv_type(ws, "subscribed")
            epoch = streams.epoch(r, keys.feed_status())
            assert ack == {"type": "subscribed", "symbols": [], "channels": ["status"],
                           "epochs": {"feeds": epoch}, "req": 1}
            snap = await recv_type(ws, "snapshot")
            assert snap["epochs"] == {"feeds": epoch}
            assert [e["id"] for e in snap["status"]] == [gap]  # the newest event
            feeds = {f["feed"]: f for f in snap["feeds"]}
            assert sorted(feeds) == ["binance-ws", "coinbase-ws"]  # the unreadable one left out
            live_feed = feeds["binance-ws"]
            assert live_feed["state"] == "connected" and live_feed["stale_reason"] is None
            assert live_feed["counts"]["messages"] == 0 and live_feed["venue"] == "binance"
            assert live_feed["open_gaps"] == [{
                "symbol": "BINANCE:BTCUSDT", "first_id": 11, "last_id": 12, "id": gap,
                "since_us": live_feed["open_gaps"][0]["since_us"],
                "since": live_feed["open_gaps"][0]["since"]}]
            assert feeds["coinbase-ws"]["state"] == "stale"
            assert feeds["coinbase-ws"]["stale_reason"] == "no_update"
            assert feeds["coinbase-ws"]["reported_state"] == "connected"
            # Live: each event once, in order, as status frames.
            await until(lambda: not any(s._catching for s in server.sessions))
            connected.state = FeedState.DISCONNECTED
            more = [write(r, keys, FeedEvent.GAP_REPAIRED, connected, symbol="BINANCE:BTCUSDT",
                          first_id=11, last_id=12, trades=2),
                    write(r, keys, FeedEvent.DISCONNECTED, connected, reason="closed",
                          connection=0)]
            got = await status_events(ws, 2)
            assert [e["id"] for e in got] == more
            assert [e["kind"] for e in got] == ["gap_repaired", "disconnected"]
            assert got[0]["trades"] == 2 and got[1]["reason"] == "closed"
            assert got[1]["feed"] == FEED and got[1]["connection"] == 0
            # Unsubscribed: nothing more.
            await ws.send('{"op": "unsubscribe", "channels": ["status"], "req": 2}')
            assert await recv_type(ws, "unsubscribed") == {
                "type": "unsubscribed", "symbols": [], "channels": ["status"], "req": 2}
            write(r, keys, FeedEvent.CONNECTED, connected, connection=0)
            await ws.send('{"op": "ping", "req": 3}')
            assert (await recv_json(ws))["type"] == "pong"  # no status frame before it

    asyncio.run(scenario())


def test_status_resumes_by_entry_id_and_alongside_a_symbols_trades(
        redis_settings: RedisSettings, r: redis.Redis, keys: Keys) -> None:
    snap = snapshot_of()
    written = [write(r, keys, FeedEvent.CONNECTED, snap, connection=0),
               write(r, keys, FeedEvent.STALE, snap, reason="quotes", connection=0)]
    trades = publish(r, keys, "AAPL", 3)

    async def scenario() -> None:
        # One symbol per connection: the status stream is none.
        async with running_server(redis_settings, max_symbols=1) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with connect(url) as ws:
                await recv_json(ws)
                await ws.send(subscribe_message(["AAPL"], ["trades", "status"], snapshot=False,
                                                req=1))
                ack = await recv_type(ws, "subscribed")
                epoch = ack["epochs"]["feeds"]
                assert set(ack["epochs"]) == {"AAPL", "feeds"}
                assert ack["channels"] == ["trades", "status"]
                await until(lambda: not any(s._catching for s in server.sessions))
                # Live, both pairs: the trade and the status event, each in its frame.
                new_trade = publish(r, keys, "AAPL", 1, start=3)
                seen = write(r, keys, FeedEvent.DISCONNECTED, snap, reason="silent",
                             connection=0)
                frames: dict[str, list[str]] = {"trades": [], "status": []}
                while len(frames["trades"]) < 1 or len(frames["status"]) < 1:
                    msg = await recv_json(ws)
                    frames[msg["type"]].extend(e["id"] for e in msg[msg["type"]])
                assert frames == {"trades": new_trade, "status": [seen]}
            # Away: two more events. Back: exactly those, replayed, then live.
            missed = [write(r, keys, FeedEvent.CONNECTED, snap, connection=0),
                      write(r, keys, FeedEvent.GAP_DETECTED, snap, symbol="BINANCE:BTCUSDT",
                            first_id=5, last_id=None)]
            async with connect(url) as ws:
                await recv_json(ws)
                await ws.send(subscribe_message(
                    [], ["status"], resume={"feeds": {"status": seen, "epoch": epoch}}))
                await recv_type(ws, "subscribed")
                replay = await recv_json(ws)
                assert replay["type"] == "status" and replay["replay"] is True
                assert [e["id"] for e in replay["status"]] == missed
                assert replay["status"][1]["last_id"] is None
                await until(lambda: not any(s._catching for s in server.sessions))
                after = write(r, keys, FeedEvent.GAP_REPAIRED, snap, symbol="BINANCE:BTCUSDT",
                              first_id=5, last_id=9, trades=5)
                assert [e["id"] for e in await status_events(ws, 1)] == [after]
                # "0-0": the whole stream, in order.
                await ws.send(subscribe_message([], ["status"]))  # already subscribed: no-op
                await recv_type(ws, "subscribed")
            async with connect(url) as ws:
                await recv_json(ws)
                await ws.send(subscribe_message([], ["status"], resume={"feeds": {"status": "0"}}))
                await recv_type(ws, "subscribed")
                got = await status_events(ws, 6)
                assert [e["id"] for e in got] == [*written, seen, *missed, after]
            assert trades

    asyncio.run(scenario())


def test_a_trimmed_status_stream_is_unrecoverable_then_a_snapshot(
        redis_settings: RedisSettings, r: redis.Redis, keys: Keys) -> None:
    snap = snapshot_of()
    old = [write(r, keys, FeedEvent.CONNECTED, snap, connection=i) for i in range(5)]
    # As the feeds trim it (MAXLEN ~ leaves no record of what went).
    r.xtrim(keys.feed_status(), maxlen=2, approximate=False)

    async def scenario() -> None:
        async with running_server(redis_settings) as server, \
                connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await recv_json(ws)
            await ws.send(subscribe_message([], ["status"],
                                            resume={"feeds": {"status": old[0]}}))
            await recv_type(ws, "subscribed")
            lost = await recv_json(ws)
            assert lost["type"] == "unrecoverable" and lost["symbol"] == "feeds"
            assert lost["channel"] == "status" and lost["reason"] == "trimmed"
            assert lost["after"] == old[0] and lost["first_id"] == old[3]
            snap_msg = await recv_type(ws, "snapshot")
            assert [e["id"] for e in snap_msg["status"]] == [old[4]]
            assert [f["feed"] for f in snap_msg["feeds"]] == [FEED]

    asyncio.run(scenario())


def test_a_client_behind_gets_every_status_event_or_a_named_gap(
        redis_settings: RedisSettings, r: redis.Redis, keys: Keys) -> None:
    """A stalled reader while 2,000 events arrive: the events it could not be
    sent are held, the oldest beyond 1,000 skipped, and the frame that ends
    the spell names the skipped range; with the rest, the client has every
    event once, in order, or knows which it lacks."""
    snap = snapshot_of()
    padding = "x" * 400  # big events fill the send buffer sooner

    async def scenario() -> None:
        async with running_server(redis_settings, **SLOW) as server:
            # The client library reads ahead too: one frame at most.
            ws = await subscribed(server.port, [], ["status"], small_window=True, max_queue=1)
            await until(lambda: not any(s._catching for s in server.sessions))
            session = next(iter(server.sessions))
            ids: list[str] = []
            for _ in range(40):
                pipe = r.pipeline(transaction=False)
                for _ in range(50):
                    field, value = encode_status(FeedStatus(FEED, FeedEvent.STALE, now_us(),
                                                            reason=padding))
                    pipe.xadd(keys.feed_status(), {field: value})
                ids.extend(entry.decode() for entry in pipe.execute())
                await asyncio.sleep(0.01)
            # Everything was read and either written or held for the client.
            await until(lambda: session.behind and bool(session._held_status)
                        and session._held_status[-1][1] == ids[-1], timeout_s=30)
            got: list[str] = []
            gaps: list[dict[str, str]] = []
            while ids[-1] not in got:
                msg = await recv_json(ws, 20)
                assert msg["type"] == "status", msg
                got.extend(e["id"] for e in msg["status"])
                gaps.extend(msg.get("gaps", ()))
                assert bool(msg.get("gaps")) == bool(msg.get("conflated"))
            await ws.close()
            assert len(got) == len(set(got)) and got == sorted(got, key=p.id_key)
            skipped = [i for i in ids if i not in got]
            # Whatever was not sent lies inside a named gap, and only that.
            assert skipped, "the reader never fell behind enough to skip"
            assert len(gaps) == 1 and gaps[0]["symbol"] == "feeds"
            lo, hi = p.id_key(gaps[0]["after"]), p.id_key(gaps[0]["until"])
            assert skipped == [i for i in ids if lo < p.id_key(i) < hi]
            assert snap.feed == FEED

    asyncio.run(scenario())


def test_the_status_channel_on_a_cluster(redis_cluster: list[RedisServer]) -> None:
    """The status stream's ``{feeds}`` slot lives on one master, the symbols'
    on others: one request subscribes both, each read where it lives, with
    the epoch of its own node; the snapshot's feed states come from the
    status stream's node."""
    keys = Keys("pp", 8)
    settings = RedisSettings(url=redis_cluster[0].url, cluster=True, prefix="pp", shards=8)
    cluster: Any = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    symbols = ["AAPL", "MSFT", "GOOG", "AMZN"]
    try:
        streams.register_symbols(cluster, keys, symbols)
        snap = snapshot_of()
        first = write(cluster, keys, FeedEvent.CONNECTED, snap, connection=0)
        feeds_epoch = streams.epoch(cluster, keys.feed_status())
        nodes = {cluster.get_node_from_key(keys.trades(s)).port for s in symbols}
        nodes.add(cluster.get_node_from_key(keys.feed_status()).port)
        assert len(nodes) >= 2

        async def scenario() -> None:
            async with running_server(settings) as server, \
                    connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                await recv_json(ws)
                await ws.send(subscribe_message(symbols, ["trades", "status"]))
                ack = await recv_type(ws, "subscribed")
                assert ack["epochs"]["feeds"] == feeds_epoch
                snap_msg = await recv_type(ws, "snapshot")
                assert [e["id"] for e in snap_msg["status"]] == [first]
                assert [f["feed"] for f in snap_msg["feeds"]] == [FEED]
                await until(lambda: not any(s._catching for s in server.sessions))
                new_trades = await asyncio.to_thread(lambda: [
                    i.decode() for i in streams.append_events(
                        cluster, keys, [trade(s, 10) for s in symbols])])
                event = await asyncio.to_thread(lambda: write(
                    cluster, keys, FeedEvent.DISCONNECTED, snap, reason="closed", connection=0))
                got: dict[str, list[str]] = {"trades": [], "status": []}
                while len(got["trades"]) < len(symbols) or not got["status"]:
                    msg = await recv_json(ws)
                    got[msg["type"]].extend(e["id"] for e in msg[msg["type"]])
                assert sorted(got["trades"]) == sorted(new_trades) and got["status"] == [event]
                assert server.health()["redis"] is True

        asyncio.run(scenario())
    finally:
        cluster.close()
