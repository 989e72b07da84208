"""Stream layout and trimming. Pure stream logic runs on fakeredis; the
MINID trimming safety is checked on the real server too."""

from typing import Any

import fakeredis
import pytest

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


@pytest.fixture
def fake() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_register_then_append_then_read_back(fake: Any) -> None:
    keys = Keys("pp", 4)
    streams.register_symbols(fake, keys, ["AAPL", "MSFT"])
    assert streams.known_symbols(fake, keys) == ["AAPL", "MSFT"]
    ticks = [Tick("AAPL", TS + i, 100.0 + i, None, "gbm") for i in range(3)]
    ids = streams.append_ticks(fake, keys, ticks)
    assert len(ids) == 3
    entry_id, last = streams.last_tick(fake, keys, "AAPL")  # type: ignore[misc]
    assert last == ticks[-1] and entry_id == ids[-1].decode()
    # The persist group existed before the first XADD: it sees all three.
    got = fake.xreadgroup(PERSIST_GROUP, "c1", {keys.stream("AAPL"): ">"})
    assert [codec.decode_fields(f) for _, f in got[0][1]] == ticks


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
