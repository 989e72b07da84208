"""Stream layout, appending and trimming, on a real Redis (appends run a
Lua script, which fakeredis would need lupa for)."""

import time
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


def trim(r: Any, keys: Keys, stream: str, *, window_ms: int) -> int:
    return streams.trim_stream(r, keys, stream, window_ms=window_ms, max_age_ms=None,
                               persisted=True)


def test_trim_never_passes_unacknowledged_entries(r: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(r, keys, ["AAPL"])
    stream = keys.trades("AAPL")
    ids = streams.append_events(r, keys, [Trade("AAPL", TS + i, 1.0 + i, 1.0)
                                          for i in range(300)])
    # Window 0 would trim everything; only acknowledged entries may go.
    assert trim(r, keys, stream, window_ms=0) == 0  # nothing delivered yet
    got = r.xreadgroup(PERSIST_GROUP, "c1", {stream: ">"}, count=250)
    delivered = [eid for eid, _ in got[0][1]]
    r.xack(stream, PERSIST_GROUP, *delivered[:200])
    trim(r, keys, stream, window_ms=0)
    remaining = [eid for eid, _ in r.xrange(stream)]
    assert set(ids[200:]) <= set(remaining)  # pending 200..249 and undelivered kept
    r.xack(stream, PERSIST_GROUP, *delivered[200:])
    r.xreadgroup(PERSIST_GROUP, "c1", {stream: ">"})  # deliver the rest...
    trim(r, keys, stream, window_ms=0)
    assert set(ids[250:]) <= {eid for eid, _ in r.xrange(stream)}  # ...but not acked yet
    # A long window keeps even acknowledged entries.
    assert trim(r, keys, stream, window_ms=3_600_000) == 0


def test_trim_floor_keeps_what_any_group_needs_up_to_the_cap() -> None:
    now = 10_000_000
    floor = streams.trim_floor
    # The window alone.
    assert floor({"persist": "9999999-0"}, now_ms_=now, window_ms=1000, max_age_ms=None,
                 persisted=True) == "9999000-0"
    # The persist group behind the window holds the floor, whatever the cap.
    assert floor({"persist": "5-3"}, now_ms_=now, window_ms=1000, max_age_ms=10,
                 persisted=True) == "5-3"
    # A strategy group behind holds it too, but only back to the cap.
    groups = {"persist": "9999999-0", "strategy": "7000000-1"}
    assert floor(groups, now_ms_=now, window_ms=1000, max_age_ms=None,
                 persisted=True) == "7000000-1"
    assert floor(groups, now_ms_=now, window_ms=1000, max_age_ms=2_000_000,
                 persisted=True) == "8000000-0"
    # No persist group on a persisted stream: nothing is known to be safe.
    assert floor({"strategy": "1-0"}, now_ms_=now, window_ms=1000, max_age_ms=None,
                 persisted=True) is None
    # A stream nobody persists (bars): the window and its readers' groups.
    assert floor({}, now_ms_=now, window_ms=1000, max_age_ms=None,
                 persisted=False) == "9999000-0"


def test_trimming_waits_for_every_group_and_records_what_it_removed(r: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(r, keys, ["AAPL"])
    stream = keys.trades("AAPL")
    ids = [i.decode() for i in streams.append_events(
        r, keys, [Trade("AAPL", TS + i, 1.0 + i, 1.0) for i in range(10)])]
    streams.ensure_group(r, stream, "strategy", "0")
    r.xreadgroup(PERSIST_GROUP, "w", {stream: ">"})
    r.xack(stream, PERSIST_GROUP, *ids)  # persisted: only the strategy holds them now
    time.sleep(0.005)  # a window of 0 ms keeps what was appended this millisecond
    def trim() -> int:
        return streams.trim_stream(r, keys, stream, window_ms=0, max_age_ms=None,
                                   persisted=True)

    assert trim() == 0
    assert streams.trimmed_since(r, keys, stream, "0-0") is None
    got = r.xreadgroup("strategy", "s", {stream: ">"}, count=4)
    r.xack(stream, "strategy", *[e for e, _ in got[0][1]])
    assert trim() == 4
    assert [e.decode() for e, _ in r.xrange(stream)] == ids[4:]
    # A reader at the 3rd entry missed the 4th; one at the 4th missed nothing.
    assert streams.trimmed_since(r, keys, stream, ids[2]) == ids[3]
    assert streams.trimmed_since(r, keys, stream, ids[3]) is None
    # The hard cap passes a stopped strategy group; the record says so.
    assert streams.trim_stream(r, keys, stream, window_ms=0, max_age_ms=0,
                               persisted=True) == 6
    assert streams.trimmed_since(r, keys, stream, ids[5]) == ids[9]


def test_replies_of_either_protocol_read_the_same() -> None:
    resp2 = [[b"k", [(b"1-0", {b"t": b"x"})]]]
    resp3 = {b"k": [(b"1-0", {b"t": b"x"})]}
    assert [tuple(p) for p in streams.reply_streams(resp2)] == list(streams.reply_streams(resp3))
    assert list(streams.reply_streams(None)) == [] == list(streams.reply_streams({}))


def test_the_epoch_changes_when_the_server_restarts(make_redis_server: Any) -> None:
    server = make_redis_server()
    client = redis.Redis.from_url(server.url)
    try:
        first = streams.epoch(client, "pp:{s1}:trades:AAPL")
        assert first == streams.epoch(client, "pp:{s2}:quotes:MSFT")  # one server
        server.restart()
        assert streams.epoch(client, "pp:{s1}:trades:AAPL") != first
    finally:
        client.close()


def test_a_group_the_cap_passes_gets_its_gap_reported_once(r: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(r, keys, ["AAPL"])
    stream = keys.trades("AAPL")
    streams.ensure_group(r, stream, "strategy", "0")
    ids = [i.decode() for i in streams.append_events(
        r, keys, [Trade("AAPL", TS + i, 1.0 + i, 1.0) for i in range(6)])]
    r.xreadgroup(PERSIST_GROUP, "w", {stream: ">"})
    r.xack(stream, PERSIST_GROUP, *ids)
    got = r.xreadgroup("strategy", "s", {stream: ">"}, count=2)
    r.xack(stream, "strategy", *[e for e, _ in got[0][1]])  # the strategy had 2 of 6
    time.sleep(0.005)  # a window of 0 ms keeps what was appended this millisecond
    assert streams.trim_stream(r, keys, stream, window_ms=0, max_age_ms=0,
                               persisted=True) == 6
    shard = keys.shard("AAPL")
    field = streams.group_gap_field(stream, "strategy")
    take = [keys.group_gaps(shard)], [field]
    first = streams.parse_group_gaps(streams.run_script(r, streams.TAKE_SCRIPT, *take))
    after, until = first[stream]
    assert after == ids[1]  # the last one it had
    assert codec.parse_entry_id(until) > codec.parse_entry_id(ids[5])
    assert streams.parse_group_gaps(streams.run_script(r, streams.TAKE_SCRIPT, *take)) == {}


@pytest.mark.parametrize(("entry_id", "before"), [
    ("5-3", "5-2"), ("5-0", f"4-{codec.SEQ_MAX}"), ("0-0", "0-0")])
def test_prev_id(entry_id: str, before: str) -> None:
    assert streams.prev_id(entry_id) == before
    codec.pack_entry_id(before)  # a gap's bound packs like an entry ID
