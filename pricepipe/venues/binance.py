"""Binance spot: the websocket market streams and the REST history
endpoints, parsed exactly as documented. Pure code, no I/O.

**Websocket** (``wss://stream.binance.com:9443``; combined streams at
``/stream``, each event wrapped as ``{"stream": "<name>", "data": <payload>}``;
stream names in lower case). Documented payloads::

    <symbol>@aggTrade   {"e": "aggTrade", "E": 1672515782136, "s": "BNBBTC", "a": 12345,
                         "p": "0.001", "q": "100", "f": 100, "l": 105,
                         "T": 1672515782136, "m": true, "M": true}
    <symbol>@bookTicker {"u": 400900217, "s": "BNBUSDT", "b": "25.35190000",
                         "B": "31.21000000", "a": "25.36520000", "A": "40.66000000"}
    SUBSCRIBE request   {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1}
    its answer          {"result": null, "id": 1}
    an error            {"code": 2, "msg": "Invalid request: ...", "id": 1}
    server shutdown     {"e": "serverShutdown", "E": 1770123456789}

* ``a`` is the aggregate trade id: one per taker order, price and instant,
  counting up by one per aggregate trade of the symbol. ``T`` is the trade
  time in milliseconds. ``m`` true means the buyer was the maker, so the
  aggressor **sold**.
* ``u`` is the book's update id (newer updates have larger ids); the book
  ticker carries no time, so a quote's event time is its receipt time. A
  side of zeros is an empty side.
* Limits (documented): a connection lives at most 24 hours; the server
  pings every 20 seconds (pong within a minute, which the websocket client
  does by itself); at most 5 incoming messages per second per connection,
  pings, pongs and subscriptions counted (beyond: disconnected, repeated
  offenders banned); at most 1024 streams per connection; 300 connection
  attempts per 5 minutes per IP.

**REST** (``https://api.binance.com``; errors ``{"code": -1121, "msg": ...}``)::

    GET /api/v3/aggTrades?symbol=&fromId=&startTime=&endTime=&limit=  (weight 4)
        [{"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781,
          "T": 1498793709153, "m": true, "M": true}]
    GET /api/v3/klines?symbol=&interval=1m&startTime=&endTime=&limit=   (weight 2)
        [[1499040000000, "0.01634790", "0.80000000", "0.01575800", "0.01577100",
          "148976.11427815", 1499644799999, "2434.19055334", 308, "1756.87402397",
          "28.46694368", "17928899.62484339"]]

``fromId`` and ``startTime`` are inclusive; ``limit`` is at most 1000;
``startTime`` and ``endTime`` together may span less than an hour. Answers
are oldest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pricepipe.codec import decode_json, encode_json
from pricepipe.events import Side
from pricepipe.exceptions import BadResponseError, DecodeError
from pricepipe.upstream import Request

from .fields import epoch_us, integer, number, require
from .messages import (
    Candle,
    Refused,
    Shutdown,
    Subscribed,
    Unknown,
    VenueMessage,
    VenueQuote,
    VenueTrade,
)

AGG_TRADES = "/api/v3/aggTrades"
KLINES = "/api/v3/klines"
AGG_TRADES_WEIGHT = 4
KLINES_WEIGHT = 2
#: Most items one REST answer holds.
MAX_LIMIT = 1000
#: Widest ``startTime``..``endTime`` span of ``aggTrades``, ms (documented: under 1 hour).
MAX_AGG_TRADES_SPAN_MS = 3_600_000 - 1

# Websocket limits (see the module docstring).
MAX_STREAMS_PER_CONNECTION = 1024
MAX_INCOMING_MESSAGES_PER_S = 5
CONNECTION_LIFETIME_S = 24 * 3600
SERVER_PING_INTERVAL_S = 20

#: The two streams of each symbol.
CHANNELS = ("aggTrade", "bookTicker")


def stream_names(symbol: str) -> list[str]:
    """The streams of one symbol (lower case, as Binance wants them)."""
    return [f"{symbol.lower()}@{channel}" for channel in CHANNELS]


def stream_url(ws_base_url: str) -> str:
    """The combined-stream endpoint: every event comes wrapped with its stream's name."""
    return ws_base_url.rstrip("/") + "/stream"


def subscribe_message(streams: Sequence[str], request_id: int) -> str:
    """A ``SUBSCRIBE`` request for ``streams``."""
    return encode_json({"method": "SUBSCRIBE", "params": list(streams),
                        "id": request_id}).decode()


def _side(maker: Any) -> Side:
    if not isinstance(maker, bool):
        raise BadResponseError(f"m={maker!r} is not a boolean", reason="bad_side")
    return Side.SELL if maker else Side.BUY


def _book_side(payload: Mapping[str, Any], price: str, size: str
               ) -> tuple[float | None, float | None]:
    p = number(require(payload, price), price)
    s = number(require(payload, size), size)
    if p == 0.0 and s == 0.0:
        return None, None
    return p, s


def _trade(symbol: str, item: Mapping[str, Any]) -> VenueTrade:
    return VenueTrade(
        symbol, integer(require(item, "a"), "a", reason="bad_trade_id"),
        number(require(item, "p"), "p"), number(require(item, "q"), "q"),
        epoch_us(integer(require(item, "T"), "T", reason="bad_timestamp"), "T", "ms"),
        _side(require(item, "m")))


def parse_payload(payload: Any) -> VenueMessage:
    """One stream event's payload (unwrapped)."""
    if not isinstance(payload, Mapping):
        raise BadResponseError("binance: event payload is not an object", reason="malformed")
    kind = payload.get("e")
    if kind == "aggTrade":
        symbol = require(payload, "s")
        if not isinstance(symbol, str):
            raise BadResponseError(f"s={symbol!r} is not a symbol", reason="malformed")
        return _trade(symbol, payload)
    if kind == "serverShutdown":
        time_ms = payload.get("E")
        return Shutdown(epoch_us(time_ms, "E", "ms") if isinstance(time_ms, int) else None)
    if kind is None and {"u", "s", "b", "B", "a", "A"} <= payload.keys():
        symbol = payload["s"]
        if not isinstance(symbol, str):
            raise BadResponseError(f"s={symbol!r} is not a symbol", reason="malformed")
        bid, bid_size = _book_side(payload, "b", "B")
        ask, ask_size = _book_side(payload, "a", "A")
        return VenueQuote(symbol, None, bid, bid_size, ask, ask_size,
                          integer(payload["u"], "u"))
    return Unknown(str(kind) if kind is not None else "payload")


def parse_message(raw: str | bytes) -> VenueMessage:
    """One websocket text message. Raises :exc:`BadResponseError` for
    malformed JSON or a message of a known kind with bad fields."""
    try:
        obj = decode_json(raw)
    except DecodeError as exc:
        raise BadResponseError(f"binance: malformed message: {exc}", reason="malformed") from exc
    if not isinstance(obj, Mapping):
        raise BadResponseError("binance: message is not an object", reason="malformed")
    if "stream" in obj and "data" in obj:
        return parse_payload(obj["data"])
    if "code" in obj and "msg" in obj:
        return Refused(str(obj["msg"]), f"code {obj['code']}", obj.get("id"))
    if "result" in obj and "id" in obj:
        result = obj["result"]
        channels = tuple(str(s) for s in result) if isinstance(result, list) else ()
        return Subscribed(obj["id"], channels)
    event = obj.get("event")
    if isinstance(event, Mapping) and event.get("e") == "serverShutdown":
        return parse_payload(event)
    return parse_payload(obj)  # a raw (not combined) stream's payload


def _raise_for_error(payload: Any) -> None:
    if isinstance(payload, Mapping) and "code" in payload and "msg" in payload:
        raise BadResponseError(f"binance error {payload['code']}: {payload['msg']}",
                               reason="upstream_error")


def agg_trades_request(symbol: str, *, from_id: int | None = None,
                       start_ms: int | None = None, end_ms: int | None = None,
                       limit: int = MAX_LIMIT) -> Request:
    """``GET /api/v3/aggTrades``: from ``from_id`` (inclusive), or in
    ``[start_ms, end_ms]`` (inclusive, under an hour apart)."""
    params: list[tuple[str, str]] = [("symbol", symbol)]
    if from_id is not None:
        params.append(("fromId", str(from_id)))
    if start_ms is not None:
        params.append(("startTime", str(start_ms)))
    if end_ms is not None:
        params.append(("endTime", str(end_ms)))
    params.append(("limit", str(limit)))
    return Request(AGG_TRADES, tuple(params), (symbol,), AGG_TRADES_WEIGHT)


def klines_request(symbol: str, start_ms: int, end_ms: int, *,
                   limit: int = MAX_LIMIT) -> Request:
    """``GET /api/v3/klines`` of one-minute candles opening in ``[start_ms, end_ms]``."""
    return Request(KLINES, (("symbol", symbol), ("interval", "1m"),
                            ("startTime", str(start_ms)), ("endTime", str(end_ms)),
                            ("limit", str(limit))), (symbol,), KLINES_WEIGHT)


def parse_agg_trades(symbol: str, payload: Any) -> list[VenueTrade]:
    """An ``aggTrades`` answer, by aggregate trade id. Raises
    :exc:`BadResponseError` for an error object or any unreadable item (a
    page is used whole or not at all: its ids must be contiguous)."""
    _raise_for_error(payload)
    if not isinstance(payload, list):
        raise BadResponseError("binance: expected a list of aggregate trades",
                               reason="malformed")
    return sorted((_trade(symbol, item) for item in payload), key=lambda t: t.trade_id)


def parse_klines(symbol: str, payload: Any) -> list[Candle]:
    """A ``klines`` answer, oldest first. Raises :exc:`BadResponseError`."""
    _raise_for_error(payload)
    if not isinstance(payload, list):
        raise BadResponseError("binance: expected a list of klines", reason="malformed")
    out: list[Candle] = []
    for row in payload:
        if not isinstance(row, list) or len(row) < 9:
            raise BadResponseError(f"binance: kline {row!r:.80} is not a 12-item list",
                                   reason="malformed")
        out.append(Candle(
            symbol, epoch_us(integer(row[0], "open time", reason="bad_timestamp"),
                             "open time", "ms"),
            number(row[1], "open"), number(row[2], "high"), number(row[3], "low"),
            number(row[4], "close"), number(row[5], "volume"),
            integer(row[8], "number of trades"), number(row[7], "quote asset volume")))
    return sorted(out, key=lambda c: c.bucket_us)


def chunks(items: Iterable[str], size: int) -> list[list[str]]:
    """``items`` in lists of at most ``size``."""
    listed = list(items)
    return [listed[i:i + size] for i in range(0, len(listed), size)]
