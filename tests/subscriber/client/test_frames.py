"""History as pandas DataFrames straight from PostgreSQL: exact values and
fixed dtypes, several symbols in time order, empty ranges, the time
parameters, and a clear error without the research extra. (Frames over HTTP,
and that they equal these, are in tests/api/test_frames.py.)"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pytest

from pricepipe import codec
from pricepipe.clock import datetime_to_us, format_us, us_to_datetime
from pricepipe.events import Quote, Side, Trade
from pricepipe.subscriber.client import bars_frame, frames, quotes_frame, trades_frame
from tests.api.helpers import (
    DAY0_US,
    backfill_entry,
    entry_for,
    insert_bars,
    insert_quotes,
    insert_trades,
    minute_bar_rows,
    steady_trades,
)

DAY0 = "2026-01-05"
DAY1 = "2026-01-06"

TRADE_DTYPES = {"symbol": "category", "price": "float64", "size": "float64",
                "side": "category", "source": "category", "recv_ts": "datetime64[us, UTC]"}


def _seed(db: Any) -> tuple[list[Trade], list[int]]:
    """Two symbols' trades interleaved in time, ties at one instant within
    and across symbols, a backfilled trade and a trade id a careless CSV
    parser would read as null."""
    msft = [Trade("MSFT", DAY0_US + i * 2_000_000, 400.0 + i / 8, 1.0 + i, "venue-a",
                  f"m{i}", Side.BUY if i % 2 else Side.SELL) for i in range(10)]
    aapl = [Trade("AAPL", DAY0_US + i * 3_000_000, 190.0 + i / 4, None if i % 3 == 0 else 2.5,
                  "venue-b", None if i == 4 else f"a{i}", None if i == 5 else Side.BUY,
                  DAY0_US + i * 3_000_000 + 17) for i in range(8)]
    tie = [Trade("AAPL", DAY0_US + 6_000_000, 0.1 + 0.2, 1e-9, "venue-a", "NULL"),
           Trade("AAPL", DAY0_US + 6_000_000, 1e300, 7.0, "venue-a", "NaN")]
    backfilled = Trade("AAPL", DAY0_US + 30_000_000, 191.5, 3.0, "backfill", "bf-1")
    trades = [*msft, *aapl, *tie, backfilled]
    entries = [*(entry_for(t) for t in msft), *(entry_for(t) for t in aapl),
               entry_for(tie[0], seq=1), entry_for(tie[1], seq=2),
               backfill_entry(backfilled.ts_us)]
    insert_trades(db, trades, entries)
    return trades, entries


def _expected_order(trades: list[Trade], entries: list[int], symbols: list[str]
                    ) -> list[tuple[Trade, int]]:
    return sorted(((t, e) for t, e in zip(trades, entries, strict=True) if t.symbol in symbols),
                  key=lambda te: (te[0].ts_us, symbols.index(te[0].symbol), te[1]))


def test_trades_of_several_symbols_exactly_in_time_order(db: Any) -> None:
    trades, entries = _seed(db)
    frame = trades_frame(db, ["MSFT", "AAPL"], DAY0, DAY1)
    want = _expected_order(trades, entries, ["MSFT", "AAPL"])
    assert len(frame) == len(want) == len(trades)
    assert frame.index.name == "ts" and str(frame.index.dtype) == "datetime64[us, UTC]"
    assert {name: str(frame.dtypes[name]) for name in TRADE_DTYPES} == TRADE_DTYPES
    assert list(frame.columns) == ["symbol", "price", "size", "side", "trade_id", "source",
                                   "recv_ts", "id"]
    assert list(frame["symbol"].cat.categories) == ["MSFT", "AAPL"]
    assert list(frame["side"].cat.categories) == ["buy", "sell"]
    assert list(frame["source"].cat.categories) == ["backfill", "venue-a", "venue-b"]
    for (ts, row), (trade, entry) in zip(frame.iterrows(), want, strict=True):
        assert datetime_to_us(ts.to_pydatetime()) == trade.ts_us
        assert (row["symbol"], row["price"], row["source"]) == (trade.symbol, trade.price,
                                                               trade.source)
        assert (None if pd.isna(row["size"]) else row["size"]) == trade.size
        assert (None if pd.isna(row["side"]) else row["side"]) == (
            None if trade.side is None else str(trade.side))
        assert (None if pd.isna(row["trade_id"]) else row["trade_id"]) == trade.trade_id
        recv = None if pd.isna(row["recv_ts"]) else datetime_to_us(row["recv_ts"].to_pydatetime())
        assert recv == trade.recv_ts_us
        assert (None if pd.isna(row["id"]) else row["id"]) == (
            codec.unpack_entry_id(entry) if entry >= 0 else None)
    # One symbol, given as text; the other's categories are not there.
    aapl = trades_frame(db, "AAPL", DAY0, DAY1)
    assert list(aapl["symbol"].cat.categories) == ["AAPL"] and len(aapl) == 11
    assert list(aapl["trade_id"].dropna()[:5]) == ["a0", "a1", "a2", "NULL", "NaN"]
    assert trades_frame(db, "AAPL,MSFT", DAY0, DAY1)["symbol"].iloc[0] == "AAPL"


def test_quotes_keep_one_sided_books_as_nan(db: Any) -> None:
    quotes = [Quote("QQ", DAY0_US + 1_000, 10.0, 5.0, 10.5, 6.0, "venue-a", DAY0_US + 2_000),
              Quote("QQ", DAY0_US + 2_000, None, None, 10.25, None, "venue-a"),
              Quote("QQ", DAY0_US + 3_000, 10.1, 1.5, None, None, "venue-b")]
    insert_quotes(db, quotes)
    frame = quotes_frame(db, "QQ", DAY0, DAY1)
    assert list(frame.columns) == ["symbol", "bid", "bid_size", "ask", "ask_size", "source",
                                   "recv_ts", "id"]
    assert frame["bid"].tolist()[::2] == [10.0, 10.1] and pd.isna(frame["bid"].iloc[1])
    assert frame["ask_size"].isna().tolist() == [False, True, True]
    assert frame["id"].tolist() == [codec.unpack_entry_id(entry_for(q)) for q in quotes]
    assert frame.index[0] == pd.Timestamp(format_us(DAY0_US + 1_000))


def test_bars_from_the_rollups_and_the_raw_trades(db: Any) -> None:
    trades = steady_trades("BB", DAY0_US, 300, 1_000_000)
    insert_trades(db, trades)
    insert_bars(db, minute_bar_rows(trades[120:240]))  # minutes 2 and 3 stored
    minutes = bars_frame(db, "BB", DAY0, DAY1)
    assert minutes.index.name == "bucket" and len(minutes) == 5
    assert list(minutes.columns) == ["symbol", "open", "high", "low", "close", "volume",
                                     "vwap", "trades"]
    assert minutes["trades"].dtype == "int64" and minutes["trades"].tolist() == [60] * 5
    for minute in range(5):
        group = trades[minute * 60:(minute + 1) * 60]
        row = minutes.iloc[minute]
        assert (row["open"], row["close"]) == (group[0].price, group[-1].price)
        assert (row["high"], row["low"]) == (max(t.price for t in group),
                                             min(t.price for t in group))
        assert row["volume"] == pytest.approx(sum(t.size or 0.0 for t in group), rel=1e-12)
    five = bars_frame(db, "BB", DAY0_US + 1, DAY1, interval="5m")  # start rounded down
    assert len(five) == 1 and five["trades"].iloc[0] == 300
    assert five.index[0] == pd.Timestamp(format_us(DAY0_US))
    with pytest.raises(ValueError, match="interval"):
        bars_frame(db, "BB", DAY0, DAY1, interval="2m")


def test_an_empty_range_is_an_empty_frame_of_the_same_dtypes(db: Any) -> None:
    trades, _ = _seed(db)
    for load in (trades_frame, quotes_frame, bars_frame):
        full = load(db, ["AAPL", "MSFT"], DAY0, DAY1)
        empty = load(db, ["AAPL", "MSFT"], "2025-01-01", "2025-01-02")
        assert len(empty) == 0 and list(empty.columns) == list(full.columns)
        assert str(empty.index.dtype) == str(full.index.dtype) == "datetime64[us, UTC]"
        assert empty.index.name == full.index.name
        for name in full.columns:
            if str(full.dtypes[name]) == "category":
                assert str(empty.dtypes[name]) == "category", name
            else:
                assert empty.dtypes[name] == full.dtypes[name], name
        assert list(empty["symbol"].cat.categories) == ["AAPL", "MSFT"]


def test_blocks_of_any_size_give_the_same_frame(db: Any, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    _seed(db)
    # Text the pipeline never writes (stored by hand): quotes and newlines
    # inside values, where a block must not be cut.
    odd = ['a,"b"\nc', "\n", "NULL", "", '"'] * 8
    with db.cursor() as cur:
        for i, text in enumerate(odd):
            cur.execute("INSERT INTO trades (symbol, ts, price, size, side, trade_id, source,"
                        " recv_ts, entry_id) VALUES ('ODD', %s, 1.5, NULL, NULL, %s, 'x', NULL,"
                        " %s)", (us_to_datetime(DAY0_US + i), text, i))
    whole = trades_frame(db, ["AAPL", "MSFT", "ODD"], DAY0, DAY1)
    assert whole.loc[whole["symbol"] == "ODD", "trade_id"].tolist() == odd
    for block_bytes in (1, 50, 333):
        monkeypatch.setattr(frames, "BLOCK_BYTES", block_bytes)
        pd.testing.assert_frame_equal(trades_frame(db, ["AAPL", "MSFT", "ODD"], DAY0, DAY1),
                                      whole, check_exact=True)


def test_rows_are_cut_at_newlines_outside_quotes_only() -> None:
    buffer = bytearray(b'1,"a\nb",x\n2,"",y\n3,"c""\nd')
    end = frames._row_end(buffer)
    assert bytes(buffer[:end]) == b'1,"a\nb",x\n2,"",y\n'
    assert frames._row_end(bytearray(b'1,"open\n')) == 0


def test_times_are_datetimes_dates_text_or_microseconds() -> None:
    want = DAY0_US
    assert frames.time_us(datetime(2026, 1, 5, tzinfo=UTC)) == want
    assert frames.time_us(datetime(2026, 1, 5, 1, tzinfo=timezone(timedelta(hours=1)))) == want
    assert frames.time_us(date(2026, 1, 5)) == want
    assert frames.time_us(pd.Timestamp("2026-01-05", tz="UTC")) == want
    for text in ("2026-01-05", "2026-01-05T00:00:00Z", "1767571200", str(want)):
        assert frames.time_us(text) == want
    assert frames.time_us(want) == want
    with pytest.raises(ValueError, match="naive"):
        frames.time_us(datetime(2026, 1, 5))
    with pytest.raises(ValueError, match="start"):
        frames.time_us("yesterday", "start")
    with pytest.raises(TypeError):
        frames.time_us(True)
    with pytest.raises(ValueError, match="before"):
        trades_frame("http://127.0.0.1:9", "AAPL", DAY1, DAY0)
    with pytest.raises(TypeError, match="source"):
        trades_frame(object(), "AAPL", DAY0, DAY1)


def test_without_the_research_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pricepipe\[research\]"):
        trades_frame("http://127.0.0.1:9", "AAPL", DAY0, DAY1)
