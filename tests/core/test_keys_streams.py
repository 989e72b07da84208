"""Stream layout, appending and trimming, on a real Redis (appends run a
Lua script, which fakeredis would need lupa for)."""

from typing import Any

import pytest
import redis

from pricepipe import codec, streams
from pricepipe.events import Quote, Side, Trade
from pricepipe.keys import PERSIST_GROUP, Channel, Keys

TS = 1_767_323_045_000_000


def test_keys_share_a_hash_slot_per_shard() -> None:
    from redis.crc import key_slot

    keys = Keys("pp", 8)
    for symbol in ["AAPL", "MSFT", "BTC-USD", "ETHUSDT"]:
        shard = keys.shard(symbol)
        slots = {key_slot(k.encode()) for k in
                 (keys.trades(symbol), keys.quotes(symbol), keys.bars(symbol),
                  keys.bar_state(symbol), keys.symbols(shard), keys.dead_letters(shard))}
        assert len(slots) == 1
        for channel in Channel:
            assert keys.parse_stream(keys.stream(symbol, channel)) == (channel, symbol)
    # Venue-qualified symbols hold a colon; the key still parses.
    assert keys.parse_stream(keys.trades("BINANCE:BTCUSDT")) == (Channel.TRADES,
                                                                 "BINANCE:BTCUSDT")
    with pytest.raises(ValueError):
        keys.parse_stream("other:{s1}:trades:AAPL")
    grouped = keys.by_shard(["AAPL", "MSFT", "BTC-USD"])
    for shard, group in grouped.items():
        assert {keys.shard(s) for s in group} == {shard}


def events_of(symbols: tuple[str, ...], n: int) -> list[Trade | Quote]:
    out: list[Trade | Quote] = []
    for i in range(n):
        for symbol in symbols:
            out.append(Quote(symbol, TS + i, 99.0 + i, 1.0, 100.0 + i, 2.0, "gbm"))
            out.append(Trade(symbol, TS + i, 100.0 + i, 1.0, "gbm", f"{i}", Side.BUY))
    return out


def test_register_then_append_then_read_back(r: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(r, keys, ["AAPL", "MSFT", "BRK.B"])
    assert streams.known_symbols(r, keys) == ["AAPL", "BRK.B", "MSFT"]
    events = events_of(("AAPL", "MSFT", "BRK.B"), 3)
    ids = streams.append_events(r, keys, events)
    assert len(ids) == len(events)
    entry_id, last = streams.last_event(r, keys, "AAPL", Channel.QUOTES)  # type: ignore[misc]
    assert last == events[-6] and entry_id == ids[-6].decode()
    # The persist groups existed before the first XADD: each stream's group sees
    # every event of its kind, in order; a reader of quotes never sees a trade.
    for symbol in ("AAPL", "MSFT", "BRK.B"):
        for channel in (Channel.TRADES, Channel.QUOTES):
            got = r.xreadgroup(PERSIST_GROUP, "c1", {keys.stream(symbol, channel): ">"})
            want = [(i.decode(), e) for i, e in zip(ids, events, strict=True)
                    if e.symbol == symbol and codec.channel_of(e) is channel]
            assert [(eid.decode(), codec.decode_entry(channel, symbol, f))
                    for eid, f in got[0][1]] == want


def test_append_survives_a_script_cache_flush(r: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(r, keys, ["AAPL"])
    streams.append_events(r, keys, [Trade("AAPL", TS, 1.0, 1.0)])
    r.script_flush()  # as after a Redis restart: NOSCRIPT, then loaded again
    ids = streams.append_events(r, keys, [Trade("AAPL", TS + 1, 2.0, 1.0)])
    assert r.xlen(keys.trades("AAPL")) == 2 and ids[0] == r.xrevrange(
        keys.trades("AAPL"), count=1)[0][0]


def test_a_refused_shard_is_reported_per_event(r: Any) -> None:
    keys = Keys("pp", 4)
    r.set(keys.trades("AAPL"), "not a stream")  # XADD fails: WRONGTYPE
    events = [Trade("AAPL", TS, 1.0, 1.0), Trade("MSFT", TS, 2.0, 1.0)]
    got = streams.append_events(r, keys, events, raise_on_error=False)
    assert isinstance(got[0], redis.ResponseError) and isinstance(got[1], bytes)
    with pytest.raises(redis.ResponseError):
        streams.append_events(r, keys, events)


def test_trim_never_passes_unacknowledged_entries(r: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(r, keys, ["AAPL"])
    stream = keys.trades("AAPL")
    ids = streams.append_events(r, keys, [Trade("AAPL", TS + i, 1.0 + i, 1.0)
                                          for i in range(300)])
    # Window 0 would trim everything; only acknowledged entries may go.
    assert streams.trim_persisted(r, stream, window_ms=0) == 0  # nothing delivered yet
    got = r.xreadgroup(PERSIST_GROUP, "c1", {stream: ">"}, count=250)
    delivered = [eid for eid, _ in got[0][1]]
    r.xack(stream, PERSIST_GROUP, *delivered[:200])
    streams.trim_persisted(r, stream, window_ms=0)
    remaining = [eid for eid, _ in r.xrange(stream)]
    assert set(ids[200:]) <= set(remaining)  # pending 200..249 and undelivered kept
    r.xack(stream, PERSIST_GROUP, *delivered[200:])
    r.xreadgroup(PERSIST_GROUP, "c1", {stream: ">"})  # deliver the rest...
    streams.trim_persisted(r, stream, window_ms=0)
    assert set(ids[250:]) <= {eid for eid, _ in r.xrange(stream)}  # ...but not acked yet
    # A long window keeps even acknowledged entries.
    assert streams.trim_persisted(r, stream, window_ms=3_600_000) == 0
