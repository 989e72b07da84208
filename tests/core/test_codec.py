"""The event model and its one codec: validation, exact round trips, and the
fast paths held to the reference parsers."""

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricepipe import codec
from pricepipe.clock import format_us, parse_time_us
from pricepipe.events import (
    MAX_EVENT_AGE_AT_APPEND_US,
    MAX_EVENT_LEAD_AT_APPEND_US,
    MAX_TS_US,
    MIN_TS_US,
    Bar,
    BarState,
    Quote,
    Side,
    Trade,
    id_range_span_us,
)
from pricepipe.exceptions import DecodeError, InvalidEventError
from pricepipe.keys import Channel

symbols = st.from_regex(r"[A-Z0-9][A-Z0-9._:-]{0,31}", fullmatch=True)
sources = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,31}", fullmatch=True)
trade_ids = st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True)
prices = st.floats(min_value=1e-12, max_value=1e15, allow_nan=False, allow_infinity=False)
sizes = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)
book_sizes = st.none() | st.floats(min_value=0, max_value=1e12, allow_nan=False,
                                   allow_infinity=False)
times = st.integers(min_value=MIN_TS_US, max_value=MAX_TS_US - 1)
trades = st.builds(Trade, symbols, times, prices, st.none() | sizes, sources, trade_ids,
                   st.none() | st.sampled_from(Side), st.none() | times)


@st.composite
def quotes(draw: Any) -> Quote:
    sides = draw(st.sampled_from(["both", "bid", "ask"]))
    bid = draw(prices) if sides != "ask" else None
    ask = draw(prices) if sides != "bid" else None
    if bid is not None and ask is not None and bid > ask:
        bid, ask = ask, bid
    return Quote(draw(symbols), draw(times), bid, draw(book_sizes) if bid is not None else None,
                 ask, draw(book_sizes) if ask is not None else None, draw(sources),
                 draw(st.none() | times))


@st.composite
def bars(draw: Any) -> Bar:
    low, high = sorted([draw(prices), draw(prices)])
    opened = draw(st.floats(min_value=low, max_value=high))
    closed = draw(st.floats(min_value=low, max_value=high))
    bucket = draw(times) // 60_000_000 * 60_000_000
    return Bar(draw(symbols), max(bucket, MIN_TS_US + 60_000_000 - MIN_TS_US % 60_000_000),
               opened, high, low, closed, draw(st.floats(0, 1e12)), draw(st.none() | prices),
               draw(st.integers(1, 10**9)), draw(st.sampled_from(BarState)))


events = trades | quotes() | bars()


def _stored(value: str) -> bytes:
    return value.encode()  # redis-py sends str, hands back bytes


@given(events)
def test_stream_entries_round_trip_exactly(event: Any) -> None:
    field, value = codec.encode_event(event)
    channel = codec.channel_of(event)
    assert codec.FIELD_OF[channel] == field
    for fields in ({field: _stored(value)}, [field, _stored(value)]):
        assert codec.decode_entry(channel, event.symbol, fields) == event


def test_entries_are_one_readable_field_without_the_symbol() -> None:
    trade = Trade("BRK.B", 1_700_000_000_000_001, 0.1, None, "gbm")
    assert codec.encode_event(trade) == (b"t", "1700000000000001 0.1    gbm ")
    trade = Trade("AAPL", 1_700_000_000_000_001, 187.25, 3.0, "binance", "42", Side.SELL,
                  1_700_000_000_000_009)
    assert codec.encode_trade(trade) == "1700000000000001 187.25 3.0 s 42 binance 1700000000000009"
    quote = Quote("AAPL", 1_700_000_000_000_001, 187.2, 5.0, None, None, "gbm")
    assert codec.encode_event(quote) == (b"q", "1700000000000001 187.2 5.0   gbm ")


@given(events)
def test_json_shapes_carry_every_key(event: Any) -> None:
    data = codec.decode_json(codec.encode_json(codec.event_to_dict(event, "1-0")))
    assert data["id"] == "1-0" and data["symbol"] == event.symbol
    if isinstance(event, Trade):
        assert set(data) == {"symbol", "ts", "ts_us", "price", "size", "side", "trade_id",
                             "source", "recv_ts_us", "id"}
        assert data["price"] == event.price and data["ts"] == format_us(event.ts_us)
        assert data["side"] == (None if event.side is None else str(event.side))
    elif isinstance(event, Quote):
        assert set(data) == {"symbol", "ts", "ts_us", "bid", "bid_size", "ask", "ask_size",
                             "source", "recv_ts_us", "id"}
        assert (data["bid"], data["ask"]) == (event.bid, event.ask)
    else:
        assert data["state"] == str(event.state) and data["trades"] == event.trades


_PARTS = st.sampled_from([
    b"", b"1700000000000000", b"12", b"+1", b"1.5", b"-1.5", b"0", b"nan", b"inf", b"1e309",
    b"5e-324", b"7", b"1_0", b"b", b"s", b"x", b"gbm", b"\xff", b"bad!", b"AAPL", b"id-9",
])
_VALUES = st.lists(_PARTS, min_size=6, max_size=8).map(lambda p: b" ".join(p))


@given(_VALUES | trades.map(lambda t: _stored(codec.encode_trade(t))))
def test_trade_fast_path_accepts_exactly_what_the_parser_accepts(value: bytes) -> None:
    try:
        want: Any = codec.parse_trade("AAPL", value)
    except ValueError:
        want = None
    got = codec.trade_values(value)
    if got is not None:  # the fast path may defer (unseen source), never disagree
        assert want is not None
        assert got == (want.ts_us, want.price, want.size,
                       None if want.side is None else str(want.side), want.trade_id,
                       want.source, want.recv_ts_us)
    elif want is not None:
        codec.parse_trade("AAPL", value)  # now seen: the fast path takes it
        assert codec.trade_values(value) is not None


@given(_VALUES | quotes().map(lambda q: _stored(codec.encode_quote(q))))
def test_quote_fast_path_accepts_exactly_what_the_parser_accepts(value: bytes) -> None:
    try:
        want: Any = codec.parse_quote("AAPL", value)
    except ValueError:
        want = None
    got = codec.quote_values(value)
    if got is not None:
        assert want is not None
        assert got == (want.ts_us, want.bid, want.bid_size, want.ask, want.ask_size,
                       want.source, want.recv_ts_us)
    elif want is not None:
        codec.parse_quote("AAPL", value)
        assert codec.quote_values(value) is not None


@given(st.sampled_from([Channel.TRADES, Channel.QUOTES, Channel.BARS_1M]),
       _VALUES | events.map(lambda e: _stored(codec.encode_event(e)[1])))
def test_entry_json_is_the_event_json_or_the_same_error(channel: Channel, value: bytes) -> None:
    fields = {codec.FIELD_OF[channel]: value}
    try:
        want: Any = codec.encode_json(codec.event_to_dict(
            codec.decode_entry(channel, "AAPL", fields), "5-1"))
    except ValueError as exc:
        want = type(exc)
    for shape in (fields, [x for kv in fields.items() for x in kv]):
        try:
            got: Any = codec.entry_to_json(channel, "AAPL", shape, "5-1")
        except ValueError as exc:
            got = type(exc)
        assert got == want


@pytest.mark.parametrize("fields", [None, {}, {b"q": b"1 2 3 4 5 x "}, [b"x", b"y"], [b"t"]])
def test_entries_without_the_channels_field_raise_decode_error(fields: Any) -> None:
    with pytest.raises(DecodeError):
        codec.decode_entry(Channel.TRADES, "AAPL", fields)


@pytest.mark.parametrize("value", [
    b"1700000000000000 2.5   gbm", b"1700000000000000 2.5     gbm  ",
    b"1700000000000000 x    gbm ", b" 2.5    gbm ", b"1700000000000000 1 1 x  gbm ",
    b"1700000000000000 1 1  \xff gbm ", b"+1700000000000000 1 1   gbm ", b"",
])
def test_malformed_trades_raise_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.parse_trade("AAPL", value)


@pytest.mark.parametrize("price", [0.0, -1.0, math.nan, math.inf, -math.inf, "1.0", True, None])
def test_bad_prices_are_rejected(price: object) -> None:
    with pytest.raises(InvalidEventError) as info:
        Trade("AAPL", MIN_TS_US, price, 1.0)  # type: ignore[arg-type]
    assert info.value.field == "price"


@pytest.mark.parametrize(("size", "reason"), [
    (0.0, "non_positive"), (-1.0, "negative_size"), (math.inf, "not_finite"),
    ("2", "not_numeric")])
def test_bad_trade_sizes_are_rejected_with_their_reason(size: object, reason: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        Trade("AAPL", MIN_TS_US, 1.0, size)  # type: ignore[arg-type]
    assert (info.value.field, info.value.reason) == ("size", reason)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"bid": 2.0, "ask": 1.0}, "crossed_book"),
    ({"bid": None, "bid_size": None, "ask": None, "ask_size": None}, "empty_book"),
    ({"bid": -1.0}, "non_positive"),
    ({"bid_size": -1.0}, "negative_size"),
    ({"bid": None, "bid_size": 1.0}, "size_without_price"),
    ({"ask": math.nan}, "not_finite"),
])
def test_a_crossed_or_negative_book_is_rejected_with_a_reason(
        kwargs: dict[str, Any], reason: str) -> None:
    values: dict[str, Any] = {"bid": 1.0, "bid_size": 1.0, "ask": 1.5, "ask_size": 2.0}
    values.update(kwargs)
    with pytest.raises(InvalidEventError) as info:
        Quote("AAPL", MIN_TS_US, values["bid"], values["bid_size"], values["ask"],
              values["ask_size"])
    assert info.value.reason == reason


def test_one_sided_and_locked_books_are_quotes() -> None:
    assert Quote("AAPL", MIN_TS_US, 1.0, None, None, None).mid is None
    locked = Quote("AAPL", MIN_TS_US, 1.0, 0.0, 1.0, 3.0)
    assert (locked.mid, locked.spread) == (1.0, 0.0)


@pytest.mark.parametrize("symbol", ["", "aapl", "A{B}", "A/B", "A B", "X" * 33, 7])
def test_bad_symbols_are_rejected(symbol: object) -> None:
    with pytest.raises(InvalidEventError, match="symbol"):
        Trade(symbol, MIN_TS_US, 1.0, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("ts_us", [0, 1_700_000_000, MAX_TS_US, 1.5e15, -1, True])
def test_absurd_timestamps_are_rejected(ts_us: object) -> None:
    with pytest.raises(InvalidEventError, match="ts_us"):
        Quote("AAPL", ts_us, 1.0, None, None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("trade_id", ["", "a b", "x" * 65, 42])
def test_bad_trade_ids_and_sides_are_rejected(trade_id: object) -> None:
    with pytest.raises(InvalidEventError, match="trade_id"):
        Trade("AAPL", MIN_TS_US, 1.0, 1.0, "x", trade_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="side"):
        Trade("AAPL", MIN_TS_US, 1.0, 1.0, "x", None, "up")  # type: ignore[arg-type]


def test_integers_become_floats_and_sides_become_side() -> None:
    trade = Trade("AAPL", MIN_TS_US, 3, 2, side="buy")  # type: ignore[arg-type]
    assert type(trade.price) is float and type(trade.size) is float and trade.side is Side.BUY


def test_bars_must_be_consistent() -> None:
    bucket = 1_767_323_040_000_000
    Bar("AAPL", bucket, 2.0, 3.0, 1.0, 2.5, 10.0, 2.2, 4)
    for bad in ({"low": 2.6}, {"bucket_us": bucket + 1}, {"trades": 0}, {"state": "closed"}):
        values: dict[str, Any] = {"bucket_us": bucket, "low": 1.0, "trades": 4, "state": "open"}
        values.update(bad)
        with pytest.raises(InvalidEventError):
            Bar("AAPL", values["bucket_us"], 2.0, 3.0, values["low"], 2.5, 10.0, None,
                values["trades"], values["state"])


@given(st.integers(0, (1 << 42) - 1), st.integers(0, (1 << 21) - 1))
def test_entry_id_packing_round_trips_and_orders(ms: int, seq: int) -> None:
    packed = codec.pack_entry_id(f"{ms}-{seq}")
    assert 0 <= packed < 1 << 63
    assert codec.unpack_entry_id(packed) == f"{ms}-{seq}"
    if seq + 1 < 1 << 21:
        assert codec.pack_entry_id(f"{ms}-{seq + 1}") > packed
    if ms + 1 < 1 << 42:
        assert codec.pack_entry_id(f"{ms + 1}-0") > packed


@pytest.mark.parametrize("bad", ["x-1", "1-x", "-1-0", f"{1 << 42}-0", f"1-{1 << 21}"])
def test_bad_entry_ids(bad: str) -> None:
    with pytest.raises(DecodeError):
        codec.pack_entry_id(bad)


def test_decode_json_errors_are_decode_errors() -> None:
    with pytest.raises(DecodeError):
        codec.decode_json(b"{nope")


def test_time_parsing() -> None:
    assert parse_time_us("2026-01-02T03:04:05.000006Z") == 1767323045000006
    assert parse_time_us("2026-01-02T03:04:05.000006") == 1767323045000006
    assert parse_time_us("1767323045") == 1767323045000000
    assert parse_time_us("1767323045123") == 1767323045123000
    assert format_us(1767323045000006) == "2026-01-02T03:04:05.000006Z"
    with pytest.raises(ValueError):
        parse_time_us("yesterday")


@given(times)
def test_format_us_matches_the_plain_conversion(ts_us: int) -> None:
    from pricepipe.clock import us_to_datetime

    assert format_us(ts_us) == us_to_datetime(ts_us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_validation_cache_is_bounded_and_still_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    from pricepipe import events

    monkeypatch.setattr(events, "_SEEN_MAX", 3)
    monkeypatch.setattr(events, "_SEEN_SYMBOLS", set())
    for symbol in ["A", "B", "C", "D", "E"]:
        Trade(symbol, MIN_TS_US, 1.0, 1.0)
    assert len(events._SEEN_SYMBOLS) <= 3
    with pytest.raises(InvalidEventError):
        Trade("a", MIN_TS_US, 1.0, 1.0)
    with pytest.raises(InvalidEventError):
        Trade(["A"], MIN_TS_US, 1.0, 1.0)  # type: ignore[arg-type]


@given(st.integers(MIN_TS_US // 1000, MAX_TS_US // 1000), st.integers(0, 10**9),
       st.integers(0, 999))
def test_an_id_range_span_holds_every_event_its_entries_may_carry(
        after_ms: int, width_ms: int, us_in_ms: int) -> None:
    until_ms = after_ms + width_ms
    start_us, end_us = id_range_span_us(after_ms, until_ms)
    # The extremes an entry appended in the range may carry, to the microsecond.
    oldest = after_ms * 1000 - MAX_EVENT_AGE_AT_APPEND_US
    newest = until_ms * 1000 + us_in_ms + MAX_EVENT_LEAD_AT_APPEND_US
    for ts_us in (oldest, newest):
        if MIN_TS_US <= ts_us < MAX_TS_US:  # a valid event time
            assert start_us <= ts_us < end_us
    assert start_us >= MIN_TS_US and end_us <= MAX_TS_US
