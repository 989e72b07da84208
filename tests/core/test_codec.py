import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricepipe import codec
from pricepipe.clock import format_us, parse_time_us
from pricepipe.exceptions import DecodeError, InvalidTickError
from pricepipe.tick import MAX_TS_US, MIN_TS_US, Tick

symbols = st.from_regex(r"[A-Z0-9][A-Z0-9._:-]{0,31}", fullmatch=True)
prices = st.floats(min_value=1e-12, max_value=1e15, allow_nan=False, allow_infinity=False)
sizes = st.none() | st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
times = st.integers(min_value=MIN_TS_US, max_value=MAX_TS_US - 1)
ticks = st.builds(
    Tick, symbols, times, prices, sizes,
    st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,31}", fullmatch=True), st.none() | times,
)


def _as_redis_returns(fields: dict) -> dict[bytes, bytes]:
    # redis-py sends str/int values as their text; it hands back bytes.
    return {k: (v if isinstance(v, bytes) else str(v).encode()) for k, v in fields.items()}


@given(ticks)
def test_stream_fields_round_trip_exactly(tick: Tick) -> None:
    assert codec.decode_fields(_as_redis_returns(codec.encode_fields(tick))) == tick


def test_stream_entry_is_one_readable_field() -> None:
    tick = Tick("BRK.B", 1_700_000_000_000_001, 0.1, None, "gbm", None)
    assert codec.encode_fields(tick) == {b"t": "BRK.B 1700000000000001 0.1  gbm "}
    tick = Tick("AAPL", 1_700_000_000_000_001, 187.25, 3.0, "binance", 1_700_000_000_000_009)
    assert codec.encode_fields(tick) == {
        b"t": "AAPL 1700000000000001 187.25 3.0 binance 1700000000000009"}


_PARTS = st.sampled_from([
    b"AAPL", b"aapl", b"", b"\xff", b"gbm", b"bad source!", b"1700000000000000", b"12",
    b"1.5", b"-1.5", b"0", b"nan", b"inf", b"1e309", b"5e-324", b"7", b"1_0",
])
_ANY_FIELDS = (
    st.lists(_PARTS, min_size=5, max_size=7).map(lambda p: {b"t": b" ".join(p)})
    | st.dictionaries(st.sampled_from([b"sym", b"ts", b"px", b"src", b"sz", b"t"]), _PARTS)
    | ticks.map(lambda t: _as_redis_returns(codec.encode_fields(t)))
)


@given(_ANY_FIELDS)
def test_entry_json_is_the_tick_json_or_the_same_error(fields: dict[bytes, bytes]) -> None:
    try:
        want: bytes | type = codec.encode_json(codec.tick_to_dict(codec.decode_fields(fields),
                                                                  "5-1"))
    except ValueError as exc:
        want = type(exc)
    for shape in (fields, [x for kv in fields.items() for x in kv]):
        try:
            got: bytes | type = codec.entry_to_json(shape, "5-1")
        except ValueError as exc:
            got = type(exc)
        assert got == want


def test_one_field_per_attribute_entries_are_still_read() -> None:
    fields = {b"sym": b"AAPL", b"ts": b"1700000000000000", b"px": b"2.5", b"src": b"cli"}
    assert codec.decode_fields(fields) == Tick("AAPL", 1_700_000_000_000_000, 2.5, None, "cli")


@pytest.mark.parametrize("value", [
    b"AAPL 1700000000000000 2.5  gbm", b"AAPL 1700000000000000 2.5  gbm  ",
    b"AAPL 1700000000000000 x  gbm ", b"AAPL  2.5  gbm ", b"\xff 1700000000000000 1 1 gbm ",
    b"",
])
def test_malformed_tick_fields_raise_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode_fields({b"t": value})


@given(ticks)
def test_json_round_trip_exactly(tick: Tick) -> None:
    data = codec.decode_json(codec.encode_json(codec.tick_to_dict(tick, "1-0")))
    assert data["id"] == "1-0"
    assert codec.tick_from_dict(data) == tick


@pytest.mark.parametrize("price", [0.0, -1.0, math.nan, math.inf, -math.inf, "1.0", True, None])
def test_bad_prices_are_rejected(price: object) -> None:
    with pytest.raises(InvalidTickError) as info:
        Tick("AAPL", MIN_TS_US, price)  # type: ignore[arg-type]
    assert info.value.field == "price"


@pytest.mark.parametrize("symbol", ["", "aapl", "A{B}", "A/B", "A B", "X" * 33, 7])
def test_bad_symbols_are_rejected(symbol: object) -> None:
    with pytest.raises(InvalidTickError, match="symbol"):
        Tick(symbol, MIN_TS_US, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("ts_us", [0, 1_700_000_000, MAX_TS_US, 1.5e15, -1])
def test_absurd_timestamps_are_rejected(ts_us: object) -> None:
    with pytest.raises(InvalidTickError, match="ts_us"):
        Tick("AAPL", ts_us, 1.0)  # type: ignore[arg-type]


def test_integer_price_becomes_float() -> None:
    tick = Tick("AAPL", MIN_TS_US, 3, 2)
    assert type(tick.price) is float and type(tick.size) is float


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {b"sym": b"AAPL", b"ts": b"x", b"px": b"1", b"src": b"gbm"},
        {b"sym": b"AAPL", b"ts": b"1700000000000000", b"src": b"gbm"},
        {b"sym": b"\xff", b"ts": b"1700000000000000", b"px": b"1", b"src": b"gbm"},
    ],
)
def test_undecodable_entries_raise_decode_error(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(DecodeError):
        codec.decode_fields(fields)


def test_invalid_values_in_entries_raise_value_error() -> None:
    with pytest.raises(ValueError):
        codec.decode_fields({b"sym": b"AAPL", b"ts": b"1700000000000000", b"px": b"nan",
                             b"src": b"gbm"})


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
    from pricepipe import tick as tick_module

    monkeypatch.setattr(tick_module, "_SEEN_MAX", 3)
    monkeypatch.setattr(tick_module, "_SEEN_SYMBOLS", set())
    for symbol in ["A", "B", "C", "D", "E"]:
        Tick(symbol, MIN_TS_US, 1.0)
    assert len(tick_module._SEEN_SYMBOLS) <= 3
    with pytest.raises(InvalidTickError):
        Tick("a", MIN_TS_US, 1.0)
    with pytest.raises(InvalidTickError):
        Tick(["A"], MIN_TS_US, 1.0)  # type: ignore[arg-type]
