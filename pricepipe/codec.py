"""Encoding and decoding of events: the one codec every role uses.

Pure functions, no I/O.

**Stream entries** (Redis). An entry holds one event in one field, as text
of fields separated by single spaces, an absent value left empty. The
symbol is not repeated: it is the stream key's (see :mod:`pricepipe.keys`)::

    trades  t  "<ts_us> <price> <size> <side> <trade_id> <source> <recv_ts_us>"
    quotes  q  "<ts_us> <bid> <bid_size> <ask> <ask_size> <source> <recv_ts_us>"
    bars.1m b  "<bucket_us> <open> <high> <low> <close> <volume> <vwap> <trades> <state>"

``side`` is ``b`` (buy) or ``s`` (sell); ``state`` is ``open``, ``final``
or ``revised``. Numbers are written as their shortest exact text (``repr``
of a float), so decoding an encoded event gives it back exactly. No value
can hold a space (symbols, sources and trade ids exclude it; see
:mod:`pricepipe.events`). One field rather than one per attribute halves the
work of every ``XADD`` and ``XREAD`` in Redis and in each client.

The **reference parsers** (:func:`parse_trade`, :func:`parse_quote`,
:func:`parse_bar`, :func:`decode_entry`) build and validate an event. The
**fast paths** :func:`trade_values` and :func:`quote_values` return a
value's fields without building an event, for the persist workers, and
:func:`entry_to_json` an entry's JSON, for the websocket hub; each accepts
exactly what its reference parser accepts (a property test holds them to
it) and hands anything unusual to it.

**JSON** (websocket and HTTP): :func:`event_to_dict` / :func:`encode_json`.
**Entry IDs** (``"<ms>-<seq>"``) pack into one signed 64-bit integer for the
database's unique keys, see :func:`pack_entry_id`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from .clock import format_us
from .events import (
    _SEEN_SOURCES,
    _SEEN_SYMBOLS,
    MAX_TS_US,
    MIN_TS_US,
    TRADE_ID_RE,
    Bar,
    BarState,
    Event,
    Quote,
    Side,
    Trade,
)
from .exceptions import DecodeError
from .keys import Channel

#: The one field of an entry, per channel.
F_TRADE = b"t"
F_QUOTE = b"q"
F_BAR = b"b"
FIELD_OF: dict[Channel, bytes] = {Channel.TRADES: F_TRADE, Channel.QUOTES: F_QUOTE,
                                  Channel.BARS_1M: F_BAR}

_SIDE_CODE = {Side.BUY: "b", Side.SELL: "s"}
_SIDE_OF = {b"b": Side.BUY, b"s": Side.SELL}

#: Entry IDs pack as ``ms << SEQ_BITS | seq``: 42 bits of milliseconds last
#: until the year 2109, and 21 bits allow two million entries per stream per
#: millisecond; together 63 bits, a PostgreSQL ``bigint``.
SEQ_BITS = 21
SEQ_MAX = (1 << SEQ_BITS) - 1
_MS_MAX = (1 << (63 - SEQ_BITS)) - 1


def _text(value: float | int | None) -> str:
    if value is None:
        return ""
    return repr(value) if type(value) is float else str(value)


# --- encoding --------------------------------------------------------------------------------


def encode_trade(trade: Trade) -> str:
    """The :data:`F_TRADE` value of ``trade``'s entry."""
    side = "" if trade.side is None else _SIDE_CODE[trade.side]
    trade_id = trade.trade_id or ""
    return (f"{trade.ts_us} {trade.price!r} {_text(trade.size)} {side} {trade_id} "
            f"{trade.source} {_text(trade.recv_ts_us)}")


def encode_quote(quote: Quote) -> str:
    """The :data:`F_QUOTE` value of ``quote``'s entry."""
    return (f"{quote.ts_us} {_text(quote.bid)} {_text(quote.bid_size)} {_text(quote.ask)} "
            f"{_text(quote.ask_size)} {quote.source} {_text(quote.recv_ts_us)}")


def encode_bar(bar: Bar) -> str:
    """The :data:`F_BAR` value of ``bar``'s entry."""
    return (f"{bar.bucket_us} {bar.open!r} {bar.high!r} {bar.low!r} {bar.close!r} "
            f"{bar.volume!r} {_text(bar.vwap)} {bar.trades} {bar.state}")


def channel_of(event: Event) -> Channel:
    if isinstance(event, Trade):
        return Channel.TRADES
    if isinstance(event, Quote):
        return Channel.QUOTES
    return Channel.BARS_1M


def encode_event(event: Event) -> tuple[bytes, str]:
    """``(field, value)`` of ``event``'s stream entry."""
    if isinstance(event, Trade):
        return F_TRADE, encode_trade(event)
    if isinstance(event, Quote):
        return F_QUOTE, encode_quote(event)
    return F_BAR, encode_bar(event)


#: Where orjson writes a float as ``repr`` does (both give the shortest text
#: that reads back exactly; outside it their notations differ: orjson writes
#: 1e-05 as ``0.00001``). A property test holds the two to each other here.
_ORJSON_REPR_MIN = 1e-4
_ORJSON_REPR_MAX = 1e16


def float_texts(values: Sequence[float]) -> list[str]:
    """``repr`` of each float, in order. In bulk, orjson's shortest-text
    formatter is about 10x cheaper than ``repr`` (on GBM prices, with 17
    significant digits, ``repr`` costs ~750 ns a float on a 2-core VM), and
    gives the same text within ``[1e-4, 1e16)``; a column with any value
    outside (or NaN) is formatted by ``repr``."""
    if not values:
        return []
    total = sum(values)  # NaN or inf when any value is
    if (total == total and total < _ORJSON_REPR_MAX and min(values) >= _ORJSON_REPR_MIN
            and max(values) < _ORJSON_REPR_MAX):
        return orjson.dumps(values).decode("ascii")[1:-1].split(",")
    return [repr(value) for value in values]


def encode_quote_columns(ts_us: Sequence[int], bid: Sequence[float], bid_size: Sequence[float],
                         ask: Sequence[float], ask_size: Sequence[float],
                         source: str) -> list[str]:
    """:func:`encode_quote` of many quotes given as columns, one text per row:
    the same text, for quotes with both sides and their sizes and no
    ``recv_ts_us``, whose values are already validated. A batch path for the
    bulk publisher: no event objects, floats formatted by :func:`float_texts`."""
    tail = f" {source} "
    return [f"{t} {b} {bs} {a} {az}{tail}" for t, b, bs, a, az in zip(
        ts_us, float_texts(bid), float_texts(bid_size), float_texts(ask),
        float_texts(ask_size), strict=True)]


def encode_trade_columns(ts_us: Sequence[int], price: Sequence[float], size: Sequence[float],
                         buy: Sequence[bool], source: str) -> list[str]:
    """:func:`encode_trade` of many trades given as columns, as
    :func:`encode_quote_columns`: trades with a size and a side (``buy``
    true: bought), no ``trade_id`` nor ``recv_ts_us``."""
    buy_tail, sell_tail = f" b  {source} ", f" s  {source} "
    return [f"{t} {p} {s}{buy_tail if b else sell_tail}" for t, p, s, b in zip(
        ts_us, float_texts(price), float_texts(size), buy, strict=True)]


# --- reference parsers -----------------------------------------------------------------------


def _parts(value: object, count: int, what: str) -> list[bytes]:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise DecodeError(f"{what} value must be bytes, not {type(value).__name__}")
    parts = value.split(b" ")
    if len(parts) != count:
        raise DecodeError(f"{what} value has {len(parts)} parts, want {count}")
    return parts


def _int(raw: bytes, name: str) -> int:
    if not raw.isdigit():  # int() would take "+1", " 1", "1_0"
        raise DecodeError(f"{name} {raw[:32]!r} is not an unsigned integer")
    return int(raw)


def _float(raw: bytes, name: str) -> float:
    try:
        return float(raw)
    except ValueError as exc:
        raise DecodeError(f"{name} {raw[:32]!r} is not a number") from exc


def _opt_float(raw: bytes, name: str) -> float | None:
    return _float(raw, name) if raw else None


def _opt_int(raw: bytes, name: str) -> int | None:
    return _int(raw, name) if raw else None


def _source(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"source {raw[:32]!r} is not ASCII") from exc


def parse_trade(symbol: str, value: object) -> Trade:
    """The trade in an :data:`F_TRADE` value of ``symbol``'s stream.

    Raises :exc:`DecodeError` for text that is not a trade's and
    :exc:`~pricepipe.exceptions.InvalidEventError` for values out of
    bounds; both are ``ValueError``.
    """
    ts_b, price_b, size_b, side_b, id_b, source_b, recv_b = _parts(value, 7, "trade")
    if side_b and side_b not in _SIDE_OF:
        raise DecodeError(f"trade side {side_b[:8]!r} is not b or s")
    try:
        trade_id = id_b.decode("ascii") if id_b else None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"trade id {id_b[:32]!r} is not ASCII") from exc
    return Trade(symbol, _int(ts_b, "ts_us"), _float(price_b, "price"),
                 _opt_float(size_b, "size"), _source(source_b), trade_id,
                 _SIDE_OF[side_b] if side_b else None, _opt_int(recv_b, "recv_ts_us"))


def parse_quote(symbol: str, value: object) -> Quote:
    """The quote in an :data:`F_QUOTE` value; raises as :func:`parse_trade`."""
    ts_b, bid_b, bid_size_b, ask_b, ask_size_b, source_b, recv_b = _parts(value, 7, "quote")
    return Quote(symbol, _int(ts_b, "ts_us"), _opt_float(bid_b, "bid"),
                 _opt_float(bid_size_b, "bid_size"), _opt_float(ask_b, "ask"),
                 _opt_float(ask_size_b, "ask_size"), _source(source_b),
                 _opt_int(recv_b, "recv_ts_us"))


def parse_bar(symbol: str, value: object) -> Bar:
    """The bar in an :data:`F_BAR` value; raises as :func:`parse_trade`."""
    (bucket_b, open_b, high_b, low_b, close_b, volume_b, vwap_b, trades_b,
     state_b) = _parts(value, 9, "bar")
    try:
        state = BarState(state_b.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"bar state {state_b[:16]!r} is not open, final or revised") from exc
    return Bar(symbol, _int(bucket_b, "bucket_us"), _float(open_b, "open"),
               _float(high_b, "high"), _float(low_b, "low"), _float(close_b, "close"),
               _float(volume_b, "volume"), _opt_float(vwap_b, "vwap"),
               _int(trades_b, "trades"), state)


_PARSERS: dict[Channel, Callable[[str, object], Event]] = {
    Channel.TRADES: parse_trade, Channel.QUOTES: parse_quote, Channel.BARS_1M: parse_bar}

#: A stream entry's fields as redis-py parses them (a dict) or as the server
#: sends them (a flat ``[name, value, name, value, ...]`` list).
RawFields = Mapping[bytes, bytes] | Sequence[bytes]


def field_value(fields: RawFields | None, channel: Channel) -> bytes:
    """The value of ``channel``'s field in an entry; raises :exc:`DecodeError`
    when the entry has no such field (or was deleted: no fields at all)."""
    name = FIELD_OF[channel]
    if isinstance(fields, Mapping):
        value = fields.get(name)
    elif isinstance(fields, list | tuple):
        value = None
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == name:
                value = fields[i + 1]
                break
    else:
        value = None
    if not isinstance(value, bytes):
        raise DecodeError(f"entry lacks the {name.decode()!r} field of a {channel} stream")
    return value


def decode_entry(channel: Channel, symbol: str, fields: RawFields | None) -> Event:
    """The event of an entry of ``symbol``'s ``channel`` stream; raises
    :exc:`DecodeError` or :exc:`~pricepipe.exceptions.InvalidEventError`."""
    return _PARSERS[channel](symbol, field_value(fields, channel))


# --- fast paths ------------------------------------------------------------------------------

#: ``(ts_us, price, size, side, trade_id, source, recv_ts_us)``, side as "buy"/"sell"/None.
TradeValues = tuple[int, float, float | None, str | None, str | None, str, int | None]
#: ``(ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us)``.
QuoteValues = tuple[int, float | None, float | None, float | None, float | None, str, int | None]

_SIDE_TEXT = {b"b": "buy", b"s": "sell", b"": None}
_INF = math.inf


#: The sources :func:`_known_source` found validated, by their bytes: one
#: dict lookup per entry instead of a call, a decode and a set lookup. Only
#: validated sources get in, and it is cleared past 1,000 (hostile input).
_SOURCE_OF: dict[bytes, str] = {}


def _known_source(raw: bytes) -> str | None:
    """The source, when it is one already validated (else None: ask the parser)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text not in _SEEN_SOURCES:
        return None
    if len(_SOURCE_OF) >= 1_000:
        _SOURCE_OF.clear()
    _SOURCE_OF[raw] = text
    return text


def trade_values(value: object) -> TradeValues | None:
    """The fields of an :data:`F_TRADE` value when they are certainly a valid
    trade's, else None (then :func:`parse_trade` accepts it or says why not).
    The symbol is the stream's, validated by the caller."""
    if type(value) is not bytes:
        return None
    parts = value.split(b" ")
    if len(parts) != 7:
        return None
    ts_b, price_b, size_b, side_b, id_b, source_b, recv_b = parts
    if not ts_b.isdigit() or (recv_b and not recv_b.isdigit()) or side_b not in _SIDE_TEXT:
        return None
    try:
        price = float(price_b)
        size = float(size_b) if size_b else None
    except ValueError:
        return None
    ts_us = int(ts_b)
    recv_ts_us = int(recv_b) if recv_b else None
    source = _SOURCE_OF.get(source_b) or _known_source(source_b)
    if (source is None or not MIN_TS_US <= ts_us < MAX_TS_US or not 0.0 < price < _INF
            or (size is not None and not 0.0 < size < _INF)
            or (recv_ts_us is not None and not MIN_TS_US <= recv_ts_us < MAX_TS_US)):
        return None
    trade_id = None
    if id_b:
        try:
            trade_id = id_b.decode("ascii")
        except UnicodeDecodeError:
            return None
        if TRADE_ID_RE.fullmatch(trade_id) is None:
            return None
    return ts_us, price, size, _SIDE_TEXT[side_b], trade_id, source, recv_ts_us


def quote_values(value: object) -> QuoteValues | None:
    """As :func:`trade_values`, for an :data:`F_QUOTE` value."""
    if type(value) is not bytes:
        return None
    parts = value.split(b" ")
    if len(parts) != 7:
        return None
    ts_b, bid_b, bid_size_b, ask_b, ask_size_b, source_b, recv_b = parts
    if not ts_b.isdigit() or (recv_b and not recv_b.isdigit()):
        return None
    try:
        bid = float(bid_b) if bid_b else None
        bid_size = float(bid_size_b) if bid_size_b else None
        ask = float(ask_b) if ask_b else None
        ask_size = float(ask_size_b) if ask_size_b else None
    except ValueError:
        return None
    ts_us = int(ts_b)
    recv_ts_us = int(recv_b) if recv_b else None
    source = _SOURCE_OF.get(source_b) or _known_source(source_b)
    if source is None or not MIN_TS_US <= ts_us < MAX_TS_US:
        return None
    if recv_ts_us is not None and not MIN_TS_US <= recv_ts_us < MAX_TS_US:
        return None
    if bid is None:
        if bid_size is not None or ask is None:
            return None
    elif not 0.0 < bid < _INF or (bid_size is not None and not 0.0 <= bid_size < _INF):
        return None
    if ask is None:
        if ask_size is not None:
            return None
    elif not 0.0 < ask < _INF or (ask_size is not None and not 0.0 <= ask_size < _INF):
        return None
    if bid is not None and ask is not None and bid > ask:
        return None
    return ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us


# A value the fast path accepted whose numbers are all plain decimals
# (digits, at most one point), so that a reader whose float input is a
# correctly rounded strtod (PostgreSQL's float8) reads each as float() did:
# the persist workers hand such values to COPY as they are. Exponents (which
# may underflow to 0 in one and fail in the other) and "1_0" (which only
# Python reads) are not plain.
_PLAIN_TRADE = re.compile(rb"[0-9]+ [0-9]*\.?[0-9]* [0-9]*\.?[0-9]* [bs]? [^ ]* [^ ]+ [0-9]*")
_PLAIN_QUOTE = re.compile(rb"[0-9]+(?: [0-9]*\.?[0-9]*){4} [^ ]+ [0-9]*")
#: ``plain_trade(value)`` is not None when an :data:`F_TRADE` value that
#: :func:`trade_values` accepted has only plain decimal numbers.
plain_trade = _PLAIN_TRADE.fullmatch
#: As :data:`plain_trade`, for an :data:`F_QUOTE` value :func:`quote_values` accepted.
plain_quote = _PLAIN_QUOTE.fullmatch


# --- JSON ------------------------------------------------------------------------------------


def trade_dict(symbol: str, values: TradeValues, entry_id: str | None) -> dict[str, Any]:
    ts_us, price, size, side, trade_id, source, recv_ts_us = values
    out: dict[str, Any] = {"symbol": symbol, "ts": format_us(ts_us), "ts_us": ts_us,
                           "price": price, "size": size, "side": side, "trade_id": trade_id,
                           "source": source, "recv_ts_us": recv_ts_us}
    if entry_id is not None:
        out["id"] = entry_id
    return out


def quote_dict(symbol: str, values: QuoteValues, entry_id: str | None) -> dict[str, Any]:
    ts_us, bid, bid_size, ask, ask_size, source, recv_ts_us = values
    out: dict[str, Any] = {"symbol": symbol, "ts": format_us(ts_us), "ts_us": ts_us,
                           "bid": bid, "bid_size": bid_size, "ask": ask, "ask_size": ask_size,
                           "source": source, "recv_ts_us": recv_ts_us}
    if entry_id is not None:
        out["id"] = entry_id
    return out


def bar_dict(bar: Bar, entry_id: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"symbol": bar.symbol, "bucket": format_us(bar.bucket_us),
                           "bucket_us": bar.bucket_us, "open": bar.open, "high": bar.high,
                           "low": bar.low, "close": bar.close, "volume": bar.volume,
                           "vwap": bar.vwap, "trades": bar.trades, "state": str(bar.state)}
    if entry_id is not None:
        out["id"] = entry_id
    return out


def event_to_dict(event: Event, entry_id: str | None = None) -> dict[str, Any]:
    """JSON-ready dict: ``ts`` as ISO-8601 UTC plus the exact ``ts_us``;
    ``id`` the stream entry ID when given. Absent values are ``null``."""
    if isinstance(event, Trade):
        side = None if event.side is None else str(event.side)
        return trade_dict(event.symbol, (event.ts_us, event.price, event.size, side,
                                         event.trade_id, event.source, event.recv_ts_us),
                          entry_id)
    if isinstance(event, Quote):
        return quote_dict(event.symbol, (event.ts_us, event.bid, event.bid_size, event.ask,
                                         event.ask_size, event.source, event.recv_ts_us),
                          entry_id)
    return bar_dict(event, entry_id)


def entry_to_json(channel: Channel, symbol: str, fields: RawFields | None,
                  entry_id: str) -> bytes:
    """``encode_json(event_to_dict(decode_entry(channel, symbol, fields), entry_id))``:
    the same bytes and the same errors, but for the usual entry without
    building an event (the websocket hub does this for every entry it reads).
    ``symbol`` must be valid (it is the stream key's).
    """
    value = field_value(fields, channel)
    if channel is Channel.TRADES:
        trade = trade_values(value)
        if trade is not None and symbol in _SEEN_SYMBOLS:
            return orjson.dumps(trade_dict(symbol, trade, entry_id))
    elif channel is Channel.QUOTES:
        quote = quote_values(value)
        if quote is not None and symbol in _SEEN_SYMBOLS:
            return orjson.dumps(quote_dict(symbol, quote, entry_id))
    return orjson.dumps(event_to_dict(_PARSERS[channel](symbol, value), entry_id))


def encode_json(obj: Any) -> bytes:
    """Compact JSON bytes (orjson: floats as shortest exact text)."""
    return orjson.dumps(obj)


def decode_json(data: bytes | str) -> Any:
    """Parse JSON; raises :exc:`DecodeError` on malformed input."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from exc


# --- entry IDs -------------------------------------------------------------------------------


def parse_entry_id(entry_id: bytes | str) -> tuple[int, int]:
    """``b"1700000000000-3"`` -> ``(1700000000000, 3)``; raises :exc:`DecodeError`."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, sep, seq = text.partition("-")
    try:
        if not sep:
            return int(ms), 0
        ms_i, seq_i = int(ms), int(seq)
    except ValueError as exc:
        raise DecodeError(f"invalid stream entry id {text!r}") from exc
    if ms_i < 0 or seq_i < 0:
        raise DecodeError(f"invalid stream entry id {text!r}")
    return ms_i, seq_i


def pack_entry_id(entry_id: bytes | str) -> int:
    """Pack an entry ID into a non-negative 63-bit integer, order preserving.

    Raises :exc:`DecodeError` when it does not fit (see :data:`SEQ_BITS`).
    """
    ms, seq = parse_entry_id(entry_id)
    if ms > _MS_MAX or seq > SEQ_MAX:
        raise DecodeError(f"stream entry id {entry_id!r} does not fit in 63 bits")
    return (ms << SEQ_BITS) | seq


def unpack_entry_id(packed: int) -> str:
    """Inverse of :func:`pack_entry_id`."""
    return f"{packed >> SEQ_BITS}-{packed & SEQ_MAX}"
