"""Bars, CSV downloads, the quote board and the GBM simulator against real servers."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pricepipe import codec, streams
from pricepipe.api.settings import ApiSettings
from pricepipe.clock import format_us
from pricepipe.events import Quote, Side, Trade
from pricepipe.keys import Keys
from tests.api.helpers import (
    DAY0_US,
    MINUTE_US,
    backfill_entry,
    entry_for,
    expected_json,
    insert_bars,
    insert_quotes,
    insert_trades,
    minute_bar_rows,
    steady_quotes,
    steady_trades,
)


def _reference_bars(trades: list[Trade], width_us: int) -> list[dict[str, Any]]:
    """Bars computed in Python from raw trades, the way the API must."""
    groups: dict[int, list[Trade]] = {}
    for trade in sorted(trades, key=lambda t: (t.ts_us, entry_for(t))):
        groups.setdefault(trade.ts_us - trade.ts_us % width_us, []).append(trade)
    out = []
    for bucket, group in sorted(groups.items()):
        sized = [t for t in group if t.size is not None]
        volume = sum(t.size or 0.0 for t in sized)
        notional = sum(t.price * (t.size or 0.0) for t in sized)
        out.append({"bucket": format_us(bucket), "bucket_us": bucket, "open": group[0].price,
                    "high": max(t.price for t in group), "low": min(t.price for t in group),
                    "close": group[-1].price, "volume": volume,
                    "vwap": notional / volume if volume else None, "trades": len(group)})
    return out


def _assert_bars(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal; sums of floats (volume, VWAP) to rounding: PostgreSQL adds in
    an order of its own."""
    assert [list(b) for b in got] == [list(b) for b in want]
    for g, w in zip(got, want, strict=True):
        exact = {k: v for k, v in w.items() if k not in ("volume", "vwap")}
        assert {k: g[k] for k in exact} == exact
        assert g["volume"] == pytest.approx(w["volume"], rel=1e-12)
        assert (g["vwap"] is None) == (w["vwap"] is None)
        if w["vwap"] is not None:
            assert g["vwap"] == pytest.approx(w["vwap"], rel=1e-12)


def _window() -> dict[str, str]:
    return {"start": format_us(DAY0_US), "end": format_us(DAY0_US + 3600 * 10**6)}


def test_bars_computed_from_trades_at_every_interval(client: TestClient, db: Any) -> None:
    # 21 minutes of trades every 7 s, so buckets hold uneven numbers of trades;
    # some without a size, and one minute with none sized at all (no VWAP).
    trades = steady_trades("BARS", DAY0_US + 3_000_000, 180, 7_000_000)
    unsized = [Trade("BARS", DAY0_US + 30 * MINUTE_US + i, 5.0 + i, None, "test")
               for i in range(3)]
    insert_trades(db, [*trades, *unsized])
    insert_quotes(db, steady_quotes("BARS", DAY0_US, 100, 1_000_000))  # quotes make no bars
    everything = [*trades, *unsized]
    for interval, width_us in (("1m", MINUTE_US), ("5m", 5 * MINUTE_US),
                               ("15m", 15 * MINUTE_US), ("1h", 60 * MINUTE_US)):
        resp = client.get("/v1/bars/BARS", params={**_window(), "interval": interval})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["interval"] == interval and body["count"] == len(body["bars"])
        _assert_bars(body["bars"], _reference_bars(everything, width_us))
    one_minute = client.get("/v1/bars/BARS", params={**_window(), "interval": "1m"}).json()
    last = one_minute["bars"][-1]
    assert (last["volume"], last["vwap"], last["trades"]) == (0, None, 3)
    day = client.get("/v1/bars/BARS", params={"interval": "1d", "start": str(DAY0_US),
                                               "end": str(DAY0_US + 86_400 * 10**6)}).json()
    _assert_bars(day["bars"], _reference_bars(everything, 86_400 * 10**6))


def test_bars_prefer_stored_rollups_and_fill_in_from_trades(client: TestClient,
                                                             db: Any) -> None:
    trades = steady_trades("MIX", DAY0_US, 120, 5_000_000)  # minutes 0..9
    insert_trades(db, trades)
    stored = [t for t in trades if 3 * MINUTE_US <= t.ts_us - DAY0_US < 7 * MINUTE_US]
    rows = minute_bar_rows(stored)
    # Mark the stored bars: a volume, notional and count the trades cannot
    # produce show which was used.
    insert_bars(db, [(*row[:6], 1000.0 + i, 2000.0 + 4 * i, 50 + i, *row[9:])
                     for i, row in enumerate(rows)])
    one_minute = client.get("/v1/bars/MIX", params={**_window(), "interval": "1m"}).json()
    bars = one_minute["bars"]
    reference = _reference_bars(trades, MINUTE_US)
    assert len(bars) == 10
    assert [(b["volume"], b["vwap"], b["trades"]) for b in bars[3:7]] == [
        (1000.0 + i, (2000.0 + 4 * i) / (1000.0 + i), 50 + i) for i in range(4)]
    _assert_bars(bars[:3] + bars[7:], reference[:3] + reference[7:])
    for got, want in zip(bars, reference, strict=True):
        assert (got["open"], got["high"], got["low"], got["close"]) == (
            want["open"], want["high"], want["low"], want["close"])
    five = client.get("/v1/bars/MIX", params={**_window(), "interval": "5m"}).json()["bars"]
    ref5 = _reference_bars(trades, 5 * MINUTE_US)
    for got, want in zip(five, ref5, strict=True):
        assert (got["open"], got["high"], got["low"], got["close"]) == (
            want["open"], want["high"], want["low"], want["close"])
    # Minutes 3 and 4 stored (1000 + 1001 in volume, 50 + 51 trades), 0..2 computed.
    first_raw = [t for t in trades if t.ts_us - DAY0_US < 3 * MINUTE_US]
    raw_volume = sum(t.size or 0.0 for t in first_raw)
    raw_notional = sum(t.price * (t.size or 0.0) for t in first_raw)
    assert five[0]["trades"] == len(first_raw) + 50 + 51
    assert five[0]["volume"] == pytest.approx(raw_volume + 2001.0, rel=1e-12)
    assert five[0]["vwap"] == pytest.approx((raw_notional + 4004.0) / (raw_volume + 2001.0),
                                            rel=1e-12)


def test_bars_csv_and_range_caps(make_client: Callable[..., TestClient], db: Any) -> None:
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, max_bars=100))
    trades = steady_trades("CSVB", DAY0_US, 30, 10_000_000)
    insert_trades(db, trades)
    resp = client.get("/v1/bars/CSVB", params={**_window(), "format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    ref = _reference_bars(trades, MINUTE_US)
    assert list(rows[0]) == list(ref[0])
    assert [r["bucket"] for r in rows] == [b["bucket"] for b in ref]
    assert [float(r["close"]) for r in rows] == [b["close"] for b in ref]
    assert [int(r["trades"]) for r in rows] == [b["trades"] for b in ref]
    assert [float(r["vwap"]) for r in rows] == pytest.approx([b["vwap"] for b in ref],
                                                             rel=1e-12)
    # 101 one-minute bars would exceed max_bars=100; 1h bars over the same range do not.
    too_long = {"start": str(DAY0_US), "end": str(DAY0_US + 101 * MINUTE_US)}
    refused = client.get("/v1/bars/CSVB", params={**too_long, "interval": "1m"})
    assert refused.status_code == 422 and "at most 100" in refused.json()["error"]
    assert client.get("/v1/bars/CSVB", params={**too_long, "interval": "1h"}).status_code == 200
    assert client.get("/v1/bars/CSVB", params={"interval": "2m"}).status_code == 422


def _csv_value(text: str) -> Any:
    return None if text == "" else text


def test_trades_csv_by_format_or_accept_header(make_client: Callable[..., TestClient],
                                               db: Any) -> None:
    # Tiny chunks: the download arrives as many COPY chunks, all of them in order.
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, csv_chunk_bytes=64))
    trades = steady_trades("CSVT", DAY0_US, 300, 1_000_000)
    last = Trade("CSVT", DAY0_US + 400_000_000, 9.5, None, "test", "x-1", Side.SELL,
                 DAY0_US + 400_000_001)
    backfilled = Trade("CSVT", DAY0_US + 500_000_000, 9.75, 2.0, "test")
    insert_trades(db, [*trades, last, backfilled],
                  [*(entry_for(t) for t in [*trades, last]), backfill_entry(backfilled.ts_us)])
    window = {"start": str(DAY0_US), "end": str(DAY0_US + 10**9)}
    by_param = client.get("/v1/trades/CSVT", params={**window, "format": "csv"})
    by_accept = client.get("/v1/trades/CSVT", params=window, headers={"Accept": "text/csv"})
    assert by_param.status_code == by_accept.status_code == 200
    assert by_param.content == by_accept.content
    assert "CSVT-trades.csv" in by_param.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(by_param.text)))
    stored = [*trades, last, backfilled]
    assert len(rows) == len(stored)
    # The columns are the JSON's keys, the values its values (empty for null).
    for row, trade, entry in zip(rows, stored, [*(entry_for(t) for t in [*trades, last]),
                                                backfill_entry(backfilled.ts_us)],
                                 strict=True):
        want = expected_json(trade, entry)
        assert list(row) == list(want)
        assert row["ts"] == want["ts"] and int(row["ts_us"]) == want["ts_us"]
        assert float(row["price"]) == want["price"]
        assert (float(row["size"]) if row["size"] else None) == want["size"]
        assert (_csv_value(row["side"]), _csv_value(row["trade_id"]), _csv_value(row["id"])) \
            == (want["side"], want["trade_id"], want["id"])
    assert rows[-2]["recv_ts_us"] == str(DAY0_US + 400_000_001) and rows[0]["recv_ts_us"] == ""
    limited = client.get("/v1/trades/CSVT", params={**window, "format": "csv", "limit": "5"})
    assert len(limited.text.strip().splitlines()) == 6
    # JSON stays the default for browsers' Accept headers.
    html_accept = "text/html,application/xhtml+xml,*/*;q=0.8"
    assert client.get("/v1/trades/CSVT", params=window,
                      headers={"Accept": html_accept}).json()["count"] == 302


def test_quotes_csv(make_client: Callable[..., TestClient], db: Any) -> None:
    client = make_client(ApiSettings(rate_limit=None, key_rate_limit=None, csv_chunk_bytes=100))
    quotes = [*steady_quotes("CSVQ", DAY0_US, 50, 1_000_000),
              Quote("CSVQ", DAY0_US + 90_000_000, None, None, 4.5, 2.0, "test", DAY0_US)]
    insert_quotes(db, quotes)
    resp = client.get("/v1/quotes/CSVQ", params={"start": str(DAY0_US), "format": "csv",
                                                  "end": str(DAY0_US + 10**9)})
    assert resp.status_code == 200 and "CSVQ-quotes.csv" in resp.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert len(rows) == len(quotes)
    for row, quote in zip(rows, quotes, strict=True):
        want = expected_json(quote, entry_for(quote))
        assert list(row) == list(want)
        for key in ("bid", "bid_size", "ask", "ask_size"):
            assert (float(row[key]) if row[key] else None) == want[key]
        assert row["id"] == want["id"] and int(row["ts_us"]) == want["ts_us"]
    assert rows[-1]["recv_ts_us"] == str(DAY0_US)


def _assert_sane_board(board: dict[str, Any]) -> None:
    """What a reader of the quote board relies on: each row's book is its newest
    quote's, whole (not mixed from two entries), so it is never crossed (Quote
    refuses bid > ask) and its sizes are not negative; the price is the trade's."""
    for row in board.values():
        if row is None:
            continue
        book = (row["bid"], row["bid_size"], row["ask"], row["ask_size"])
        quote, trade = row["quote"], row["trade"]
        assert book == ((quote["bid"], quote["bid_size"], quote["ask"], quote["ask_size"])
                        if quote else (None,) * 4), row
        assert row["price"] == (trade["price"] if trade else None), row
        if row["bid"] is not None and row["ask"] is not None:
            assert row["bid"] <= row["ask"], row
        assert all(size is None or size >= 0.0 for size in (row["bid_size"], row["ask_size"]))


def test_quote_board_from_the_streams(client: TestClient, r: Any, keys: Keys) -> None:
    streams.register_symbols(r, keys, ["QA", "QB", "QC", "QD"])
    events: list[Trade | Quote] = [
        Quote("QA", DAY0_US, 1.5, 10.0, 1.6, 20.0, "gbm"),
        Trade("QA", DAY0_US + 1, 1.55, 2.0, "gbm", "7", Side.BUY),
        Quote("QA", DAY0_US + 2, 1.52, 11.0, 1.58, None, "gbm", DAY0_US + 3),
        Trade("QC", DAY0_US, 9.0, None, "finnhub"),  # a last price, no book
        Quote("QD", DAY0_US, None, None, 4.0, 1.0, "gbm"),  # one-sided, no trade yet
    ]
    ids = [i.decode() for i in streams.append_events(r, keys, events)]
    # Corrupt entries are reported, not a 500: the good half is still shown.
    r.xadd(keys.quotes("QB"), {"sym": "QB", "ts": "x"})
    qb_trade = Trade("QB", DAY0_US, 3.0, 1.0, "gbm")
    qb_id = streams.append_events(r, keys, [qb_trade])[0].decode()
    r.xadd(keys.trades("QD"), {"t": "not a trade"})
    body = client.get("/v1/quotes", params={"symbols": "qa,QB,NONE,QA,QC,QD"}).json()
    assert list(body["quotes"]) == ["QA", "QB", "NONE", "QC", "QD"]
    _assert_sane_board(body["quotes"])
    # QA's board is its newest quote (events[2]), not the first one published.
    qa = body["quotes"]["QA"]
    assert qa == {"symbol": "QA", "bid": 1.52, "bid_size": 11.0, "ask": 1.58, "ask_size": None,
                  "price": 1.55, "quote": codec.event_to_dict(events[2], ids[2]),
                  "trade": codec.event_to_dict(events[1], ids[1])}
    qb = body["quotes"]["QB"]
    assert qb["bid"] is None and qb["quote"] is None and qb["price"] == 3.0
    assert qb["trade"] == codec.event_to_dict(qb_trade, qb_id)
    assert "quotes entry unreadable" in body["errors"]["QB"]
    assert body["quotes"]["QC"]["price"] == 9.0 and body["quotes"]["QC"]["bid"] is None
    assert body["quotes"]["QC"]["trade"] == codec.event_to_dict(events[3], ids[3])
    qd = body["quotes"]["QD"]
    assert (qd["bid"], qd["ask"], qd["price"], qd["trade"]) == (None, 4.0, None, None)
    assert qd["quote"] == codec.event_to_dict(events[4], ids[4]) and qd["ask_size"] == 1.0
    assert "trades entry unreadable" in body["errors"]["QD"]
    assert body["quotes"]["NONE"] is None
    assert set(body["errors"]) == {"QB", "QD"}
    # A key of the wrong type is an error of that symbol too, not of the request.
    r.set(keys.quotes("QE"), "oops")
    wrong = client.get("/v1/quotes", params={"symbols": "QE"}).json()
    assert wrong["quotes"] == {"QE": None} and "WRONGTYPE" in wrong["errors"]["QE"]
    many = ",".join(f"S{i}" for i in range(101))
    assert client.get("/v1/quotes", params={"symbols": many}).status_code == 422
    assert client.get("/v1/quotes", params={"symbols": ","}).status_code == 422


def test_gbm_simulation_is_seeded_and_validated(client: TestClient) -> None:
    import numpy as np

    from pricepipe.gbm import gbm_path

    query = {"periods": "50", "start_price": "10", "mu": "0.1", "sigma": "0.3",
             "delta": "0.01", "seed": "42"}
    body = client.get("/v1/simulate/gbm", params=query).json()
    expected = gbm_path(10.0, 0.1, 0.3, 0.01, 50, np.random.default_rng(42))
    assert body["prices"] == expected.tolist() and body["seed"] == 42
    unseeded = client.get("/v1/simulate/gbm").json()
    assert len(unseeded["prices"]) == 253 and unseeded["prices"][0] == 100.0
    again = client.get("/v1/simulate/gbm", params={"seed": str(unseeded["seed"])}).json()
    assert again["prices"] == unseeded["prices"]
    for bad in ({"periods": "0"}, {"periods": "100001"}, {"sigma": "-1"}, {"sigma": "nan"},
                {"start_price": "inf"}, {"delta": "0"}, {"seed": "-3"},
                {"mu": "100", "delta": "1000", "periods": "10"}):
        resp = client.get("/v1/simulate/gbm", params=bad)
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.json()["error"]
