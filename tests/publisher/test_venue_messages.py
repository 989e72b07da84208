"""The venue parsers (core: pricepipe.venues) on each venue's documented
messages and answers (fixtures), and on what a venue must never be trusted
with: malformed JSON, missing fields, wrong types, kinds nobody asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pricepipe.clock import parse_time_us
from pricepipe.events import Side
from pricepipe.exceptions import BadResponseError, ConfigError
from pricepipe.venues import binance, coinbase, resolve, same_trade_ids
from pricepipe.venues.messages import (
    Candle,
    Heartbeat,
    Refused,
    Shutdown,
    Subscribed,
    Unknown,
    VenueQuote,
    VenueTrade,
)

FIXTURES = Path(__file__).parent / "fixtures"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def loaded(name: str) -> Any:
    return orjson.loads(raw(name))


def combined(stream: str, payload: bytes) -> bytes:
    """A raw payload as the combined-stream endpoint wraps it."""
    return b'{"stream":"' + stream.encode() + b'","data":' + payload + b"}"


# --- Binance ---------------------------------------------------------------------------------


def test_binance_agg_trade_as_documented() -> None:
    message = binance.parse_message(combined("bnbbtc@aggTrade", raw("binance/agg_trade.json")))
    # "m": true, the buyer was the maker: the aggressor sold.
    assert message == VenueTrade("BNBBTC", 12345, 0.001, 100.0, 1672515782136_000, Side.SELL)
    # A raw (not combined) stream's payload reads the same.
    assert binance.parse_message(raw("binance/agg_trade.json")) == message


def test_binance_book_ticker_as_documented() -> None:
    message = binance.parse_message(combined("bnbusdt@bookTicker",
                                             raw("binance/book_ticker.json")))
    assert message == VenueQuote("BNBUSDT", None, 25.3519, 31.21, 25.3652, 40.66, 400900217)
    empty_bid = dict(loaded("binance/book_ticker.json"), b="0.00000000", B="0.00000000")
    quote = binance.parse_payload(empty_bid)
    assert isinstance(quote, VenueQuote) and (quote.bid, quote.bid_size) == (None, None)


def test_binance_control_messages_as_documented() -> None:
    request = loaded("binance/subscribe_request.json")
    built = orjson.loads(binance.subscribe_message(request["params"], request["id"]))
    assert built == request
    assert binance.parse_message(raw("binance/subscribe_response.json")) == Subscribed(1)
    refused = binance.parse_message(raw("binance/error.json"))
    assert isinstance(refused, Refused) and "request ID" in refused.message
    assert binance.parse_message(raw("binance/server_shutdown.json")) == \
        Shutdown(1770123456789_000)
    assert binance.stream_names("BTCUSDT") == ["btcusdt@aggTrade", "btcusdt@bookTicker"]
    assert binance.stream_url("wss://stream.binance.com:9443/") == \
        "wss://stream.binance.com:9443/stream"


def test_binance_rest_history_as_documented() -> None:
    (trade,) = binance.parse_agg_trades("LTCBTC", loaded("binance/agg_trades_rest.json"))
    assert trade == VenueTrade("LTCBTC", 26129, 0.01633102, 4.70443515, 1498793709153_000,
                               Side.SELL)
    (candle,) = binance.parse_klines("LTCBTC", loaded("binance/klines_rest.json"))
    assert candle == Candle("LTCBTC", 1499040000000_000, 0.0163479, 0.8, 0.015758, 0.015771,
                            148976.11427815, 308, 2434.19055334)
    for parse in (binance.parse_agg_trades, binance.parse_klines):
        with pytest.raises(BadResponseError) as info:
            parse("NOPE", loaded("binance/rest_error.json"))
        assert info.value.reason == "upstream_error"
    request = binance.agg_trades_request("BTCUSDT", from_id=7)
    assert (request.path, request.params, request.weight) == (
        "/api/v3/aggTrades", (("symbol", "BTCUSDT"), ("fromId", "7"), ("limit", "1000")), 4)
    assert binance.klines_request("BTCUSDT", 0, 59_999).weight == 2


@pytest.mark.parametrize("text, reason", [
    (b'{"stream": "x@aggTrade", "data": {"e": "aggTrade", "s": "BTCUSDT"', "malformed"),
    (b"[1, 2]", "malformed"),
    (b'{"stream": "x", "data": 5}', "malformed"),
    (b'{"stream": "x", "data": {"e": "aggTrade", "s": "X", "a": "1", "p": "1", "q": "1",'
     b' "T": 1672515782136, "m": true}}', "bad_trade_id"),
    (b'{"stream": "x", "data": {"e": "aggTrade", "s": "X", "a": 1, "p": "one", "q": "1",'
     b' "T": 1672515782136, "m": true}}', "not_numeric"),
    (b'{"stream": "x", "data": {"e": "aggTrade", "s": "X", "a": 1, "p": "1", "q": "1",'
     b' "T": 1672515782136, "m": "yes"}}', "bad_side"),
    (b'{"stream": "x", "data": {"e": "aggTrade", "s": "X", "a": 1, "p": "1",'
     b' "T": 1672515782136, "m": true}}', "missing_field"),
    (b'{"stream": "x", "data": {"u": 1, "s": "X", "b": "1", "B": "1", "a": null, "A": "1"}}',
     "missing_field"),
])
def test_binance_bad_messages_raise_with_a_reason(text: bytes, reason: str) -> None:
    with pytest.raises(BadResponseError) as info:
        binance.parse_message(text)
    assert info.value.reason == reason


def test_binance_unknown_kinds_are_unknown_not_errors() -> None:
    assert binance.parse_message(b'{"stream": "btcusdt@kline_1m", "data": {"e": "kline"}}') \
        == Unknown("kline")
    assert binance.parse_message(b'{"stream": "x", "data": {"hello": 1}}') == Unknown("payload")


# --- Coinbase --------------------------------------------------------------------------------


def test_coinbase_match_as_documented() -> None:
    message = coinbase.parse_message(raw("coinbase/match.json"))
    # "side": "sell" is the maker's: the aggressor bought.
    assert message == VenueTrade("BTC-USD", 10, 400.23, 5.23512,
                                 parse_time_us("2014-11-07T08:19:27.028459Z"), Side.BUY, 50)
    last = coinbase.parse_message(raw("coinbase/match.json").replace(b'"match"',
                                                                      b'"last_match"'))
    assert last == message


def test_coinbase_ticker_and_heartbeat_as_documented() -> None:
    assert coinbase.parse_message(raw("coinbase/ticker.json")) == VenueQuote(
        "ETH-USD", parse_time_us("2022-10-19T23:28:22.061769Z"), 1285.04, 0.46688654,
        1285.27, 1.5663704, 37475248783)
    assert coinbase.parse_message(raw("coinbase/heartbeat.json")) == Heartbeat(
        "BTC-USD", 20, 90, parse_time_us("2014-11-07T08:19:28.464459Z"))


def test_coinbase_control_messages_as_documented() -> None:
    subscribed = coinbase.parse_message(raw("coinbase/subscriptions.json"))
    assert subscribed == Subscribed(None, ("level2", "heartbeat", "ticker"))
    assert coinbase.parse_message(raw("coinbase/error.json")) == Refused(
        "Failed to subscribe", "GIBBERISH-USD is not a valid product")
    request = orjson.loads(coinbase.subscribe_message(["ETH-USD", "ETH-EUR"],
                                                      ["level2", "heartbeat"]))
    documented = loaded("coinbase/subscribe_request.json")
    assert request["type"] == documented["type"] == "subscribe"
    assert request["product_ids"] == documented["product_ids"]
    assert orjson.loads(coinbase.subscribe_message(["BTC-USD"]))["channels"] == [
        "matches", "ticker", "heartbeat"]


def test_coinbase_rest_history_as_documented() -> None:
    trades = coinbase.parse_trades("BTC-USD", loaded("coinbase/trades_rest.json"))
    assert [t.trade_id for t in trades] == [73, 74]  # oldest first, whatever the order given
    assert [t.side for t in trades] == [Side.BUY, Side.SELL]  # maker sold, maker bought
    (candle,) = coinbase.parse_candles("BTC-USD", loaded("coinbase/candles_rest.json"))
    assert candle == Candle("BTC-USD", 1415398768_000_000, 0.35, 4.2, 0.32, 4.2, 12.3)
    with pytest.raises(BadResponseError):
        coinbase.parse_trades("NOPE", loaded("coinbase/rest_error.json"))
    request = coinbase.trades_request("BTC-USD", after=100, limit=5)
    assert (request.path, request.params) == ("/products/BTC-USD/trades",
                                              (("limit", "5"), ("after", "100")))
    candles = coinbase.candles_request("BTC-USD", 1415398740_000_000, 1415398800_000_000)
    assert dict(candles.params)["granularity"] == "60"


@pytest.mark.parametrize("text, reason", [
    (b"{not json", "malformed"),
    (b'{"product_id": "BTC-USD"}', "malformed"),
    (b'{"type": "match", "trade_id": 10, "sequence": 50, "time": "2014-11-07T08:19:27Z",'
     b' "product_id": "BTC-USD", "size": "1", "price": "1", "side": "up"}', "bad_side"),
    (b'{"type": "match", "trade_id": 10.5, "sequence": 50, "time": "2014-11-07T08:19:27Z",'
     b' "product_id": "BTC-USD", "size": "1", "price": "1", "side": "buy"}', "bad_trade_id"),
    (b'{"type": "match", "trade_id": 10, "sequence": 50, "time": "yesterday",'
     b' "product_id": "BTC-USD", "size": "1", "price": "1", "side": "buy"}', "bad_timestamp"),
    (b'{"type": "heartbeat", "sequence": 1, "last_trade_id": "20", "product_id": "X"}',
     "not_numeric"),
])
def test_coinbase_bad_messages_raise_with_a_reason(text: bytes, reason: str) -> None:
    with pytest.raises(BadResponseError) as info:
        coinbase.parse_message(text)
    assert info.value.reason == reason


def test_coinbase_unknown_types_are_unknown() -> None:
    assert coinbase.parse_message(b'{"type": "l2update", "product_id": "BTC-USD"}') == \
        Unknown("l2update")


# --- venue-qualified symbols -----------------------------------------------------------------


def test_venue_qualified_symbols() -> None:
    assert resolve("binance", "btcusdt") == ("BINANCE:BTCUSDT", "BTCUSDT")
    assert resolve("binance", "BINANCE:BTCUSDT") == ("BINANCE:BTCUSDT", "BTCUSDT")
    assert resolve("coinbase", "BTC-USD") == ("COINBASE:BTC-USD", "BTC-USD")
    assert resolve("coinbase", "BTC-USD=BTC-USD") == ("BTC-USD", "BTC-USD")  # explicit
    for venue, bad in (("binance", "COINBASE:BTC-USD"), ("binance", "X="),
                       ("coinbase", "A" * 40), ("binance", "BTC USDT")):
        with pytest.raises(ConfigError):
            resolve(venue, bad)
    assert same_trade_ids("binance-ws", "backfill-binance")
    assert not same_trade_ids("binance", "binance-ws")  # trade ids vs aggregate trade ids
    assert same_trade_ids("coinbase", "coinbase-ws") and same_trade_ids("gbm", "gbm")
    assert not same_trade_ids("gbm", "finnhub")
