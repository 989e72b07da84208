"""Stream layout, appending and trimming, on a real Redis (appends run a
Lua script, which fakeredis would need lupa for)."""

from typing import Any

import pytest
import redis

from pricepipe import codec, streams
from pricepipe.keys import PERSIST_GROUP, Keys
from pricepipe.tick import Tick

TS = 1_767_323_045_000_000


def test_keys_share_a_hash_slot_per_shard() -> None:
    from redis.crc import key_slot

    keys = Keys("pp", 8)
    for symbol in ["AAPL", "MSFT", "BTC-USD", "ETHUSDT"]:
        shard = keys.shard(symbol)
        slots = {key_slot(k.encode()) for k in
                 (keys.stream(symbol), keys.symbols(shard), keys.dead_letters(shard))}
        assert len(slots) == 1
        assert keys.symbol_of(keys.stream(symbol)) == symbol
    grouped = keys.by_shard(["AAPL", "MSFT", "BTC-USD"])
    for shard, group in grouped.items():
        assert {keys.shard(s) for s in group} == {shard}


def test_register_then_append_then_read_back(r: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(r, keys, ["AAPL", "MSFT", "BRK.B"])
    assert streams.known_symbols(r, keys) == ["AAPL", "BRK.B", "MSFT"]
    ticks = [Tick(symbol, TS + i, 100.0 + i, None, "gbm")
             for i in range(3) for symbol in ("AAPL", "MSFT", "BRK.B")]
    ids = streams.append_ticks(r, keys, ticks)
    assert len(ids) == 9
    entry_id, last = streams.last_tick(r, keys, "AAPL")  # type: ignore[misc]
    assert last == ticks[-3] and entry_id == ids[-3].decode()
    # The persist group existed before the first XADD: it sees every tick, in order.
    for symbol in ("AAPL", "MSFT", "BRK.B"):
        got = r.xreadgroup(PERSIST_GROUP, "c1", {keys.stream(symbol): ">"})
        want = [(i.decode(), t) for i, t in zip(ids, ticks, strict=True) if t.symbol == symbol]
        assert [(eid.decode(), codec.decode_fields(f)) for eid, f in got[0][1]] == want


def test_append_survives_a_script_cache_flush(r: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(r, keys, ["AAPL"])
    streams.append_ticks(r, keys, [Tick("AAPL", TS, 1.0)])
    r.script_flush()  # as after a Redis restart: NOSCRIPT, then loaded again
    ids = streams.append_ticks(r, keys, [Tick("AAPL", TS + 1, 2.0)])
    assert r.xlen(keys.stream("AAPL")) == 2 and ids[0] == r.xrevrange(
        keys.stream("AAPL"), count=1)[0][0]


def test_a_refused_shard_is_reported_per_tick(r: Any) -> None:
    keys = Keys("pp", 4)
    r.set(keys.stream("AAPL"), "not a stream")  # XADD fails: WRONGTYPE
    ticks = [Tick("AAPL", TS, 1.0), Tick("MSFT", TS, 2.0)]
    got = streams.append_ticks(r, keys, ticks, raise_on_error=False)
    assert isinstance(got[0], redis.ResponseError) and isinstance(got[1], bytes)
    with pytest.raises(redis.ResponseError):
        streams.append_ticks(r, keys, ticks)


def test_trim_never_passes_unacknowledged_entries(r: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(r, keys, ["AAPL"])
    stream = keys.stream("AAPL")
    ids = streams.append_ticks(r, keys, [Tick("AAPL", TS + i, 1.0 + i) for i in range(300)])
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
