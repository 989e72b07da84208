"""Feed status as data (core): the status event and state formats phase B's
readers rely on, the keys they live under, and the source registry on a
real Redis."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pricepipe import sources
from pricepipe.exceptions import DecodeError
from pricepipe.feedstatus import (
    COUNTS,
    F_STATUS,
    FeedEvent,
    FeedSnapshot,
    FeedState,
    FeedStatus,
    decode_state,
    decode_status,
    encode_state,
    encode_status,
    status_dict,
)
from pricepipe.keys import Keys

TS_US = 1_767_323_045_000_000


def test_status_events_round_trip_with_every_key_present() -> None:
    status = FeedStatus("binance-ws", FeedEvent.GAP_UNREPAIRABLE, TS_US, "BINANCE:BTCUSDT",
                        1001, 1004, None, "not_served", 0)
    field, value = encode_status(status)
    assert field == F_STATUS
    assert orjson.loads(value) == {
        "feed": "binance-ws", "kind": "gap_unrepairable", "ts_us": TS_US,
        "ts": "2026-01-02T03:04:05.000000Z", "symbol": "BINANCE:BTCUSDT", "first_id": 1001,
        "last_id": 1004, "trades": None, "reason": "not_served", "connection": 0}
    assert decode_status({field: value}) == status
    assert decode_status([field, value]) == status  # redis-py's flat list
    assert status_dict(status, "1-0")["id"] == "1-0"
    assert FeedStatus("f", "connected", TS_US).kind is FeedEvent.CONNECTED  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [
    b"not json", b'{"kind": "connected"}', b'{"feed": "f", "kind": "exploded", "ts_us": 1}',
    b'{"feed": "f", "kind": "connected", "ts_us": "now"}',
    b'{"feed": "f", "kind": "connected", "ts_us": 5}',
    b'{"feed": "f", "kind": "gap_detected", "ts_us": 1767323045000000, "first_id": "1"}',
])
def test_bad_status_entries_raise_decode_errors(value: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_status({F_STATUS: value})
    with pytest.raises(DecodeError):
        decode_status({b"x": value})


def test_feed_state_round_trips() -> None:
    snapshot = FeedSnapshot("coinbase-ws", "coinbase-ws", "coinbase", ["COINBASE:BTC-USD"], 1)
    snapshot.state, snapshot.since_us, snapshot.connected = FeedState.CONNECTED, TS_US, 1
    snapshot.counts["trades"] = 7
    state = decode_state(encode_state(snapshot))
    assert state["state"] == "connected" and state["counts"]["trades"] == 7
    assert set(state["counts"]) == set(COUNTS)
    assert set(state) == {"feed", "source", "venue", "state", "since_us", "last_message_us",
                          "updated_us", "connections", "connected", "symbols", "counts"}
    for bad in (b"[]", b'{"feed": "f", "state": "on fire", "counts": {}}',
                b'{"feed": "f", "state": "connected"}'):
        with pytest.raises(DecodeError):
            decode_state(bad)


def test_feed_keys_share_a_hash_tag() -> None:
    keys = Keys("pp", 8)
    assert keys.feed_status() == "pp:{feeds}:status" and keys.feed_states() == "pp:{feeds}:state"
    assert keys.sources() == "pp:sources"
    assert keys.feed_status().startswith(keys.all_pattern()[:-1])


def test_the_source_registry_records_the_first_source_and_refuses_others(
        r: Any, keys: Keys) -> None:
    assert sources.claim(r, keys, ["BINANCE:BTCUSDT", "AAPL"], "binance-ws") == {}
    assert sources.source_of(r, keys, "AAPL") == "binance-ws"
    assert sources.claim(r, keys, ["AAPL"], "binance-ws") == {}  # a restart: fine
    conflicts = sources.claim(r, keys, ["AAPL", "MSFT"], "gbm")
    assert conflicts == {"AAPL": "binance-ws"}
    assert sources.source_of(r, keys, "MSFT") is None  # refused: nothing recorded
    assert sources.claim(r, keys, ["AAPL", "MSFT"], "gbm", force=True) == {"AAPL": "binance-ws"}
    assert sources.source_of(r, keys, "AAPL") == sources.source_of(r, keys, "MSFT") == "gbm"
    assert sources.claim(r, keys, [], "gbm") == {}
