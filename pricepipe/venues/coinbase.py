"""Coinbase Exchange: the websocket feed and the REST history endpoints,
parsed exactly as documented. Pure code, no I/O.

**Websocket** (``wss://ws-feed.exchange.coinbase.com``). A ``subscribe`` must
come within 5 seconds of connecting. Documented messages::

    subscribe      {"type": "subscribe", "product_ids": ["ETH-USD", "ETH-EUR"],
                    "channels": ["level2", "heartbeat", {"name": "ticker",
                                 "product_ids": ["ETH-BTC", "ETH-USD"]}]}
    subscriptions  {"type": "subscriptions", "channels": [{"name": "level2",
                    "product_ids": ["ETH-USD", "ETH-EUR"]}, ...]}
    error          {"type": "error", "message": "Failed to subscribe",
                    "reason": "GIBBERISH-USD is not a valid product"}
    match          {"type": "match", "trade_id": 10, "sequence": 50,
                    "maker_order_id": "ac928c66-ca53-498f-9c13-a110027a60e8",
                    "taker_order_id": "132fb6ae-456b-4654-b4e0-d681ac05cea1",
                    "time": "2014-11-07T08:19:27.028459Z", "product_id": "BTC-USD",
                    "size": "5.23512", "price": "400.23", "side": "sell"}
                   (``last_match``, the same shape, comes once after subscribing)
    ticker         {"type": "ticker", "sequence": 37475248783, "product_id": "ETH-USD",
                    "price": "1285.22", "open_24h": "1310.79", "volume_24h": "245532.79269678",
                    "low_24h": "1280.52", "high_24h": "1313.8",
                    "volume_30d": "9788783.60117027", "best_bid": "1285.04",
                    "best_bid_size": "0.46688654", "best_ask": "1285.27",
                    "best_ask_size": "1.56637040", "side": "buy",
                    "time": "2022-10-19T23:28:22.061769Z", "trade_id": 370843401,
                    "last_size": "11.4396987"}
    heartbeat      {"type": "heartbeat", "sequence": 90, "last_trade_id": 20,
                    "product_id": "BTC-USD", "time": "2014-11-07T08:19:28.464459Z"}

* ``trade_id`` counts up by one per trade of the product; ``sequence``
  numbers the product's messages (the ``matches`` channel shows only some of
  them, so its sequence numbers jump; a message repeated has its sequence
  again). The heartbeat, once a second per product, carries the last trade
  id: a trade missed on the wire shows there even without a next match.
* A match's ``side`` is the **maker's** side: ``sell`` means the maker sold
  and the aggressor bought (an up-tick). The trade's aggressor side is the
  opposite.
* The ticker comes with each match (cascades batched): its best bid and ask
  are the book after that match, at the match's time.
* Limits (documented): 8 requests per second per IP (bursts up to 20), 100
  messages sent by the client per second per IP; at most 10 subscriptions
  per product and channel (a duplicate subscription counts: subscribe once
  per connection).

**REST** (``https://api.exchange.coinbase.com``; errors ``{"message": ...}``;
public endpoints 10 requests per second per IP)::

    GET /products/{id}/trades?after=&limit=   newest first, at most 1000
        [{"time": "2014-11-07T22:19:28.578544Z", "trade_id": 74, "price": "10.00000000",
          "size": "0.01000000", "side": "buy"}]
    GET /products/{id}/candles?granularity=60&start=&end=   newest first, at most 300
        [[1415398768, 0.32, 4.2, 0.35, 4.2, 12.3]]   (time, low, high, open, close, volume)

Trades page by trade id: ``after=N`` answers the trades older than ``N``
(ids below ``N``); the ``CB-AFTER`` header holds the next cursor. A trade's
``side`` is the maker's, as in a match. Candles exist only for minutes with
trades.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from pricepipe.clock import format_us
from pricepipe.codec import decode_json, encode_json
from pricepipe.events import Side
from pricepipe.exceptions import BadResponseError, DecodeError
from pricepipe.upstream import Request

from .fields import epoch_us, integer, number, optional_number, require
from .messages import (
    Candle,
    Heartbeat,
    Refused,
    Subscribed,
    Unknown,
    VenueMessage,
    VenueQuote,
    VenueTrade,
)

#: The channels a feed subscribes to.
CHANNELS = ("matches", "ticker", "heartbeat")
#: Most trades one ``trades`` answer holds; most candles one ``candles`` answer holds.
MAX_TRADES_LIMIT = 1000
MAX_CANDLES = 300
CANDLE_GRANULARITY_S = 60

# Websocket limits (see the module docstring).
MAX_REQUESTS_PER_S = 8
SUBSCRIBE_DEADLINE_S = 5
MAX_SUBSCRIPTIONS_PER_PRODUCT_CHANNEL = 10

_AGGRESSOR_OF_MAKER = {"buy": Side.SELL, "sell": Side.BUY}


def subscribe_message(product_ids: Sequence[str], channels: Sequence[str] = CHANNELS) -> str:
    """The one ``subscribe`` a connection sends."""
    return encode_json({"type": "subscribe", "product_ids": list(product_ids),
                        "channels": list(channels)}).decode()


def _text(obj: Mapping[str, Any], name: str) -> str:
    value = require(obj, name)
    if not isinstance(value, str):
        raise BadResponseError(f"{name}={value!r} is not text", reason="malformed")
    return value


def _aggressor(maker_side: Any) -> Side:
    side = _AGGRESSOR_OF_MAKER.get(maker_side) if isinstance(maker_side, str) else None
    if side is None:
        raise BadResponseError(f"side={maker_side!r} is not buy or sell", reason="bad_side")
    return side


def _trade(product: str, item: Mapping[str, Any], *, sequence: int | None) -> VenueTrade:
    return VenueTrade(
        product, integer(require(item, "trade_id"), "trade_id", reason="bad_trade_id"),
        number(require(item, "price"), "price"), number(require(item, "size"), "size"),
        epoch_us(require(item, "time"), "time", "iso"), _aggressor(require(item, "side")),
        sequence)


def _optional_int(obj: Mapping[str, Any], name: str) -> int | None:
    value = obj.get(name)
    return None if value is None else integer(value, name)


def parse_message(raw: str | bytes) -> VenueMessage:
    """One websocket message. Raises :exc:`BadResponseError` for malformed
    JSON or a message of a known type with bad fields."""
    try:
        obj = decode_json(raw)
    except DecodeError as exc:
        raise BadResponseError(f"coinbase: malformed message: {exc}", reason="malformed") from exc
    if not isinstance(obj, Mapping) or not isinstance(obj.get("type"), str):
        raise BadResponseError("coinbase: message without a type", reason="malformed")
    kind = obj["type"]
    if kind in ("match", "last_match"):
        return _trade(_text(obj, "product_id"), obj,
                      sequence=integer(require(obj, "sequence"), "sequence"))
    if kind == "ticker":
        bid = optional_number(obj, "best_bid")
        ask = optional_number(obj, "best_ask")
        time = obj.get("time")
        return VenueQuote(
            _text(obj, "product_id"), None if time is None else epoch_us(time, "time", "iso"),
            bid, optional_number(obj, "best_bid_size") if bid is not None else None,
            ask, optional_number(obj, "best_ask_size") if ask is not None else None,
            integer(require(obj, "sequence"), "sequence"))
    if kind == "heartbeat":
        time = obj.get("time")
        return Heartbeat(_text(obj, "product_id"), _optional_int(obj, "last_trade_id"),
                         _optional_int(obj, "sequence"),
                         None if time is None else epoch_us(time, "time", "iso"))
    if kind == "subscriptions":
        channels = obj.get("channels")
        names: list[str] = []
        for channel in channels if isinstance(channels, list) else ():
            if isinstance(channel, Mapping):
                names.append(str(channel.get("name")))
            elif isinstance(channel, str):
                names.append(channel)
        return Subscribed(None, tuple(names))
    if kind == "error":
        return Refused(str(obj.get("message", "")), str(obj.get("reason", "")))
    return Unknown(kind)


def _raise_for_error(payload: Any) -> None:
    if isinstance(payload, Mapping) and "message" in payload:
        raise BadResponseError(f"coinbase error: {payload['message']}", reason="upstream_error")


def _product_path(product: str, what: str) -> str:
    return f"/products/{quote(product, safe='')}/{what}"


def trades_request(product: str, *, after: int | None = None,
                   limit: int = MAX_TRADES_LIMIT) -> Request:
    """``GET /products/{id}/trades``: the newest trades, or those older than
    ``after`` (ids below it)."""
    params: list[tuple[str, str]] = [("limit", str(limit))]
    if after is not None:
        params.append(("after", str(after)))
    return Request(_product_path(product, "trades"), tuple(params), (product,))


def candles_request(product: str, start_us: int, end_us: int) -> Request:
    """``GET /products/{id}/candles`` of one-minute candles in ``[start_us, end_us]``
    (at most :data:`MAX_CANDLES` minutes)."""
    return Request(_product_path(product, "candles"), (
        ("granularity", str(CANDLE_GRANULARITY_S)), ("start", format_us(start_us)),
        ("end", format_us(end_us))), (product,))


def parse_trades(product: str, payload: Any) -> list[VenueTrade]:
    """A ``trades`` answer, by trade id (oldest first). Raises
    :exc:`BadResponseError` for an error object or any unreadable item."""
    _raise_for_error(payload)
    if not isinstance(payload, list):
        raise BadResponseError("coinbase: expected a list of trades", reason="malformed")
    trades = []
    for item in payload:
        if not isinstance(item, Mapping):
            raise BadResponseError("coinbase: trade is not an object", reason="malformed")
        trades.append(_trade(product, item, sequence=None))
    return sorted(trades, key=lambda t: t.trade_id)


def parse_candles(product: str, payload: Any) -> list[Candle]:
    """A ``candles`` answer, oldest first. Raises :exc:`BadResponseError`."""
    _raise_for_error(payload)
    if not isinstance(payload, list):
        raise BadResponseError("coinbase: expected a list of candles", reason="malformed")
    out: list[Candle] = []
    for row in payload:
        if not isinstance(row, list) or len(row) < 6:
            raise BadResponseError(f"coinbase: candle {row!r:.80} is not a 6-item list",
                                   reason="malformed")
        out.append(Candle(product, epoch_us(integer(row[0], "time", reason="bad_timestamp"),
                                            "time", "s"),
                          number(row[3], "open"), number(row[2], "high"),
                          number(row[1], "low"), number(row[4], "close"),
                          number(row[5], "volume")))
    return sorted(out, key=lambda c: c.bucket_us)
